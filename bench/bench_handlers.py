"""Handlers for the benchmarks (put bench/ on PYTHONPATH and allow the module)."""

from __future__ import annotations

import time
from typing import Any

from dartwing_jobs import JobContext


def progress_probe(ctx: JobContext) -> dict[str, Any]:
    """Reports progress 5 times, 0.3 s apart, with the wall-clock time of the call."""
    for step in range(1, 6):
        ctx.progress(step * 20, f"t={time.time():.6f}")
        time.sleep(0.3)
    return {"steps": 5}
