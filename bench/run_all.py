"""Side-by-side benchmark of this engine against its peers, in one invocation
(issue 9, SPEC section 8).

    .bench-venv/bin/python bench/run_all.py [--repeat 3] [--jobs 10000] [--systems ...]
    .venv/bin/python bench/run_all.py --quick        # this engine only, tiny sizes

Every workload runs ``--repeat`` times, interleaved: each round runs every system
once, in an order rotated by one system per round. Each figure is the median of
the rounds, with min and max, and its ratio to this engine on PostgreSQL and to
the raw ceiling (the hand-written ``SKIP LOCKED`` loop, 50 jobs per transaction,
on the same PostgreSQL). Writes ``bench/results/<UTC date-time>.json`` and prints
a Markdown table; see bench/README.md for how to read it.

This engine's workloads are bench/worker_throughput.py's functions, run in this
process; a peer's run in a subprocess ``python -m bench.peers.run PEER WORKLOAD``
of the same interpreter (the peers' virtualenv), whose worker processes are
SIGKILLed at the end of each run whatever happened.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import suppress
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker_throughput as wt  # bench/ is not a package

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 2
# worker_throughput.processing submits at 100 jobs/s for 5 s; the peers do the same.
LATENCY_SECONDS = 5.0

OURS = "dartwing-postgresql"
CEILING = "ceiling-postgresql"
PG_PEERS = ["procrastinate", "pgqueuer"]
REDIS_PEERS = ["celery", "rq", "dramatiq", "huey-redis"]
OUR_WORKERS = "`python -m dartwing_jobs.worker --concurrency 2` (supervisor + 2 children)"

SYSTEMS: dict[str, dict[str, str]] = {
    "dartwing-sqlite": {"label": "dartwing-jobs", "storage": "SQLite", "workers": OUR_WORKERS},
    OURS: {"label": "dartwing-jobs", "storage": "PostgreSQL", "workers": OUR_WORKERS},
    CEILING: {"label": "raw SKIP LOCKED loop", "storage": "PostgreSQL",
              "workers": "1 process, psycopg, no handler (start latency: a durable "
                         "insert that notifies, a durable claim by id in a listening "
                         "process)"},
    "ceiling-sqlite": {"label": "raw claim loop (SQLite analogue)", "storage": "SQLite",
                       "workers": "1 process, sqlite3, BEGIN IMMEDIATE"},
    "procrastinate": {"label": "Procrastinate", "storage": "PostgreSQL",
                      "workers": "2 `procrastinate worker` processes (concurrency 1 each)"},
    "pgqueuer": {"label": "PgQueuer", "storage": "PostgreSQL",
                 "workers": "2 processes running `PgQueuer.run()` (batch size 10)"},
    "celery": {"label": "Celery", "storage": "Redis",
               "workers": "1 worker, prefork pool of 2 processes"},
    "rq": {"label": "RQ", "storage": "Redis",
           "workers": "2 `rq worker` processes (fork per job, job module preloaded)"},
    "dramatiq": {"label": "Dramatiq", "storage": "Redis",
                 "workers": "`dramatiq --processes 2 --threads 8` (default threads)"},
    "huey-redis": {"label": "Huey", "storage": "Redis",
                   "workers": "`huey_consumer -w 2 -k process`"},
    "huey-sqlite": {"label": "Huey (SqliteHuey)", "storage": "SQLite",
                    "workers": "`huey_consumer -w 2 -k process`"},
}
QUICK_SYSTEMS = ["dartwing-sqlite", OURS, CEILING, "ceiling-sqlite"]
PEER_PACKAGES = ["procrastinate", "pgqueuer", "celery", "rq", "dramatiq", "huey", "redis"]

METRICS = [
    ("enqueue_one_by_one_per_s", "enqueue 1-by-1 /s", "rate"),
    ("enqueue_bulk_per_s", "enqueue bulk /s", "rate"),
    ("process_per_s", "processed /s", "rate"),
    ("start_latency_p50_ms", "start p50 ms", "latency"),
    ("start_latency_p99_ms", "start p99 ms", "latency"),
    ("worker_rss_end_kib", "worker RSS MiB", "memory"),
]


# -- one run of one system --------------------------------------------------------


def run_ours(backend: str, workload: str, n: int) -> dict[str, Any]:
    with wt.database(backend) as url:
        if workload == "enqueue":
            return wt.enqueue_rates(url, n)
        return wt.processing(url, n, CONCURRENCY)


def run_ceiling(backend: str, n: int) -> dict[str, Any]:
    with wt.database(backend) as url:
        rates = wt.loop_rates(url, n)
        # On PostgreSQL its start latency is the floor: a durable insert that
        # notifies, then a durable claim by id, and nothing else.
        floor = (wt.pg_start_floor(url, rate_per_s=100, seconds=LATENCY_SECONDS)
                 if backend == "postgresql" else {})
    # The ceiling's "processed /s" is its 50-per-transaction rate; 1/tx is kept too.
    latency = {f"start_latency_{q}_ms": floor[f"floor_start_{q}_ms"]
               for q in ("p50", "p99") if f"floor_start_{q}_ms" in floor}
    return {"process_per_s": rates["loop_50_per_tx_per_s"], **rates, **latency}


def run_peer(peer: str, workload: str, n: int, timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w+", suffix=".pids") as pidfile:
        env = dict(os.environ, PYTHONPATH=str(ROOT), BENCH_PIDFILE=pidfile.name)
        cmd = [sys.executable, "-m", "bench.peers.run", peer, workload, "--jobs", str(n),
               "--seconds", str(LATENCY_SECONDS), "--timeout", str(timeout)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        out, err = "", ""
        try:
            out, err = proc.communicate(timeout=timeout + 300)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:  # interrupted: let it kill its workers, then go
                proc.terminate()
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(20)
                proc.kill()
            pids = [int(p) for p in Path(pidfile.name).read_text().split()]
            for pid in pids:  # the peer's worker sessions, whatever happened
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if proc.returncode != 0:
            raise RuntimeError(f"{peer} {workload} exited {proc.returncode}: {err[-2000:]}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


def run_system(name: str, n: int, timeout: float) -> dict[str, Any]:
    """Both workloads of one system, once."""
    if name.startswith("ceiling-"):
        return run_ceiling(name.split("-", 1)[1], n)
    result: dict[str, Any] = {}
    for workload in ("enqueue", "process"):
        if name.startswith("dartwing-"):
            result.update(run_ours(name.split("-", 1)[1], workload, n))
        else:
            result.update(run_peer(name, workload, n, timeout))
    return result


# -- summary, ratios, targets -----------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    keys = {k for r in runs for k, v in r.items() if isinstance(v, int | float)}
    for key in sorted(keys):
        values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]
        if values:
            summary[key] = {"median": statistics.median(values), "min": min(values),
                            "max": max(values), "n": len(values)}
    return summary


def median(systems: dict[str, Any], name: str, key: str) -> float | None:
    value = systems.get(name, {}).get("summary", {}).get(key, {}).get("median")
    return None if value is None else float(value)


def ratios(systems: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    ceiling = median(systems, CEILING, "process_per_s")
    result: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in systems:
        out: dict[str, dict[str, float | None]] = {}
        for key, _, kind in METRICS:
            value = median(systems, name, key)
            ours = median(systems, OURS, key)
            vs_ours = value / ours if value is not None and ours else None
            vs_ceiling = (value / ceiling if kind == "rate" and value is not None and ceiling
                          else None)
            out[key] = {"vs_ours_postgresql": vs_ours, "vs_ceiling_50_per_tx": vs_ceiling}
        result[name] = out
    return result


def targets(systems: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 9's targets, each with the figure reached, the figure required, and
    the ratio of the two (>= 1 means met)."""

    def best(names: list[str], key: str, lowest: bool = False) -> tuple[str, float] | None:
        found = [(n, v) for n in names if (v := median(systems, n, key)) is not None]
        if not found:
            return None
        return (min if lowest else max)(found, key=lambda item: item[1])

    rows: list[dict[str, Any]] = []

    def add(what: str, ours_key: tuple[str, str], other: tuple[str, float] | None,
            factor: float, higher_is_better: bool, strict: bool = False) -> None:
        value = median(systems, *ours_key)
        if value is None or other is None:
            rows.append({"target": what, "status": "not measured"})
            return
        required = other[1] * factor
        margin = value / required if higher_is_better else required / value
        met = margin > 1 if strict else margin >= 1
        rows.append({"target": what, "ours": value, "compared_with": other[0],
                     "their_value": other[1], "required": required,
                     "margin": margin, "met": met})

    pg_best = best(PG_PEERS, "process_per_s")
    redis_best = best(REDIS_PEERS, "process_per_s")
    ceiling = median(systems, CEILING, "process_per_s")
    add("PostgreSQL processed/s >= 1.5x fastest of Procrastinate, PgQueuer",
        (OURS, "process_per_s"), pg_best, 1.5, True)
    add("PostgreSQL processed/s >= 1.0x fastest Redis peer",
        (OURS, "process_per_s"), redis_best, 1.0, True)
    add("PostgreSQL processed/s >= 30% of the raw loop at 50/tx",
        (OURS, "process_per_s"), (CEILING, ceiling) if ceiling else None, 0.3, True)
    add("SQLite processed/s >= 2x Huey's SqliteHuey",
        ("dartwing-sqlite", "process_per_s"),
        best(["huey-sqlite"], "process_per_s"), 2.0, True)
    add("PostgreSQL start p99 below every PostgreSQL peer's",
        (OURS, "start_latency_p99_ms"), best(PG_PEERS, "start_latency_p99_ms", lowest=True),
        1.0, False, strict=True)
    add("PostgreSQL start p99 within 3x of the fastest Redis peer's",
        (OURS, "start_latency_p99_ms"),
        best(REDIS_PEERS, "start_latency_p99_ms", lowest=True), 3.0, False)
    return rows


# -- Markdown -----------------------------------------------------------------------


def fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "memory":
        return f"{value / 1024:,.0f}"
    if kind == "latency":
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def cell(system: dict[str, Any], ratio: dict[str, Any], key: str, kind: str) -> str:
    stats = system.get("summary", {}).get(key)
    if not stats:
        return "—"
    text = fmt(stats["median"], kind)
    if stats["n"] > 1:
        text += f" [{fmt(stats['min'], kind)}-{fmt(stats['max'], kind)}]"
    r = ratio.get(key, {})
    parts = []
    if r.get("vs_ours_postgresql") is not None:
        parts.append(f"{r['vs_ours_postgresql']:.2f}x ours")
    if r.get("vs_ceiling_50_per_tx") is not None:
        parts.append(f"{r['vs_ceiling_50_per_tx']:.3f}x ceil")
    if parts:
        text += "<br>" + " · ".join(parts)
    return text


def markdown(doc: dict[str, Any]) -> str:
    systems, rats = doc["systems"], doc["ratios"]
    header = "| system | storage | workers | " + " | ".join(m[1] for m in METRICS) + " |"
    lines = [header, "|" + "---|" * (3 + len(METRICS))]
    for name, system in systems.items():
        info = SYSTEMS[name]
        cells = [cell(system, rats.get(name, {}), key, kind) for key, _, kind in METRICS]
        if system.get("errors"):
            cells[-1] += f" ({len(system['errors'])} failed attempt(s), see JSON)"
        lines.append(f"| {info['label']} | {info['storage']} | {info['workers']} | "
                     + " | ".join(cells) + " |")
    ceiling = systems.get(CEILING, {}).get("summary", {}).get("loop_1_per_tx_per_s")
    if ceiling:
        lines.append(f"| raw SKIP LOCKED loop, 1 job/tx | PostgreSQL | 1 process | — | — | "
                     f"{fmt(ceiling['median'], 'rate')} [{fmt(ceiling['min'], 'rate')}-"
                     f"{fmt(ceiling['max'], 'rate')}] | — | — | — |")
    lines += ["", "| target (issue 9) | ours | against | required | margin | met |",
              "|---|---|---|---|---|---|"]
    for t in doc["targets"]:
        if "ours" not in t:
            lines.append(f"| {t['target']} | — | — | — | — | {t['status']} |")
            continue
        kind = "latency" if "p99" in t["target"] else "rate"
        lines.append(
            f"| {t['target']} | {fmt(t['ours'], kind)} | {t['compared_with']} "
            f"{fmt(t['their_value'], kind)} | {fmt(t['required'], kind)} | "
            f"{t['margin']:.2f}x | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {}
    for package in ["dartwing-jobs", *PEER_PACKAGES, "psycopg", "sqlalchemy"]:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def write(args: argparse.Namespace, started: datetime, systems: dict[str, dict[str, Any]],
          rounds_done: int) -> dict[str, Any]:
    """Summarize what has run so far and (re)write the results file: a run cut
    short still leaves its finished rounds."""
    for system in systems.values():
        system["summary"] = summarize(system["runs"])
    path = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    doc: dict[str, Any] = {
        "meta": {
            "started_utc": started.isoformat(), "finished_utc": datetime.now(UTC).isoformat(),
            "jobs": args.jobs, "repeat": args.repeat, "rounds_done": rounds_done,
            "quick": args.quick, "latency_rate_per_s": 100, "latency_seconds": LATENCY_SECONDS,
            "concurrency": CONCURRENCY, "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_average_end": list(os.getloadavg()),
            "versions": versions(), "command": " ".join(sys.argv), "path": str(path),
        },
        "systems": systems,
    }
    doc["ratios"] = ratios(systems)
    doc["targets"] = targets(systems)
    doc["table_markdown"] = markdown(doc)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 50 jobs, one round, this engine and the raw loops")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one peer's processing run may take")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    if args.quick:
        args.jobs, args.repeat = 50, 1
        args.systems = [s for s in args.systems if s in QUICK_SYSTEMS]
    started = datetime.now(UTC)
    systems: dict[str, dict[str, Any]] = {
        name: {**SYSTEMS[name], "runs": [], "errors": []} for name in args.systems}
    order = list(args.systems)
    for round_no in range(args.repeat):
        rotated = order[round_no % len(order):] + order[:round_no % len(order)]
        for name in rotated:
            t0 = time.monotonic()
            print(f"round {round_no + 1}/{args.repeat}: {name} ...", file=sys.stderr, flush=True)
            for attempt in (1, 2):  # a shared machine's PostgreSQL may restart under us
                try:
                    result = run_system(name, args.jobs, args.timeout)
                    systems[name]["runs"].append(result)
                    break
                except Exception as exc:  # one failed run must not lose the others
                    systems[name]["errors"].append(
                        f"round {round_no + 1}, attempt {attempt}: {exc!r}")
                    traceback.print_exc()
                    time.sleep(10)
            print(f"  {name} took {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
            write(args, started, systems, rounds_done=round_no + (name == rotated[-1]))
    doc = write(args, started, systems, rounds_done=args.repeat)
    table = str(doc["table_markdown"])
    path = doc["meta"]["path"]
    print(table)
    print(f"\nmedian [min-max] of {args.repeat} interleaved round(s), {args.jobs} jobs; "
          f"raw figures in {path}")
    short = [name for name, s in systems.items() if len(s["runs"]) < args.repeat]
    if short:
        print(f"fewer runs than rounds for: {', '.join(short)} (see errors in the JSON)",
              file=sys.stderr)
    return 1 if short else 0


if __name__ == "__main__":
    raise SystemExit(main())
