"""Fair claiming between organizations (issue 10, item 6).

    .venv/bin/python bench/fairness_bench.py [--a-jobs 20000] [--seconds 60]
        [--backend postgresql] [--claim-orgs 1000] [--claim-per-org 100]

1. Start delay: organization A has ``--a-jobs`` queued 20 ms jobs; B and C each
   submit one job a second for ``--seconds``; two worker processes
   (``python -m dartwing_jobs.worker --concurrency 2``). Reported: the start delay
   of B's and C's jobs (``started_at - created_at``, database clock; p50, p99,
   max) and the total throughput while B and C submit, with fair claiming on
   (``DARTWING_JOBS_FAIR_CLAIMING=true``) and off. A job of B or C not started
   ``--drain`` seconds after the window counts with its delay so far (a lower
   bound) and is reported as not started.
2. Claim throughput: ``Store.claim_jobs`` in a loop (batches of 100, one
   transaction each, as the worker's exchanger claims) over 1,000 organizations
   each holding 100 ready no-op jobs, and over one organization holding the same
   100,000; fair claiming on (and off for one organization, for reference). The
   three setups take turns (``--rounds``, default 3) of ``--claims / --rounds``
   claims each, every turn on a database seeded for it; each rate is the median
   of its turns (min and max beside it). The 1,000-organization figure is quoted
   as a ratio to the one-organization one twice: the median of the turns' own
   ratios (each turn's two setups ran seconds apart, so a slow minute of a shared
   machine falls on both: the figure to read) and the ratio of the two medians.

Writes bench/results/fairness-<timestamp>.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker_throughput import ROOT, database, pct

from dartwing_jobs import Engine
from dartwing_jobs.domain.ids import new_id
from dartwing_jobs.store.schema import jobs

HANDLERS = "bench.fairness_handlers"


def new_engine(url: str, **settings: Any) -> Engine:
    return Engine(url, handler_modules=HANDLERS, sqlite_synchronous="NORMAL",
                  rate_limit_org_per_minute=0, **settings)


def job_row(org: str, i: int, job_type: str, params: dict[str, Any], due: float
            ) -> dict[str, Any]:
    """The ``i``-th queued job of an organization, as the engine would store it."""
    return {
        "id": new_id(), "job_type": job_type, "organization": org,
        "parameters": {**params, "i": i}, "priority": 2, "status": "queued",
        "job_hash": uuid.uuid4().hex * 2, "deduplicate": False, "max_retries": 0,
        "timeout_seconds": 60, "retry_backoff": 1.0, "retry_backoff_max": 1.0,
        "due_at": due + i * 1e-6, "created_at": due, "modified_at": due,
    }


def insert_rows(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Inserted directly (bound parameters, executemany), 5,000 a transaction."""
    for start in range(0, len(rows), 5000):
        with engine.store.transaction() as conn:
            conn.execute(insert(jobs), rows[start:start + 5000])


def seed_rows(engine: Engine, org: str, n: int, job_type: str, params: dict[str, Any],
              due: float) -> None:
    """``n`` due queued jobs of one organization, submitted together."""
    insert_rows(engine, [job_row(org, i, job_type, params, due) for i in range(n)])


def start_workers(url: str, fair: bool, n: int = 2, concurrency: int = 2
                  ) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
        "DARTWING_JOBS_HANDLER_MODULES": HANDLERS,
        "DARTWING_JOBS_FAIR_CLAIMING": "true" if fair else "false",
        "DARTWING_JOBS_SQLITE_SYNCHRONOUS": "NORMAL",
    })
    return [subprocess.Popen(
        [sys.executable, "-m", "dartwing_jobs.worker", "--database-url", url,
         "--concurrency", str(concurrency)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True) for _ in range(n)]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)


def delay_run(backend: str, fair: bool, a_jobs: int, seconds: float, drain: float
              ) -> dict[str, Any]:
    with database(backend) as url:
        engine = new_engine(url)
        engine.migrate()
        for org in ("org-a", "org-b", "org-c"):
            engine.create_organization(org)
        engine.job_types.register("sleep20", handler=f"{HANDLERS}:sleep_ms",
                                  deduplicate=False, max_retries=0)
        with engine.store.read() as conn:
            now = engine.store.now(conn)
        seed_rows(engine, "org-a", a_jobs, "sleep20", {"ms": 20}, now)
        procs = start_workers(url, fair)
        try:
            time.sleep(5.0)  # workers up and busy with A's backlog
            with engine.store.read() as conn:
                t0 = engine.store.now(conn)
            submitted: list[str] = []
            next_at = time.monotonic()
            for i in range(int(seconds)):
                next_at += 1.0
                for org in ("org-b", "org-c"):
                    submitted.append(engine.submit_job("sleep20", org, {"ms": 20, "i": i}).id)
                time.sleep(max(0.0, next_at - time.monotonic()))
            with engine.store.read() as conn:
                t1 = engine.store.now(conn)
                done = conn.execute(select(func.count()).where(
                    jobs.c.status == "completed", jobs.c.completed_at >= t0,
                    jobs.c.completed_at < t1)).scalar_one()
            deadline = time.monotonic() + drain
            while time.monotonic() < deadline:
                with engine.store.read() as conn:
                    waiting = conn.execute(select(func.count()).where(
                        jobs.c.id.in_(submitted), jobs.c.started_at.is_(None))).scalar_one()
                if not waiting:
                    break
                time.sleep(0.5)
            with engine.store.read() as conn:
                now = engine.store.now(conn)
                rows = conn.execute(select(jobs.c.organization, jobs.c.created_at,
                                           jobs.c.started_at)
                                    .where(jobs.c.id.in_(submitted))).all()
        finally:
            stop_workers(procs)
            engine.close()
    delays = [((r.started_at if r.started_at is not None else now) - r.created_at) * 1000
              for r in rows]
    return {
        "fair_claiming": fair, "backend": backend, "a_jobs": a_jobs, "seconds": seconds,
        "bc_jobs": len(rows),
        "bc_not_started": sum(1 for r in rows if r.started_at is None),
        "bc_delay_ms": {"p50": round(pct(delays, 50), 1), "p99": round(pct(delays, 99), 1),
                        "max": round(max(delays), 1)},
        "throughput_jobs_per_s": round(done / (t1 - t0), 1),
    }


def seeded_claim_store(url: str, backend: str, orgs: int, per_org: int, fair: bool,
                       interleaved: bool = False) -> Engine:
    """An engine on a fresh database holding ``orgs`` x ``per_org`` due no-op jobs:
    submitted organization by organization (each one's jobs together, in the
    table and in id order: a claim of one job from each of 100 organizations
    touches 100 places of every index and of the table), or ``interleaved`` (the
    organizations' first jobs, then their second ones, ...: the order in which
    tenants that submit at the same time fill the table)."""
    engine = new_engine(url)
    engine.migrate()
    engine.job_types.register("noop", handler=f"{HANDLERS}:noop", deduplicate=False)
    names = [f"org-{i:04d}" for i in range(orgs)]
    for name in names:
        engine.create_organization(name)
    with engine.store.read() as conn:
        now = engine.store.now(conn) - 10
    if interleaved:
        insert_rows(engine, [job_row(name, i, "noop", {}, now)
                             for i in range(per_org) for name in names])
    else:
        for name in names:
            seed_rows(engine, name, per_org, "noop", {}, now)
    if backend == "postgresql":
        with engine.store.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE background_jobs")  # static text
    engine.store.claim_policy = replace(engine.store.claim_policy, fair=fair)
    return engine


def claim_runs(backend: str, setups: list[tuple[int, int, bool, bool]], claims: int,
               rounds: int) -> list[dict[str, Any]]:
    """Claims of 100 in a loop, one transaction each, on every setup. The setups
    take turns, ``claims / rounds`` claims per turn, so that a slow moment of the
    machine falls on all of them alike; each turn runs on a freshly seeded database
    of its own and only that database exists meanwhile (several seeded databases
    at once would compete for the server's buffer cache, which penalises the
    setup whose claims touch pages all over the table). Rates: median (min, max)
    of the turns."""
    per_round = max(1, min(claims, min(o * k for o, k, _, _ in setups) // 100) // rounds)
    rates: list[list[float]] = [[] for _ in setups]
    claimed = [0 for _ in setups]
    served: list[set[str]] = [set() for _ in setups]
    for _ in range(rounds):
        for i, (orgs, per_org, fair, interleaved) in enumerate(setups):
            with database(backend) as url:
                engine = seeded_claim_store(url, backend, orgs, per_org, fair, interleaved)
                # Claims as the worker's claim thread makes them: on connections
                # of its own (``Store.units``), kept from one claim to the next.
                units = engine.store.units()
                got = 0
                started = time.perf_counter()
                for _ in range(per_round):
                    with units.transaction() as conn:
                        rows = engine.store.claim_jobs(conn, "bench", 100, 300.0)
                    got += len(rows)
                    served[i].update(r["organization"] for r in rows)
                rates[i].append(got / (time.perf_counter() - started))
                units.close()
                claimed[i] += got
                engine.close()
    return [{"backend": backend, "organizations": orgs, "jobs_per_organization": per_org,
             "submitted": "interleaved" if interleaved else "by organization",
             "fair_claiming": fair, "claimed": claimed[i], "rounds": rounds,
             "jobs_per_s": round(statistics.median(rates[i]), 1),
             "jobs_per_s_min": round(min(rates[i]), 1),
             "jobs_per_s_max": round(max(rates[i]), 1),
             "jobs_per_s_by_round": [round(r, 1) for r in rates[i]],
             "organizations_served": len(served[i])}
            for i, (orgs, per_org, fair, interleaved) in enumerate(setups)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="postgresql", choices=["sqlite", "postgresql"])
    parser.add_argument("--a-jobs", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--drain", type=float, default=60.0)
    parser.add_argument("--claim-orgs", type=int, default=1000)
    parser.add_argument("--claim-per-org", type=int, default=100)
    parser.add_argument("--claims", type=int, default=300, help="claims of 100 timed")
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns the claim setups take, interleaved")
    parser.add_argument("--skip-delay", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    results: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "delay": [],
                               "claims": []}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"fairness-{stamp}.json"
    total = args.claim_orgs * args.claim_per_org
    setups = [(1, total, True, False), (args.claim_orgs, args.claim_per_org, True, False),
              (args.claim_orgs, args.claim_per_org, True, True), (1, total, False, False)]
    results["claims"] = claim_runs(args.backend, setups, args.claims, args.rounds)
    one = results["claims"][0]
    for key, many in (("", results["claims"][1]), ("_interleaved", results["claims"][2])):
        results[f"many_to_one_organization{key}"] = round(
            many["jobs_per_s"] / one["jobs_per_s"], 3)
        by_round = [m / o for m, o in zip(many["jobs_per_s_by_round"],
                                          one["jobs_per_s_by_round"], strict=True)]
        results[f"many_to_one_by_round{key}"] = {
            "median": round(statistics.median(by_round), 3),
            "min": round(min(by_round), 3), "max": round(max(by_round), 3)}
    for r in results["claims"]:
        print(r, flush=True)
    out.write_text(json.dumps(results, indent=2))
    if not args.skip_delay:
        for fair in (True, False):
            results["delay"].append(delay_run(args.backend, fair, args.a_jobs, args.seconds,
                                              args.drain))
            print(results["delay"][-1], flush=True)
            out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {out}")
    print("\n| fair claiming | B/C jobs | not started | p50 ms | p99 ms | max ms | jobs/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results["delay"]:
        d = r["bc_delay_ms"]
        print(f"| {'on' if r['fair_claiming'] else 'off'} | {r['bc_jobs']} | "
              f"{r['bc_not_started']} | {d['p50']} | {d['p99']} | {d['max']} | "
              f"{r['throughput_jobs_per_s']} |")
    print("\n| organizations x jobs | submitted | fair claiming | claimed | "
          "jobs/s, median (min-max) |")
    print("|---|---|---|---:|---:|")
    for r in results["claims"]:
        print(f"| {r['organizations']:,} x {r['jobs_per_organization']:,} | {r['submitted']} | "
              f"{'on' if r['fair_claiming'] else 'off'} | {r['claimed']} | "
              f"{r['jobs_per_s']} ({r['jobs_per_s_min']}-{r['jobs_per_s_max']}) |")
    for key, label in (("", "submitted by organization"), ("_interleaved", "interleaved")):
        paired = results[f"many_to_one_by_round{key}"]
        print(f"\n{args.claim_orgs:,} organizations ({label}) / one organization: median "
              f"of the turns' ratios {paired['median']:.0%} ({paired['min']:.0%}-"
              f"{paired['max']:.0%}); ratio of the medians "
              f"{results[f'many_to_one_organization{key}']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
