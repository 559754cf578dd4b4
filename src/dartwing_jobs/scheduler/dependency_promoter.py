"""Safety sweep of dependencies.

Workers already promote and cancel dependents in the transaction that ends a
parent (``Store.record_outcomes``), and ``cancel_job`` cascades at once. This
sweep catches whatever slipped between (a parent whose state was changed by an
operator, a cascade skipped because a row was locked, a scheduler-less
deployment catching up) within one sweep interval.

Each sweep looks only at parents that finished since the previous sweep (minus
a margin for transactions that committed late), so its cost follows what
changed, not how many jobs are pending; every ``full_interval`` seconds a full
sweep checks every pending job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..store import maintenance

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("dartwing_jobs.scheduler.dependencies")


@dataclass(frozen=True)
class SweepResult:
    promoted: list[str]
    canceled: list[str]
    full: bool


class DependencyPromoter:
    """``run_once()``: queue every pending job whose dependencies all completed and
    cancel (``dependency_failed``, naming the dependency) every pending job
    downstream of a dead-lettered or canceled one."""

    name = "dependency_promoter"

    def __init__(self, engine: Engine, *, batch_size: int = 500, interval: float = 0.5,
                 full_interval: float = 60.0, margin: float = 30.0) -> None:
        self.engine = engine
        self.store = engine.store
        self.batch_size = batch_size
        self.interval = interval
        self.full_interval = full_interval
        self.margin = margin
        self._since: float | None = None  # database clock
        self._next_full = 0.0  # monotonic

    def run_once(self, *, full: bool | None = None) -> SweepResult:
        """``full=None``: incremental, or full when one is due (the first sweep
        of a process is always full)."""
        with self.store.read() as conn:  # the common case finds nothing: no write lock
            started = self.store.now(conn)
            if full is None:
                full = self._since is None or time.monotonic() >= self._next_full
            since = None if full else self._since
            doomed = maintenance.doomed_pending_jobs(conn, since)
        canceled: list[str] = []
        if doomed:
            with self.store.transaction() as conn:
                # Re-read inside the write transaction; cancel_doomed re-checks
                # ``pending`` row by row anyway.
                doomed = maintenance.doomed_pending_jobs(conn, since)
                canceled = maintenance.cancel_doomed(self.store, conn, doomed)
        promoted: list[str] = []
        while True:
            with self.store.transaction() as conn:
                batch = maintenance.promote_ready_pending(
                    self.store, conn, self.batch_size, since)
            promoted.extend(batch)
            if len(batch) < self.batch_size:
                break
        self._since = started - self.margin
        if full:
            self._next_full = time.monotonic() + self.full_interval
        if promoted or canceled:
            log.info("dependency sweep: %d queued, %d canceled", len(promoted), len(canceled))
        return SweepResult(promoted=promoted, canceled=canceled, full=full)
