"""Retention cleanup under load (issue 4, item 6).

Creates its own PostgreSQL database, loads N terminal jobs (default 200,000) that
are past retention (each with an execution log row and two events), then:

1. baseline: a client submits jobs at R/s (default 50) for D seconds, no cleanup;
2. during cleanup: the same client submits at R/s while the retention cleanup
   deletes every old job in batches (default 100 per transaction).

Reports the cleanup rate (jobs/s and rows/s, rows = jobs + logs + events +
dependency rows) and the submit latency p50/p99 without and with the cleanup
running. Writes JSON to bench/results/ and prints a Markdown table.

    .venv/bin/python bench/cleanup_bench.py [postgresql://user@host:5432/postgres]

The URL (argv[1], or DARTWING_JOBS_BENCH_PG_URL, or DARTWING_JOBS_DATABASE_URL)
names a server and a database to connect to for CREATE/DROP DATABASE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import insert

from dartwing_jobs import Engine
from dartwing_jobs.scheduler import CleanupProgress, RetentionCleaner
from dartwing_jobs.store.schema import job_events, job_execution_log, jobs

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).resolve().parent / "results"
DAY = 86400.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def admin(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)  # static text naming the benchmark's own database


def load(engine: Engine, count: int, chunk: int = 5000) -> None:
    statuses = ("completed", "dead_letter", "canceled")
    with engine.store.read() as conn:
        now = engine.store.now(conn)
    old = now - 60 * DAY
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        ids = [str(uuid.uuid4()) for _ in range(n)]
        job_rows = [
            {"id": job_id, "job_type": "bench", "organization": "bench",
             "parameters": {"i": start + i}, "priority": 2, "status": statuses[i % 3],
             "job_hash": f"old-{job_id}", "deduplicate": False, "max_retries": 0,
             "timeout_seconds": 0, "retry_backoff": 1.0, "retry_backoff_max": 1.0,
             "due_at": old, "created_at": old - 10, "modified_at": old, "completed_at": old,
             "attempts": 1}
            for i, job_id in enumerate(ids)
        ]
        log_rows = [
            {"job_id": job_id, "organization": "bench", "job_type": "bench", "attempt": 1,
             "worker_id": "w", "started_at": old - 1, "finished_at": old, "duration_ms": 1.0,
             "outcome": "completed"}
            for job_id in ids
        ]
        event_rows = [
            {"job_id": job_id, "organization": "bench", "job_type": "bench", "kind": "status",
             "status": s, "attempt": 1, "created_at": old}
            for job_id in ids for s in ("queued", "completed")
        ]
        with engine.store.transaction() as conn:
            conn.execute(insert(jobs), job_rows)
            conn.execute(insert(job_execution_log), log_rows)
            conn.execute(insert(job_events), event_rows)


class Submitter:
    """Submits at ``rate`` per second on a fixed schedule (no coordinated
    omission: a late submit does not push the next one back), recording each
    submit's latency."""

    def __init__(self, engine: Engine, rate: float) -> None:
        self.engine = engine
        self.rate = rate
        self.latencies: list[float] = []
        self.samples: list[tuple[float, float]] = []  # (start, latency ms)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.perf_counter()
        while not self._stop.is_set():
            delay = next_at - time.perf_counter()
            if delay > 0 and self._stop.wait(delay):
                break
            started = time.perf_counter()
            try:
                self.engine.submit_job("bench", "bench", {"n": uuid.uuid4().hex})
                latency = (time.perf_counter() - started) * 1000.0
                self.latencies.append(latency)
                self.samples.append((started, latency))
            except Exception:
                self.errors += 1
            next_at += interval


def measure(engine: Engine, rate: float, seconds: float) -> list[float]:
    submitter = Submitter(engine, rate)
    submitter.start()
    time.sleep(seconds)
    submitter.stop()
    return submitter.latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=os.environ.get(
        "DARTWING_JOBS_BENCH_PG_URL", os.environ.get("DARTWING_JOBS_DATABASE_URL", DEFAULT_URL)))
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=50.0, help="submits per second")
    parser.add_argument("--baseline-seconds", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    if not args.url.startswith(("postgresql", "postgres:")):
        parser.error("this benchmark needs a PostgreSQL URL")
    admin_url = args.url.replace("postgresql+psycopg://", "postgresql://")
    name = f"dwj_bench_cleanup_{uuid.uuid4().hex[:8]}"
    base, _, _ = admin_url.rpartition("/")
    url = f"{base}/{name}"
    admin(admin_url, f'CREATE DATABASE "{name}"')
    try:
        engine = Engine(url, handler_modules="dartwing_jobs.demo")
        engine.migrate()
        engine.create_organization("bench")
        engine.job_types.register("bench", handler="dartwing_jobs.demo:noop",
                                  deduplicate=False)
        t0 = time.perf_counter()
        load(engine, args.jobs)
        admin(url, "VACUUM ANALYZE")
        load_s = time.perf_counter() - t0
        print(f"loaded {args.jobs} terminal jobs in {load_s:.1f} s", file=sys.stderr)

        baseline = measure(engine, args.rate, args.baseline_seconds)

        submitter = Submitter(engine, args.rate)
        progress_marks: list[tuple[float, int]] = []

        def progress(p: CleanupProgress) -> None:
            if p.phase == "jobs":
                progress_marks.append((time.perf_counter(), p.done))

        submitter.start()
        time.sleep(1.0)  # the client is in its stride before the cleanup starts
        started = time.perf_counter()
        result = RetentionCleaner(engine).cleanup(
            retention_days=30, batch_size=args.batch_size, progress=progress)
        cleanup_s = time.perf_counter() - started
        submitter.stop()
        # Only submits that started while the cleanup ran.
        during = [ms for at, ms in submitter.samples if started <= at <= started + cleanup_s]
        engine.close()
    finally:
        admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    rows = result.jobs_deleted * 4  # job + log + 2 events (no dependency rows here)
    figures: dict[str, Any] = {
        "benchmark": "retention_cleanup",
        "at": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "jobs": args.jobs, "batch_size": args.batch_size, "submit_rate": args.rate,
        "cleanup": {"seconds": cleanup_s, "jobs_deleted": result.jobs_deleted,
                    "rows_deleted": rows, "batches": result.batches,
                    "jobs_per_s": result.jobs_deleted / cleanup_s,
                    "rows_per_s": rows / cleanup_s},
        "submit_ms": {
            "without_cleanup": {"n": len(baseline), "p50": percentile(baseline, 50),
                                "p99": percentile(baseline, 99), "max": max(baseline),
                                "mean": statistics.fmean(baseline)},
            "during_cleanup": {"n": len(during), "p50": percentile(during, 50),
                               "p99": percentile(during, 99), "max": max(during),
                               "mean": statistics.fmean(during)},
        },
        "submit_errors": submitter.errors,
    }
    ratio = figures["submit_ms"]["during_cleanup"]["p99"] / figures["submit_ms"][
        "without_cleanup"]["p99"]
    figures["p99_ratio"] = ratio
    figures["target_met"] = ratio <= 3.0
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cleanup_{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    w, d = figures["submit_ms"]["without_cleanup"], figures["submit_ms"]["during_cleanup"]
    print(f"| measure | value |\n|---|---|\n"
          f"| terminal jobs deleted | {result.jobs_deleted:,} in {result.batches:,} batches "
          f"of {args.batch_size} |\n"
          f"| cleanup time | {cleanup_s:.1f} s |\n"
          f"| cleanup rate | {result.jobs_deleted / cleanup_s:,.0f} jobs/s, "
          f"{rows / cleanup_s:,.0f} rows/s |\n"
          f"| submit p50 / p99 without cleanup ({w['n']} submits) | {w['p50']:.2f} / "
          f"{w['p99']:.2f} ms |\n"
          f"| submit p50 / p99 during cleanup ({d['n']} submits) | {d['p50']:.2f} / "
          f"{d['p99']:.2f} ms |\n"
          f"| p99 during / without | {ratio:.2f}x (target <= 3x: "
          f"{'met' if ratio <= 3 else 'NOT met'}) |")
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
