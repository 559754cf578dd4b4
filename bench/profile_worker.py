"""Where this engine's worker spends its time while processing queued no-op jobs
(the explanation issue 9 asks for when a throughput target is missed).

    .bench-venv/bin/python bench/profile_worker.py [--backend postgresql] [--jobs 10000]

Starts ``python -m dartwing_jobs.worker --concurrency 2`` as bench/worker_throughput.py
does, attaches py-spy (``pip install py-spy``, as root) to the supervisor and its
children, submits the jobs in one transaction, and prints, per process role, the
functions with the most samples: inclusive (on the stack) and self (the leaf).
Writes the collapsed stacks to bench/results/profile-<UTC date-time>.txt.

With ``--latency SECONDS`` it profiles start latency instead: one job at a time at
100 a second to the idle worker, py-spy on the worker and, with idle samples (its
waits on the database are the point), on this submitting process; two files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker_throughput as wt  # bench/ is not a package

from dartwing_jobs.store.schema import jobs

ROOT = Path(__file__).resolve().parent.parent


def frame_name(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``module.py:fn``."""
    name, _, where = frame.partition(" (")
    return f"{Path(where.split(':', 1)[0]).name}:{name}" if where else name


def summarize(collapsed: Path, top: int) -> str:
    inclusive: dict[str, Counter[str]] = {}
    leaf: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # With --subprocesses each stack starts with 'process PID:"<command line>"'
        # (forked children share the supervisor's command line: keep the pid).
        key = "process"
        if frames and frames[0].startswith("process "):
            key = frames[0][:100]
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        names = [frame_name(f) for f in frames]
        totals[key] += count
        for name in set(names):
            inclusive.setdefault(key, Counter())[name] += count
        if names:
            leaf.setdefault(key, Counter())[names[-1]] += count
    out = []
    for key, total in totals.most_common():
        out.append(f"### {key}: {total} samples")
        out.append("inclusive:")
        for name, n in inclusive.get(key, Counter()).most_common(top):
            out.append(f"  {100 * n / total:5.1f}%  {name}")
        out.append("self:")
        for name, n in leaf.get(key, Counter()).most_common(top):
            out.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--summarize", type=Path, help="only summarize a saved profile")
    parser.add_argument("--latency", type=float, metavar="SECONDS",
                        help="profile starts at 100 jobs/s for this long instead")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize, args.top))
        return 0
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if args.latency:
        return profile_latency(spy_bin, args.backend, args.latency, stamp, args.top)
    out = ROOT / "bench" / "results" / f"profile-{args.backend}-{stamp}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with wt.database(args.backend) as url:
        engine = wt.setup_engine(url)
        worker = wt.start_worker(url, 2)
        spy = None
        try:
            time.sleep(3.0)
            spy = subprocess.Popen([spy_bin, "record", "--pid", str(worker.pid),
                                    "--subprocesses", "--rate", "250", "--format", "raw",
                                    "--output", str(out), "--threads"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            t0 = time.perf_counter()
            engine.submit_jobs("noop", "bench", [{"i": i} for i in range(args.jobs)])

            def done() -> bool:
                with engine.store.read() as conn:
                    n = conn.execute(select(func.count()).select_from(jobs)
                                     .where(jobs.c.status == "completed")).scalar_one()
                return bool(n >= args.jobs)

            wt.wait_until(done, 600)
            elapsed = time.perf_counter() - t0
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            worker.terminate()
            worker.wait(30)
            engine.close()
    print(f"{args.jobs} jobs in {elapsed:.1f} s ({args.jobs / elapsed:.0f}/s, submit included) "
          f"under py-spy at 250 Hz; collapsed stacks in {out}\n")
    print(summarize(out, args.top))
    return 0


def record(spy_bin: str, pid: int, out: Path, client: bool) -> subprocess.Popen[bytes]:
    """py-spy without pausing the process it samples (``--nonblocking``: a start
    takes a few milliseconds, a paused process would add to them); the worker with
    its children, the submitting client alone (the worker is its child too) and
    with idle samples (its waits on the database are the point)."""
    return subprocess.Popen(
        [spy_bin, "record", "--pid", str(pid), "--rate", "500", "--nonblocking",
         "--format", "raw", "--output", str(out), "--threads",
         *(["--idle"] if client else ["--subprocesses"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_latency(spy_bin: str, backend: str, seconds: float, stamp: str, top: int) -> int:
    """Starts, one at a time at 100 a second, with py-spy on the worker and on
    this process (the submitter, idle samples included)."""
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    worker_out = results / f"profile-latency-worker-{backend}-{stamp}.txt"
    client_out = results / f"profile-latency-client-{backend}-{stamp}.txt"
    with wt.database(backend) as url:
        engine = wt.setup_engine(url)
        worker = wt.start_worker(url, 2)
        spies: list[subprocess.Popen[bytes]] = []
        try:
            time.sleep(3.0)
            for i in range(200):  # warm: connections, prepared statements, plans
                engine.submit_job("noop", "bench", {"warm": i})
                time.sleep(0.01)
            spies = [record(spy_bin, worker.pid, worker_out, client=False),
                     record(spy_bin, os.getpid(), client_out, client=True)]
            time.sleep(1.0)
            latency = wt.start_latency(engine, rate_per_s=100, seconds=seconds)
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            worker.terminate()
            worker.wait(30)
            engine.close()
    print(f"start latency under py-spy at 500 Hz: p50 {latency['start_latency_p50_ms']:.2f} ms,"
          f" p99 {latency['start_latency_p99_ms']:.2f} ms; stages p50 "
          f"{latency['start_latency_stage_p50_ms']}; collapsed stacks in {worker_out} "
          f"and {client_out}\n")
    print("## the worker\n" + summarize(worker_out, top))
    print("\n## the submitting process (idle samples included)\n" + summarize(client_out, top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
