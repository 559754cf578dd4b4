"""The operator CLI (SPEC 5.6), run in-process through ``main(argv)`` on both
backends, plus a real subprocess to prove the installed entry point.

What is pinned here is the contract scripts rely on: ids alone on stdout, the
HTTP API's shapes under ``--json``, exit 1 with exactly one
``error: <code>: <message>`` line, exit 2 for usage errors, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, update

from dartwing_jobs import Engine, Unauthorized, cli
from dartwing_jobs.cli import main
from dartwing_jobs.store.schema import job_execution_log, jobs
from tests.conftest import TEST_HANDLER_MODULES, World

ENTRY_POINT = Path(sys.executable).parent / "dartwing-jobs"
UUID_LEN = 36


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error_line(self) -> str:
        lines = self.err.splitlines()
        assert len(lines) == 1, f"expected one stderr line, got {self.err!r}"
        assert self.out == "", f"nothing on stdout when refused, got {self.out!r}"
        return lines[0]


Cli = Callable[..., Result]


@pytest.fixture(autouse=True)
def _test_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARTWING_JOBS_HANDLER_MODULES", TEST_HANDLER_MODULES)
    monkeypatch.delenv("DARTWING_JOBS_DATABASE_URL", raising=False)


@pytest.fixture
def run(database_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    def invoke(*argv: str) -> Result:
        capsys.readouterr()
        code = main(["--database-url", database_url, *argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Result(code, out, err)

    return invoke


def ok(result: Result) -> Result:
    assert result.code == 0, result.err
    return result


def refused(result: Result, code: str) -> str:
    assert result.code == 1, (result.out, result.err)
    line = result.error_line
    assert line.startswith(f"error: {code}: "), line
    return line


def set_status(engine: Engine, job_id: str, status: str, **values: Any) -> None:
    """Stands in for a worker, which does not exist yet."""
    with engine.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=status, **values))


# -- db ----------------------------------------------------------------------


def test_db_upgrade_is_idempotent(run: Cli) -> None:
    assert ok(run("db", "upgrade")).out.strip() == "database schema is up to date"
    assert ok(run("db", "upgrade", "--json")).json() == {"ok": True}


def test_db_upgrade_creates_a_fresh_sqlite_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'fresh.db'}"
    assert main(["--database-url", url, "db", "upgrade"]) == 0
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert main(["--database-url", url, "org", "create", "acme"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "acme"


# -- identity ------------------------------------------------------------------


def test_org_create(run: Cli, engine: Engine) -> None:
    assert ok(run("org", "create", "acme")).out == "acme\n"
    body = ok(run("org", "create", "globex", "--title", "Globex Corp", "--json")).json()
    assert body["name"] == "globex"
    assert body["title"] == "Globex Corp"
    assert {o["name"] for o in engine.list_organizations()} == {"acme", "globex"}
    refused(run("org", "create", "acme"), "conflict")


def test_user_person_and_membership(run: Cli, engine: Engine) -> None:
    ok(run("org", "create", "acme"))
    assert ok(run("user", "create", "root@example.com", "--system-manager")).out == (
        "root@example.com\n"
    )
    body = ok(run("user", "create", "alice@acme.test", "--full-name", "Alice", "--json")).json()
    assert body["id"] == "alice@acme.test"
    assert body["system_manager"] is False
    assert "System Manager" in engine.whoami("root@example.com")["roles"]
    assert engine.whoami("alice@acme.test")["full_name"] == "Alice"

    person_id = ok(run("person", "create", "Bob Builder")).out.strip()
    assert len(person_id) == UUID_LEN
    body = ok(run("person", "create", "Carol", "--json")).json()
    assert body["name"] == "Carol"
    assert body["user_id"] is None

    member_id = ok(run("member", "add", "acme", "alice@acme.test", "--role", "admin")).out
    assert member_id.strip().isdigit()
    assert engine.whoami("alice@acme.test")["organizations"] == [
        {"name": "acme", "role": "admin"}
    ]
    body = ok(run("member", "add", "acme", person_id, "--json")).json()
    assert body["role"] == "member"
    assert body["status"] == "Active"
    assert body["person_id"] == person_id

    body = ok(run("member", "set", "acme", "alice@acme.test", "--status", "Inactive",
                  "--role", "member", "--json")).json()
    assert (body["status"], body["role"]) == ("Inactive", "member")
    assert engine.whoami("alice@acme.test")["organizations"] == []
    assert ok(run("member", "set", "acme", "alice@acme.test", "--status", "Active")).out == (
        member_id
    )

    refused(run("member", "add", "acme", "alice@acme.test"), "conflict")
    refused(run("member", "add", "nowhere", "alice@acme.test"), "not_found")
    refused(run("member", "add", "acme", "ghost@example.com"), "not_found")
    refused(run("member", "set", "acme", "Carol", "--status", "Active"), "invalid_state")
    refused(run("user", "create", "not-an-email"), "validation_error")


def test_tokens(run: Cli, engine: Engine) -> None:
    ok(run("user", "create", "alice@example.com"))
    token = ok(run("token", "create", "alice@example.com")).out
    assert token.endswith("\n")
    token = token.strip()
    assert len(token.split()) == 1
    assert engine.authenticate(token) == "alice@example.com"

    body = ok(run("token", "create", "alice@example.com", "--expires-in-days", "2",
                  "--json")).json()
    assert set(body) == {"id", "user_id", "token"}
    assert engine.authenticate(body["token"]) == "alice@example.com"

    listing = ok(run("token", "list", "alice@example.com", "--json")).json()
    assert [t["id"] for t in listing["items"]] == [t["id"] for t in
                                                   engine.list_tokens("alice@example.com")]
    assert len(listing["items"]) == 2
    assert all("token" not in t for t in listing["items"])
    table = ok(run("token", "list", "alice@example.com")).out
    assert body["id"] in table
    assert body["token"] not in table

    assert ok(run("token", "revoke", body["id"])).out == ""
    with pytest.raises(Unauthorized):
        engine.authenticate(body["token"])
    line = refused(run("token", "revoke", body["id"]), "not_found")
    assert body["id"] in line
    refused(run("token", "create", "ghost@example.com"), "not_found")
    refused(run("token", "create", "alice@example.com", "--expires-in-days", "0"),
            "validation_error")


# -- job types -----------------------------------------------------------------


def test_job_type_add_and_list(run: Cli, engine: Engine) -> None:
    assert ok(run("job-type", "add", "report", "--handler", "tests.handlers:noop")).out == (
        "report\n"
    )
    body = ok(run(
        "job-type", "add", "bulk", "--handler", "tests.handlers:noop", "--priority", "low",
        "--timeout", "0", "--max-retries", "0", "--backoff", "2", "--backoff-max", "60",
        "--no-deduplicate", "--json",
    )).json()
    assert body == engine.job_types.get("bulk")
    assert (body["default_priority"], body["default_timeout"], body["max_retries"]) == (
        "low", 0, 0,
    )
    assert (body["retry_backoff"], body["retry_backoff_max"], body["deduplicate"]) == (
        2.0, 60.0, False,
    )
    assert engine.job_types.get("report")["deduplicate"] is True

    listing = ok(run("job-type", "list", "--json")).json()
    assert listing == {"items": engine.job_types.list()}
    table = ok(run("job-type", "list")).out
    assert "report" in table
    assert "tests.handlers:noop" in table

    refused(run("job-type", "add", "report", "--handler", "tests.handlers:noop"), "conflict")
    line = refused(run("job-type", "add", "evil", "--handler", "os:system"), "validation_error")
    assert "allowed handler modules" in line
    refused(run("job-type", "add", "nope", "--handler", "tests.handlers:NOT_CALLABLE"),
            "validation_error")
    refused(run("job-type", "add", "neg", "--handler", "tests.handlers:noop", "--timeout", "-1"),
            "validation_error")
    assert "evil" not in {t["name"] for t in engine.job_types.list()}


# -- submit ----------------------------------------------------------------------


def test_submit_prints_the_id_alone(run: Cli, world: World) -> None:
    out = ok(run("submit", "noop", "--org", "acme", "--params", '{"month": "2026-10"}')).out
    assert out.endswith("\n")
    job = world.engine.get_job(out.strip())
    assert (job.status, job.parameters, job.priority) == ("queued", {"month": "2026-10"},
                                                          "normal")
    assert job.submitted_by is None


def test_submit_json_is_the_job(run: Cli, world: World) -> None:
    parent = world.submit()
    body = ok(run(
        "submit", "noop", "--org", "acme", "--params", '{"a": 1}', "--priority", "critical",
        "--depends-on", parent.id, "--run-at", "2030-01-01T00:00:00Z", "--json",
    )).json()
    assert body == world.engine.get_job(body["id"]).to_dict()
    assert body["status"] == "pending"
    assert body["priority"] == "critical"
    assert body["depends_on"] == [parent.id]
    assert body["run_at"] == "2030-01-01T00:00:00Z"


def test_submit_refusals(run: Cli, world: World) -> None:
    line = refused(run("submit", "nosuch", "--org", "acme"), "validation_error")
    assert "unknown job type 'nosuch'" in line

    first = ok(run("submit", "noop", "--org", "acme", "--params", '{"x": 1}')).out.strip()
    line = refused(run("submit", "noop", "--org", "acme", "--params", '{"x": 1}'),
                   "duplicate_job")
    assert first in line
    # deduplicate=false types take the same submission again
    ok(run("submit", "nodedup", "--org", "acme", "--params", '{"x": 1}'))
    ok(run("submit", "nodedup", "--org", "acme", "--params", '{"x": 1}'))

    line = refused(run("submit", "noop", "--org", "acme", "--params", "{not json"),
                   "validation_error")
    assert "--params is not valid JSON" in line
    refused(run("submit", "noop", "--org", "acme", "--params", "[1, 2]"), "validation_error")
    refused(run("submit", "noop", "--org", "acme", "--params", '{"x": NaN}'), "validation_error")
    refused(run("submit", "noop", "--org", "nowhere"), "validation_error")
    refused(run("submit", "noop", "--org", "acme", "--run-at", "tomorrow"), "validation_error")
    refused(run("submit", "noop", "--org", "acme", "--depends-on", str(uuid.uuid4())),
            "validation_error")
    assert len(world.engine.list_jobs(job_type="noop")[0]) == 1


# -- submit --wait ---------------------------------------------------------------


@pytest.fixture
def fast_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "WAIT_POLL_SECONDS", 0.01)


class Driver(threading.Thread):
    """Plays the worker's part from another thread: waits (by condition) for the
    CLI's job to exist, then moves it along with ``act``."""

    def __init__(self, engine: Engine, job_type: str, act: Callable[[str], object]) -> None:
        super().__init__(daemon=True)
        self.engine, self.job_type, self.act = engine, job_type, act
        self.errors: list[BaseException] = []
        self.start()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                found, _ = self.engine.list_jobs(job_type=self.job_type)
                if found:
                    self.act(found[0].id)
                    return
                time.sleep(0.005)
            raise TimeoutError("the CLI never submitted its job")
        except BaseException as exc:  # surfaced by finish() in the test's thread
            self.errors.append(exc)

    def finish(self) -> None:
        self.join(timeout=30)
        assert not self.is_alive()
        assert not self.errors, self.errors


@pytest.mark.usefixtures("fast_wait")
def test_submit_wait_exits_0_when_the_job_completes(run: Cli, world: World) -> None:
    def complete(job_id: str) -> None:
        set_status(world.engine, job_id, "running", progress=40.0, progress_message="[b]half")
        set_status(world.engine, job_id, "completed", progress=100.0, result={"ok": True})

    thread = Driver(world.engine, "noop", complete)
    result = run("submit", "noop", "--org", "acme", "--wait")
    thread.finish()
    assert result.code == 0, result.err
    job_id = result.out.strip()
    assert len(job_id) == UUID_LEN
    assert world.engine.get_job(job_id).status == "completed"


@pytest.mark.usefixtures("fast_wait")
def test_submit_wait_json_prints_the_final_job(run: Cli, world: World) -> None:
    thread = Driver(world.engine, "noop", lambda job_id: set_status(
        world.engine, job_id, "completed", progress=100.0, result={"pages": 3}))
    result = run("submit", "noop", "--org", "acme", "--wait", "--json")
    thread.finish()
    assert result.code == 0, result.err
    body = result.json()
    assert body["status"] == "completed"
    assert body["result"] == {"pages": 3}
    assert body == world.engine.get_job(body["id"]).to_dict()


@pytest.mark.usefixtures("fast_wait")
def test_submit_wait_exits_1_when_the_job_is_canceled(run: Cli, world: World) -> None:
    thread = Driver(world.engine, "noop", lambda job_id: world.engine.cancel_job(job_id))
    result = run("submit", "noop", "--org", "acme", "--wait")
    thread.finish()
    assert result.code == 1
    job_id = result.out.strip()  # the id still came first, on stdout
    assert len(job_id) == UUID_LEN
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: job_canceled: job {job_id} ended canceled: "
                      "canceled: canceled by request"]


# -- jobs ------------------------------------------------------------------------


def test_jobs_list(run: Cli, world: World) -> None:
    made = [world.submit() for _ in range(3)]
    other = world.submit(organization="globex")
    extra = world.submit(job_type="nodedup")
    world.engine.cancel_job(made[0].id)

    body = ok(run("jobs", "list", "--json")).json()
    assert set(body) == {"items", "next_cursor"}
    assert body["next_cursor"] is None
    assert {j["id"] for j in body["items"]} == {j.id for j in [*made, other, extra]}
    assert body["items"][0] == world.engine.get_job(body["items"][0]["id"]).to_dict()

    acme = ok(run("jobs", "list", "--org", "acme", "--json")).json()["items"]
    assert other.id not in {j["id"] for j in acme}
    queued = ok(run("jobs", "list", "--status", "queued", "--type", "noop", "--json")).json()
    assert {j["id"] for j in queued["items"]} == {made[1].id, made[2].id, other.id}
    both = ok(run("jobs", "list", "--status", "queued", "--status", "canceled", "--org",
                  "acme", "--type", "noop", "--json")).json()
    assert {j["id"] for j in both["items"]} == {j.id for j in made}

    page = ok(run("jobs", "list", "--limit", "2", "--json")).json()
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    rest = ok(run("jobs", "list", "--limit", "200", "--cursor", page["next_cursor"],
                  "--json")).json()
    assert len(rest["items"]) == 3
    assert rest["next_cursor"] is None

    table = ok(run("jobs", "list")).out
    for job in [*made, other, extra]:
        assert job.id in table
    assert "canceled" in table

    refused(run("jobs", "list", "--limit", "0"), "validation_error")
    refused(run("jobs", "list", "--limit", "201"), "validation_error")
    refused(run("jobs", "list", "--cursor", "garbage!"), "validation_error")


def test_jobs_show(run: Cli, world: World) -> None:
    job = world.submit(parameters={"label": "[bold]not markup[/bold]", "q": "x' OR '1'='1"})
    assert ok(run("jobs", "show", job.id, "--json")).json() == world.engine.get_job(
        job.id).to_dict()
    # --json given before the subcommand is the same thing
    assert ok(run("--json", "jobs", "show", job.id)).json()["id"] == job.id
    table = ok(run("jobs", "show", job.id)).out
    assert job.id in table
    assert "queued" in table
    assert "[bold]not markup[/bold]" in table  # data is printed as data
    assert "x' OR '1'='1" in table

    refused(run("jobs", "show", str(uuid.uuid4())), "not_found")
    refused(run("jobs", "show", "x" * 100), "not_found")


def test_jobs_cancel_and_retry(run: Cli, world: World) -> None:
    job = world.submit()
    body = ok(run("jobs", "cancel", job.id, "--json")).json()
    assert body["status"] == "canceled"
    assert body == world.engine.get_job(job.id).to_dict()
    line = refused(run("jobs", "cancel", job.id), "invalid_state")
    assert "canceled" in line

    assert "queued" in ok(run("jobs", "retry", job.id)).out
    assert world.engine.get_job(job.id).status == "queued"
    refused(run("jobs", "retry", job.id), "invalid_state")

    set_status(world.engine, job.id, "running")
    body = ok(run("jobs", "cancel", job.id, "--json")).json()
    assert (body["status"], body["cancel_requested"]) == ("running", True)

    set_status(world.engine, job.id, "completed", progress=100.0)
    line = refused(run("jobs", "cancel", job.id), "invalid_state")
    assert "completed" in line
    refused(run("jobs", "retry", job.id), "invalid_state")

    set_status(world.engine, job.id, "dead_letter", error_type="ValueError",
               error_message="boom")
    assert ok(run("jobs", "retry", job.id, "--json")).json()["status"] == "queued"

    refused(run("jobs", "cancel", str(uuid.uuid4())), "not_found")
    refused(run("jobs", "retry", str(uuid.uuid4())), "not_found")


def test_jobs_retry_of_a_job_whose_twin_is_active_is_a_duplicate(
    run: Cli, world: World
) -> None:
    job = world.submit(parameters={"same": 1})
    world.engine.cancel_job(job.id)
    twin = world.submit(parameters={"same": 1})
    line = refused(run("jobs", "retry", job.id), "duplicate_job")
    assert twin.id in line


def test_jobs_logs(run: Cli, world: World) -> None:
    job = world.submit()
    assert ok(run("jobs", "logs", job.id, "--json")).json() == {"items": []}
    with world.engine.store.transaction() as conn:
        conn.execute(insert(job_execution_log).values(
            job_id=job.id, organization="acme", job_type="noop", attempt=1,
            worker_id="worker-7", started_at=1_700_000_000.0, finished_at=1_700_000_001.5,
            duration_ms=1500.0, outcome="failed", error_type="ValueError",
            error_message="boom",
        ))
    body = ok(run("jobs", "logs", job.id, "--json")).json()
    assert body == {"items": world.engine.job_logs(job.id)}
    assert body["items"][0]["error"] == {"type": "ValueError", "message": "boom"}
    table = ok(run("jobs", "logs", job.id)).out
    assert "worker-7" in table
    assert "failed" in table
    refused(run("jobs", "logs", str(uuid.uuid4())), "not_found")


# -- failures that are not the engine's refusals -----------------------------------


def test_unreachable_database_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--database-url", "postgresql://nobody@127.0.0.1:1/none", "jobs", "list"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: internal: ")


def test_bad_configuration_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert main(["jobs", "list", "--database-url", "mysql://x/y"]) == 1
    assert capsys.readouterr().err.startswith("error: configuration: unsupported database URL")
    monkeypatch.setenv("DARTWING_JOBS_LEASE_SECONDS", "-1")
    assert main(["--database-url", f"sqlite:///{tmp_path / 'x.db'}", "jobs", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: configuration: DARTWING_JOBS_LEASE_SECONDS")


def test_database_url_comes_from_the_environment(
    database_url: str, world: World, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = world.submit()
    monkeypatch.setenv("DARTWING_JOBS_DATABASE_URL", database_url)
    capsys.readouterr()
    assert main(["jobs", "show", job.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job.id


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["jobs"],
        ["bogus"],
        ["jobs", "show"],
        ["jobs", "list", "--limit", "many"],
        ["jobs", "list", "--status", "sleeping"],
        ["submit", "noop"],
        ["submit", "noop", "--org", "acme", "--priority", "urgent"],
        ["member", "set", "acme", "a@b.c"],
        ["member", "add", "acme", "a@b.c", "--role", "owner"],
        ["job-type", "add", "x"],
        ["job-type", "add", "x", "--handler", "m:f", "--timeout", "soon"],
        ["token", "create"],
        ["org", "create", "acme", "--unknown"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage:" in err
    assert "Traceback" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("db", "org", "user", "person", "member", "token", "job-type", "submit", "jobs"):
        assert name in out
    assert main(["jobs", "list", "--help"]) == 0
    assert "--status" in capsys.readouterr().out


# -- the installed entry point -------------------------------------------------------


@pytest.fixture
def entry_point(database_url: str) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    env = {**os.environ, "DARTWING_JOBS_DATABASE_URL": database_url,
           "DARTWING_JOBS_HANDLER_MODULES": TEST_HANDLER_MODULES}

    def invoke(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ENTRY_POINT), *argv], capture_output=True, text=True,
                              env=env, cwd=Path(__file__).parents[2], timeout=60, check=False)

    yield invoke


def test_entry_point_subprocess(
    entry_point: Callable[..., subprocess.CompletedProcess[str]], world: World
) -> None:
    done = entry_point("submit", "noop", "--org", "acme", "--params", '{"via": "subprocess"}')
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert done.stdout == job_id + "\n"
    assert world.engine.get_job(job_id).parameters == {"via": "subprocess"}

    again = entry_point("submit", "noop", "--org", "acme", "--params", '{"via": "subprocess"}')
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.splitlines() == [
        "error: duplicate_job: an identical job is already pending, queued, running or "
        f"retrying (existing_job_id: {job_id})"
    ]

    unreachable = entry_point("--database-url", "postgresql://nobody@127.0.0.1:1/none",
                              "jobs", "list")
    assert unreachable.returncode == 1
    assert len(unreachable.stderr.splitlines()) == 1
    assert "Traceback" not in unreachable.stderr

    usage = entry_point("jobs", "frobnicate")
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
