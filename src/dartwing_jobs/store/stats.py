"""Aggregate reads for operators (``/metrics``, ``/healthz``).

Read from the database at scrape time rather than counted in process memory, so
every API process behind a load balancer reports the same figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, exists, func, literal, select
from sqlalchemy.engine import Connection

from ..domain.statuses import CLAIMABLE, Status
from .clock import db_now
from .schema import CLAIMABLE_PREDICATE, job_events, job_execution_log, jobs


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


# -- operator metrics over the current counting period (the ``/metrics`` collector
# of ``api/prometheus.py``). Each query reads only rows of one period (indexed by
# ``job_events.created_at``) or only live queue rows (partial indexes), so the cost
# of a scrape is bounded by the traffic of a period, not by the table sizes.

SUBMITTED = "submitted"


def _labels(per_organization: bool, *columns: Any) -> list[Any]:
    return list(columns) if per_organization else list(columns[:-1])


def transition_counts(
    conn: Connection, since: float, *, per_organization: bool = False
) -> list[tuple[str, str, int | None, str | None, int]]:
    """``(status or 'submitted', job_type, priority, organization, count)`` of the
    status events written at or after ``since``. A job's first event (``pending``
    or ``queued`` at attempt 0 with no earlier event of the same job) is reported
    as ``submitted``: a promotion from ``pending`` or a manual retry of a job that
    never ran is not a submission. ``priority`` is None when the job is already
    deleted; ``organization`` is None unless ``per_organization``."""
    e, earlier = job_events.alias("e"), job_events.alias("earlier")
    first = case(
        (
            and_(
                e.c.status.in_([Status.PENDING.value, Status.QUEUED.value]),
                e.c.attempt == 0,
                ~exists().where(earlier.c.job_id == e.c.job_id, earlier.c.id < e.c.id),
            ),
            literal(SUBMITTED),
        ),
        else_=e.c.status,
    ).label("event")
    keys = _labels(per_organization, e.c.job_type, jobs.c.priority, e.c.organization)
    stmt = (
        select(first, *keys, func.count())
        .select_from(e.outerjoin(jobs, jobs.c.id == e.c.job_id))
        .where(e.c.kind == "status", e.c.created_at >= since)
        .group_by(first, *keys)
    )
    out = []
    for row in conn.execute(stmt):
        org = str(row[3]) if per_organization else None
        n = int(row[-1])
        out.append((str(row[0]), str(row[1]), None if row[2] is None else int(row[2]), org, n))
    return out


def live_counts(
    conn: Connection, now: float, *, per_organization: bool = False
) -> tuple[list[tuple[str, int, str | None, int]], list[tuple[str, int, str | None, int]]]:
    """Queue depth (due ``queued``/``retrying`` jobs) and running jobs, each as
    ``(job_type, priority, organization, count)``."""
    keys = _labels(per_organization, jobs.c.job_type, jobs.c.priority, jobs.c.organization)
    due = (
        select(*keys, func.count())
        .where(CLAIMABLE_PREDICATE, jobs.c.due_at <= now)
        .group_by(*keys)
    )
    running = (
        select(*keys, func.count())
        .where(jobs.c.status == Status.RUNNING.value)
        .group_by(*keys)
    )

    def rows(stmt: Any) -> list[tuple[str, int, str | None, int]]:
        return [
            (str(r[0]), int(r[1]), str(r[2]) if per_organization else None, int(r[-1]))
            for r in conn.execute(stmt)
        ]

    return rows(due), rows(running)


HistogramRow = tuple[str, int | None, str | None, list[int], int, float]


def _histogram(
    conn: Connection, value: Any, source: Any, where: Sequence[Any], keys: Sequence[Any],
    buckets: Sequence[float], per_organization: bool,
) -> list[HistogramRow]:
    cumulative = [func.sum(case((value <= bound, 1), else_=0)) for bound in buckets]
    stmt = (
        select(*keys, *cumulative, func.count(), func.coalesce(func.sum(value), 0.0))
        .select_from(source)
        .where(*where)
        .group_by(*keys)
    )
    out: list[HistogramRow] = []
    width = len(keys)
    for row in conn.execute(stmt):
        org = str(row[2]) if per_organization else None
        counts = [int(c or 0) for c in row[width:width + len(buckets)]]
        out.append((str(row[0]), None if row[1] is None else int(row[1]), org, counts,
                    int(row[-2]), float(row[-1])))
    return out


def processing_histogram(
    conn: Connection, since: float, buckets: Sequence[float], *,
    per_organization: bool = False,
) -> list[HistogramRow]:
    """Processing time in seconds (the execution log's ``duration_ms``) of the
    attempts that completed at or after ``since``: ``(job_type, priority,
    organization, cumulative counts per bucket, count, sum)``."""
    e = job_events.alias("e")
    log = job_execution_log
    seconds = log.c.duration_ms / 1000.0
    source = e.join(log, and_(log.c.job_id == e.c.job_id, log.c.attempt == e.c.attempt)) \
        .outerjoin(jobs, jobs.c.id == e.c.job_id)
    where = [e.c.kind == "status", e.c.status == Status.COMPLETED.value,
             e.c.created_at >= since, log.c.duration_ms.is_not(None)]
    keys = _labels(per_organization, e.c.job_type, jobs.c.priority, e.c.organization)
    return _histogram(conn, seconds, source, where, keys, buckets, per_organization)


def wait_histogram(
    conn: Connection, since: float, buckets: Sequence[float], *,
    per_organization: bool = False,
) -> list[HistogramRow]:
    """Wait in seconds from submission to the first start, of the jobs whose first
    attempt started at or after ``since`` (both times from the database clock)."""
    e = job_events.alias("e")
    seconds = e.c.created_at - jobs.c.created_at
    where = [e.c.kind == "status", e.c.status == Status.RUNNING.value, e.c.attempt == 1,
             e.c.created_at >= since]
    keys = _labels(per_organization, e.c.job_type, jobs.c.priority, e.c.organization)
    source = e.join(jobs, jobs.c.id == e.c.job_id)
    return _histogram(conn, seconds, source, where, keys, buckets, per_organization)


__all__ = [
    "HistogramRow",
    "attempt_counts",
    "job_counts",
    "live_counts",
    "oldest_due_age",
    "ping",
    "processing_histogram",
    "transition_counts",
    "wait_histogram",
]
