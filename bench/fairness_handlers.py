"""Handlers of bench/fairness_bench.py."""

from __future__ import annotations

import time

from dartwing_jobs.worker.context import JobContext


def sleep_ms(ctx: JobContext) -> None:
    """Sleeps ``parameters["ms"]`` milliseconds (20 by default)."""
    time.sleep(float(ctx.parameters.get("ms", 20)) / 1000.0)


def noop(ctx: JobContext) -> None:
    return None
