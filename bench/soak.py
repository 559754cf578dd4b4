"""Soak (issue 9, workload 6; `make soak`, not in CI): mixed jobs at a steady rate
on PostgreSQL for ``--minutes`` (10) while one of two workers is SIGKILLed (its
whole process group) every ``--kill-every`` seconds (60) and started again.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 20] [--retention-minutes 2]

Processes: worker A (``--concurrency 2``, never killed), worker B (``--concurrency
2``, killed and restarted) and a scheduler (dependencies, lease rescue; lease 5 s).
Submissions, by share: progress reports (56%), a failure then a retry (20%), a
timeout (1 s limit, 3 s sleep, one retry, then dead letter: 4%; each costs a
killed and respawned child twice), and a parent/child pair
where the child depends on the parent (20%). Retention cleanup runs every 30 s
with retention set to ``--retention-minutes``.

Reports, and writes to bench/results/soak-<UTC date-time>.json: jobs lost (every
submitted job must be seen terminal; must be 0), jobs run twice at once (two
overlapping ledger runs of one job; must be 0), RSS of every long-lived process at
start (after warm-up) and end (must not grow more than 20%; a worker's children
are compared by the largest, since a timed-out job's child is replaced), the jobs
table and its indexes every minute (must level off: the end of the run at most
20% above half-way), and whether the queue drained.
Exit status 1 when any of these fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # bench.soak_handlers

import worker_throughput as wt  # bench/ is not a package
from soak_handlers import LEDGER_DDL, LEDGER_ENV

from dartwing_jobs import Engine
from dartwing_jobs.store.schema import jobs

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("completed", "dead_letter", "canceled")
HANDLERS = "dartwing_jobs.demo,bench.soak_handlers"
LEASE_SECONDS = 5.0
RSS_GROWTH_LIMIT = 1.20
TYPES = {
    "soak_progress": {"max_retries": 3, "default_timeout": 30},
    "soak_flaky": {"max_retries": 3, "default_timeout": 30},
    "soak_slow": {"max_retries": 1, "default_timeout": 1},
    "soak_child": {"max_retries": 3, "default_timeout": 30},
}


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.cmd, self.env, self.log_dir = name, cmd, env, log_dir
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        with open(self.log_dir / f"{self.name}-{self.starts}.log", "wb") as log:
            self.popen = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.popen is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def rss(self) -> dict[str, int]:
        """KiB of the session's leader and of its largest child (children come and
        go: a timed-out job's child is replaced), and how many children there are."""
        assert self.popen is not None
        leader, children = 0, []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with suppress(OSError, ValueError, IndexError):
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3]) != self.popen.pid:
                    continue
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        kib = int(line.split()[1])
                        if int(proc.name) == self.popen.pid:
                            leader = kib
                        else:
                            children.append(kib)
        return {"leader": leader, "largest_child": max(children, default=0),
                "children": len(children)}


def sizes(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_table_size('background_jobs'), pg_indexes_size('background_jobs'), "
            "(SELECT count(*) FROM background_jobs)").fetchone()
    assert row is not None
    return {"table_bytes": int(row[0]), "indexes_bytes": int(row[1]), "rows": int(row[2])}


def autovacuum(url: str) -> str:
    """The server's autovacuum setting: with it off, only the retention cleanup's
    own VACUUM reclaims the space of dead row versions."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    return str(row[0]) if row else "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5.0, help="submissions a second")
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--retention-minutes", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.now(UTC)
    rng = random.Random(9)
    with wt.database("postgresql") as url, tempfile.TemporaryDirectory() as tmp:
        engine = Engine(url, handler_modules=HANDLERS, rate_limit_org_per_minute=0,
                        rate_limit_user_per_minute=0)
        engine.migrate()
        engine.create_organization("bench")
        server_autovacuum = autovacuum(url)
        for name, config in TYPES.items():
            engine.job_types.register(name, handler=f"bench.soak_handlers:{name}",
                                      deduplicate=False, retry_backoff=0.2,
                                      retry_backoff_max=0.5, **config)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(LEDGER_DDL)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]),
                   DARTWING_JOBS_DATABASE_URL=url, DARTWING_JOBS_HANDLER_MODULES=HANDLERS,
                   DARTWING_JOBS_LEASE_SECONDS=str(LEASE_SECONDS), **{LEDGER_ENV: url})
        py = sys.executable
        log_dir = Path(tmp)
        procs = {
            "worker-a": Proc("worker-a", [py, "-m", "dartwing_jobs.worker", "--concurrency", "2"],
                             env, log_dir),
            "worker-b": Proc("worker-b", [py, "-m", "dartwing_jobs.worker", "--concurrency", "2"],
                             env, log_dir),
            "scheduler": Proc("scheduler", [py, "-m", "dartwing_jobs.scheduler", "--no-cleanup"],
                              env, log_dir),
        }
        submitted: list[str] = []
        seen_terminal: set[str] = set()
        timeline: list[dict[str, Any]] = []
        kills = 0
        try:
            def poll_terminal() -> None:
                pending = [j for j in submitted if j not in seen_terminal]
                for start in range(0, len(pending), 5000):
                    chunk = pending[start:start + 5000]
                    with engine.store.read() as conn:
                        done = conn.execute(select(jobs.c.id).where(
                            jobs.c.id.in_(chunk), jobs.c.status.in_(TERMINAL))).scalars().all()
                    seen_terminal.update(done)

            def submit_one() -> None:
                kind = rng.random()
                if kind < 0.56:
                    submitted.append(engine.submit_job("soak_progress", "bench", {}).id)
                elif kind < 0.76:
                    submitted.append(engine.submit_job("soak_flaky", "bench", {}).id)
                elif kind < 0.8:
                    submitted.append(engine.submit_job("soak_slow", "bench", {"sleep": 3}).id)
                else:
                    parent = engine.submit_job("soak_progress", "bench", {}).id
                    child = engine.submit_job("soak_child", "bench", {},
                                              depends_on=[parent]).id
                    submitted.extend([parent, child])

            time.sleep(5)  # imports
            t0 = time.monotonic()
            end_at = t0 + args.minutes * 60
            next_submit, next_kill = t0, t0 + args.kill_every
            next_poll, next_cleanup, next_sample = t0, t0 + 30, t0
            rss_start: dict[str, dict[str, int]] = {}
            size_start: dict[str, int] = {}
            warm_at = t0 + min(30.0, args.minutes * 60 / 4)
            while (now := time.monotonic()) < end_at:
                if now >= next_submit:
                    submit_one()
                    next_submit += 1.0 / args.rate
                if not rss_start and now >= warm_at:
                    rss_start = {n: p.rss() for n, p in procs.items() if n != "worker-b"}
                    size_start = sizes(url)
                if now >= next_kill:
                    procs["worker-b"].kill()
                    procs["worker-b"].start()
                    kills += 1
                    next_kill += args.kill_every
                if now >= next_poll:
                    poll_terminal()
                    next_poll += 2.0
                if now >= next_cleanup:
                    engine.cleanup(retention_days=args.retention_minutes / 1440)
                    next_cleanup += 30.0
                if now >= next_sample:
                    timeline.append({"t_s": round(now - t0), **sizes(url),
                                     "submitted": len(submitted),
                                     "terminal_seen": len(seen_terminal)})
                    next_sample += 60.0
                time.sleep(max(0.0, min(next_submit, next_poll) - time.monotonic()))
            rss_end = {n: p.rss() for n, p in procs.items() if n != "worker-b"}
            timeline.append({"t_s": round(time.monotonic() - t0), **sizes(url),
                             "submitted": len(submitted), "terminal_seen": len(seen_terminal)})
            # Drain: no more kills; wait until every submitted job was seen terminal.
            drain_deadline = time.monotonic() + args.drain_timeout
            while time.monotonic() < drain_deadline:
                poll_terminal()
                if len(seen_terminal) == len(submitted):
                    break
                time.sleep(1.0)
            drained_after = args.drain_timeout - (drain_deadline - time.monotonic())
            engine.cleanup(retention_days=args.retention_minutes / 1440)
            size_end = sizes(url)
            with psycopg.connect(url) as conn:
                overlaps = conn.execute(
                    "SELECT a.job_id, a.attempt, b.attempt FROM soak_ledger a JOIN soak_ledger b "
                    "ON a.job_id = b.job_id AND a.id < b.id WHERE a.started < "
                    "COALESCE(b.ended, b.started) AND b.started < COALESCE(a.ended, a.started)"
                ).fetchall()
                statuses = dict(conn.execute(
                    "SELECT status, count(*) FROM background_jobs GROUP BY status").fetchall())
                unseen = [j for j in submitted if j not in seen_terminal]
                present = {r[0] for r in conn.execute(
                    "SELECT id FROM background_jobs WHERE id = ANY(%s)", (unseen,)).fetchall()}
        finally:
            for proc in procs.values():
                proc.kill()
            engine.close()
    # Lost: never seen terminal and no longer in the table (retention only deletes
    # terminal jobs). Not drained: still there, not terminal, after the drain wait.
    lost = [j for j in unseen if j not in present]
    not_drained = [j for j in unseen if j in present]
    growth = {
        f"{name} {role}": rss_end.get(name, {}).get(role, 0) / kib
        for name, roles in rss_start.items() for role, kib in roles.items()
        if kib and role != "children"
    }
    def total(sample: dict[str, int]) -> int:
        return sample["table_bytes"] + sample["indexes_bytes"]

    # Levelling off: the size at the end of the run against the size half-way.
    middle = next((t for t in timeline if t["t_s"] >= args.minutes * 30), timeline[-1])
    size_growth = total(timeline[-1]) / max(1, total(middle))
    checks = {
        "jobs_lost_is_0": not lost,
        "jobs_run_twice_at_once_is_0": not overlaps,
        "rss_growth_at_most_20pct": all(g <= RSS_GROWTH_LIMIT for g in growth.values()),
        "queue_drained": not not_drained,
        "table_and_indexes_level_off": size_growth <= RSS_GROWTH_LIMIT,
    }
    doc: dict[str, Any] = {
        "meta": {"started_utc": started.isoformat(), "minutes": args.minutes,
                 "rate_per_s": args.rate, "kill_every_s": args.kill_every,
                 "retention_minutes": args.retention_minutes, "kills": kills,
                 "load_average_end": list(os.getloadavg()),
                 "server_autovacuum": server_autovacuum},
        "submitted": len(submitted), "jobs_lost": len(lost), "lost_sample": lost[:10],
        "not_drained": len(not_drained), "not_drained_sample": not_drained[:10],
        "jobs_run_twice_at_once": len(overlaps),
        "overlap_sample": [list(map(str, o)) for o in overlaps[:10]],
        "rss_start_kib": rss_start, "rss_end_kib": rss_end, "rss_growth": growth,
        "size_start": size_start, "size_end": size_end,
        "size_last_over_middle": size_growth, "timeline": timeline,
        "drained_after_s": drained_after, "final_statuses": statuses, "checks": checks,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"soak-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"submitted {len(submitted)} jobs over {args.minutes} min, worker B killed {kills} "
          f"times; lost {len(lost)}, not drained {len(not_drained)}, run twice at once "
          f"{len(overlaps)}, drained after "
          f"{drained_after:.0f} s; statuses at the end {statuses}")
    print("RSS growth end/start: " + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()))
    print("jobs table + indexes (bytes, rows) per minute: " + ", ".join(
        f"{t['t_s']}s {t['table_bytes'] + t['indexes_bytes']} {t['rows']}" for t in timeline)
        + f"; after drain and cleanup {total(size_end)} {size_end['rows']}; last/middle "
        f"{size_growth:.2f}")
    print(f"server autovacuum: {server_autovacuum}")
    print("checks: " + ", ".join(f"{k}={'ok' if v else 'FAILED'}" for k, v in checks.items()))
    print(f"raw figures in {path}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
