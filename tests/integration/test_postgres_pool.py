"""PostgreSQL's pool pings a connection at checkout: one whose server session
ended (an administrator's ``pg_terminate_backend``, a restart) is replaced
before use, however recently it was used."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from tests.conftest import PG_ADMIN_URL, World


@pytest.fixture
def pg_world(world: World) -> World:
    if world.engine.store.backend != "postgresql":
        pytest.skip("the pool's ping is PostgreSQL's (SQLite opens a file)")
    return world


def backend_pid(world: World) -> int:
    with world.engine.store.read() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_terminated_session_is_replaced_before_use(pg_world: World) -> None:
    pid = backend_pid(pg_world)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    job = pg_world.submit()  # no error: the dead connection was pinged and replaced
    assert pg_world.engine.get_job(job.id).status == "queued"
    assert backend_pid(pg_world) != pid


def test_a_session_that_has_exited_is_replaced_before_use(pg_world: World) -> None:
    pid = backend_pid(pg_world)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits for the exit
    job = pg_world.submit()
    assert pg_world.engine.get_job(job.id).status == "queued"
    assert backend_pid(pg_world) != pid
