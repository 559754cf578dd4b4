"""Per-organization metrics at scale (issue 7, item 4).

Creates its own PostgreSQL database, loads 1,000,000 jobs and 2,000,000 execution
log rows over 1,000 organizations (``org-0000`` holds 40% of both, the other 999
share the rest), spread evenly over the last 30 days (the default retention), runs
``VACUUM ANALYZE``, then times ``get_metrics`` as an active member (so the access
check is included) for the large and a small organization: ``--calls`` timed calls
(default 30) after 3 warm-up calls, per window (24 h by default; ``--windows``
adds others). Writes JSON to bench/results/ and prints a Markdown table.

    .venv/bin/python bench/metrics_bench.py [postgresql://user@host:5432/postgres]

The URL (argv[1], or DARTWING_JOBS_BENCH_PG_URL) names a server and a database to
connect to for CREATE/DROP DATABASE. The load is ``INSERT ... SELECT FROM
generate_series`` in static SQL text with bound parameters; it is deterministic
(durations and statuses derive from the row number).

Data shape: jobs are 85% completed, 2% dead_letter, 2% canceled, 5% queued (a
fifth of them not yet due), 2% retrying, 1% running, 3% pending; priorities and 8
job types cycle. Log rows: 90% completed, 4% failed, 2% timeout, 1% worker_lost,
1% permanent, 2% canceled; durations 1..10,000 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

from dartwing_jobs import Engine
from dartwing_jobs.metrics import get_metrics

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).resolve().parent / "results"
DAY = 86400.0
LARGE = "org-0000"
MEMBER = "bench-member@example.com"

ORGANIZATIONS = text("""
INSERT INTO organizations (name, title, created_at)
SELECT 'org-' || lpad(g::text, 4, '0'), 'Organization ' || g, :now
FROM generate_series(0, :orgs - 1) AS g
""")

JOB_TYPES = text("""
INSERT INTO job_types (name, handler, default_priority, default_timeout, max_retries,
                       retry_backoff, retry_backoff_max, deduplicate, enabled,
                       created_at, modified_at)
SELECT 'bench-' || g, 'dartwing_jobs.demo:noop', 2, 300, 5, 10, 3600, true, true, :now, :now
FROM generate_series(0, :types - 1) AS g
""")

# Row i belongs to the large organization when i % 10 < 4 (40%), otherwise to one
# of the 999 others; times run evenly from now - span to now.
JOBS = text("""
INSERT INTO background_jobs (
    id, job_type, organization, parameters, priority, status, job_hash, deduplicate,
    attempts, max_retries, timeout_seconds, retry_backoff, retry_backoff_max,
    due_at, created_at, modified_at, started_at, completed_at)
SELECT md5('job' || i)::uuid::text, 'bench-' || (i % :types), CASE WHEN i % 10 < 4 THEN 'org-0000'
            ELSE 'org-' || lpad((1 + (i / 10) % (:orgs - 1))::text, 4, '0') END, '{}'::jsonb,
       i % 4, st, md5('hash' || i), false,
       CASE WHEN st IN ('pending', 'queued') THEN 0 ELSE 1 END, 5, 300, 10, 3600,
       CASE WHEN st = 'queued' AND r % 5 = 0 THEN :now + 3600 ELSE t END,
       t, t, CASE WHEN st IN ('pending', 'queued') THEN NULL ELSE t + 1 END,
       CASE WHEN st IN ('completed', 'dead_letter', 'canceled') THEN t + 2 END
FROM (
    SELECT i, r, :now - :span + :span * i / :n AS t,
           CASE WHEN r < 85 THEN 'completed' WHEN r < 87 THEN 'dead_letter'
                WHEN r < 89 THEN 'canceled' WHEN r < 94 THEN 'queued'
                WHEN r < 96 THEN 'retrying' WHEN r < 97 THEN 'running'
                ELSE 'pending' END AS st
    FROM (SELECT i, ((i * 2654435761) % 1000003) % 100 AS r
          FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS s
) AS rows
""")

LOG = text("""
INSERT INTO job_execution_log (job_id, organization, job_type, attempt, worker_id,
                               started_at, finished_at, duration_ms, outcome, error_type)
SELECT md5('job' || (i % :jobs))::uuid::text, CASE WHEN i % 10 < 4 THEN 'org-0000'
            ELSE 'org-' || lpad((1 + (i / 10) % (:orgs - 1))::text, 4, '0') END,
       'bench-' || (i % :types), 1 + i / :jobs, 'bench-worker', t - d / 1000.0, t, d, oc,
       CASE WHEN oc IN ('completed', 'canceled') THEN NULL ELSE oc END
FROM (
    SELECT i, :now - :span + :span * i / :n AS t,
           1 + ((i * 7919) % 10000)::double precision AS d,
           CASE WHEN r < 90 THEN 'completed' WHEN r < 94 THEN 'failed'
                WHEN r < 96 THEN 'timeout' WHEN r < 97 THEN 'worker_lost'
                WHEN r < 98 THEN 'permanent' ELSE 'canceled' END AS oc
    FROM (SELECT i, ((i * 40503) % 1000033) % 100 AS r
          FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS s
) AS rows
""")


def admin(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement.encode())  # static text naming the benchmark's own database


def pct(values: list[float], q: float) -> float:
    """Nearest rank (the same definition as the other bench scripts)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def small_org(orgs: int) -> str:
    return f"org-{orgs // 2:04d}"


def load(engine: Engine, *, jobs: int, logs: int, orgs: int, types: int, span: float,
         chunk: int = 250_000) -> dict[str, float]:
    timings: dict[str, float] = {}
    with engine.store.read() as conn:
        now = engine.store.now(conn)
    started = time.perf_counter()
    with engine.store.transaction() as conn:
        conn.execute(ORGANIZATIONS, {"now": now, "orgs": orgs})
        conn.execute(JOB_TYPES, {"now": now, "types": types})
    for what, stmt, total in (("jobs", JOBS, jobs), ("log", LOG, logs)):
        t0 = time.perf_counter()
        for lo in range(0, total, chunk):
            hi = min(total, lo + chunk) - 1
            with engine.store.transaction() as conn:
                conn.execute(stmt, {"now": now, "span": span, "n": total, "lo": lo, "hi": hi,
                                    "orgs": orgs, "types": types, "jobs": jobs})
            print(f"  {what}: {hi + 1:,}/{total:,}", file=sys.stderr)
        timings[f"load_{what}_s"] = round(time.perf_counter() - t0, 1)
    engine.create_user(MEMBER)
    for org in (LARGE, small_org(orgs)):
        engine.set_member(org, MEMBER, create=True)
    timings["load_total_s"] = round(time.perf_counter() - started, 1)
    return timings


def measure(engine: Engine, organization: str, window_hours: float, calls: int) -> dict[str, Any]:
    for _ in range(3):
        figures = get_metrics(engine, organization, window_hours, actor=MEMBER)
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        figures = get_metrics(engine, organization, window_hours, actor=MEMBER)
        samples.append((time.perf_counter() - t0) * 1000.0)
    completed = sum(v["count"] for v in figures["processing_time"].values())
    return {
        "organization": organization,
        "window_hours": window_hours,
        "calls": calls,
        "p50_ms": round(pct(samples, 50), 2),
        "p95_ms": round(pct(samples, 95), 2),
        "mean_ms": round(statistics.fmean(samples), 2),
        "max_ms": round(max(samples), 2),
        "jobs": sum(figures["jobs_by_status"].values()),
        "completed_attempts_in_window": completed,
        "attempts_in_window": sum(v["attempts"] for v in figures["failure_rate"].values()),
    }


def explain(engine: Engine, organization: str) -> list[str]:
    """The plan of the percentile query for the record (static text, bound value)."""
    from dartwing_jobs.store import metrics as queries

    with engine.store.read() as conn:
        since = queries.database_now(conn) - 24 * 3600.0
        stmt = queries.processing_time_statement(organization, since, dialect="postgresql")
        compiled = stmt.compile(dialect=conn.dialect)
        # The driver binds the parameters; the statement text is the compiled query.
        rows = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS) " + str(compiled), dict(compiled.params)
        ).scalars().all()
    return [str(r) for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?",
                        default=os.environ.get("DARTWING_JOBS_BENCH_PG_URL", DEFAULT_URL))
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--logs", type=int, default=2_000_000)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--types", type=int, default=8)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--windows", default="24",
                        help="comma-separated window_hours to time (default 24)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    base, _, _ = args.url.rpartition("/")
    dbname = f"dwj_metrics_bench_{os.getpid()}"
    admin(args.url, f'DROP DATABASE IF EXISTS "{dbname}"')
    admin(args.url, f'CREATE DATABASE "{dbname}"')
    url = f"{base}/{dbname}"
    engine = Engine(url)
    try:
        engine.migrate()
        print(f"loading into {dbname} ...", file=sys.stderr)
        timings = load(engine, jobs=args.jobs, logs=args.logs, orgs=args.orgs,
                       types=args.types, span=args.days * DAY)
        t0 = time.perf_counter()
        admin(url, "VACUUM ANALYZE")
        timings["vacuum_analyze_s"] = round(time.perf_counter() - t0, 1)
        windows = [float(w) for w in args.windows.split(",") if w.strip()]
        runs = [measure(engine, org, w, args.calls) for w in windows
                for org in (LARGE, small_org(args.orgs))]
        with psycopg.connect(url) as conn:
            server = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        report: dict[str, Any] = {
            "benchmark": "metrics",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "platform": platform.platform(), "postgresql": server},
            "data": {"jobs": args.jobs, "log_rows": args.logs, "organizations": args.orgs,
                     "job_types": args.types, "days": args.days,
                     "large_share": 0.4},
            "timings": timings,
            "targets_ms": {"large_p95": 200, "small_p95": 20},
            "runs": runs,
            "plan_large_24h": explain(engine, LARGE),
        }
    finally:
        engine.close()
        if not args.keep:
            admin(args.url, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"metrics-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}\n")
    print("| organization | jobs | window | completed attempts in window | p50 ms | p95 ms "
          "| max ms | target p95 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        target = 200 if run["organization"] == LARGE else 20
        print(f"| {run['organization']} | {run['jobs']:,} | {run['window_hours']:g} h "
              f"| {run['completed_attempts_in_window']:,} | {run['p50_ms']} | {run['p95_ms']} "
              f"| {run['max_ms']} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
