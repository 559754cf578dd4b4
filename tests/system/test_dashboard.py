"""The web dashboard in a real browser (issue 8): Debian's chromium, headless,
driven by Playwright, against a real server (uvicorn on a free port serving the
API, the dashboard and, when present, Socket.IO) and a real worker process on a
temporary SQLite database.

Skipped with the reason when Playwright or chromium is missing, except under
``CI=true`` where that is a failure. Screenshots of every view at 1280x800 and
390x844 are written to ``test-results/screenshots/`` (kept out of git).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dartwing_jobs import Engine
from tests.conftest import TEST_HANDLER_MODULES

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-results" / "screenshots"
CHROMIUM = os.environ.get("DARTWING_JOBS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
CANCEL_GRACE = 1.0
WAIT_MS = 20_000  # the longest any single condition may take (polling is every 4 s)


def _browser_problem() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the Playwright Python package is not installed (pip install playwright)"
    if not Path(CHROMIUM).exists():
        return f"chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    return None


_PROBLEM = _browser_problem()
if _PROBLEM is not None and os.environ.get("CI") != "true":
    pytest.skip(_PROBLEM, allow_module_level=True)


def _require_browser() -> None:
    if _PROBLEM is not None:
        pytest.fail(f"CI=true and {_PROBLEM}")


# ------------------------------------------------------------------ the system


@dataclass
class System:
    url: str
    engine: Engine
    tokens: dict[str, str]
    jobs: dict[str, str] = field(default_factory=dict)
    realtime: bool = False

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/api/v1", timeout=10,
                            headers={"Authorization": f"Bearer {self.tokens[who]}"})

    def submit(self, who: str, job_type: str, organization: str,
               parameters: dict[str, Any] | None = None) -> str:
        params = {"nonce": uuid.uuid4().hex, **(parameters or {})}
        with self.client(who) as c:
            r = c.post("/jobs", json={"job_type": job_type, "organization": organization,
                                      "parameters": params})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.engine.get_job(job_id).to_dict()

    def wait_job(self, job_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} stayed {job['status']}, wanted {statuses}")
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _asgi_app(engine: Engine) -> tuple[Any, list[Any]]:
    """create_app + the dashboard (if create_app does not mount it already) + the
    Socket.IO hub when ``dartwing_jobs.realtime`` exists."""
    from dartwing_jobs.api import create_app
    from dartwing_jobs.api.dashboard import mount_dashboard

    app = create_app(engine)
    if not any(getattr(r, "path", None) == "/static" for r in app.routes):
        mount_dashboard(app)
    if importlib.util.find_spec("dartwing_jobs.realtime") is None:
        return app, []
    realtime = importlib.import_module("dartwing_jobs.realtime")
    if not hasattr(realtime, "mount"):
        realtime = importlib.import_module("dartwing_jobs.realtime.server")
    asgi, services = realtime.mount(app, engine)
    return asgi, list(services)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    _require_browser()
    import uvicorn

    tmp = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{tmp / 'jobs.db'}"
    env = {
        "DARTWING_JOBS_DATABASE_URL": url,
        "DARTWING_JOBS_HANDLER_MODULES": TEST_HANDLER_MODULES,
        "DARTWING_JOBS_CANCEL_GRACE_SECONDS": str(CANCEL_GRACE),
        "DARTWING_JOBS_LEASE_SECONDS": "5",
    }
    engine = Engine(url, handler_modules=TEST_HANDLER_MODULES,
                    cancel_grace_seconds=CANCEL_GRACE, lease_seconds=5)
    engine.migrate()
    engine.create_organization("acme", title="Acme Corp")
    engine.create_organization("globex", title="Globex")
    engine.create_organization("initech", title="Initech")  # never has a job
    people = {"alice": ("alice@acme.test", "acme", "member"),
              "adam": ("adam@acme.test", "acme", "admin"),
              "olga": ("olga@globex.test", "globex", "member"),
              "ian": ("ian@initech.test", "initech", "member")}
    tokens = {}
    for key, (email, org, role) in people.items():
        engine.create_user(email, full_name=key.title())
        engine.set_member(org, email, role=role, create=True)
        tokens[key] = engine.create_token(email)["token"]
    engine.job_types.register_all([
        {"name": "progress_steps", "handler": "tests.handlers:progress_steps"},
        {"name": "cooperative", "handler": "tests.handlers:cooperative"},
        {"name": "fail_once", "handler": "tests.handlers:fail_times", "max_retries": 0},
        {"name": "permanent", "handler": "tests.handlers:permanent"},
    ])

    asgi, services = _asgi_app(engine)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    log_path = tmp / "worker.log"
    worker: subprocess.Popen[bytes] | None = None
    try:
        for service in services:
            service.start()
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "dartwing_jobs.worker", "--concurrency", "4",
                 "--shutdown-grace", "2"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **env,
                     "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])})
        system = System(url=f"http://127.0.0.1:{port}", engine=engine, tokens=tokens,
                        realtime=bool(services))
        # Jobs the tests look for: one finished job in each organization.
        system.jobs["acme_done"] = system.submit("alice", "progress_steps", "acme", {"steps": 3})
        system.jobs["globex_done"] = system.submit("olga", "progress_steps", "globex",
                                                   {"steps": 3})
        for key in ("acme_done", "globex_done"):
            system.wait_job(system.jobs[key], {"completed"})
        yield system
    finally:
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        server.should_exit = True
        thread.join(timeout=15)
        for service in reversed(services):
            service.stop()
        engine.close()


@pytest.fixture(scope="module")
def browser(system: System) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def pages(browser: Any, system: System) -> Iterator[Any]:
    """Opens signed-in pages; closes their contexts (and keeps console errors)."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_page(who: str, viewport: str = "desktop", path: str = "#/jobs",
                  block_socket: bool = False) -> Any:
        width, height = VIEWPORTS[viewport]
        context = browser.new_context(viewport={"width": width, "height": height},
                                      timezone_id="Europe/Paris", locale="en-GB")
        contexts.append(context)
        if block_socket:
            context.route("**/socket.io/**", lambda route: route.abort())
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{system.url}/{path}")
        sign_in(page, system.tokens[who])
        return page

    open_page.errors = errors  # type: ignore[attr-defined]
    yield open_page
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def sign_in(page: Any, token: str) -> None:
    from playwright.sync_api import expect

    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def row(page: Any, job_id: str) -> Any:
    return page.locator(f'tr[data-job-id="{job_id}"]')


def shoot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{size['width']}x{size['height']}.png"),
                    full_page=True)


# ------------------------------------------------------------------ tests


def test_member_sees_own_jobs_and_a_new_job_live_to_done(pages: Any, system: System) -> None:
    from playwright.sync_api import expect

    page = pages("alice")
    expect(row(page, system.jobs["acme_done"])).to_be_visible()
    expect(row(page, system.jobs["globex_done"])).to_have_count(0)
    expect(page.locator("#f-org option")).to_have_text(["All organizations", "Acme Corp (acme)"])
    expect(page.locator('[data-tab="completed"] .count')).not_to_have_text("")
    page.evaluate("window.__sameDocument = true")

    job_id = system.submit("alice", "progress_steps", "acme", {"steps": 30, "delay": 0.3})
    new_row = row(page, job_id)
    expect(new_row).to_be_visible()
    bar = new_row.get_by_role("progressbar")
    # It moves: seen strictly between 0 and 100 while running, then done.
    page.wait_for_function(
        """id => { const b = document.querySelector(`tr[data-job-id="${id}"] [role=progressbar]`);
                   const v = b && Number(b.getAttribute('aria-valuenow'));
                   return v > 0 && v < 100; }""", arg=job_id)
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=30_000)
    expect(new_row.locator(".badge[data-status]")).to_have_attribute("data-status", "completed")
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"


def test_without_socket_io_the_page_polls(pages: Any, system: System) -> None:
    """Socket.IO unreachable: the page says so and refreshes every few seconds."""
    from playwright.sync_api import expect

    page = pages("alice", block_socket=True)
    expect(page.locator("#live-status")).to_have_attribute("data-mode", "polling")
    expect(page.locator(".live-note")).to_contain_text("Refreshing every 4 s")
    job_id = system.submit("alice", "progress_steps", "acme", {"steps": 4, "delay": 0.1})
    expect(row(page, job_id).locator(".badge[data-status]")).to_have_attribute(
        "data-status", "completed")
    expect(row(page, job_id).get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", "100")


def test_metrics_view_draws_the_api_figures(pages: Any, system: System) -> None:
    from playwright.sync_api import expect

    page = pages("olga", path="#/metrics?org=globex&window=24")
    with system.client("olga") as c:
        answer = c.get("/metrics", params={"organization": "globex", "window_hours": 24})
    grid = page.locator(".metrics-grid")
    if answer.status_code == 404:
        expect(grid.get_by_role("heading", name="Metrics are not available yet")).to_be_visible()
        return
    assert answer.status_code == 200, answer.text
    figures = answer.json()
    charts = grid.locator("svg.chart")
    expect(charts.first).to_be_visible()
    completed = figures["jobs_by_status"]["completed"]
    expect(charts.first).to_have_attribute("aria-label", re.compile(f"Completed: {completed}\\b"))
    expect(grid.get_by_role("heading", name="Failure rate per job type")).to_be_visible()
    assert "acme" not in grid.inner_text().lower()


def test_cancel_a_running_job_from_its_detail_page(pages: Any, system: System) -> None:
    from playwright.sync_api import expect

    job_id = system.submit("alice", "cooperative", "acme")
    system.wait_job(job_id, {"running"})
    page = pages("alice", path=f"#/jobs/{job_id}")
    status = page.locator(".head-status .badge[data-status]")
    expect(status).to_have_attribute("data-status", "running")
    expect(page.get_by_role("button", name="Retry job")).to_have_count(0)
    page.get_by_role("button", name="Cancel job").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Cancel this job?")
    dialog.get_by_role("button", name="Cancel job").click()
    expect(status).to_have_attribute("data-status", "canceled")
    expect(status).to_have_text("Canceled")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert system.job(job_id)["status"] == "canceled"
    # Canceled jobs may be retried by their submitter: the button is offered.
    expect(page.get_by_role("button", name="Retry job")).to_be_visible()


def test_buttons_follow_rights_and_a_refusal_shows_the_api_message(
        pages: Any, system: System) -> None:
    """Alice (member) is not offered Cancel on Adam's job. On her own job she
    confirms a cancel that the API refuses, because Adam (acme admin) canceled the
    job while her confirmation dialog was open: the page shows the API's message."""
    from playwright.sync_api import expect

    adams = system.submit("adam", "cooperative", "acme")
    page = pages("alice", path=f"#/jobs/{adams}")
    expect(page.locator(".head-status .badge[data-status]")).to_be_visible()
    expect(page.locator(".job-actions")).to_contain_text("Only the submitter")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    with system.client("adam") as c:
        assert c.post(f"/jobs/{adams}/cancel").status_code == 200

    hers = system.submit("alice", "cooperative", "acme")
    system.wait_job(hers, {"running"})
    page.goto(f"{system.url}/#/jobs/{hers}")
    page.get_by_role("button", name="Cancel job").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    with system.client("adam") as c:
        assert c.post(f"/jobs/{hers}/cancel").status_code == 200
        system.wait_job(hers, {"canceled"})
        refusal = c.post(f"/jobs/{hers}/cancel").json()["error"]
    assert refusal["code"] == "invalid_state"
    dialog.get_by_role("button", name="Cancel job").click()
    alert = page.locator(".feedback [role=alert]")
    expect(alert).to_contain_text("invalid_state")
    expect(alert).to_contain_text(refusal["message"])
    expect(page.locator(".head-status .badge[data-status]")).to_have_attribute(
        "data-status", "canceled")


def test_retry_a_dead_lettered_job_runs_it_again(pages: Any, system: System) -> None:
    from playwright.sync_api import expect

    job_id = system.submit("alice", "fail_once", "acme", {"fail": 1})
    dead = system.wait_job(job_id, {"dead_letter"})
    assert dead["attempts"] == 1
    page = pages("alice", path="#/dead-letters")
    dead_row = row(page, job_id)
    expect(dead_row).to_contain_text("RuntimeError")
    expect(dead_row).to_contain_text("failing on purpose, attempt 1")
    dead_row.get_by_role("button", name="Retry").click()
    page.get_by_role("dialog").get_by_role("button", name="Retry").click()
    expect(page.locator(".feedback")).to_contain_text("1 job queued again")
    expect(dead_row).to_have_count(0)
    done = system.wait_job(job_id, {"completed"})
    assert done["attempts"] == 2 and done["result"] == {"attempt": 2}
    page.goto(f"{system.url}/#/jobs/{job_id}")
    expect(page.locator(".head-status .badge[data-status]")).to_have_attribute(
        "data-status", "completed")
    expect(page.locator(".timeline li")).to_have_count(2)


def test_retry_a_selection_of_dead_letters(pages: Any, system: System) -> None:
    from playwright.sync_api import expect

    ids = [system.submit("alice", "fail_once", "acme", {"fail": 1}) for _ in range(2)]
    for job_id in ids:
        system.wait_job(job_id, {"dead_letter"})
    page = pages("alice", path="#/dead-letters")
    for job_id in ids:
        row(page, job_id).get_by_role("checkbox").check()
    page.get_by_role("button", name="Retry selected (2)").click()
    page.get_by_role("dialog").get_by_role("button", name="Retry").click()
    expect(page.locator(".feedback")).to_contain_text("2 jobs queued again")
    for job_id in ids:
        assert system.wait_job(job_id, {"completed"})["attempts"] == 2


def test_member_of_another_organization_sees_none_of_it(pages: Any, system: System) -> None:
    from playwright.sync_api import expect

    acme_id = system.jobs["acme_done"]
    page = pages("olga")
    expect(row(page, system.jobs["globex_done"])).to_be_visible()
    expect(page.locator("tr[data-job-id]")).to_have_count(1)
    expect(row(page, acme_id)).to_have_count(0)
    expect(page.locator("#f-org option")).to_have_text(["All organizations", "Globex (globex)"])

    # Live updates: an acme job runs while a globex job (the sentinel) appears.
    acme_live = system.submit("alice", "progress_steps", "acme", {"steps": 5, "delay": 0.1})
    system.wait_job(acme_live, {"completed"})
    sentinel = system.submit("olga", "progress_steps", "globex", {"steps": 5, "delay": 0.1})
    expect(row(page, sentinel).locator(".badge[data-status]")).to_have_attribute(
        "data-status", "completed")
    expect(row(page, acme_live)).to_have_count(0)
    assert "acme" not in page.locator("main").inner_text().lower()

    # Searching for the acme id, and opening its detail URL: not found.
    page.get_by_label("Search by id").fill(acme_id)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="No job matches this id")).to_be_visible()
    page.goto(f"{system.url}/#/jobs/{acme_id}")
    expect(page.get_by_role("heading", name="Job not found")).to_be_visible()
    assert acme_id not in page.locator(".detail").inner_text()

    # Metrics: only globex is offered; asking for acme shows the API's refusal.
    page.goto(f"{system.url}/#/metrics")
    expect(page.locator("#f-org option")).to_have_text(["Globex (globex)"])
    expect(page.locator(".metrics-grid")).not_to_be_empty()
    page.goto(f"{system.url}/#/metrics?org=acme")
    grid = page.locator(".metrics-grid")
    expect(grid.locator(".alert, .empty")).to_be_visible()
    assert "Acme Corp" not in grid.inner_text()
    with system.client("olga") as c:
        answer = c.get("/metrics", params={"organization": "acme"})
    assert answer.status_code in (403, 404)

    # Dead letters: none of acme's.
    page.goto(f"{system.url}/#/dead-letters")
    expect(page.get_by_role("heading", name="No dead-lettered jobs")).to_be_visible()


def test_hostile_strings_are_shown_as_text(pages: Any, system: System) -> None:
    from playwright.sync_api import expect

    hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    job_id = system.submit("alice", "progress_steps", "acme", {"steps": 1, "note": hostile})
    system.wait_job(job_id, {"completed"})
    page = pages("alice", path=f"#/jobs/{job_id}")
    params = page.locator(".detail pre").first
    expect(params).to_contain_text(json.dumps(hostile))
    assert page.evaluate("window.__pwned") is None
    assert page.locator(".detail img").count() == 0


def test_dependencies_link_both_ways_and_keyboard_reaches_them(
        pages: Any, system: System) -> None:
    from playwright.sync_api import expect

    first = system.jobs["acme_done"]
    with system.client("alice") as c:
        r = c.post("/jobs", json={"job_type": "progress_steps", "organization": "acme",
                                  "parameters": {"steps": 1, "after": first},
                                  "depends_on": [first]})
    assert r.status_code == 201, r.text
    second = r.json()["id"]
    page = pages("alice", path=f"#/jobs/{second}")
    up = page.locator(".deps").get_by_role("link", name=first[:8])
    expect(up).to_be_visible()
    up.focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{system.url}/#/jobs/{first}")
    down = page.locator(".deps").get_by_role("link", name=second[:8])
    expect(down).to_be_visible()
    # After a fresh load, Tab goes through the header first.
    page.reload()
    expect(page.locator(".head-status .badge[data-status]")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Dartwing\u00a0Jobs")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Jobs")


def test_sign_out_forgets_the_token(pages: Any, system: System) -> None:
    from playwright.sync_api import expect

    page = pages("alice")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_label("API token")).to_be_visible()
    page.get_by_label("API token").fill("dwj_not_a_token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not accepted")


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_screenshots_of_every_view(pages: Any, browser: Any, system: System,
                                   viewport: str) -> None:
    from playwright.sync_api import expect

    width, height = VIEWPORTS[viewport]
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{system.url}/")
        expect(page.get_by_label("API token")).to_be_visible()
        shoot(page, "signin")
    finally:
        context.close()

    running = system.submit("alice", "progress_steps", "acme", {"steps": 200, "delay": 0.1})
    page = pages("alice", viewport)
    expect(row(page, system.jobs["acme_done"])).to_be_visible()
    expect(row(page, running)).to_be_visible()
    shoot(page, "jobs")

    dead = system.submit("alice", "permanent", "acme")
    system.wait_job(dead, {"dead_letter"})
    page.goto(f"{system.url}/#/jobs/{dead}")
    expect(page.locator(".head-status .badge[data-status]")).to_have_attribute(
        "data-status", "dead_letter")
    expect(page.locator(".timeline li")).to_have_count(1)
    shoot(page, "job-detail")

    page.goto(f"{system.url}/#/metrics?org=acme")
    expect(page.locator(".metrics-grid .card, .metrics-grid .empty").first).to_be_visible()
    shoot(page, "metrics")

    page.goto(f"{system.url}/#/dead-letters")
    expect(row(page, dead)).to_be_visible()
    shoot(page, "dead-letters")

    page.goto(f"{system.url}/#/organizations")
    expect(page.locator('tr[data-org="acme"]')).to_be_visible()
    shoot(page, "organizations")

    fresh = pages("ian", viewport)
    expect(fresh.get_by_role("heading", name="No jobs yet")).to_be_visible()
    expect(fresh.locator(".empty pre")).to_contain_text(f"curl -X POST {system.url}/api/v1/jobs")
    shoot(fresh, "jobs-empty")
    with system.client("alice") as c:
        c.post(f"/jobs/{running}/cancel")
