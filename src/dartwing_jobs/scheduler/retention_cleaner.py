"""Retention cleanup (plan P1-008, P2-005).

Deletes terminal jobs (``completed``, ``dead_letter``, ``canceled``) older than
their retention (``Settings.retention_days``, or the job type's
``retention_days``) together with their execution logs, events and dependency
rows, then prunes old job events, then (PostgreSQL) vacuums and analyzes those
tables so their space is reused at once. Work is done in batches of ``batch_size`` jobs,
each batch its own short transaction, so submissions and workers are never
blocked behind one long delete, and a run interrupted anywhere loses nothing: the
committed batches are gone, the rest is still there for the next run.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..domain.errors import ValidationError
from ..store import maintenance

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("dartwing_jobs.scheduler.retention")

TASK = "retention_cleanup"


@dataclass
class CleanupProgress:
    """Handed to the progress callback after every committed batch (and once
    before the first, with ``done == 0``). ``total`` is counted at the start;
    jobs finishing during the run may make ``done`` pass it."""

    phase: str  # "jobs" | "events"
    done: int
    total: int
    batches: int


@dataclass
class CleanupResult:
    retention_days: float
    batch_size: int
    dry_run: bool
    jobs_deleted: int = 0
    events_deleted: int = 0
    batches: int = 0
    jobs_matched: int = 0  # counted at the start (the whole answer of a dry run)
    events_matched: int = 0
    per_job_type_retention: dict[str, float] = field(default_factory=dict)
    #: The freed space was made reusable (PostgreSQL: VACUUM) after the deletes.
    space_reclaimed: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "retention_days": self.retention_days, "batch_size": self.batch_size,
            "dry_run": self.dry_run, "jobs_deleted": self.jobs_deleted,
            "events_deleted": self.events_deleted, "batches": self.batches,
            "jobs_matched": self.jobs_matched, "events_matched": self.events_matched,
            "per_job_type_retention": dict(self.per_job_type_retention),
            "space_reclaimed": self.space_reclaimed,
        }


ProgressCallback = Callable[[CleanupProgress], None]


class RetentionCleaner:
    name = "retention_cleaner"

    def __init__(self, engine: Engine, *, interval: float = 60.0,
                 stale_after: float = 3600.0, owner: str | None = None) -> None:
        self.engine = engine
        self.store = engine.store
        self.interval = interval  # how often the daily guard is looked at
        self.stale_after = stale_after
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._done_day: str | None = None

    # -- on demand -----------------------------------------------------------

    def cleanup(
        self,
        *,
        retention_days: float | None = None,
        batch_size: int | None = None,
        dry_run: bool = False,
        progress: ProgressCallback | None = None,
        use_job_type_overrides: bool = True,
    ) -> CleanupResult:
        """Run the cleanup now. ``retention_days`` defaults to the setting and
        applies to every job type without its own ``retention_days``; a job type's
        override is the more specific rule and wins (pass
        ``use_job_type_overrides=False`` to force one period on every type).
        ``progress`` is called after each committed batch. A ``dry_run`` only
        counts (``jobs_matched``, ``events_matched``) and deletes nothing."""
        days = self.engine.settings.retention_days if retention_days is None else retention_days
        size = self.engine.settings.cleanup_batch_size if batch_size is None else batch_size
        if isinstance(days, bool) or not isinstance(days, int | float) or not days >= 0:
            raise ValidationError("retention days must be a number >= 0",
                                  field="retention_days")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValidationError("batch size must be an integer >= 1", field="batch_size")
        with self.store.read() as conn:
            now = self.store.now(conn)
            groups = maintenance.retention_groups(conn, float(days), use_job_type_overrides)
            jobs_total = maintenance.count_expired_jobs(conn, groups, now)
            event_cutoff = now - float(days) * maintenance.DAY
            events_total = maintenance.count_old_events(conn, event_cutoff)
        result = CleanupResult(
            retention_days=float(days), batch_size=size, dry_run=dry_run,
            jobs_matched=jobs_total, events_matched=events_total,
            per_job_type_retention={
                g.job_type: g.retention_days for g in groups if g.job_type is not None},
        )
        if dry_run:
            return result

        report = progress or (lambda _p: None)
        report(CleanupProgress("jobs", 0, jobs_total, 0))
        while True:
            with self.store.transaction() as conn:
                deleted = maintenance.delete_expired_jobs_batch(
                    self.store, conn, groups, now, size)
            if not deleted:
                break
            result.jobs_deleted += deleted
            result.batches += 1
            report(CleanupProgress("jobs", result.jobs_deleted, jobs_total, result.batches))
        # Events of the jobs deleted above went with them; what remains old here
        # belongs to jobs still kept (long-lived or not yet expired).
        with self.store.read() as conn:
            events_total = maintenance.count_old_events(conn, event_cutoff)
        report(CleanupProgress("events", 0, events_total, result.batches))
        while True:
            with self.store.transaction() as conn:
                deleted = maintenance.delete_old_events_batch(conn, event_cutoff, size)
            if not deleted:
                break
            result.events_deleted += deleted
            result.batches += 1
            report(CleanupProgress("events", result.events_deleted, events_total,
                                   result.batches))
        if result.jobs_deleted or result.events_deleted:
            result.space_reclaimed = self._reclaim_space()
        log.info("retention cleanup: %d job(s) and %d old event(s) deleted in %d batch(es)",
                 result.jobs_deleted, result.events_deleted, result.batches)
        return result

    def _reclaim_space(self) -> bool:
        """The deletes are committed whatever happens here: a failure to reclaim
        is logged, and autovacuum (or the next run) does it later."""
        try:
            return self.store.reclaim_space()
        except Exception as exc:
            log.warning("retention cleanup: could not reclaim space: %s",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return False

    # -- daily, from the scheduler --------------------------------------------

    def run_once(self, now: float | None = None) -> CleanupResult | None:
        """The daily run: claims today's (UTC) run in ``maintenance_runs`` so that
        of several schedulers exactly one cleans per day. Returns None when there
        was nothing to do (already done today, or another scheduler has it)."""
        with self.store.read() as conn:
            moment = self.store.now(conn) if now is None else now
        day = datetime.fromtimestamp(moment, UTC).date().isoformat()
        if self._done_day == day:
            return None
        with self.store.transaction() as conn:
            claimed = maintenance.claim_maintenance_run(
                conn, TASK, day, self.owner, self.stale_after)
        if not claimed:
            self._done_day = day
            return None

        def keep_alive(p: CleanupProgress) -> None:
            if p.batches and p.batches % 50 == 0:
                with self.store.transaction() as conn:
                    maintenance.touch_maintenance_run(conn, TASK, day, self.owner)

        result = self.cleanup(progress=keep_alive)
        with self.store.transaction() as conn:
            maintenance.finish_maintenance_run(
                conn, TASK, day, self.owner, result.jobs_deleted + result.events_deleted)
        self._done_day = day
        return result
