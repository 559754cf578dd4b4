"""Aggregate reads for operators (``/metrics``, ``/healthz``).

Read from the database at scrape time rather than counted in process memory, so
every API process behind a load balancer reports the same figures.
"""

from __future__ import annotations

from sqlalchemy import case, func, literal, select
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


DURATION_BUCKETS_SECONDS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


def duration_histogram(conn: Connection) -> tuple[list[int], int, float]:
    """Finished attempts' durations as cumulative bucket counts (one per
    ``DURATION_BUCKETS_SECONDS`` entry), total count and sum in seconds: one scan,
    every bucket computed by the database."""
    ms = job_execution_log.c.duration_ms
    columns = [
        func.coalesce(func.sum(case((ms <= le * 1000.0, 1), else_=0)), 0)
        for le in DURATION_BUCKETS_SECONDS
    ]
    row = conn.execute(
        select(*columns, func.count(), func.coalesce(func.sum(ms), 0.0)).where(ms.is_not(None))
    ).one()
    values = list(row)
    return [int(v) for v in values[:-2]], int(values[-2]), float(values[-1]) / 1000.0


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


__all__ = [
    "DURATION_BUCKETS_SECONDS", "attempt_counts", "duration_histogram", "job_counts",
    "oldest_due_age", "ping",
]
