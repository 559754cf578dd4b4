"""Helpers for the worker system tests: real worker processes started with
``python -m dartwing_jobs.worker`` (always killed in teardown), a ledger table the
test handlers write to, condition waits with deadlines, and the invariant checks
run with SQL once the system is quiet."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from dartwing_jobs import Engine
from tests.conftest import TEST_HANDLER_MODULES
from tests.handlers import LEDGER_ENV, ledger_metadata

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("completed", "dead_letter", "canceled")
LEASE = 2.0
CANCEL_GRACE = 1.5


def sa_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped) counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class WorkerProcess:
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def send_group(self, sig: int) -> None:
        """The supervisor and its children (started in their own session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


class Workers:
    """Starts worker processes for one test; ``close`` kills all of them (and their
    children) whatever happened."""

    def __init__(self, database_url: str, ledger_url: str, tmp_path: Path) -> None:
        self.database_url = database_url
        self.ledger_url = ledger_url
        self.tmp_path = tmp_path
        self.started: list[WorkerProcess] = []

    def start(self, concurrency: int = 2, *, lease: float = LEASE, url: str | None = None,
              shutdown_grace: float | None = None, queues: list[str] | None = None,
              env: dict[str, str] | None = None) -> WorkerProcess:
        cmd = [sys.executable, "-m", "dartwing_jobs.worker",
               "--database-url", url or self.database_url, "--concurrency", str(concurrency)]
        if shutdown_grace is not None:
            cmd += ["--shutdown-grace", str(shutdown_grace)]
        if queues:
            cmd += ["--queues", *queues]
        full_env = dict(os.environ)
        full_env.update({
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]),
            "DARTWING_JOBS_HANDLER_MODULES": TEST_HANDLER_MODULES,
            "DARTWING_JOBS_LEASE_SECONDS": str(lease),
            "DARTWING_JOBS_CANCEL_GRACE_SECONDS": str(CANCEL_GRACE),
            LEDGER_ENV: self.ledger_url,
        })
        full_env.pop("DARTWING_JOBS_FAILPOINT", None)
        full_env.update(env or {})
        log_path = self.tmp_path / f"worker-{len(self.started)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        worker = WorkerProcess(popen, log_path)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            worker.send_group(signal.SIGCONT)
            worker.send_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.popen.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- worker {w.pid} ---\n{w.log()}" for w in self.started)


@pytest.fixture
def workers(database_url: str, ledger_url: str, tmp_path: Path,
            request: pytest.FixtureRequest) -> Iterator[Workers]:
    pool = Workers(database_url, ledger_url, tmp_path)
    try:
        yield pool
    finally:
        pool.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(pool.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def ledger_url(database_url: str, tmp_path: Path) -> str:
    """Where the test handlers record their runs. PostgreSQL: the test's database.
    SQLite: a file of its own (WAL), so that thousands of ledger writes do not
    queue behind the worker's write lock and slow the system under test."""
    if not database_url.startswith("sqlite"):
        return database_url
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    eng = create_engine(url)
    with eng.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    ledger_metadata.create_all(eng)
    eng.dispose()
    return url


@pytest.fixture
def ledger_db(database_url: str, ledger_url: str) -> Iterator[Any]:
    """An SQLAlchemy engine on the test's database in which the ``ledger`` table is
    visible too (SQLite: attached), to check the invariants with plain SQL."""
    eng = create_engine(sa_url(database_url), pool_pre_ping=True)
    if ledger_url == database_url:
        ledger_metadata.create_all(eng)
    else:
        ledger_path = ledger_url[len("sqlite:///"):]

        @event.listens_for(eng, "connect")
        def _attach(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("ATTACH DATABASE ? AS lg", (ledger_path,))

    yield eng
    eng.dispose()


def register(engine: Engine, name: str, handler: str, **config: Any) -> None:
    config.setdefault("retry_backoff", 0.1)
    config.setdefault("retry_backoff_max", 0.2)
    config.setdefault("default_timeout", 60)
    engine.job_types.register(name, handler=f"tests.handlers:{handler}", **config)


def status_of(engine: Engine, job_id: str) -> str:
    return engine.get_job(job_id).status


def job_row(db: Any, job_id: str) -> Any:
    with db.connect() as conn:
        return conn.execute(text("SELECT * FROM background_jobs WHERE id = :id"), {"id": job_id}
                            ).mappings().one()


def log_rows(db: Any, job_id: str) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(text(
            "SELECT * FROM job_execution_log WHERE job_id = :id ORDER BY attempt, id"
        ), {"id": job_id}).mappings())


def ledger_rows(db: Any, job_id: str) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(text(
            "SELECT * FROM ledger WHERE job_id = :id ORDER BY id"), {"id": job_id}).mappings())


def wait_terminal(db: Any, job_ids: list[str], timeout: float) -> None:
    ids = list(job_ids)

    def done() -> bool:
        with db.connect() as conn:
            rows = conn.execute(text(
                "SELECT id FROM background_jobs "
                "WHERE status IN ('completed', 'dead_letter', 'canceled')"
            )).scalars().all()
        return set(ids) <= set(rows)

    wait_until(done, timeout, f"{len(ids)} jobs to end terminal", interval=0.1)


def wait_ledger(db: Any, job_id: str, attempt: int, timeout: float = 20) -> Any:
    def find() -> Any:
        with db.connect() as conn:
            return conn.execute(text(
                "SELECT * FROM ledger WHERE job_id = :id AND attempt = :a ORDER BY id DESC"
            ), {"id": job_id, "a": attempt}).mappings().first()

    return wait_until(find, timeout, f"job {job_id} attempt {attempt} to start")


def check_invariants(db: Any, job_ids: list[str], *, exact_attempts: bool | None = True) -> None:
    """The fault-test invariants, checked with SQL on a quiet system:
    no job lost, nothing non-terminal, no two overlapping runs of one job,
    attempts equal to ledger rows (``exact_attempts``), at least as many (False) or
    not compared (None: attempts given back by a shutdown are not charged), never
    above the maximum, and one execution-log row per attempt."""
    ids = set(job_ids)
    with db.connect() as conn:
        jobs = {r["id"]: r for r in conn.execute(text(
            "SELECT id, status, attempts, max_retries, attempts_offset FROM background_jobs"
        )).mappings()}
        missing = ids - set(jobs)
        assert not missing, f"jobs lost: {sorted(missing)[:5]}"
        open_jobs = [j for j in jobs.values() if j["status"] not in TERMINAL]
        assert not open_jobs, f"non-terminal once quiet: {open_jobs[:5]}"
        overlaps = conn.execute(text(
            "SELECT a.job_id, a.attempt, a.pid, b.attempt, b.pid FROM ledger a "
            "JOIN ledger b ON a.job_id = b.job_id AND a.id < b.id "
            "WHERE a.started < COALESCE(b.ended, b.started) "
            "AND b.started < COALESCE(a.ended, a.started)"
        )).all()
        assert not overlaps, f"overlapping runs of one job: {overlaps[:5]}"
        ledger_counts = dict(conn.execute(text(
            "SELECT job_id, COUNT(*) FROM ledger GROUP BY job_id")).all())
        log_counts = dict(conn.execute(text(
            "SELECT job_id, COUNT(*) FROM job_execution_log GROUP BY job_id")).all())
        log_dupes = conn.execute(text(
            "SELECT job_id, attempt FROM job_execution_log GROUP BY job_id, attempt "
            "HAVING COUNT(*) > 1")).all()
        assert not log_dupes, f"two log rows for one attempt: {log_dupes[:5]}"
    for job_id in ids:
        job = jobs[job_id]
        runs = ledger_counts.get(job_id, 0)
        attempts = job["attempts"]
        if exact_attempts:
            assert attempts == runs, f"{job_id}: attempts {attempts} != ledger rows {runs}"
        elif exact_attempts is False:
            assert runs <= attempts, f"{job_id}: {runs} runs for {attempts} attempts"
        assert attempts - job["attempts_offset"] <= job["max_retries"] + 1, job
        assert log_counts.get(job_id, 0) == attempts, (
            f"{job_id}: {log_counts.get(job_id, 0)} log rows for {attempts} attempts")
