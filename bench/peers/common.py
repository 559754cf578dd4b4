"""What every peer module shares: the stamp its handler writes, the workloads run
the same way for every peer, worker subprocesses that are always killed, fresh
PostgreSQL databases and flushed Redis databases.

A peer's no-op handler calls :func:`stamp` with the time its job was submitted
(0 when nobody measures latency). ``stamp`` appends ``"<submitted> <started>
<worker>"`` to a per-process buffer that a daemon thread pushes to the Redis list
``bench:stamps`` every 10 ms, so a handler costs a list append, not a round trip
(``sync=True`` pushes at once: RQ's forked work horse exits before a thread runs).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
STAMPS = "bench:stamps"
STAMP_ENV = "BENCH_STAMP_REDIS"
PIDFILE_ENV = "BENCH_PIDFILE"

# -- the handler side ---------------------------------------------------------------

_buffer: list[str] = []
_flusher_pid = 0
_client: redis.Redis | None = None
_lock = threading.Lock()


def redis_url(db: int) -> str:
    return f"{REDIS_BASE}/{db}"


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ[STAMP_ENV])
    return _client


def _flush_forever() -> None:
    while True:
        time.sleep(0.01)
        _flush()


def _flush() -> None:
    global _buffer
    with _lock:
        batch, _buffer = _buffer, []
    if batch:
        _redis().rpush(STAMPS, *batch)


def stamp(submitted: float, *, sync: bool = False, worker: int | None = None) -> None:
    """Record that a job submitted at ``submitted`` starts now (``time.time()``)."""
    global _flusher_pid, _client
    record = f"{submitted!r} {time.time()!r} {worker or os.getpid()}"
    if sync:
        _redis().rpush(STAMPS, record)
        return
    _buffer.append(record)
    if _flusher_pid != os.getpid():  # first job in this (possibly forked) process
        with _lock:
            if _flusher_pid != os.getpid():
                _flusher_pid = os.getpid()
                _client = None  # never share a socket across a fork
                threading.Thread(target=_flush_forever, daemon=True).start()
                atexit.register(_flush)


# -- the measuring side -------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


Stamp = tuple[float, float, int]


def read_stamps(r: redis.Redis) -> list[Stamp]:
    out = []
    for raw in r.lrange(STAMPS, 0, -1):  # type: ignore[union-attr]
        submitted, started, worker = raw.decode().split()
        out.append((float(submitted), float(started), int(worker)))
    return out


def wait_stamps(r: redis.Redis, n: int, timeout: float) -> list[Stamp]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(r.llen(STAMPS)) >= n:  # type: ignore[arg-type]
            return read_stamps(r)
        time.sleep(0.05)
    got = int(r.llen(STAMPS))  # type: ignore[arg-type]
    raise TimeoutError(f"{got} of {n} jobs started within {timeout:.0f} s")


def throughput(stamps: list[Stamp]) -> float:
    """Jobs per second once every worker process that took a share (at least 1%)
    has started its first job, so that a worker that boots a little later than the
    other does not count against the peer: jobs started in that window divided by
    its length."""
    firsts: dict[int, float] = {}
    counts: dict[int, int] = {}
    for _, started, worker in stamps:
        firsts[worker] = min(started, firsts.get(worker, started))
        counts[worker] = counts.get(worker, 0) + 1
    busy = [w for w, c in counts.items() if c >= 0.01 * len(stamps)]
    window_start = max(firsts[w] for w in busy)
    inside = [s for _, s, _ in stamps if s >= window_start]
    span = max(inside) - window_start
    return len(inside) / span if span > 0 else float("nan")


def latency_ms(stamps: list[Stamp]) -> dict[str, float]:
    ms = [(started - submitted) * 1000.0 for submitted, started, _ in stamps]
    return {"start_latency_p50_ms": pct(ms, 50), "start_latency_p99_ms": pct(ms, 99)}


def paced(submit: Callable[[float], None], rate_per_s: float, seconds: float) -> int:
    """Submit ``rate_per_s`` jobs a second for ``seconds``, each carrying its submit
    time (``time.time()`` just before the call)."""
    count = int(rate_per_s * seconds)
    interval = 1.0 / rate_per_s
    next_at = time.perf_counter()
    for _ in range(count):
        submit(time.time())
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    return count


def rss_session_kib(leader: int) -> int:
    """Resident memory (KiB) of every process in the session ``leader`` started."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) != leader:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


# -- worker processes ---------------------------------------------------------------


class WorkerGroup:
    """Worker subprocesses, each in its own session; ``kill`` SIGKILLs the sessions
    (so forked children go too). Their pids are appended to ``$BENCH_PIDFILE`` so
    the orchestrator can kill them even if this process dies first."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
        self.procs: list[subprocess.Popen[bytes]] = []
        log_dir = Path(os.environ.get("BENCH_LOG_DIR", tempfile.gettempdir()))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"peer-{uuid.uuid4().hex[:6]}.log"

    def start(self, cmd: list[str]) -> None:
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        pidfile = os.environ.get(PIDFILE_ENV)
        if pidfile:
            with open(pidfile, "a") as fh:
                fh.write(f"{proc.pid}\n")

    def rss_kib(self) -> int:
        return sum(rss_session_kib(p.pid) for p in self.procs)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def kill(self) -> None:
        for proc in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.procs.clear()
        with suppress(OSError):
            self.log.unlink()


def kill_sessions(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# -- databases ----------------------------------------------------------------------


@contextmanager
def fresh_redis(db: int) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url(db))
    r.flushdb()
    try:
        yield r
    finally:
        r.flushdb()
        r.close()


@contextmanager
def fresh_pg(prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # our own generated name
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the workloads, the same for every peer -----------------------------------------


class Peer:
    """One peer. Subclasses open the peer's storage in ``session`` (a context
    manager that yields once the storage is fresh and removes it after), submit
    jobs, and name the worker commands."""

    name = "peer"
    stamp_db = 15  # the Redis database the handler's stamps go to
    workers_note = ""
    has_bulk = False

    @contextmanager
    def session(self) -> Iterator[None]:
        yield

    def submit(self, submitted: float) -> None:
        raise NotImplementedError

    def submit_bulk(self, count: int) -> None:
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        return {}

    def worker_commands(self) -> list[list[str]]:
        raise NotImplementedError


def enqueue_workload(peer: Peer, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with peer.session():
        t0 = time.perf_counter()
        for _ in range(n):
            peer.submit(0.0)
        out["enqueue_one_by_one_per_s"] = n / (time.perf_counter() - t0)
    if peer.has_bulk:
        with peer.session():
            t0 = time.perf_counter()
            peer.submit_bulk(n)
            out["enqueue_bulk_per_s"] = n / (time.perf_counter() - t0)
    return out


def process_workload(peer: Peer, n: int, latency_seconds: float,
                     timeout: float) -> dict[str, Any]:
    """Queue ``n`` jobs, start the workers, time the jobs' starts; then, on the
    same (now idle, warm) workers, submit at 100 jobs/s for ``latency_seconds``."""
    with peer.session(), fresh_redis(peer.stamp_db) as stamps_db:
        if peer.has_bulk:
            peer.submit_bulk(n)
        else:
            for _ in range(n):
                peer.submit(0.0)
        group = WorkerGroup({STAMP_ENV: redis_url(peer.stamp_db), **peer.worker_env()})
        try:
            for cmd in peer.worker_commands():
                group.start(cmd)
            try:
                stamps = wait_stamps(stamps_db, n, timeout)
            except TimeoutError as exc:
                raise RuntimeError(f"{exc}; worker log:\n{group.tail()}") from exc
            rss = group.rss_kib()
            rate = throughput(stamps)
            stamps_db.delete(STAMPS)
            count = paced(peer.submit, 100, latency_seconds)
            lat = latency_ms(wait_stamps(stamps_db, count, 60 + latency_seconds))
            rss_end = group.rss_kib()
        finally:
            group.kill()
    return {"process_per_s": rate, "worker_rss_start_kib": rss, "worker_rss_end_kib": rss_end,
            "workers": peer.workers_note, **lat}


def main(peer: Peer) -> int:
    """``python -m bench.peers.<module> {enqueue,process} --jobs N --seconds S``
    prints one JSON object."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["enqueue", "process"])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    if args.workload == "enqueue":
        result = enqueue_workload(peer, args.jobs)
    else:
        result = process_workload(peer, args.jobs, args.seconds, args.timeout)
    print(json.dumps(result))
    return 0


def median_min_max(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
