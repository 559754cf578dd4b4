"""PostgreSQL's pool pings a connection only after it sat idle a while (a ping
on every checkout was one round trip in four of a submission). A connection
whose server session ended while it was idle is replaced before use."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from dartwing_jobs.store import postgres
from tests.conftest import PG_ADMIN_URL, World


@pytest.fixture
def pg_world(world: World) -> World:
    if world.engine.store.backend != "postgresql":
        pytest.skip("the pool's ping is PostgreSQL's (SQLite opens a file)")
    return world


def backend_pid(world: World) -> int:
    with world.engine.store.read() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_session_ended_while_idle_is_replaced_before_use(
        pg_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "PING_AFTER_IDLE_SECONDS", 0.0)
    pid = backend_pid(pg_world)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    job = pg_world.submit()  # no error: the dead connection was pinged and replaced
    assert pg_world.engine.get_job(job.id).status == "queued"
    assert backend_pid(pg_world) != pid


def test_busy_connections_are_not_pinged(pg_world: World,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "PING_AFTER_IDLE_SECONDS", 3600.0)
    pings: list[str] = []
    real = postgres._ping

    def counting(dbapi_conn: object) -> None:
        pings.append("ping")
        real(dbapi_conn)

    monkeypatch.setattr(postgres, "_ping", counting)
    for n in range(5):
        pg_world.submit(parameters={"n": n})
    assert pings == []
    monkeypatch.setattr(postgres, "PING_AFTER_IDLE_SECONDS", 0.0)
    pg_world.submit(parameters={"n": "idle"})
    assert pings


def test_a_session_the_server_ended_is_replaced_even_when_just_used(
        pg_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server says goodbye before it closes a session: a connection with
    something to read although nothing was asked is pinged, however recent."""
    monkeypatch.setattr(postgres, "PING_AFTER_IDLE_SECONDS", 3600.0)
    pid = backend_pid(pg_world)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits for the exit
    job = pg_world.submit()
    assert pg_world.engine.get_job(job.id).status == "queued"
    assert backend_pid(pg_world) != pid
