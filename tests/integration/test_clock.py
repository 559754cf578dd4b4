"""One clock: the database's (SPEC 4, issue 2 "Time").

Every due-time, lease and retry comparison is made in SQL against
``dartwing_jobs.store.clock.db_now()`` - on PostgreSQL ``clock_timestamp()`` (the
real time of the statement, not the transaction start that ``now()`` gives), on
SQLite ``julianday('now')``. The Python clock of the process that submits or
claims never enters a comparison, so a worker whose clock is hours off neither
runs a job early nor holds one back. These tests shift the Python clock with
``time_machine`` (the database server's clock is untouched by it) and check that
due-ness and every timestamp the engine writes follow the database.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from dartwing_jobs import Engine
from dartwing_jobs.store.clock import db_now
from dartwing_jobs.store.schema import jobs
from tests.conftest import World

HOUR = 3600.0
SHIFTS = [timedelta(hours=6), timedelta(hours=-6), timedelta(days=30), timedelta(hours=-1)]


def _shift_id(shift: timedelta) -> str:
    return f"{shift.total_seconds() / HOUR:+g}h"


def due_ids(engine: Engine) -> set[str]:
    """The claim path's due test, as the engine writes it: in SQL, on db_now()."""
    with engine.store.read() as conn:
        return set(conn.execute(
            select(jobs.c.id).where(jobs.c.status.in_(["queued", "retrying"]),
                                    jobs.c.due_at <= db_now())
        ).scalars())


def db_time(engine: Engine) -> float:
    with engine.store.read() as conn:
        return engine.store.now(conn)


def row(engine: Engine, job_id: str) -> dict[str, float | None]:
    with engine.store.read() as conn:
        r = conn.execute(
            select(jobs.c.created_at, jobs.c.modified_at, jobs.c.due_at, jobs.c.run_at,
                   jobs.c.completed_at).where(jobs.c.id == job_id)
        ).mappings().one()
    return dict(r)


@pytest.fixture(params=SHIFTS, ids=_shift_id)
def shifted(request: pytest.FixtureRequest) -> timedelta:
    return request.param  # type: ignore[no-any-return]


def test_time_machine_moves_python_but_not_the_database(world: World,
                                                       shifted: timedelta) -> None:
    eng = world.engine
    before_db = db_time(eng)
    with time_machine.travel(datetime.now(UTC) + shifted, tick=True):
        python_now = time.time()
        inside_db = db_time(eng)
    # Python jumped by the shift; the database did not (loose bound: only the
    # direction and size of the jump matter, not how fast anything ran).
    assert abs((python_now - inside_db) - shifted.total_seconds()) < 600
    assert abs(inside_db - before_db) < 600


def test_future_job_is_not_due_whatever_the_python_clock(world: World,
                                                         shifted: timedelta) -> None:
    eng = world.engine
    with time_machine.travel(datetime.now(UTC) + shifted, tick=True):
        now = db_time(eng)
        future = world.submit(run_at=now + HOUR)
        future_iso = world.submit(
            run_at=datetime.fromtimestamp(now + HOUR, tz=UTC).isoformat()
        )
        past = world.submit(run_at=now - HOUR)
        immediate = world.submit()
        due = due_ids(eng)
    assert future.id not in due
    assert future_iso.id not in due
    assert past.id in due
    assert immediate.id in due
    # ... and the stored due times are the database's, not Python's.
    assert row(eng, future.id)["due_at"] == pytest.approx(now + HOUR)
    assert row(eng, past.id)["due_at"] == pytest.approx(now - HOUR)
    assert due_ids(eng) == due  # same answer once the Python clock is back


def test_engine_timestamps_come_from_the_database(world: World, shifted: timedelta) -> None:
    eng = world.engine
    with time_machine.travel(datetime.now(UTC) + shifted, tick=True):
        start = db_time(eng)
        job = world.submit()
        eng.cancel_job(job.id)
        retried = eng.retry_job(job.id)
        end = db_time(eng)
        python_now = time.time()
    stored = row(eng, job.id)
    for field in ("created_at", "modified_at", "due_at"):
        value = stored[field]
        assert value is not None
        assert start - 1 <= value <= end + 1, (field, value, start, end)
        assert abs(value - python_now) > abs(shifted.total_seconds()) / 2
    created = datetime.fromisoformat(retried.created_at.replace("Z", "+00:00")).timestamp()
    assert start - 1 <= created <= end + 1
    assert job.id in due_ids(eng)  # the manual retry is due now by the database's clock


def test_database_clock_advances_within_a_transaction(world: World, backend: str) -> None:
    """clock_timestamp(), not now(): within one long transaction (a worker's
    claim-and-run loop, a lease renewal) the clock still moves."""
    eng = world.engine
    with eng.store.transaction() as conn:
        first = float(conn.execute(select(db_now())).scalar_one())
        later = first
        for _ in range(200_000):  # condition-based: stop as soon as it moved
            later = float(conn.execute(select(db_now())).scalar_one())
            if later > first:
                break
        assert later > first
        if backend == "postgresql":
            tx_start = float(conn.execute(
                select(func.extract("epoch", func.now()))).scalar_one())
            assert tx_start <= first < later

