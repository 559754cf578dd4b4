"""Where this engine's worker spends its time while processing queued no-op jobs
(the explanation issue 9 asks for when a throughput target is missed).

    .bench-venv/bin/python bench/profile_worker.py [--backend postgresql] [--jobs 10000]

Starts ``python -m dartwing_jobs.worker --concurrency 2`` as bench/worker_throughput.py
does, attaches py-spy (``pip install py-spy``, as root) to the supervisor and its
children, submits the jobs in one transaction, and prints, per process role, the
functions with the most samples: inclusive (on the stack) and self (the leaf).
Writes the collapsed stacks to bench/results/profile-<UTC date-time>.txt.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize, args.top))
        return 0
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
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


if __name__ == "__main__":
    raise SystemExit(main())
