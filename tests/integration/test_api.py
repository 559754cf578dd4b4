"""Every HTTP route of SPEC 5.3: its happy path and each error code it can give,
on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest

from dartwing_jobs import Engine
from tests.conftest import World

from .api_support import Api, add_log, assert_error, count_jobs, set_job

JOB_KEYS = {
    "id", "job_type", "organization", "status", "priority", "parameters", "job_hash",
    "attempts", "max_retries", "timeout_seconds", "progress", "progress_message",
    "cancel_requested", "depends_on", "run_at", "next_retry_at", "created_at", "started_at",
    "completed_at", "result", "error", "submitted_by",
}


@pytest.fixture
def api(world: World) -> Api:
    return Api(world.engine)


def submit(api: Api, user: str = World.MEMBER, **body: Any) -> Any:
    body.setdefault("job_type", "noop")
    body.setdefault("organization", "acme")
    body.setdefault("parameters", {"n": uuid.uuid4().hex})
    return api.post("/jobs", user, json=body)


# -- authentication ------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer dwj_nope_nope"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "bearer"},
])
def test_missing_or_bad_token_is_401(api: Api, headers: dict[str, str]) -> None:
    response = api.get("/me", None, headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_revoked_and_expired_tokens_are_401(api: Api, engine: Engine) -> None:
    issued = engine.create_token(World.MEMBER)
    auth = {"Authorization": f"Bearer {issued['token']}"}
    assert api.get("/me", None, headers=auth).status_code == 200
    engine.revoke_token(issued["id"])
    assert_error(api.get("/me", None, headers=auth), 401, "unauthorized")

    from sqlalchemy import update

    from dartwing_jobs.store.schema import api_tokens

    issued = engine.create_token(World.MEMBER, expires_in_days=1)
    with engine.store.transaction() as conn:
        conn.execute(update(api_tokens).where(api_tokens.c.id == issued["id"])
                     .values(expires_at=1.0))
    assert_error(api.get("/me", None, headers={"Authorization": f"Bearer {issued['token']}"}),
                 401, "unauthorized")


def test_cookies_do_not_authenticate(api: Api) -> None:
    api.client.cookies.set("Authorization", f"Bearer {api.tokens[World.SM]}")
    api.client.cookies.set("token", api.tokens[World.SM])
    assert_error(api.get("/me", None), 401, "unauthorized")


# -- POST /jobs ------------------------------------------------------------------


def test_submit_returns_201_and_the_job_json(api: Api) -> None:
    response = submit(api, parameters={"month": "2026-10"}, priority="high")
    assert response.status_code == 201, response.text
    job = response.json()
    assert set(job) >= JOB_KEYS
    assert job["status"] == "queued"
    assert job["priority"] == "high"
    assert job["parameters"] == {"month": "2026-10"}
    assert job["submitted_by"] == World.MEMBER
    assert job["organization"] == "acme"
    assert job["attempts"] == 0
    assert job["created_at"].endswith("Z")
    assert api.get(f"/jobs/{job['id']}", World.MEMBER).json() == job


def test_submit_with_dependency_and_run_at(api: Api) -> None:
    parent = submit(api).json()
    child = submit(api, depends_on=[parent["id"]], run_at="2030-01-01T00:00:00Z")
    assert child.status_code == 201, child.text
    body = child.json()
    assert body["status"] == "pending"
    assert body["depends_on"] == [parent["id"]]
    assert body["run_at"] == "2030-01-01T00:00:00Z"


def test_submit_without_parameters_is_an_empty_object(api: Api) -> None:
    response = api.post("/jobs", World.MEMBER, json={"job_type": "noop", "organization": "acme"})
    assert response.status_code == 201
    assert response.json()["parameters"] == {}


def test_duplicate_submission_is_409_with_the_existing_id(api: Api) -> None:
    first = submit(api, parameters={"x": 1}).json()
    response = submit(api, parameters={"x": 1})
    error = assert_error(response, 409, "duplicate_job")
    assert error["existing_job_id"] == first["id"]


def test_submit_to_a_foreign_org_is_403(api: Api) -> None:
    assert_error(submit(api, organization="globex"), 403, "forbidden")


@pytest.mark.parametrize("body", [
    {"job_type": "no_such_type", "organization": "acme"},
    {"job_type": "noop", "organization": "acme", "priority": "urgent"},
    {"job_type": "noop", "organization": "acme", "parameters": [1, 2]},
    {"job_type": "noop", "organization": "acme", "parameters": "x"},
    {"job_type": "noop", "organization": "acme", "parameters": {"a": "nul\u0000"}},
    {"job_type": "noop", "organization": "acme", "depends_on": "not-a-list"},
    {"job_type": "noop", "organization": "acme", "depends_on": [str(uuid.uuid4())]},
    {"job_type": "noop", "organization": "acme", "run_at": "yesterday"},
    {"job_type": "noop", "organization": "acme", "run_at": "2030-01-01T00:00:00"},
    {"job_type": 5, "organization": "acme"},
    {"organization": "acme"},
    {"job_type": "noop"},
    {},
])
def test_submit_validation_errors_are_422(api: Api, engine: Engine, body: Any) -> None:
    before = count_jobs(engine)
    assert_error(api.post("/jobs", World.MEMBER, json=body), 422, "validation_error")
    assert count_jobs(engine) == before


def test_submit_with_nan_or_infinity_is_422(api: Api, engine: Engine) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = '{"job_type": "noop", "organization": "acme", "parameters": {"x": ' + literal + "}}"
        response = api.post("/jobs", World.MEMBER, content=raw,
                            headers={"Content-Type": "application/json"})
        assert_error(response, 422, "validation_error")
    assert count_jobs(engine) == 0


def test_disabled_job_type_is_422(api: Api, engine: Engine) -> None:
    engine.job_types.disable("noop")
    assert_error(submit(api), 422, "validation_error")


def test_dependency_in_another_org_is_422(api: Api, world: World) -> None:
    foreign = world.submit(organization="globex")
    error = assert_error(submit(api, depends_on=[foreign.id]), 422, "validation_error")
    assert "globex" not in str(error)


def test_oversized_parameters_are_413(world: World, database_url: str) -> None:
    engine = Engine(database_url, handler_modules="tests.handlers", max_parameters_bytes=1000)
    try:
        api = Api(engine)
        assert_error(submit(api, parameters={"blob": "x" * 1200}), 413, "payload_too_large")
        assert count_jobs(engine) == 0
    finally:
        engine.close()


# -- GET /jobs ------------------------------------------------------------------


def test_list_filters_and_paginates(api: Api, world: World) -> None:
    ids = [submit(api).json()["id"] for _ in range(5)]
    other_type = submit(api, job_type="nodedup").json()
    world.submit(organization="globex")
    canceled = api.post(f"/jobs/{ids[0]}/cancel", World.MEMBER).json()
    assert canceled["status"] == "canceled"

    everything = api.get("/jobs", World.SM).json()
    assert len(everything["items"]) == 7 and everything["next_cursor"] is None

    mine = api.get("/jobs", World.MEMBER, params={"organization": "acme"}).json()
    assert {j["id"] for j in mine["items"]} == {*ids, other_type["id"]}

    by_type = api.get("/jobs", World.MEMBER, params={"job_type": "nodedup"}).json()
    assert [j["id"] for j in by_type["items"]] == [other_type["id"]]

    by_status = api.get("/jobs", World.MEMBER,
                        params=[("status", "canceled"), ("status", "completed")]).json()
    assert [j["id"] for j in by_status["items"]] == [ids[0]]
    two_statuses = api.get("/jobs", World.MEMBER,
                           params=[("status", "canceled"), ("status", "queued")]).json()
    assert len(two_statuses["items"]) == 6

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/jobs", World.MEMBER, params=params).json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 6 and len(set(seen)) == 6


@pytest.mark.parametrize("params", [
    {"limit": 201}, {"limit": 0}, {"limit": "many"}, {"status": "finished"},
    {"cursor": "not-a-cursor"},
])
def test_list_bad_query_is_422(api: Api, params: dict[str, Any]) -> None:
    assert_error(api.get("/jobs", World.MEMBER, params=params), 422, "validation_error")


def test_list_limit_200_is_accepted(api: Api) -> None:
    assert api.get("/jobs", World.MEMBER, params={"limit": 200}).status_code == 200


def test_list_foreign_org_filter_is_403(api: Api) -> None:
    assert_error(api.get("/jobs", World.MEMBER, params={"organization": "globex"}),
                 403, "forbidden")


# -- GET /jobs/{id} -----------------------------------------------------------------


def test_get_unknown_job_is_404(api: Api) -> None:
    assert_error(api.get(f"/jobs/{uuid.uuid4()}", World.SM), 404, "not_found")
    assert_error(api.get("/jobs/" + "x" * 300, World.SM), 404, "not_found")


# -- cancel / retry ------------------------------------------------------------------


def test_cancel_queued_job(api: Api) -> None:
    job = submit(api).json()
    response = api.post(f"/jobs/{job['id']}/cancel", World.MEMBER)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"


def test_cancel_running_job_requests_cancellation(api: Api, engine: Engine) -> None:
    job = submit(api).json()
    set_job(engine, job["id"], status="running", attempts=1, started_at=1_700_000_000.0,
            lease_expires_at=4_000_000_000.0, worker_id="w1")
    body = api.post(f"/jobs/{job['id']}/cancel", World.ADMIN).json()
    assert body["status"] == "running"
    assert body["cancel_requested"] is True


def test_cancel_terminal_job_is_409_invalid_state(api: Api, engine: Engine) -> None:
    job = submit(api).json()
    set_job(engine, job["id"], status="completed", completed_at=1_700_000_000.0)
    error = assert_error(api.post(f"/jobs/{job['id']}/cancel", World.MEMBER), 409,
                         "invalid_state")
    assert error["status"] == "completed"


def test_cancel_and_retry_by_a_plain_member_of_someone_elses_job_is_403(api: Api) -> None:
    job = submit(api, user=World.ADMIN).json()
    assert_error(api.post(f"/jobs/{job['id']}/cancel", World.MEMBER), 403, "forbidden")
    api.post(f"/jobs/{job['id']}/cancel", World.ADMIN)
    assert_error(api.post(f"/jobs/{job['id']}/retry", World.MEMBER), 403, "forbidden")


def test_retry_dead_letter_job(api: Api, engine: Engine) -> None:
    job = submit(api).json()
    set_job(engine, job["id"], status="dead_letter", attempts=3, error_type="RuntimeError",
            error_message="boom", completed_at=1_700_000_000.0)
    dead = api.get(f"/jobs/{job['id']}", World.MEMBER).json()
    assert dead["error"] == {"type": "RuntimeError", "message": "boom"}
    response = api.post(f"/jobs/{job['id']}/retry", World.MEMBER)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued"


def test_retry_active_job_is_409_invalid_state(api: Api) -> None:
    job = submit(api).json()
    error = assert_error(api.post(f"/jobs/{job['id']}/retry", World.SM), 409, "invalid_state")
    assert error["status"] == "queued"


def test_cancel_and_retry_unknown_job_are_404(api: Api) -> None:
    missing = str(uuid.uuid4())
    assert_error(api.post(f"/jobs/{missing}/cancel", World.SM), 404, "not_found")
    assert_error(api.post(f"/jobs/{missing}/retry", World.SM), 404, "not_found")


# -- logs ---------------------------------------------------------------------------


def test_logs(api: Api, engine: Engine) -> None:
    job = submit(api).json()
    assert api.get(f"/jobs/{job['id']}/logs", World.MEMBER).json() == {"items": []}
    add_log(engine, job["id"], "acme", attempt=1)
    add_log(engine, job["id"], "acme", attempt=2, outcome="completed")
    items = api.get(f"/jobs/{job['id']}/logs", World.MEMBER).json()["items"]
    assert [i["attempt"] for i in items] == [1, 2]
    assert items[0]["organization"] == "acme"
    assert items[0]["error"] == {"type": "RuntimeError", "message": "boom"}
    assert_error(api.get(f"/jobs/{uuid.uuid4()}/logs", World.SM), 404, "not_found")


# -- job types -----------------------------------------------------------------------


def test_job_types_read_register_update(api: Api) -> None:
    names = [t["name"] for t in api.get("/job-types", World.MEMBER).json()["items"]]
    assert {"noop", "nodedup"} <= set(names)

    created = api.post("/job-types", World.SM, json={
        "name": "report", "handler": "tests.handlers:noop", "default_priority": "high",
        "default_timeout": 0, "max_retries": 0,
    })
    assert created.status_code == 201, created.text
    assert created.json()["default_timeout"] == 0
    assert created.json()["max_retries"] == 0
    assert created.json()["default_priority"] == "high"

    changed = api.patch("/job-types/report", World.SM, json={"enabled": False, "max_retries": 2})
    assert changed.status_code == 200, changed.text
    assert changed.json()["enabled"] is False
    assert changed.json()["max_retries"] == 2
    assert changed.json()["default_priority"] == "high"


def test_job_type_errors(api: Api) -> None:
    body = {"name": "report", "handler": "tests.handlers:noop"}
    assert_error(api.post("/job-types", World.MEMBER, json=body), 403, "forbidden")
    assert_error(api.post("/job-types", World.ADMIN, json=body), 403, "forbidden")
    assert api.post("/job-types", World.SM, json=body).status_code == 201
    assert_error(api.post("/job-types", World.SM, json=body), 409, "conflict")
    for bad in (
        {"name": "x1", "handler": "os:system"},
        {"name": "x2", "handler": "tests.handlers:NOT_CALLABLE"},
        {"name": "x3", "handler": "not a path"},
        {"name": "x4", "handler": "tests.handlers:noop", "default_timeout": -1},
        {"name": "x5", "handler": "tests.handlers:noop", "default_priority": "urgent"},
        {"name": "x6", "handler": "tests.handlers:noop", "unknown": 1},
    ):
        assert_error(api.post("/job-types", World.SM, json=bad), 422, "validation_error")

    assert_error(api.patch("/job-types/report", World.MEMBER, json={"enabled": False}),
                 403, "forbidden")
    assert_error(api.patch("/job-types/nope", World.SM, json={"enabled": False}),
                 404, "not_found")
    assert_error(api.patch("/job-types/report", World.SM, json={"max_retries": -1}),
                 422, "validation_error")
    assert_error(api.patch("/job-types/report", World.SM, json={"name": "renamed"}),
                 422, "validation_error")


# -- identity ---------------------------------------------------------------------------


def test_organizations(api: Api) -> None:
    assert [o["name"] for o in api.get("/organizations", World.SM).json()["items"]] == [
        "acme", "globex"]
    items = api.get("/organizations", World.MEMBER).json()["items"]
    assert items == [{"name": "acme", "title": "Acme", "created_at": items[0]["created_at"]}]


def test_me(api: Api) -> None:
    me = api.get("/me", World.ADMIN).json()
    assert me["id"] == World.ADMIN
    assert me["roles"] == []
    assert me["organizations"] == [{"name": "acme", "role": "admin"}]
    assert api.get("/me", World.SM).json()["roles"] == ["System Manager"]


# -- operations -------------------------------------------------------------------------


def test_healthz(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "database": "ok"}


def test_healthz_reports_a_dead_database(tmp_path: Any) -> None:
    engine = Engine(f"sqlite:///{tmp_path}/gone/x.db")
    try:
        api_client = Api.__new__(Api)
        from fastapi.testclient import TestClient

        from dartwing_jobs.api import create_app

        api_client.client = TestClient(create_app(engine), raise_server_exceptions=False)
        (tmp_path / "gone" / "x.db").unlink(missing_ok=True)
        (tmp_path / "gone").rmdir()
        response = api_client.client.get("/healthz")
        assert_error(response, 503, "unavailable")
    finally:
        engine.close()


def test_prometheus_metrics(api: Api, world: World) -> None:
    submit(api, priority="high")
    submit(api)
    world.submit(organization="globex")
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'dartwing_jobs_jobs{priority="high",status="queued"} 1.0' in text
    assert 'dartwing_jobs_jobs{priority="normal",status="queued"} 2.0' in text
    assert "dartwing_jobs_oldest_due_seconds" in text
    assert "dartwing_jobs_attempt_duration_seconds_count 0.0" in text


def test_prometheus_attempts_and_durations(api: Api, engine: Engine) -> None:
    job = submit(api).json()
    add_log(engine, job["id"], "acme", attempt=1, outcome="failed")  # 1.5 s
    add_log(engine, job["id"], "acme", attempt=2, outcome="completed")
    text = api.client.get("/metrics").text
    assert 'dartwing_jobs_attempts{outcome="failed"} 1.0' in text
    assert 'dartwing_jobs_attempts{outcome="completed"} 1.0' in text
    assert 'dartwing_jobs_attempt_duration_seconds_bucket{le="1.0"} 0.0' in text
    assert 'dartwing_jobs_attempt_duration_seconds_bucket{le="5.0"} 2.0' in text
    assert 'dartwing_jobs_attempt_duration_seconds_bucket{le="+Inf"} 2.0' in text
    assert "dartwing_jobs_attempt_duration_seconds_sum 3.0" in text


def test_openapi_and_docs(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel",
                 "/api/v1/jobs/{job_id}/retry", "/api/v1/jobs/{job_id}/logs",
                 "/api/v1/job-types", "/api/v1/job-types/{name}", "/api/v1/organizations",
                 "/api/v1/me", "/healthz", "/metrics"):
        assert path in paths, path
    submit_schema = spec["components"]["schemas"]["SubmitJob"]
    assert submit_schema["additionalProperties"] is False
    assert "422" in paths["/api/v1/jobs"]["post"]["responses"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()
    docs = api.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_unknown_route_and_method_use_the_error_shape(api: Api) -> None:
    assert_error(api.get("/nope", World.SM), 404, "not_found")
    assert_error(api.call("DELETE", "/me", World.SM), 405, "method_not_allowed")


def test_unexpected_error_is_an_opaque_500_with_request_id(
    api: Api, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(engine, "whoami", broken)
    with caplog.at_level(logging.ERROR, logger="dartwing_jobs.api"):
        response = api.get("/me", World.MEMBER)
    error = assert_error(response, 500, "internal")
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    assert error["request_id"] in caplog.text
    assert "hunter2" in caplog.text  # the operator's log keeps the details


def test_every_response_carries_a_request_id(api: Api) -> None:
    first = api.get("/me", World.MEMBER).headers["X-Request-ID"]
    second = api.get("/me", World.MEMBER).headers["X-Request-ID"]
    assert first and second and first != second


# -- a real server ------------------------------------------------------------------------

_SERVE = """
import sys
from dartwing_jobs import Engine
from dartwing_jobs.server import serve

class Probe:
    def start(self): print("service started", flush=True)
    def stop(self): print("service stopped", flush=True)

serve(Engine(sys.argv[1], handler_modules="tests.handlers"), "127.0.0.1", 0, 0,
      extra_services=[Probe()], log_level="warning")
"""


@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_serve_prints_its_url_answers_and_stops_cleanly(
        world: World, database_url: str, stop_signal: str) -> None:
    import re
    import signal
    import subprocess
    import sys

    import httpx

    token = world.engine.create_token(World.MEMBER)["token"]
    job = world.submit(actor=World.MEMBER)
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, database_url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].strip() == "service started", lines
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", lines[1])
        assert match, lines
        url = match.group(0).rstrip("/")
        for _ in range(100):
            try:
                health = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert health.json() == {"status": "ok", "database": "ok"}
        listed = httpx.get(f"{url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert [j["id"] for j in listed.json()["items"]] == [job.id]
        proc.send_signal(getattr(signal, stop_signal))
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "service stopped" in out
        assert "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
