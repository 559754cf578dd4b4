"""End-to-end delay from ``ctx.progress()`` in a worker process to its receipt by a
Socket.IO client (issue 6): a real ``dartwing-jobs serve`` process, a real worker
process, one python-socketio client subscribed to the organization.

    .venv/bin/python bench/realtime_latency.py [--jobs 200] [--backends sqlite postgresql]

Each job reports progress 5 times, 0.3 s apart (slower than the worker's progress
throttle of 0.25 s per job, so every value is written and the figure is the
pipeline's delay, not the throttle's), with ``time.time()`` of the call in the
message. Delay = receipt time - call time (one machine, one clock).
Writes bench/results/realtime-<timestamp>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import socketio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from worker_throughput import ROOT, database, pct, write_results

from dartwing_jobs import Engine

HANDLERS = "bench_handlers"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(backend: str, jobs: int, concurrency: int) -> dict[str, Any]:
    with database(backend) as url:
        engine = Engine(url, handler_modules=HANDLERS)
        engine.migrate()
        engine.create_organization("acme")
        engine.create_user("bench@example.com", system_manager=True)
        engine.job_types.register("probe", handler=f"{HANDLERS}:progress_probe",
                                  deduplicate=False)
        token = engine.create_token("bench@example.com")["token"]
        env = {**os.environ, "DARTWING_JOBS_HANDLER_MODULES": HANDLERS,
               "PYTHONPATH": str(ROOT / "bench"), "DARTWING_JOBS_DATABASE_URL": url}
        port = free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "dartwing_jobs.cli", "serve", "--port", str(port),
             "--workers", "0"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "dartwing_jobs.worker", "--concurrency", str(concurrency)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        delays: list[float] = []
        lock = threading.Lock()
        client = socketio.Client(reconnection=False)

        @client.on("job_progress")  # type: ignore[misc]
        def on_progress(data: dict[str, Any]) -> None:
            received = time.time()
            message = data.get("message") or ""
            if message.startswith("t="):
                with lock:
                    delays.append((received - float(message[2:])) * 1000.0)

        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("serve did not start")
                time.sleep(0.2)
            client.connect(base, auth={"token": token}, transports=["websocket"])
            client.call("subscribe", {"organization": "acme"}, timeout=10)
            time.sleep(3)  # the worker's children start
            engine.submit_jobs("probe", "acme", [{"i": i} for i in range(jobs)])
            expected = jobs * 5
            deadline = time.monotonic() + 60 + jobs * 1.5 / concurrency
            while len(delays) < expected and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            client.disconnect()
            for proc in (worker, serve):
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            engine.close()
    return {"backend": backend, "jobs": jobs, "concurrency": concurrency,
            "received": len(delays), "expected": jobs * 5,
            "p50_ms": pct(delays, 50), "p99_ms": pct(delays, 99), "max_ms": max(delays)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    results = [run(b, args.jobs, args.concurrency) for b in args.backends]
    write_results("realtime", results)
    print("| backend | jobs | worker processes | progress events received | p50 ms | p99 ms "
          "| max ms |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['jobs']} | {r['concurrency']} | "
              f"{r['received']}/{r['expected']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['max_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
