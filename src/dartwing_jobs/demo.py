"""The demo that ``make run`` serves: handlers worth watching, and the data to
watch them with (an organization, a System Manager, a member, job types, a few
jobs). Also the default of ``DARTWING_JOBS_HANDLER_MODULES``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from .domain.errors import Conflict, DuplicateJob
from .engine import Engine
from .worker.context import JobContext

DEMO_ORG = "demo"
DEMO_ADMIN = "admin@example.com"
DEMO_MEMBER = "member@example.com"


def noop(ctx: JobContext) -> dict[str, Any]:
    return {"ok": True}


def report(ctx: JobContext) -> dict[str, Any]:
    """Reports progress for about 20 s, checkpointing each step so a retry resumes."""
    steps = int(ctx.parameters.get("steps", 20))
    start = int((ctx.last_checkpoint or {}).get("step", 0))
    for step in range(start + 1, steps + 1):
        time.sleep(float(ctx.parameters.get("seconds_per_step", 1.0)))
        ctx.progress(100.0 * step / steps, f"rendered page {step} of {steps}")
        ctx.checkpoint({"step": step})
    return {"pages": steps}


def flaky(ctx: JobContext) -> dict[str, Any]:
    """Fails on its first two attempts, then succeeds: watch it retry."""
    if ctx.attempt <= int(ctx.parameters.get("failures", 2)):
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    return {"succeeded_on_attempt": ctx.attempt}


def too_slow(ctx: JobContext) -> None:
    """Never finishes: its job type's timeout stops it."""
    while True:
        time.sleep(1)


DEMO_JOB_TYPES: list[dict[str, Any]] = [
    {"name": "noop", "handler": "dartwing_jobs.demo:noop"},
    {"name": "report", "handler": "dartwing_jobs.demo:report", "default_priority": "high",
     "default_timeout": 120, "max_retries": 3},
    {"name": "flaky", "handler": "dartwing_jobs.demo:flaky", "max_retries": 3,
     "retry_backoff": 2, "retry_backoff_max": 10},
    {"name": "too_slow", "handler": "dartwing_jobs.demo:too_slow", "default_timeout": 5,
     "max_retries": 1, "retry_backoff": 2},
]


def load_demo_data(engine: Engine) -> dict[str, str]:
    """Idempotent: run it on every start; returns fresh tokens for the demo users."""
    creators: list[Callable[[], object]] = [
        lambda: engine.create_organization(DEMO_ORG, title="Demo Organization"),
        lambda: engine.create_user(DEMO_ADMIN, full_name="Demo Admin", system_manager=True),
        lambda: engine.create_user(DEMO_MEMBER, full_name="Demo Member"),
        lambda: engine.set_member(DEMO_ORG, DEMO_MEMBER, role="member", create=True),
    ]
    for create in creators:
        with contextlib.suppress(Conflict):
            create()
    existing = {t["name"] for t in engine.job_types.list()}
    missing = [t for t in DEMO_JOB_TYPES if t["name"] not in existing]
    if missing:
        engine.job_types.register_all(missing)
    for job_type, params in (("report", {"month": "2026-10"}), ("flaky", {}),
                             ("too_slow", {}), ("noop", {"hello": "world"})):
        with contextlib.suppress(DuplicateJob):
            engine.submit_job(job_type, DEMO_ORG, params, actor=DEMO_MEMBER)
    return {
        "member": engine.create_token(DEMO_MEMBER, expires_in_days=30)["token"],
        "admin": engine.create_token(DEMO_ADMIN, expires_in_days=30)["token"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dartwing_jobs.demo")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    engine = Engine()
    engine.migrate()
    tokens = load_demo_data(engine)
    print(f"Database: {engine.settings.database_url}")
    print(f"Demo member token ({DEMO_MEMBER}): {tokens['member']}")
    print(f"Demo admin token  ({DEMO_ADMIN}, System Manager): {tokens['admin']}")
    print(f"Try: curl -H 'Authorization: Bearer {tokens['member']}' "
          f"http://{args.host}:{args.port}/api/v1/jobs")
    from .services import serve_all

    serve_all(engine, host=args.host, port=args.port, workers=args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
