"""Helpers shared by the HTTP API tests: a test client per world, a token per
user, and direct store writes that stand in for workers (which put jobs into
states such as ``running`` or ``dead_letter`` that no API call reaches)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert, update

from dartwing_jobs import Engine
from dartwing_jobs.api import create_app
from dartwing_jobs.store.schema import job_execution_log, jobs
from tests.conftest import World

USERS = (World.SM, World.MEMBER, World.ADMIN, World.INACTIVE, World.OTHER, World.NOBODY)
API = "/api/v1"


class Api:
    """A TestClient plus each world user's bearer token."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # raise_server_exceptions=False: a 500 must be observed as a response.
        self.client = TestClient(create_app(engine), raise_server_exceptions=False)
        self.tokens = {u: engine.create_token(u)["token"] for u in USERS}

    def headers(self, user: str | None) -> dict[str, str]:
        return {} if user is None else {"Authorization": f"Bearer {self.tokens[user]}"}

    def call(self, method: str, path: str, user: str | None = World.SM, **kw: Any) -> Any:
        headers = {**self.headers(user), **kw.pop("headers", {})}
        return self.client.request(method, API + path, headers=headers, **kw)

    def get(self, path: str, user: str | None = World.SM, **kw: Any) -> Any:
        return self.call("GET", path, user, **kw)

    def post(self, path: str, user: str | None = World.SM, **kw: Any) -> Any:
        return self.call("POST", path, user, **kw)

    def patch(self, path: str, user: str | None = World.SM, **kw: Any) -> Any:
        return self.call("PATCH", path, user, **kw)


def set_job(engine: Engine, job_id: str, **values: Any) -> None:
    with engine.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))


def add_log(engine: Engine, job_id: str, organization: str, attempt: int = 1,
            outcome: str = "failed") -> None:
    with engine.store.transaction() as conn:
        conn.execute(insert(job_execution_log).values(
            job_id=job_id, organization=organization, job_type="noop", attempt=attempt,
            worker_id="w1", started_at=1_700_000_000.0, finished_at=1_700_000_001.5,
            duration_ms=1500.0, outcome=outcome, error_type="RuntimeError",
            error_message="boom",
        ))


def count_jobs(engine: Engine) -> int:
    from sqlalchemy import func, select

    with engine.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs)).scalar_one())


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    detail: dict[str, Any] = body["error"]
    return detail
