"""PostgreSQL's pool pings a connection at checkout: one whose server session
ended (an administrator's ``pg_terminate_backend``, a restart) is replaced
before use, however recently it was used. The worker's long-lived threads keep
their connections instead (``Store.units``): no ping per unit of work, and a
session that ended costs one failed unit."""

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


def test_a_threads_units_keep_their_connections(pg_world: World) -> None:
    """The worker's threads take a connection from the pool once (no ping per
    unit of work), for transactions and for single statements alike."""
    from sqlalchemy import event

    store = pg_world.engine.store
    checkouts: list[int] = []
    event.listen(store.engine, "checkout", lambda *args: checkouts.append(1))
    units = store.units()
    try:
        pids = set()
        for _ in range(5):
            with units.transaction() as conn:
                pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            with units.single_statement() as conn:
                conn.execute(text("SELECT 1"))
        assert len(pids) == 1
        assert len(checkouts) == 2  # one kept for transactions, one for statements
    finally:
        units.close()


def test_a_kept_connection_the_server_ended_fails_one_unit_then_is_replaced(
        pg_world: World) -> None:
    """Kept connections are not pinged: the unit that finds the session gone
    fails (its caller retries it, as after any database error) and the next one
    runs on a new connection."""
    from sqlalchemy.exc import DBAPIError

    from dartwing_jobs.worker.exchanger import in_transaction

    units = pg_world.engine.store.units()
    try:
        with units.transaction() as conn:
            pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        with pytest.raises(DBAPIError), units.transaction() as conn:
            conn.execute(text("SELECT 1"))
        assert in_transaction(units, lambda c: c.execute(
            text("SELECT pg_backend_pid()")).scalar_one()) not in (None, pid)
    finally:
        units.close()


def test_a_refused_statement_keeps_the_connection(pg_world: World) -> None:
    """An error the server raises for a statement (here a division by zero)
    rolls the unit back and leaves the kept connection in use."""
    from sqlalchemy.exc import DBAPIError

    units = pg_world.engine.store.units()
    try:
        for unit in (units.transaction, units.single_statement):
            with unit() as conn:
                pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            with pytest.raises(DBAPIError), unit() as conn:
                conn.execute(text("SELECT 1 / 0"))
            with unit() as conn:
                assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
    finally:
        units.close()


def test_the_kept_statement_connection_plans_once_and_goes_back_as_it_came(
        pg_world: World) -> None:
    """The kept autocommit connection (the idle fast claim's) asks for generic
    plans; the transaction connection and the pool's do not, and the setting is
    reset before the connection goes back to the pool."""
    show = text("SHOW plan_cache_mode")
    units = pg_world.engine.store.units()
    try:
        with units.single_statement() as conn:
            assert conn.execute(show).scalar_one() == "force_generic_plan"
            raw = conn.connection.dbapi_connection
        with units.transaction() as conn:
            assert conn.execute(show).scalar_one() == "auto"
    finally:
        units.close()
    assert raw is not None
    assert raw.execute("SHOW plan_cache_mode").fetchone() == ("auto",)
    raw.rollback()
