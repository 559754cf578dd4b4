"""Fault injection against real worker processes: SIGKILL of a child and of a whole
worker, a frozen worker (SIGSTOP) past its lease, a crash between the handler's
return and the completion write, a poison job, sessions terminated under the
worker, a network black hole (userspace proxy) and a PostgreSQL restart.

Handlers record every run in a ledger table (``record_beat`` keeps ``ended``
fresh while it runs, so a killed run still shows until when it was alive); the
invariants are checked with SQL once the system is quiet."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from dartwing_jobs import Engine
from dartwing_jobs.store.base import sqlite_path
from tests.conftest import PG_ADMIN_URL

from .conftest import (
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
from .proxy import TcpProxy

pytestmark = [pytest.mark.system, pytest.mark.fault]


def submit(engine: Engine, job_type: str, **params: Any) -> str:
    params.setdefault("n", uuid.uuid4().hex)
    return engine.submit_job(job_type, "acme", parameters=params).id


def outcomes(db: Any, job_id: str) -> list[tuple[int, str]]:
    return [(r["attempt"], r["outcome"]) for r in log_rows(db, job_id)]


def pg_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL-specific fault")


def test_sigkill_child_mid_job(world: Any, ledger_db: Any, workers: Workers) -> None:
    engine = world.engine
    register(engine, "rec", "record_beat", max_retries=3)
    job_id = submit(engine, "rec", sleep=1.0)
    others = [submit(engine, "rec", sleep=0.2) for _ in range(4)]
    worker = workers.start(concurrency=2)
    first = wait_ledger(ledger_db, job_id, 1)
    os.kill(first["pid"], signal.SIGKILL)
    wait_terminal(ledger_db, [job_id, *others], 30)
    job = job_row(ledger_db, job_id)
    assert (job["status"], job["attempts"]) == ("completed", 2)
    assert engine.get_job(job_id).result == {
        "attempt": 2, "pid": ledger_rows(ledger_db, job_id)[1]["pid"]}
    assert outcomes(ledger_db, job_id) == [(1, "worker_lost"), (2, "completed")]
    assert worker.alive()  # the supervisor replaced its child and went on
    check_invariants(ledger_db, [job_id, *others])


def test_sigkill_whole_worker(world: Any, ledger_db: Any, workers: Workers) -> None:
    engine = world.engine
    register(engine, "rec", "record_beat", max_retries=3)
    jobs = [submit(engine, "rec", sleep=1.5) for _ in range(2)]
    doomed = workers.start(concurrency=2)
    for job_id in jobs:
        wait_ledger(ledger_db, job_id, 1)
    doomed.send_group(signal.SIGKILL)  # the supervisor and its children: a lost machine
    doomed.wait(timeout=10)
    workers.start(concurrency=2)  # rescues the expired leases and runs them again
    wait_terminal(ledger_db, jobs, 30)
    for job_id in jobs:
        job = job_row(ledger_db, job_id)
        assert (job["status"], job["attempts"]) == ("completed", 2)
        logs = log_rows(ledger_db, job_id)
        assert outcomes(ledger_db, job_id) == [(1, "worker_lost"), (2, "completed")]
        assert "lease expired" in logs[0]["error_message"]
    check_invariants(ledger_db, jobs)


def freeze_outside_a_write(worker: Any, engine: Engine) -> None:
    """SIGSTOP the worker. On SQLite a process frozen inside a write transaction
    holds the file's only write lock, and nobody can rescue anything until it is
    continued: that is SQLite, not the fault under test, so freeze again until
    the lock is free."""
    for _ in range(50):
        worker.send(signal.SIGSTOP)
        if engine.store.backend != "sqlite":
            return
        probe = sqlite3.connect(str(sqlite_path(engine.settings.database_url)),
                                timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            worker.send(signal.SIGCONT)
            time.sleep(0.01)
        finally:
            probe.close()
    raise AssertionError("the worker kept the SQLite write lock")


def test_frozen_worker_late_outcome_is_refused(world: Any, ledger_db: Any,
                                              workers: Workers) -> None:
    """SIGSTOP a supervisor past its lease while its child finishes the handler; a
    second worker rescues and completes the job; after SIGCONT the first worker
    delivers its (late) outcome, which must change nothing."""
    engine = world.engine
    register(engine, "rec", "record_beat", max_retries=3)
    job_id = submit(engine, "rec", sleep=0.3)
    frozen = workers.start(concurrency=1)
    run1 = wait_ledger(ledger_db, job_id, 1)
    freeze_outside_a_write(frozen, world.engine)
    # The child's run ends (its outcome now waits in the pipe of a frozen process).
    wait_until(lambda: ledger_rows(ledger_db, job_id)[0]["ended"] > run1["started"] + 0.25,
               10, "the first run to end")
    rescuer = workers.start(concurrency=1)
    wait_until(lambda: job_row(ledger_db, job_id)["status"] == "completed", 30,
               "the second worker to complete the job")
    done = job_row(ledger_db, job_id)
    result = engine.get_job(job_id).result
    assert done["attempts"] == 2 and result["attempt"] == 2
    frozen.send(signal.SIGCONT)
    # Let it deliver the late outcome, then stop it: run() flushes what it holds.
    frozen.send(signal.SIGTERM)
    assert frozen.wait(timeout=20) == 0
    rescuer.send(signal.SIGTERM)
    rescuer.wait(timeout=20)
    after = job_row(ledger_db, job_id)
    assert (after["status"], after["attempts"]) == ("completed", 2)
    assert engine.get_job(job_id).result == result
    assert after["completed_at"] == done["completed_at"]
    assert outcomes(ledger_db, job_id) == [(1, "worker_lost"), (2, "completed")]
    check_invariants(ledger_db, [job_id])


def test_crash_between_return_and_completion_write(world: Any, ledger_db: Any,
                                                   workers: Workers) -> None:
    engine = world.engine
    register(engine, "rec", "record_beat", max_retries=3)
    job_id = submit(engine, "rec", sleep=0.2)
    crashing = workers.start(concurrency=1,
                             env={"DARTWING_JOBS_FAILPOINT": "before_completion_write"})
    assert crashing.wait(timeout=30) == 70  # exited at the failpoint
    row = job_row(ledger_db, job_id)
    assert (row["status"], row["attempts"]) == ("running", 1)  # the outcome was lost
    assert ledger_rows(ledger_db, job_id)[0]["ended"] is not None  # the handler returned
    workers.start(concurrency=1)
    wait_terminal(ledger_db, [job_id], 30)
    job = job_row(ledger_db, job_id)
    assert (job["status"], job["attempts"]) == ("completed", 2)
    assert outcomes(ledger_db, job_id) == [(1, "worker_lost"), (2, "completed")]
    check_invariants(ledger_db, [job_id])


def test_poison_job_dead_letters(world: Any, ledger_db: Any, workers: Workers) -> None:
    engine = world.engine
    register(engine, "poison", "poison", max_retries=2)
    job_id = submit(engine, "poison")
    worker = workers.start(concurrency=1)
    wait_terminal(ledger_db, [job_id], 30)
    job = job_row(ledger_db, job_id)
    assert (job["status"], job["attempts"], job["error_type"]) == (
        "dead_letter", 3, "worker_lost")
    assert outcomes(ledger_db, job_id) == [
        (1, "worker_lost"), (2, "worker_lost"), (3, "worker_lost")]
    # Never requeued: the worker serves another job, and the poison job stays put.
    later = submit(engine, "noop")
    wait_terminal(ledger_db, [later], 20)
    job = job_row(ledger_db, job_id)
    assert (job["status"], job["attempts"]) == ("dead_letter", 3)
    assert worker.alive()


def _terminate_sessions(dbname: str) -> int:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchall()
    return len(rows)


def test_sessions_terminated_under_the_worker(world: Any, ledger_db: Any, workers: Workers,
                                              database_url: str) -> None:
    pg_only(database_url)
    engine = world.engine
    register(engine, "rec", "record_beat", max_retries=5)
    dbname = database_url.rsplit("/", 1)[1]
    worker = workers.start(concurrency=2)
    jobs = [submit(engine, "rec", sleep=0.05) for _ in range(30)]
    wait_until(lambda: job_row(ledger_db, jobs[5])["status"] == "completed", 30, "progress")
    killed = 0
    for _ in range(3):
        killed += _terminate_sessions(dbname)
        jobs += [submit(engine, "rec", sleep=0.05) for _ in range(10)]
        time.sleep(0.3)  # spacing between the injected faults, not a correctness wait
    assert killed > 0
    wait_terminal(ledger_db, jobs, 60)
    assert worker.alive()  # reconnected without a restart
    with ledger_db.connect() as conn:
        statuses = dict(conn.execute(text(
            "SELECT status, COUNT(*) FROM background_jobs GROUP BY status")).all())
    assert statuses == {"completed": len(jobs)}, statuses
    # A handler whose ledger connection was cut fails its attempt (then retries),
    # so an attempt may have no ledger row; never the reverse.
    check_invariants(ledger_db, jobs, exact_attempts=False)


def test_network_black_hole_stops_attempts_before_the_lease_expires(
        world: Any, ledger_db: Any, workers: Workers, database_url: str) -> None:
    """A worker cut off from PostgreSQL (a proxy that stops forwarding) cannot renew
    its lease; it must stop its attempt before a rescuer can run the job elsewhere.
    After the network comes back it serves jobs again without a restart."""
    pg_only(database_url)
    engine = world.engine
    register(engine, "rec", "record_beat", max_retries=3)
    host_port, _, _db = database_url.rpartition("@")[2].partition("/")
    host, _, port = host_port.partition(":")
    proxy = TcpProxy(host, int(port or 5432))
    try:
        via_proxy = database_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        job_id = submit(engine, "rec", sleep=4)
        cut_off = workers.start(concurrency=1, url=via_proxy)
        wait_ledger(ledger_db, job_id, 1)
        proxy.pause()
        workers.start(concurrency=1)  # direct: rescues the job once its lease expired
        wait_ledger(ledger_db, job_id, 2, timeout=30)
        wait_terminal(ledger_db, [job_id], 30)
        check_invariants(ledger_db, [job_id])
        proxy.kill()
        proxy.resume()
        later = submit(engine, "rec", sleep=0, only="cut_off")
        # Both may take it; the cut-off worker must at least survive and reconnect.
        wait_terminal(ledger_db, [later], 30)
        assert cut_off.alive()
    finally:
        proxy.close()


@pytest.mark.timeout(240)
def test_postgres_restart_during_2000_jobs(world: Any, ledger_db: Any, workers: Workers,
                                           database_url: str) -> None:
    pg_only(database_url)
    engine = world.engine
    register(engine, "rec", "record_beat", max_retries=5, retry_backoff=0.2,
             retry_backoff_max=1)
    w1 = workers.start(concurrency=2, lease=5)
    w2 = workers.start(concurrency=2, lease=5)
    with engine.transaction() as tx:
        jobs = [j.id for j in engine.submit_jobs(
            "rec", "acme", [{"i": i} for i in range(2000)], tx=tx)]

    def completed() -> int:
        with ledger_db.connect() as conn:
            return int(conn.execute(text(
                "SELECT COUNT(*) FROM background_jobs WHERE status = 'completed'")).scalar_one())

    wait_until(lambda: completed() >= 200, 60, "the run to be under way")
    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart",
                    "-m", "fast"], check=True, timeout=60)

    def pg_up() -> bool:
        try:
            with psycopg.connect(PG_ADMIN_URL, connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    wait_until(pg_up, 60, "PostgreSQL to come back", interval=0.2)
    wait_terminal(ledger_db, jobs, 150)
    assert w1.alive() and w2.alive()
    check_invariants(ledger_db, jobs, exact_attempts=False)
    with ledger_db.connect() as conn:
        statuses = dict(conn.execute(text(
            "SELECT status, COUNT(*) FROM background_jobs GROUP BY status")).all())
    assert sum(statuses.values()) == 2000 and set(statuses) <= {"completed", "dead_letter"}


def test_child_crash_among_jobs_sent_ahead(world: Any, ledger_db: Any,
                                           workers: Workers) -> None:
    """Short jobs are sent ahead to a busy child. When the child dies, the job it was
    running is charged (``worker_lost``) and those queued behind it go back to the
    buffer uncharged: every job runs exactly once per attempt it is charged."""
    engine = world.engine
    register(engine, "rec", "record", max_retries=3)
    crashing = {80, 81, 200}
    jobs = [job.id for job in engine.submit_jobs("rec", "acme", [
        {"i": i, "crash_on_attempts": [1] if i in crashing else []} for i in range(300)])]
    worker = workers.start(concurrency=1)
    wait_terminal(ledger_db, jobs, 90)
    for i, job_id in enumerate(jobs):
        job = job_row(ledger_db, job_id)
        expected = 2 if i in crashing else 1
        assert (job["status"], job["attempts"]) == ("completed", expected), (i, dict(job))
        if i in crashing:
            assert outcomes(ledger_db, job_id) == [(1, "worker_lost"), (2, "completed")]
    assert worker.alive()
    check_invariants(ledger_db, jobs)
