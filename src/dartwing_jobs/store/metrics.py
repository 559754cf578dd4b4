"""Per-organization metric queries (SPEC 5.5; the plan's P1-001, P3-002, P3-004).

Every statement is SQLAlchemy Core with bound parameters: the organization name,
the window's cut-off and the percentile fractions are values, never SQL text, so a
name such as ``x' OR '1'='1`` is just an organization that has no jobs.

The window
    ``[now - window, now]`` where ``now`` is read once from the database's clock
    (``db_now()``) and then bound as a parameter. Binding it (rather than writing
    ``finished_at >= clock_timestamp() - ...``) keeps the bound usable by the
    ``(organization, finished_at)`` index on PostgreSQL, where ``clock_timestamp()``
    is volatile, and gives every query of one call the same instant.

Percentiles (exact; the same definition on both backends)
    Linear interpolation between closest ranks, which is PostgreSQL's
    ``percentile_cont``: for the ``n`` values of a job type sorted ascending,
    ``x[0] .. x[n-1]``, and a fraction ``p``, let ``h = p * (n - 1)``,
    ``lo = floor(h)``, ``hi = ceil(h)``; the percentile is
    ``x[lo] + (h - lo) * (x[hi] - x[lo])``. PostgreSQL computes it with
    ``percentile_cont(p) WITHIN GROUP (ORDER BY duration_ms)``. SQLite has no
    ordered-set aggregates, so it ranks the rows with ``row_number()`` and
    ``count()`` window functions and evaluates the same formula in the same order
    of floating-point operations (``lo + frac * (hi - lo)``, as PostgreSQL's
    ``float8_lerp`` does); on SQLite ``CAST(h AS INTEGER)`` is ``floor(h)`` because
    ``h`` is never negative. The window-function form is standard SQL: a test runs it on
    PostgreSQL too and compares it with ``percentile_cont`` on random data.
    Figures are rounded to 3 decimals (microseconds) so that the backends' sums
    in different scan orders cannot differ in the last bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, and_, case, cast, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from ..domain.priorities import Priority
from ..domain.statuses import Status
from .clock import db_now
from .schema import CLAIMABLE_PREDICATE, job_execution_log, job_types, jobs

PERCENTILES: tuple[tuple[str, float], ...] = (("p50_ms", 0.5), ("p95_ms", 0.95))
# Outcomes of an attempt that are not failures (SPEC 3: a canceled attempt was
# stopped on request, not by an error).
NOT_FAILURES: tuple[str, ...] = ("completed", "canceled")
MS_DECIMALS = 3
RATE_DECIMALS = 4

log = job_execution_log


def database_now(conn: Connection) -> float:
    """The database's clock, once, as epoch seconds."""
    return float(conn.execute(select(db_now())).scalar_one())


def job_type_names(conn: Connection) -> list[str]:
    """Every registered job type (global configuration, not tenant data)."""
    return [str(n) for n in conn.execute(select(job_types.c.name).order_by(job_types.c.name))
            .scalars()]


def jobs_by_status(conn: Connection, organization: str) -> dict[str, int]:
    """Jobs of the organization by status; every status present, zeros included."""
    stmt = (
        select(jobs.c.status, func.count())
        .where(jobs.c.organization == organization)
        .group_by(jobs.c.status)
    )
    counts = {str(s): int(n) for s, n in conn.execute(stmt)}
    return {s.value: counts.get(s.value, 0) for s in Status}


def queue_depth_by_priority(conn: Connection, organization: str, now: float) -> dict[str, int]:
    """Due ``queued`` and ``retrying`` jobs by priority name; all four present."""
    stmt = (
        select(jobs.c.priority, func.count())
        .where(
            jobs.c.organization == organization,
            # The partial index's own predicate, repeated as static text so that
            # both planners can match it (a bound IN list cannot be proven to imply it).
            CLAIMABLE_PREDICATE,
            jobs.c.due_at <= now,
        )
        .group_by(jobs.c.priority)
    )
    counts = {int(p): int(n) for p, n in conn.execute(stmt)}
    return {p.label: counts.get(int(p), 0) for p in Priority}


def _completed_in_window(organization: str, since: float) -> list[ColumnElement[bool]]:
    return [
        log.c.organization == organization,
        log.c.finished_at >= since,
        log.c.outcome == "completed",
        log.c.duration_ms.is_not(None),
    ]


def processing_time_statement(
    organization: str, since: float, *, dialect: str
) -> Any:
    """``(job_type, count, avg_ms, p50_ms, p95_ms, max_ms)`` rows. ``dialect`` picks
    ``percentile_cont`` (``"postgresql"``) or the portable window-function form
    (anything else); both give the same numbers."""
    where = _completed_in_window(organization, since)
    if dialect == "postgresql":
        percentiles = [
            func.percentile_cont(p).within_group(log.c.duration_ms).label(name)
            for name, p in PERCENTILES
        ]
        return (
            select(
                log.c.job_type,
                func.count().label("count"),
                func.avg(log.c.duration_ms).label("avg_ms"),
                *percentiles,
                func.max(log.c.duration_ms).label("max_ms"),
            )
            .where(*where)
            .group_by(log.c.job_type)
        )
    return _portable_processing_time(where, dialect)


def _floor(value: Any, dialect: str) -> Any:
    # SQLite's CAST truncates (floor for the non-negative values here) and its math
    # functions are optional; PostgreSQL's CAST to integer rounds, so it uses floor.
    return cast(value, Integer) if dialect == "sqlite" else func.floor(value)


def _portable_processing_time(where: Sequence[ColumnElement[bool]], dialect: str) -> Any:
    ranked = (
        select(
            log.c.job_type,
            log.c.duration_ms,
            func.row_number().over(
                partition_by=log.c.job_type, order_by=log.c.duration_ms
            ).label("rn"),
            func.count().over(partition_by=log.c.job_type).label("n"),
        )
        .where(*where)
        .subquery("ranked")
    )
    picks: list[Any] = []
    for name, p in PERCENTILES:
        # h = p * (n - 1) as a float; ranks are 1-based, so x[lo] has rn = lo + 1.
        h = (ranked.c.n - 1) * cast(p, ranked.c.duration_ms.type)
        lo = _floor(h, dialect)
        hi = case((h > lo, lo + 1), else_=lo)
        picks += [
            func.max(case((ranked.c.rn == lo + 1, ranked.c.duration_ms))).label(f"{name}_lo"),
            func.max(case((ranked.c.rn == hi + 1, ranked.c.duration_ms))).label(f"{name}_hi"),
            func.max(h - lo).label(f"{name}_frac"),
        ]
    grouped = (
        select(
            ranked.c.job_type,
            func.count().label("count"),
            func.avg(ranked.c.duration_ms).label("avg_ms"),
            func.max(ranked.c.duration_ms).label("max_ms"),
            *picks,
        )
        .group_by(ranked.c.job_type)
        .subquery("grouped")
    )
    lerps = []
    for name, _ in PERCENTILES:
        lo_v, hi_v = grouped.c[f"{name}_lo"], grouped.c[f"{name}_hi"]
        frac = grouped.c[f"{name}_frac"]
        # Same operation order as PostgreSQL's float8_lerp: lo + frac * (hi - lo).
        lerps.append((lo_v + frac * (hi_v - lo_v)).label(name))
    return select(
        grouped.c.job_type, grouped.c.count, grouped.c.avg_ms, *lerps, grouped.c.max_ms
    )


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), MS_DECIMALS)


def processing_time(
    conn: Connection, organization: str, since: float, job_type_names: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Per job type over completed attempts that finished at or after ``since``:
    ``{count, avg_ms, p50_ms, p95_ms, max_ms}``. Types in ``job_type_names`` that
    have no such attempt are present with ``count`` 0 and null figures."""
    stmt = processing_time_statement(organization, since, dialect=conn.dialect.name)
    result: dict[str, dict[str, Any]] = {
        name: {"count": 0, "avg_ms": None, "p50_ms": None, "p95_ms": None, "max_ms": None}
        for name in job_type_names
    }
    for row in conn.execute(stmt).mappings():
        result[str(row["job_type"])] = {
            "count": int(row["count"]),
            "avg_ms": _ms(row["avg_ms"]),
            "p50_ms": _ms(row["p50_ms"]),
            "p95_ms": _ms(row["p95_ms"]),
            "max_ms": _ms(row["max_ms"]),
        }
    return dict(sorted(result.items()))


def failure_rate(
    conn: Connection, organization: str, since: float, job_type_names: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Per job type over attempts that finished at or after ``since``: attempts,
    failures (outcome neither ``completed`` nor ``canceled``) and their ratio,
    rounded to 4 decimals (0 when there was no attempt)."""
    failed = case((log.c.outcome.in_(NOT_FAILURES), 0), else_=1)
    stmt = (
        select(log.c.job_type, func.count(), func.coalesce(func.sum(failed), 0))
        .where(
            and_(
                log.c.organization == organization,
                log.c.finished_at >= since,
                log.c.outcome.is_not(None),
            )
        )
        .group_by(log.c.job_type)
    )
    result: dict[str, dict[str, Any]] = {
        name: {"attempts": 0, "failures": 0, "rate": 0.0} for name in job_type_names
    }
    for job_type, attempts, failures in conn.execute(stmt):
        attempts, failures = int(attempts), int(failures)
        rate = round(failures / attempts, RATE_DECIMALS) if attempts else 0.0
        result[str(job_type)] = {"attempts": attempts, "failures": failures, "rate": rate}
    return dict(sorted(result.items()))


__all__ = [
    "PERCENTILES",
    "database_now",
    "failure_rate",
    "job_type_names",
    "jobs_by_status",
    "processing_time",
    "processing_time_statement",
    "queue_depth_by_priority",
]
