"""Periodic (cron) schedules.

Each tick fires exactly once across all schedulers: firing means inserting the
row ``(schedule_name, tick_at)`` into ``schedule_fires`` (its primary key) in the
same transaction as the job's submission. Two schedulers racing for one tick
both try the insert; the database lets one win, and the other's insert does
nothing. No lock is held in memory, and a scheduler that dies mid-fire rolls
back both the fire row and the job.

Only the latest tick at or before "now" is ever considered, so a scheduler that
was down for an hour fires once when it returns, not sixty times.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from croniter import croniter
from sqlalchemy.engine import RowMapping

from ..domain.errors import DartwingError, DuplicateJob
from ..store import maintenance

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("dartwing_jobs.scheduler.periodic")


def latest_tick(cron: str, now: float) -> float:
    """The latest tick of ``cron`` at or before ``now`` (epoch seconds, UTC)."""
    start = datetime.fromtimestamp(math.floor(now) + 1, UTC)
    return float(croniter(cron, start).get_prev(float))


def next_tick(cron: str, now: float) -> float:
    """The first tick of ``cron`` strictly after ``now``."""
    return float(croniter(cron, datetime.fromtimestamp(now, UTC)).get_next(float))


@dataclass(frozen=True)
class Fire:
    """What one ``run_once`` did for one schedule's tick."""

    schedule: str
    tick_at: float
    job_id: str | None
    outcome: str  # fired | duplicate | refused


class PeriodicScheduler:
    name = "periodic"

    def __init__(self, engine: Engine, *, interval: float = 0.25,
                 clock: Callable[[], float] | None = None) -> None:
        """``clock`` replaces the database clock as "now" (tests drive ticks with
        it); by default "now" is the database's clock, like every other time."""
        self.engine = engine
        self.store = engine.store
        self.interval = interval
        self.clock = clock

    def _now(self) -> float:
        if self.clock is not None:
            return self.clock()
        with self.store.read() as conn:
            return self.store.now(conn)

    def run_once(self, now: float | None = None) -> list[Fire]:
        """Fire the latest due tick of every enabled schedule that has not fired
        it (or a later one) yet."""
        moment = self._now() if now is None else now
        with self.store.read() as conn:
            rows = maintenance.list_schedules(conn, enabled_only=True)
        fires: list[Fire] = []
        for row in rows:
            try:
                tick = latest_tick(row["cron"], moment)
            except (ValueError, KeyError) as exc:  # a cron that croniter refuses now
                log.warning("schedule %s: bad cron %r: %s", row["name"], row["cron"], exc)
                continue
            if tick < math.floor(row["created_at"]):
                continue  # the schedule did not exist at that tick
            if row["last_fired_at"] is not None and tick <= row["last_fired_at"]:
                continue  # this tick, or a later one, already fired
            fire = self._fire(row, tick)
            if fire is not None:
                fires.append(fire)
        return fires

    def _fire(self, schedule: RowMapping, tick: float) -> Fire | None:
        name = schedule["name"]
        with self.store.transaction() as conn:
            if not maintenance.claim_tick(conn, name, tick):
                return None  # another scheduler fired this tick
            job_id: str | None = None
            try:
                with conn.begin_nested():
                    job = self.engine.submit_job(
                        schedule["job_type"], schedule["organization"],
                        dict(schedule["parameters"] or {}), tx=conn,
                    )
                job_id = job.id
                outcome = "fired"
            except DuplicateJob as dup:
                log.info("schedule %s: tick %s skipped: job %s from an earlier tick is "
                         "still active", name, _iso(tick), dup.existing_job_id)
                outcome = "duplicate"
            except DartwingError as exc:
                log.warning("schedule %s: tick %s refused: %s: %s", name, _iso(tick),
                            exc.code, exc.message)
                outcome = "refused"
            maintenance.record_fire(conn, name, tick, job_id)
        if job_id is not None:
            log.info("schedule %s: tick %s fired job %s", name, _iso(tick), job_id)
        return Fire(schedule=name, tick_at=tick, job_id=job_id, outcome=outcome)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
