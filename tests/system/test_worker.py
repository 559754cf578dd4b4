"""The worker as users run it: real ``python -m dartwing_jobs.worker`` processes on
SQLite and PostgreSQL. Retries, timeouts, cancellation, checkpoints, permanent
failures, results, async handlers, progress, graceful shutdown and priorities."""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from dartwing_jobs import Engine

from .conftest import (
    CANCEL_GRACE,
    Workers,
    check_invariants,
    job_row,
    ledger_rows,
    log_rows,
    register,
    wait_ledger,
    wait_terminal,
    wait_until,
)

pytestmark = pytest.mark.system


def submit(engine: Engine, job_type: str, **params: Any) -> str:
    params.setdefault("n", uuid.uuid4().hex)
    return engine.submit_job(job_type, "acme", parameters=params).id


def test_fail_twice_then_succeed(world: Any, ledger_db: Any, workers: Workers) -> None:
    engine = world.engine
    register(engine, "flaky", "fail_times", max_retries=3)
    job_id = submit(engine, "flaky", fail=2)
    workers.start(concurrency=1)
    wait_terminal(ledger_db, [job_id], 30)
    job = engine.get_job(job_id)
    assert (job.status, job.attempts, job.result) == ("completed", 3, {"attempt": 3})
    logs = log_rows(ledger_db, job_id)
    assert [(r["attempt"], r["outcome"]) for r in logs] == [
        (1, "failed"), (2, "failed"), (3, "completed")]
    assert logs[0]["error_type"] == "RuntimeError"
    assert "failing on purpose" in logs[0]["error_message"]
    assert all(r["organization"] == "acme" and r["worker_id"] for r in logs)
    assert all(r["finished_at"] >= r["started_at"] for r in logs)


def test_handler_outcomes(world: Any, ledger_db: Any, workers: Workers) -> None:
    """Checkpoint then crash resumes; PermanentFailure is final at once; a result
    that is not JSON fails with a clear error; async handlers run."""
    engine = world.engine
    register(engine, "ckpt", "checkpoint_then_crash", max_retries=2)
    register(engine, "perm", "permanent", max_retries=3)
    register(engine, "badres", "bad_result", max_retries=0)
    register(engine, "asyncy", "async_handler", max_retries=0)
    ckpt = submit(engine, "ckpt")
    perm = submit(engine, "perm")
    bad = submit(engine, "badres")
    asy = submit(engine, "asyncy", word="hello")
    workers.start(concurrency=2)
    wait_terminal(ledger_db, [ckpt, perm, bad, asy], 40)

    job = engine.get_job(ckpt)
    assert (job.status, job.attempts) == ("completed", 2)
    assert job.result == {"resumed_from": {"page": 12}}
    assert [(r["attempt"], r["outcome"]) for r in log_rows(ledger_db, ckpt)] == [
        (1, "worker_lost"), (2, "completed")]

    job = engine.get_job(perm)
    assert (job.status, job.attempts) == ("dead_letter", 1)
    assert job.error is not None and job.error["type"] == "PermanentFailure"
    assert "this can never work" in job.error["message"]
    assert len(log_rows(ledger_db, perm)) == 1

    job = engine.get_job(bad)
    assert (job.status, job.attempts, job.result) == ("dead_letter", 1, None)
    assert job.error is not None and "not JSON-serializable" in job.error["message"]
    (entry,) = log_rows(ledger_db, bad)
    assert entry["outcome"] == "failed" and "not JSON-serializable" in entry["error_message"]

    job = engine.get_job(asy)
    assert job.status == "completed"
    assert job.result["async"] is True and job.result["params"]["word"] == "hello"


def test_timeouts_kill_every_kind_of_handler(world: Any, ledger_db: Any,
                                            workers: Workers) -> None:
    """An endless CPU loop (timeout 2 s, max_retries=1) times out twice, then
    dead_letter, while the same worker keeps completing other jobs; sleeping, a
    handler that ignores SIGTERM and swallows BaseException, and one blocked in a C
    call all time out too."""
    engine = world.engine
    register(engine, "loop", "busy_loop", default_timeout=2, max_retries=1)
    register(engine, "sleeper", "sleep_long", default_timeout=1, max_retries=0)
    register(engine, "hostile", "stubborn", default_timeout=1, max_retries=0)
    register(engine, "cblock", "blocked_in_c", default_timeout=1, max_retries=0)
    loop = submit(engine, "loop")
    worker = workers.start(concurrency=3)
    others = [submit(engine, t) for t in ("sleeper", "hostile", "cblock")]
    wait_until(lambda: engine.get_job(loop).status == "running", 20, "the loop to start")
    noops = [submit(engine, "noop") for _ in range(10)]
    wait_terminal(ledger_db, [loop, *others, *noops], 60)

    job = job_row(ledger_db, loop)
    assert (job["status"], job["attempts"], job["error_type"]) == ("dead_letter", 2, "timeout")
    logs = log_rows(ledger_db, loop)
    assert [(r["attempt"], r["outcome"], r["error_type"]) for r in logs] == [
        (1, "timeout", "timeout"), (2, "timeout", "timeout")]
    assert all(1.9 <= r["duration_ms"] / 1000 < 10 for r in logs)
    for job_id in noops:
        row = job_row(ledger_db, job_id)
        assert row["status"] == "completed"
        assert row["worker_id"] == job["worker_id"]  # the same supervisor
    # Other jobs completed while the loop was still being retried.
    assert min(job_row(ledger_db, j)["completed_at"] for j in noops) < job["completed_at"]
    for job_id in others:
        row = job_row(ledger_db, job_id)
        assert (row["status"], row["attempts"], row["error_type"]) == (
            "dead_letter", 1, "timeout"), row["job_type"]
    assert worker.alive()


def test_cancel_running_cooperative_and_stubborn(world: Any, ledger_db: Any,
                                                 workers: Workers) -> None:
    engine = world.engine
    register(engine, "coop", "cooperative", default_timeout=0)
    register(engine, "hostile", "stubborn", default_timeout=0)
    coop = submit(engine, "coop")
    hostile = submit(engine, "hostile")
    workers.start(concurrency=2)
    # The cooperative handler is inside its loop once progress shows up.
    wait_until(lambda: engine.get_job(coop).progress > 0, 20, "cooperative progress")
    wait_until(lambda: engine.get_job(hostile).status == "running", 20, "stubborn to run")
    time.sleep(0.3)  # let the stubborn handler install its SIGTERM trap (not a correctness wait)
    t0 = time.monotonic()
    engine.cancel_job(coop)
    engine.cancel_job(hostile)
    ended: dict[str, float] = {}

    def both_canceled() -> bool:
        for job_id in (coop, hostile):
            if job_id not in ended and engine.get_job(job_id).status in (
                    "completed", "dead_letter", "canceled"):
                ended[job_id] = time.monotonic() - t0
        return len(ended) == 2

    wait_until(both_canceled, CANCEL_GRACE + 15, "both jobs to end")
    for job_id in (coop, hostile):
        job = engine.get_job(job_id)
        assert job.status == "canceled", job
        assert job.error is not None and job.error["type"] == "canceled"
        assert job.attempts == 1 and len(log_rows(ledger_db, job_id)) == 1
    # The cooperative one stopped by itself, before the grace period ran out.
    assert "grace period" not in (engine.get_job(coop).error or {})["message"]
    assert ended[coop] < CANCEL_GRACE + 1.0
    # The stubborn one was killed after the grace period, within a margin.
    assert "grace period" in (engine.get_job(hostile).error or {})["message"]
    assert CANCEL_GRACE <= ended[hostile] <= CANCEL_GRACE + 2.5


def test_progress_is_written_and_throttled(world: Any, ledger_db: Any,
                                           workers: Workers) -> None:
    engine = world.engine
    register(engine, "steps", "progress_steps")
    job_id = submit(engine, "steps", steps=60, delay=0.025)  # 60 calls over ~1.5 s
    workers.start(concurrency=1)
    seen = wait_until(lambda: (j := engine.get_job(job_id)).status == "running"
                      and 0 < j.progress < 100 and j, 20, "progress while running")
    assert seen.progress_message and seen.progress_message.startswith("step ")
    wait_terminal(ledger_db, [job_id], 20)
    job = engine.get_job(job_id)
    assert (job.status, job.progress, job.result) == ("completed", 100.0, {"steps": 60})
    with ledger_db.connect() as conn:
        events = conn.execute(text(
            "SELECT progress, created_at FROM job_events WHERE job_id = :id "
            "AND kind = 'progress' ORDER BY id"), {"id": job_id}).all()
    values = [e.progress for e in events]
    assert 1 <= len(values) <= 15, values  # throttled: far fewer than 60 calls
    assert values == sorted(values)
    span = events[-1].created_at - events[0].created_at
    assert len(values) <= 5 * span + 2  # a few writes per second at most


def test_graceful_shutdown_finishes_or_returns_without_charge(
        world: Any, ledger_db: Any, workers: Workers) -> None:
    engine = world.engine
    register(engine, "rec", "record_beat", max_retries=0)
    short = submit(engine, "rec", sleep=0.5)
    long_ = submit(engine, "rec", sleep=60, slow_first=True)
    waiting = submit(engine, "rec")
    worker = workers.start(concurrency=2, shutdown_grace=2)
    wait_ledger(ledger_db, short, 1)
    wait_ledger(ledger_db, long_, 1)
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0

    assert (engine.get_job(short).status, engine.get_job(short).attempts) == ("completed", 1)
    returned = engine.get_job(long_)
    assert (returned.status, returned.attempts) == ("queued", 0)  # not charged
    assert log_rows(ledger_db, long_) == []
    # The draining worker claimed nothing new.
    assert (engine.get_job(waiting).status, engine.get_job(waiting).attempts) == ("queued", 0)

    # None lost: another worker runs both (max_retries=0, so a charge would have
    # made the returned job's next failure final; here it simply completes).
    workers.start(concurrency=2)
    wait_terminal(ledger_db, [long_, waiting], 30)
    for job_id in (short, long_, waiting):
        job = engine.get_job(job_id)
        assert (job.status, job.attempts) == ("completed", 1), job
    assert [r["attempt"] for r in ledger_rows(ledger_db, long_)] == [1, 1]
    check_invariants(ledger_db, [short, long_, waiting], exact_attempts=None)


def test_second_signal_stops_at_once(world: Any, ledger_db: Any, workers: Workers) -> None:
    engine = world.engine
    register(engine, "rec", "record_beat")
    job_id = submit(engine, "rec", sleep=60, slow_first=True)
    worker = workers.start(concurrency=1, shutdown_grace=120)
    wait_ledger(ledger_db, job_id, 1)
    worker.send(signal.SIGTERM)
    wait_until(lambda: "draining" in worker.log(), 10, "the first signal to be handled")
    assert worker.alive()
    t0 = time.monotonic()
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert time.monotonic() - t0 < 10
    job = engine.get_job(job_id)
    assert (job.status, job.attempts) == ("queued", 0)


def test_5000_jobs_two_workers_priorities(world: Any, ledger_db: Any,
                                          workers: Workers) -> None:
    """Every job completed exactly once; of jobs queued together, higher
    priorities start first (by the claim time the database recorded)."""
    engine = world.engine
    register(engine, "fast", "record_beat", max_retries=3)
    priorities = ["critical", "high", "normal", "low"]
    ids: dict[str, str] = {}
    # The workers start (spawning their children) while the jobs are submitted in
    # one transaction: all become visible, queued, at the same moment. No fault is
    # injected here, so the lease is a normal one: on SQLite a supervisor's write can
    # wait seconds for the lock under this load, which a 2 s lease would not survive.
    workers.start(concurrency=2, lease=10)
    workers.start(concurrency=2, lease=10)
    with engine.transaction() as tx:
        for i in range(5000):
            prio = priorities[(i * 7) % 4]
            job = engine.submit_job("fast", "acme", parameters={"i": i}, priority=prio, tx=tx)
            ids[job.id] = prio
    wait_terminal(ledger_db, list(ids), 150)

    with ledger_db.connect() as conn:
        rows = conn.execute(text(
            "SELECT j.id, j.status, j.attempts, j.priority, j.started_at, "
            "(SELECT COUNT(*) FROM ledger l WHERE l.job_id = j.id) AS runs, "
            "(SELECT COUNT(*) FROM job_execution_log x WHERE x.job_id = j.id) AS logs "
            "FROM background_jobs j WHERE j.job_type = 'fast'")).mappings().all()
        pids = conn.execute(text("SELECT COUNT(DISTINCT pid) FROM ledger")).scalar_one()
    assert len(rows) == 5000
    bad = [r for r in rows if (r["status"], r["attempts"], r["runs"], r["logs"])
           != ("completed", 1, 1, 1)]
    assert not bad, bad[:5]
    assert pids >= 3  # both workers' children took part
    check_invariants(ledger_db, list(ids))
    # Priority order by claim time (the database clock at the claim): every claim
    # takes the best jobs left, so each priority's last claim comes no later than
    # the next lower priority's first one (a small tolerance for two PostgreSQL
    # claims running side by side with SKIP LOCKED).
    by_prio: dict[int, list[float]] = {}
    for r in rows:
        by_prio.setdefault(r["priority"], []).append(r["started_at"])
    assert sorted(by_prio) == [0, 1, 2, 3]
    for high, low in ((0, 1), (1, 2), (2, 3)):
        assert max(by_prio[high]) <= min(by_prio[low]) + 0.25, (high, low)
