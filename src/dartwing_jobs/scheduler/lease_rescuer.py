"""Rescue of jobs whose worker stopped renewing its lease. Workers run the same
rescue; the scheduler runs it too so that rescue happens even when every worker
is busy or gone."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("dartwing_jobs.scheduler.rescue")


class LeaseRescuer:
    name = "lease_rescuer"

    def __init__(self, engine: Engine, *, limit: int = 100, interval: float | None = None
                 ) -> None:
        self.engine = engine
        self.limit = limit
        self.interval = interval if interval is not None else max(
            1.0, float(engine.settings.lease_seconds) / 3)

    def run_once(self) -> int:
        """Rescue every expired lease (in transactions of ``limit`` jobs)."""
        total = 0
        while True:
            rescued = self.engine.rescue_expired_leases(limit=self.limit)
            total += rescued
            if rescued < self.limit:
                break
        if total:
            log.info("rescued %d job(s) with expired leases", total)
        return total
