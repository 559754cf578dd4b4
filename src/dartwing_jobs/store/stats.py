"""Aggregate reads for operators (``/metrics``, ``/healthz``).

Read from the database at scrape time rather than counted in process memory, so
every API process behind a load balancer reports the same figures.
"""

from __future__ import annotations

from sqlalchemy import func, literal, select
from sqlalchemy.engine import Connection

from ..domain.statuses import CLAIMABLE
from .clock import db_now
from .schema import job_execution_log, jobs


def ping(conn: Connection) -> None:
    """A trivial round trip: proves the database answers, touches no table."""
    conn.execute(select(literal(1))).scalar_one()


def job_counts(conn: Connection) -> list[tuple[str, int, int]]:
    """``(status, priority, count)`` for every combination that has jobs."""
    stmt = select(jobs.c.status, jobs.c.priority, func.count()).group_by(
        jobs.c.status, jobs.c.priority)
    return [(str(s), int(p), int(n)) for s, p, n in conn.execute(stmt)]


def attempt_counts(conn: Connection) -> list[tuple[str, int]]:
    """``(outcome, count)`` of recorded attempts; an unfinished attempt has none."""
    outcome = func.coalesce(job_execution_log.c.outcome, "running")
    stmt = select(outcome, func.count()).group_by(outcome)
    return [(str(o), int(n)) for o, n in conn.execute(stmt)]


def oldest_due_age(conn: Connection) -> float:
    """Seconds the longest-waiting claimable job has been due (0 when none is)."""
    oldest = conn.execute(
        select(func.min(jobs.c.due_at)).where(
            jobs.c.status.in_(sorted(s.value for s in CLAIMABLE)),
            jobs.c.due_at <= db_now(),
        )
    ).scalar()
    if oldest is None:
        return 0.0
    now = float(conn.execute(select(db_now())).scalar_one())
    return max(0.0, now - float(oldest))


__all__ = ["attempt_counts", "job_counts", "oldest_due_age", "ping"]
