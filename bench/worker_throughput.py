"""Worker throughput, enqueue rate and start latency, beside a minimal hand-written
claim-and-complete loop on the same database in the same run (issue 3).

    .venv/bin/python bench/worker_throughput.py [--jobs 10000] [--rounds 3]
        [--backends sqlite postgresql]

Writes bench/results/worker-<timestamp>.json and prints a Markdown table. Quote
the ratios: the machine is shared and absolute figures move from run to run.
With ``--rounds`` the backends take turns that many times and the table gives
medians (the processed-to-loop ratio with its min and max over the rounds);
every round's figures are kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select, text

from dartwing_jobs import Engine
from dartwing_jobs.store.schema import CLAIMABLE_PREDICATE, job_execution_log, jobs

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    name = f"dwj_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # our own generated name
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (KiB), from /proc."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def setup_engine(url: str) -> Engine:
    engine = Engine(url, handler_modules="dartwing_jobs.demo", rate_limit_org_per_minute=0,
                    rate_limit_user_per_minute=0)
    engine.migrate()
    engine.create_organization("bench")
    engine.job_types.register("noop", handler="dartwing_jobs.demo:noop", deduplicate=False)
    return engine


def enqueue_rates(url: str, n: int) -> dict[str, float]:
    engine = setup_engine(url)
    t0 = time.perf_counter()
    for i in range(n):
        engine.submit_job("noop", "bench", {"i": i})
    one = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    batch = 500
    for start in range(0, n, batch):
        engine.submit_jobs("noop", "bench", [{"i": i} for i in range(start, start + batch)])
    bulk = n / (time.perf_counter() - t0)
    engine.close()
    return {"enqueue_one_by_one_per_s": one, "enqueue_bulk_per_s": bulk}


def start_worker(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DARTWING_JOBS_DATABASE_URL=url,
               DARTWING_JOBS_HANDLER_MODULES="dartwing_jobs.demo")
    return subprocess.Popen(
        [sys.executable, "-m", "dartwing_jobs.worker", "--concurrency", str(concurrency)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def queue_drained(engine: Engine) -> bool:
    """No job waiting or running: two probes of the claim and lease indexes, as
    cheap for the server as a peer's check of its broker. (Counting the completed
    jobs every 50 ms cost the server under test 2-4 ms of CPU a time.)"""
    with engine.store.read() as conn:
        busy = conn.execute(select(
            select(jobs.c.id).where(CLAIMABLE_PREDICATE).exists(),
            select(jobs.c.id).where(jobs.c.status == "running").exists())).one()
    return not any(busy)


def processing(url: str, n: int, concurrency: int) -> dict[str, float]:
    engine = setup_engine(url)
    worker = start_worker(url, concurrency)
    try:
        time.sleep(3.0)  # let the children import and report ready
        rss_start = rss_kib(worker.pid)
        engine.submit_jobs("noop", "bench", [{"i": i} for i in range(n)])
        children = child_pids(worker.pid)
        backends = pg_backends(engine)
        before = {p: cpu_seconds(p) for p in [worker.pid, *children, *backends]}

        if not wait_until(lambda: queue_drained(engine), 600):
            raise RuntimeError("the worker did not finish the jobs")
        with engine.store.read() as conn:
            completed = conn.execute(select(func.count()).select_from(jobs)
                                     .where(jobs.c.status == "completed")).scalar_one()
        if completed != n:
            raise RuntimeError(f"{completed} of {n} jobs completed")
        rss_end = rss_kib(worker.pid)
        backends = sorted(set(backends) | set(pg_backends(engine)))
        used = {p: cpu_seconds(p) - before.get(p, 0.0)
                for p in [worker.pid, *children, *backends]}
        cpu = {
            "cpu_us_per_job_supervisor": used[worker.pid] / n * 1e6,
            "cpu_us_per_job_children": sum(used[c] for c in children) / n * 1e6,
            "cpu_us_per_job_postgres": (sum(used[b] for b in backends) / n * 1e6
                                        if backends else None),
        }
        with engine.store.read() as conn:
            first, last = conn.execute(
                select(func.min(jobs.c.started_at), func.max(jobs.c.completed_at))).one()
        rate = n / (last - first)
        latency = start_latency(engine, rate_per_s=100, seconds=5)
    finally:
        worker.terminate()
        worker.wait(30)
        engine.close()
    return {"process_per_s": rate, "worker_rss_start_kib": rss_start,
            "worker_rss_end_kib": rss_end, **cpu, **latency}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def pg_backends(engine: Engine) -> list[int]:
    """The PostgreSQL server processes serving the worker (same machine): every
    session on the bench database but the one asking."""
    if engine.store.backend != "postgresql":
        return []
    with engine.store.read() as conn:
        return [int(p) for p in conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()")).scalars()]


def start_latency(engine: Engine, rate_per_s: int, seconds: float) -> dict[str, Any]:
    """Submit at a steady rate to an idle worker. Latency is measured as for the
    peers (bench/peers/common.py): from the client's clock just before the submit
    call to the handler's start (the execution log's ``started_at``, the child's
    clock at the call); one machine, one clock. Also its p50 and p99 by stage (each
    stage's own percentile: the slowest starts need not be slow in every stage), from the
    job row's ``created_at`` (the insert) and ``started_at`` (the claim)."""
    submitted: dict[str, tuple[float, float]] = {}
    interval = 1.0 / rate_per_s
    next_at = time.perf_counter()
    for i in range(int(rate_per_s * seconds)):
        before = time.time()
        job_id = engine.submit_job("noop", "bench", {"latency": i}).id
        submitted[job_id] = (before, time.time())
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    ids = list(submitted)

    def all_done() -> bool:
        with engine.store.read() as conn:
            n = conn.execute(select(func.count()).select_from(jobs).where(
                jobs.c.id.in_(ids), jobs.c.status == "completed")).scalar_one()
        return bool(n == len(ids))

    wait_until(all_done, 60)
    with engine.store.read() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.created_at, jobs.c.started_at,
                   job_execution_log.c.started_at.label("handler_started"))
            .join(job_execution_log, job_execution_log.c.job_id == jobs.c.id)
            .where(jobs.c.id.in_(ids))).all()
    stages: dict[str, list[float]] = {
        "call_to_insert": [], "insert_to_return": [], "return_to_claim": [],
        "claim_to_handler": []}
    ms = []
    for r in rows:
        before, after = submitted[r.id]
        ms.append((r.handler_started - before) * 1000.0)
        stages["call_to_insert"].append((r.created_at - before) * 1000.0)
        stages["insert_to_return"].append((after - r.created_at) * 1000.0)
        stages["return_to_claim"].append((r.started_at - after) * 1000.0)
        stages["claim_to_handler"].append((r.handler_started - r.started_at) * 1000.0)
    return {"start_latency_p50_ms": pct(ms, 50), "start_latency_p99_ms": pct(ms, 99),
            "start_latency_stage_p50_ms": {k: pct(v, 50) for k, v in stages.items()},
            "start_latency_stage_p99_ms": {k: pct(v, 99) for k, v in stages.items()}}


# -- the minimal hand-written loop -------------------------------------------------

PG_LOOP_SCHEMA = (
    "CREATE TABLE q (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'queued', "
    "priority int NOT NULL DEFAULT 2, created_at timestamptz NOT NULL DEFAULT now())",
    "CREATE INDEX q_claim ON q (priority, id) WHERE status = 'queued'",
)
PG_LOOP_CLAIM = (
    "UPDATE q SET status = 'running' WHERE id IN (SELECT id FROM q WHERE status = 'queued' "
    "ORDER BY priority, id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id"
)
PG_LOOP_DONE = "UPDATE q SET status = 'done' WHERE id = ANY(%s)"


def pg_loop(url: str, n: int, per_tx: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS q")
        for sql in PG_LOOP_SCHEMA:
            conn.execute(sql)
        conn.execute("INSERT INTO q (priority) SELECT 2 FROM generate_series(1, %s)", (n,))
        t0 = time.perf_counter()
        done = 0
        while done < n:
            with conn.transaction():
                ids = [r[0] for r in conn.execute(PG_LOOP_CLAIM, (per_tx,)).fetchall()]
                conn.execute(PG_LOOP_DONE, (ids,))
            done += len(ids)
        return n / (time.perf_counter() - t0)


# -- the start latency floor: the least a durable PostgreSQL start can cost --------

PG_FLOOR_SCHEMA = (
    "CREATE TABLE lq (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'queued')",
)
#: One statement, autocommit: the insert, durable, and its notification.
PG_FLOOR_SUBMIT = (
    "WITH ins AS (INSERT INTO lq DEFAULT VALUES RETURNING id) "
    "SELECT id, pg_notify('lq', id::text) FROM ins"
)
#: The claim by id, autocommit (durable before anything may run).
PG_FLOOR_CLAIM = "UPDATE lq SET status = 'running' WHERE id = %s AND status = 'queued' RETURNING id"


def floor_listener(url: str, n: int, ready: Any, out: Any) -> None:
    """A process that listens, claims each announced row by id on a second
    connection and notes the time the claim returned: where an engine that runs
    its handlers in its listening process would call one."""
    started: dict[int, float] = {}
    with psycopg.connect(url, autocommit=True) as listen, \
            psycopg.connect(url, autocommit=True) as claim:
        listen.execute("LISTEN lq")
        ready.set()
        for note in listen.notifies(timeout=max(30.0, n / 10), stop_after=n):
            row = claim.execute(PG_FLOOR_CLAIM, (int(note.payload),)).fetchone()
            if row is not None:
                started[row[0]] = time.time()
    out.put(started)


def pg_start_floor(url: str, rate_per_s: int, seconds: float) -> dict[str, float]:
    """Start latency of the minimal durable path, measured as ours (client clock
    before the submit to the start): one durable insert that notifies, then one
    durable claim by id in another process. Two WAL flushes in a row, no worker
    machinery: what a start on this PostgreSQL cannot go below."""
    n = int(rate_per_s * seconds)
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS lq")
        for sql in PG_FLOOR_SCHEMA:
            conn.execute(sql)
        listener = ctx.Process(target=floor_listener, args=(url, n, ready, out))
        listener.start()
        try:
            if not ready.wait(60):
                raise RuntimeError("the floor's listener did not start")
            submitted: dict[int, float] = {}
            interval = 1.0 / rate_per_s
            next_at = time.perf_counter()
            for _ in range(n):
                before = time.time()
                row = conn.execute(PG_FLOOR_SUBMIT).fetchone()
                assert row is not None
                submitted[row[0]] = before
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
            started: dict[int, float] = out.get(timeout=60)
        finally:
            listener.join(30)
            if listener.is_alive():
                listener.kill()
    ms = [(started[i] - before) * 1000.0 for i, before in submitted.items() if i in started]
    return {"floor_start_p50_ms": pct(ms, 50), "floor_start_p99_ms": pct(ms, 99)}


def sqlite_loop(url: str, n: int, per_tx: int) -> float:
    path = url[len("sqlite:///"):]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("DROP TABLE IF EXISTS q")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, status TEXT NOT NULL DEFAULT 'queued', "
                 "priority INT NOT NULL DEFAULT 2)")
    conn.execute("CREATE INDEX q_claim ON q (priority, id) WHERE status = 'queued'")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO q (priority) VALUES (2)", [()] * n)
    conn.execute("COMMIT")
    t0 = time.perf_counter()
    done = 0
    while done < n:
        conn.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in conn.execute(
            "UPDATE q SET status = 'running' WHERE id IN (SELECT id FROM q WHERE status = "
            "'queued' ORDER BY priority, id LIMIT ?) RETURNING id", (per_tx,)).fetchall()]
        conn.executemany("UPDATE q SET status = 'done' WHERE id = ?", [(i,) for i in ids])
        conn.execute("COMMIT")
        done += len(ids)
    conn.close()
    return n / (time.perf_counter() - t0)


def loop_rates(url: str, n: int) -> dict[str, float]:
    runner = pg_loop if url.startswith("postgresql") else sqlite_loop
    return {"loop_1_per_tx_per_s": runner(url, min(n, 5000), 1),
            "loop_50_per_tx_per_s": runner(url, n, 50)}


def run(backend: str, n: int, concurrency: int) -> dict[str, Any]:
    with database(backend) as url:
        result: dict[str, Any] = {"backend": backend, "jobs": n, "concurrency": concurrency}
        result.update(enqueue_rates(url, min(n, 2000)))
    with database(backend) as url:
        result.update(processing(url, n, concurrency))
    with database(backend) as url:
        if backend == "postgresql":
            url = url.replace("postgresql+psycopg://", "postgresql://")
        result.update(loop_rates(url, n))
        if backend == "postgresql":
            result.update(pg_start_floor(url, rate_per_s=100, seconds=5))
    result["process_vs_loop50"] = result["process_per_s"] / result["loop_50_per_tx_per_s"]
    result["process_vs_loop1"] = result["process_per_s"] / result["loop_1_per_tx_per_s"]
    return result


def median_of_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One backend's rounds as one row: the median of every figure (the ratios
    taken per round, then their median), the rounds themselves kept."""
    summary: dict[str, Any] = {}
    for key, value in rounds[0].items():
        values = [r[key] for r in rounds]
        if isinstance(value, float | int) and not isinstance(value, bool) and all(
                isinstance(v, float | int) for v in values):
            summary[key] = statistics.median(values)
        else:
            summary[key] = value
    ratios = [r["process_vs_loop50"] for r in rounds]
    summary["process_vs_loop50_min"] = min(ratios)
    summary["process_vs_loop50_max"] = max(ratios)
    summary["rounds"] = rounds
    return summary


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | enqueue 1-by-1/s | enqueue bulk/s | processed/s (2 procs) | "
        "loop 1/tx /s | loop 50/tx /s | ours vs loop 50/tx | start p50 ms | start p99 ms | "
        "start floor p50 / p99 ms | worker RSS start→end MiB | "
        "CPU µs/job: supervisor, children, PostgreSQL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        pg_cpu = r["cpu_us_per_job_postgres"]
        lines.append(
            f"| {r['backend']} | {r['enqueue_one_by_one_per_s']:.0f} | "
            f"{r['enqueue_bulk_per_s']:.0f} | {r['process_per_s']:.0f} | "
            f"{r['loop_1_per_tx_per_s']:.0f} | {r['loop_50_per_tx_per_s']:.0f} | "
            f"{100 * r['process_vs_loop50']:.1f}%{spread(r)} | {r['start_latency_p50_ms']:.1f} | "
            f"{r['start_latency_p99_ms']:.1f} | {floor(r)} | "
            f"{r['worker_rss_start_kib'] / 1024:.0f}→"
            f"{r['worker_rss_end_kib'] / 1024:.0f} | "
            f"{r['cpu_us_per_job_supervisor']:.0f}, {r['cpu_us_per_job_children']:.0f}, "
            f"{'—' if pg_cpu is None else round(pg_cpu)} |"
        )
    return "\n".join(lines)


def floor(r: dict[str, Any]) -> str:
    if r.get("floor_start_p50_ms") is None:
        return "—"
    return f"{r['floor_start_p50_ms']:.1f} / {r['floor_start_p99_ms']:.1f}"


def spread(r: dict[str, Any]) -> str:
    if len(r.get("rounds", ())) < 2:
        return ""
    return (f" ({100 * r['process_vs_loop50_min']:.1f}-"
            f"{100 * r['process_vs_loop50_max']:.1f})")


def write_results(prefix: str, results: Any) -> Path:
    """bench/results/<prefix>-<UTC time>.json, the raw figures behind a table."""
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--rounds", type=int, default=1,
                        help="turns the backends take; the table gives medians")
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, Any]]] = {b: [] for b in args.backends}
    for _ in range(max(1, args.rounds)):
        for backend in args.backends:
            rounds[backend].append(run(backend, args.jobs, args.concurrency))
    results = [median_of_rounds(rounds[b]) if args.rounds > 1 else rounds[b][0]
               for b in args.backends]
    path = write_results("worker", results)
    print(markdown(results))
    what = "single run" if args.rounds <= 1 else f"medians of {args.rounds} rounds"
    print(f"\n{what}; raw figures in {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
