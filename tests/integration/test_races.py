"""Races the plan's P1-005 (duplicate check-then-insert) and P1-006 (cancel vs
claim) were about, on both backends. Starts are synchronised with barriers; no
test sleeps or measures time."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select, update

from dartwing_jobs import DuplicateJob, Engine
from dartwing_jobs.store.clock import db_now
from dartwing_jobs.store.schema import job_events, jobs
from tests.conftest import TEST_HANDLER_MODULES, World

THREADS = 32
PROCESSES = 4
THREADS_PER_PROCESS = 8
CANCEL_ROUNDS = 200
PARAMS = {"report": "2026-10", "pages": [1, 2, 3]}


def _submit_all_at_once(engine: Engine, n: int, barrier: threading.Barrier | None = None,
                        params: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """``n`` threads submit the identical job at the same moment. Returns one
    ``("ok", id)`` or ``("duplicate", existing_id)`` per thread; any other
    outcome is returned as ``("error", repr)``."""
    barrier = barrier or threading.Barrier(n, timeout=60)

    def one(_: int) -> tuple[str, str]:
        barrier.wait()
        try:
            job = engine.submit_job("noop", "acme", params or PARAMS)
        except DuplicateJob as exc:
            return "duplicate", exc.existing_job_id
        except Exception as exc:  # reported, then asserted absent
            return "error", repr(exc)
        return "ok", job.id

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def _active_rows(engine: Engine, job_hash: str) -> list[tuple[str, str]]:
    with engine.store.read() as conn:
        return [(r.id, r.status) for r in conn.execute(
            select(jobs.c.id, jobs.c.status).where(jobs.c.job_hash == job_hash)
        )]


def _assert_exactly_one(outcomes: list[tuple[str, str]]) -> str:
    kinds = Counter(kind for kind, _ in outcomes)
    assert kinds["error"] == 0, [o for o in outcomes if o[0] == "error"]
    assert kinds["ok"] == 1, kinds
    (winner,) = [value for kind, value in outcomes if kind == "ok"]
    assert all(value == winner for kind, value in outcomes if kind == "duplicate")
    return winner


def _complete(engine: Engine, job_id: str, expect_from: str = "queued") -> None:
    """What a worker finishing the job does, as one conditional update."""
    with engine.store.transaction() as conn:
        rc = conn.execute(
            update(jobs).where(jobs.c.id == job_id, jobs.c.status == expect_from)
            .values(status="completed", completed_at=db_now(), modified_at=db_now())
        ).rowcount
    assert rc == 1


def test_duplicate_race_threads(world: World) -> None:
    eng = world.engine
    outcomes = _submit_all_at_once(eng, THREADS)
    assert len(outcomes) == THREADS
    winner = _assert_exactly_one(outcomes)
    job = eng.get_job(winner)
    assert _active_rows(eng, job.job_hash) == [(winner, "queued")]
    with eng.store.read() as conn:
        events = conn.execute(
            select(func.count()).select_from(job_events).where(job_events.c.job_id == winner)
        ).scalar_one()
    assert events == 1  # losers wrote no event either

    # After it completes, the same submission is accepted again - once.
    _complete(eng, winner)
    again = _submit_all_at_once(eng, THREADS)
    second = _assert_exactly_one(again)
    assert second != winner
    assert sorted(_active_rows(eng, job.job_hash)) == sorted(
        [(winner, "completed"), (second, "queued")]
    )


def test_duplicate_race_never_blocks_different_jobs(world: World) -> None:
    """Distinct parameters racing each other are all accepted."""
    eng = world.engine
    barrier = threading.Barrier(16, timeout=60)

    def one(i: int) -> str:
        barrier.wait()
        return eng.submit_job("noop", "acme", {"i": i}).id

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(one, range(16)))
    assert len(set(ids)) == 16


def _process_main(url: str, barrier: Any, results: Any) -> None:
    """One of several processes, each with its own Engine and pool."""
    eng = Engine(url, handler_modules=TEST_HANDLER_MODULES)
    try:
        with eng.store.read() as conn:  # connect before the start line
            eng.store.now(conn)
        thread_barrier = threading.Barrier(THREADS_PER_PROCESS, timeout=60)
        barrier.wait()
        results.put(_submit_all_at_once(eng, THREADS_PER_PROCESS, thread_barrier))
    except BaseException as exc:
        results.put([("error", repr(exc))])
        raise
    finally:
        eng.close()


def _race_processes(url: str) -> list[tuple[str, str]]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES, timeout=120)
    results = ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(url, barrier, results))
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes: list[tuple[str, str]] = []
    try:
        for _ in procs:
            outcomes.extend(results.get(timeout=120))
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return outcomes


@pytest.mark.postgres_only
def test_duplicate_race_processes(world: World, backend: str, database_url: str) -> None:
    if backend != "postgresql":
        pytest.skip("many processes sharing one database is the PostgreSQL deployment")
    eng = world.engine
    outcomes = _race_processes(database_url)
    assert len(outcomes) == PROCESSES * THREADS_PER_PROCESS
    winner = _assert_exactly_one(outcomes)
    job_hash = eng.get_job(winner).job_hash
    assert _active_rows(eng, job_hash) == [(winner, "queued")]

    _complete(eng, winner)
    second = _assert_exactly_one(_race_processes(database_url))
    assert second != winner
    assert sorted(_active_rows(eng, job_hash)) == sorted(
        [(winner, "completed"), (second, "queued")]
    )


# -- cancel vs claim (P1-006) ------------------------------------------------------


def _claim(engine: Engine, job_id: str) -> int:
    """A worker's claim reduced to its essence: one conditional update in its own
    transaction. Returns the number of rows it took (0 or 1)."""
    with engine.store.transaction() as conn:
        return int(conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(["queued", "retrying"]))
            .values(status="running", attempts=jobs.c.attempts + 1,
                    started_at=db_now(), modified_at=db_now(),
                    lease_expires_at=db_now() + 30.0, worker_id="race-test")
        ).rowcount)


def test_cancel_race_never_both_never_neither(world: World) -> None:
    eng = world.engine
    seen: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_no in range(CANCEL_ROUNDS):
            job = eng.submit_job("noop", "acme", {"round": round_no})
            barrier = threading.Barrier(2, timeout=60)

            def cancel(job_id: str = job.id, b: threading.Barrier = barrier) -> Any:
                b.wait()
                return eng.cancel_job(job_id)

            def claim(job_id: str = job.id, b: threading.Barrier = barrier) -> int:
                b.wait()
                return _claim(eng, job_id)

            f_cancel, f_claim = pool.submit(cancel), pool.submit(claim)
            canceled_view, claimed = f_cancel.result(timeout=60), f_claim.result(timeout=60)
            final = eng.get_job(job.id)

            if claimed == 1:
                # The claim won: the job runs, and the cancel became a request.
                assert canceled_view.status == "running", (round_no, canceled_view)
                assert canceled_view.cancel_requested is True
                assert final.status == "running"
                assert final.cancel_requested is True
                assert final.attempts == 1
                seen["claimed, cancel requested"] += 1
            else:
                # The cancel won: the job never starts.
                assert claimed == 0
                assert canceled_view.status == "canceled", (round_no, canceled_view)
                assert final.status == "canceled"
                assert final.attempts == 0
                assert final.started_at is None
                seen["canceled before start"] += 1

            with eng.store.read() as conn:
                statuses = list(conn.execute(
                    select(job_events.c.status).where(job_events.c.job_id == job.id)
                    .order_by(job_events.c.id)
                ).scalars())
            # The cancel writes its event only when it changed the status.
            expected = ["queued", "canceled"] if claimed == 0 else ["queued"]
            assert statuses == expected, (round_no, statuses)
    assert sum(seen.values()) == CANCEL_ROUNDS
