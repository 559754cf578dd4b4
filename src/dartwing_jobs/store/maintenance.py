"""The scheduler's SQL: dependency sweeps, periodic-schedule fires, retention
cleanup and the guard of daily maintenance runs.

Functions take an open ``Connection`` (the caller decides transaction
boundaries) and are SQLAlchemy Core with bound parameters only. Every write is
conditional on the state it expects (``status = 'pending'``, a unique key, a
terminal status), so any number of schedulers may run them at once without
doubling an effect. On PostgreSQL, rows that two schedulers could both pick are
selected ``FOR UPDATE SKIP LOCKED``; SQLite serialises writers (``BEGIN
IMMEDIATE``), which gives the same guarantee.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Double,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.sql.elements import ColumnElement

from ..domain.statuses import ACTIVE, TERMINAL, Status
from .base import Store
from .clock import db_now
from .schema import (
    job_dependencies,
    job_events,
    job_types,
    jobs,
    maintenance_runs,
    schedule_fires,
    schedules,
)

TERMINAL_VALUES = sorted(s.value for s in TERMINAL)
ACTIVE_VALUES = sorted(s.value for s in ACTIVE)
FAILED_VALUES = sorted([Status.DEAD_LETTER.value, Status.CANCELED.value])
DAY = 86400.0
_CANCEL_CHUNK = 200


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _skip_locked(conn: Connection, stmt: Any) -> Any:
    """Rows another scheduler holds are left to it (PostgreSQL); SQLite has one
    writer at a time, so there is nothing to skip."""
    return stmt.with_for_update(skip_locked=True) if is_postgres(conn) else stmt


def _insert_ignoring_conflict(conn: Connection, table: Any, values: Mapping[str, Any],
                              keys: Sequence[str]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when this call inserted the row."""
    builder = pg_insert if is_postgres(conn) else sqlite_insert
    stmt = (builder(table).values(**values)
            .on_conflict_do_nothing(index_elements=list(keys))
            .returning(literal(1)))
    return conn.execute(stmt).first() is not None


# -- dependencies ------------------------------------------------------------


#: The sweeps' statements, built once per shape (the scheduler runs them every
#: half second; building their aliases each time cost more than running them).
_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def _has_unfinished_dependency() -> ColumnElement[bool]:
    dep = job_dependencies.alias("dep")
    parent = jobs.alias("parent")
    return exists().where(
        dep.c.job_id == jobs.c.id,
        parent.c.id == dep.c.depends_on_id,
        parent.c.status != Status.COMPLETED.value,
    )


def promote_ready_pending(store: Store, conn: Connection, limit: int,
                          since: float | None = None) -> list[str]:
    """Queue up to ``limit`` pending jobs whose every dependency has completed.

    With ``since``, only dependents of jobs that completed at or after ``since``
    are looked at (an index range on (status, modified_at), then dependents by
    index): the cost follows what changed, not how many jobs are pending.
    Without it, every pending job is checked (the periodic full sweep).

    Conditional on ``status = 'pending'`` (re-checked by the update itself), so a
    worker promoting the same job in its completion transaction, or a second
    scheduler, can never queue it twice or write a second event."""
    key = ("promote", since is not None, is_postgres(conn))
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = _promote_statement(conn, since is not None)
    params: dict[str, Any] = {"limit": limit}
    if since is not None:
        params["since"] = since
    rows = conn.execute(stmt, params).mappings().all()
    store.insert_events(conn, [store.status_event(row) for row in rows])
    if rows:
        store.notify_jobs_available(conn)
    return [r["id"] for r in rows]


def _promote_statement(conn: Connection, incremental: bool) -> Any:
    unfinished = _has_unfinished_dependency()
    candidates = select(jobs.c.id).where(jobs.c.status == Status.PENDING.value, ~unfinished)
    if incremental:
        dep = job_dependencies.alias("changed_dep")
        parent = jobs.alias("changed_parent")
        candidates = candidates.where(jobs.c.id.in_(
            select(dep.c.job_id)
            .join(parent, parent.c.id == dep.c.depends_on_id)
            .where(parent.c.status == Status.COMPLETED.value,
                   parent.c.modified_at >= bindparam("since", type_=Double))
        ))
    chosen = _skip_locked(conn, candidates.limit(bindparam("limit", type_=Integer)))
    return (
        update(jobs)
        .where(jobs.c.id.in_(chosen.scalar_subquery()),
               jobs.c.status == Status.PENDING.value, ~_has_unfinished_dependency())
        .values(status=Status.QUEUED.value, due_at=func.coalesce(jobs.c.run_at, db_now()),
                modified_at=db_now())
        .returning(*jobs.c)
    )


@dataclass(frozen=True)
class DoomedJob:
    """A pending job that must be canceled because ``failed_id`` (one of its
    dependencies) ended ``failed_status`` or is itself doomed."""

    job_id: str
    failed_id: str
    failed_status: str


def doomed_pending_jobs(conn: Connection, since: float | None = None) -> list[DoomedJob]:
    """Every pending job downstream of a dead-lettered or canceled dependency, in
    one recursive query however deep the chain (a 1,000-deep chain is one
    statement, not 1,000 sweeps). One reason per job: its smallest failed
    dependency id, so the choice is stable. With ``since``, the walk starts only
    from jobs that failed at or after ``since``."""
    key = ("doomed", since is not None)
    query = _STATEMENTS.get(key)
    if query is None:
        query = _STATEMENTS[key] = _doomed_statement(since is not None)
    reasons: dict[str, DoomedJob] = {}
    for row in conn.execute(query, {} if since is None else {"since": since}):
        current = reasons.get(row.job_id)
        if current is None or row.failed_id < current.failed_id:
            reasons[row.job_id] = DoomedJob(row.job_id, row.failed_id, row.failed_status)
    return [reasons[k] for k in sorted(reasons)]


def _doomed_statement(incremental: bool) -> Any:
    d0, p0, c0 = job_dependencies.alias("d0"), jobs.alias("p0"), jobs.alias("c0")
    base = (
        select(d0.c.job_id.label("job_id"), d0.c.depends_on_id.label("failed_id"),
               cast(p0.c.status, Text).label("failed_status"),
               c0.c.status.label("child_status"))
        .join(p0, p0.c.id == d0.c.depends_on_id)
        .join(c0, c0.c.id == d0.c.job_id)
        .where(p0.c.status.in_(FAILED_VALUES), c0.c.status == Status.PENDING.value)
    )
    if incremental:
        base = base.where(p0.c.modified_at >= bindparam("since", type_=Double))
    doomed = base.cte("doomed", recursive=True)
    d1, c1 = job_dependencies.alias("d1"), jobs.alias("c1")
    # The walk goes down from the work table (dependents by index, their status by
    # primary key) and only continues below jobs that are still pending. Filtering
    # on the work table rather than on c1 keeps the plan a nested loop from the
    # few doomed rows, whatever the statistics say about pending jobs.
    step = (
        select(d1.c.job_id, d1.c.depends_on_id,
               cast(literal(Status.CANCELED.value), Text), c1.c.status)
        .select_from(doomed)
        .join(d1, d1.c.depends_on_id == doomed.c.job_id)
        .join(c1, c1.c.id == d1.c.job_id)
        .where(doomed.c.child_status == Status.PENDING.value)
    )
    doomed = doomed.union(step)  # UNION, not ALL: diamonds do not multiply rows
    return select(doomed.c.job_id, doomed.c.failed_id, doomed.c.failed_status).where(
        doomed.c.child_status == Status.PENDING.value)


def cancel_doomed(store: Store, conn: Connection, doomed: Sequence[DoomedJob]) -> list[str]:
    """Cancel the given pending jobs with ``dependency_failed`` and the reason.
    Rows another transaction holds are skipped (the next sweep takes them), and the
    update is conditional on ``pending``, so nothing is canceled twice."""
    canceled: list[str] = []
    for start in range(0, len(doomed), _CANCEL_CHUNK):
        chunk = {d.job_id: d for d in doomed[start:start + _CANCEL_CHUNK]}
        locked = conn.execute(_skip_locked(
            conn,
            select(jobs.c.id).where(jobs.c.id.in_(list(chunk)),
                                    jobs.c.status == Status.PENDING.value),
        )).scalars().all()
        if not locked:
            continue
        messages = {
            job_id: f"dependency {chunk[job_id].failed_id} ended {chunk[job_id].failed_status}"
            for job_id in locked
        }
        rows = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(list(locked)), jobs.c.status == Status.PENDING.value)
            .values(
                status=Status.CANCELED.value,
                completed_at=db_now(),
                modified_at=db_now(),
                error_type="dependency_failed",
                error_message=case(messages, value=jobs.c.id),
            )
            .returning(*jobs.c)
        ).mappings().all()
        store.insert_events(conn, [store.status_event(row) for row in rows])
        canceled.extend(row["id"] for row in rows)
    return canceled


# -- periodic schedules ------------------------------------------------------


def insert_schedule(conn: Connection, values: Mapping[str, Any]) -> bool:
    """False when a schedule of that name exists."""
    return _insert_ignoring_conflict(
        conn, schedules, dict(values, created_at=db_now()), ["name"])


def get_schedule(conn: Connection, name: str) -> RowMapping | None:
    return conn.execute(select(schedules).where(schedules.c.name == name)).mappings().first()


def list_schedules(conn: Connection, *, enabled_only: bool = False) -> list[RowMapping]:
    stmt = select(schedules).order_by(schedules.c.name)
    if enabled_only:
        stmt = stmt.where(schedules.c.enabled.is_(True))
    return list(conn.execute(stmt).mappings())


def delete_schedule(conn: Connection, name: str) -> bool:
    conn.execute(delete(schedule_fires).where(schedule_fires.c.schedule_name == name))
    return int(conn.execute(delete(schedules).where(schedules.c.name == name)).rowcount) == 1


def set_schedule_enabled(conn: Connection, name: str, enabled: bool) -> bool:
    stmt = update(schedules).where(schedules.c.name == name).values(enabled=enabled)
    return int(conn.execute(stmt).rowcount) == 1


def claim_tick(conn: Connection, schedule_name: str, tick_at: float) -> bool:
    """Record that this tick fires. The primary key (schedule_name, tick_at) lets
    exactly one scheduler win; the loser's insert does nothing. On PostgreSQL a
    concurrent loser waits for the winner's commit and then sees the row."""
    return _insert_ignoring_conflict(
        conn, schedule_fires,
        {"schedule_name": schedule_name, "tick_at": tick_at, "fired_at": db_now()},
        ["schedule_name", "tick_at"],
    )


def record_fire(conn: Connection, schedule_name: str, tick_at: float,
                job_id: str | None) -> None:
    conn.execute(
        update(schedule_fires)
        .where(schedule_fires.c.schedule_name == schedule_name,
               schedule_fires.c.tick_at == tick_at)
        .values(job_id=job_id)
    )
    conn.execute(
        update(schedules)
        .where(schedules.c.name == schedule_name,
               or_(schedules.c.last_fired_at.is_(None), schedules.c.last_fired_at < tick_at))
        .values(last_fired_at=tick_at)
    )


def fires_of(conn: Connection, schedule_name: str) -> list[RowMapping]:
    stmt = (
        select(schedule_fires)
        .where(schedule_fires.c.schedule_name == schedule_name)
        .order_by(schedule_fires.c.tick_at)
    )
    return list(conn.execute(stmt).mappings())


# -- retention cleanup -------------------------------------------------------


@dataclass(frozen=True)
class RetentionGroup:
    """Jobs sharing one retention period: the default, or a job type's override."""

    clause: ColumnElement[bool]
    retention_days: float
    job_type: str | None = None  # None: every job type without an override


def retention_groups(conn: Connection, default_days: float,
                     override_types: bool = True) -> list[RetentionGroup]:
    overrides: dict[str, float] = {}
    if override_types:
        rows = conn.execute(
            select(job_types.c.name, job_types.c.retention_days)
            .where(job_types.c.retention_days.is_not(None))
        )
        overrides = {r.name: float(r.retention_days) for r in rows}
    groups = [RetentionGroup(
        jobs.c.job_type.not_in(sorted(overrides)) if overrides else true(), default_days)]
    groups += [RetentionGroup(jobs.c.job_type == name, days, name)
               for name, days in sorted(overrides.items())]
    return groups


def _expired(group: RetentionGroup, now: float) -> ColumnElement[bool]:
    """Terminal, finished before the group's cutoff, and not a dependency of a job
    that is still active (deleting it would change that job's dependency list).
    The cutoff is a bound value computed from the database clock once, so the
    (status, modified_at) index can serve the range."""
    cutoff = now - group.retention_days * DAY
    dep = job_dependencies.alias("dep")
    child = jobs.alias("child")
    active_dependent = exists().where(
        dep.c.depends_on_id == jobs.c.id,
        child.c.id == dep.c.job_id,
        child.c.status.in_(ACTIVE_VALUES),
    )
    return and_(
        jobs.c.status.in_(TERMINAL_VALUES),
        jobs.c.modified_at < cutoff,
        func.coalesce(jobs.c.completed_at, jobs.c.modified_at) < cutoff,
        group.clause,
        ~active_dependent,
    )


def count_expired_jobs(conn: Connection, groups: Sequence[RetentionGroup], now: float) -> int:
    total = 0
    for group in groups:
        total += int(conn.execute(
            select(func.count()).select_from(jobs).where(_expired(group, now))).scalar_one())
    return total


def delete_expired_jobs_batch(store: Store, conn: Connection,
                              groups: Sequence[RetentionGroup], now: float,
                              batch_size: int) -> int:
    """Delete one batch (at most ``batch_size`` jobs) with their execution logs,
    events and dependency rows. The chosen rows are locked (``SKIP LOCKED`` on
    PostgreSQL), so a concurrent retry of one of them either happened first
    (the job is no longer terminal: skipped) or waits and finds it gone."""
    ids: list[str] = []
    for group in groups:
        if len(ids) >= batch_size:
            break
        stmt = _skip_locked(
            conn, select(jobs.c.id).where(_expired(group, now)).limit(batch_size - len(ids)))
        ids.extend(conn.execute(stmt).scalars().all())
    if not ids:
        return 0
    return store.delete_jobs(conn, ids)


def count_old_events(conn: Connection, cutoff: float) -> int:
    stmt = select(func.count()).select_from(job_events).where(job_events.c.created_at < cutoff)
    return int(conn.execute(stmt).scalar_one())


def delete_old_events_batch(conn: Connection, cutoff: float, batch_size: int) -> int:
    chosen = _skip_locked(
        conn,
        select(job_events.c.id).where(job_events.c.created_at < cutoff).limit(batch_size),
    )
    ids = conn.execute(chosen).scalars().all()
    if not ids:
        return 0
    return int(conn.execute(delete(job_events).where(job_events.c.id.in_(list(ids)))).rowcount)


# -- the guard of daily maintenance runs ---------------------------------------


def claim_maintenance_run(conn: Connection, task: str, run_key: str, owner: str,
                          stale_after: float) -> bool:
    """Claim ``task`` for ``run_key`` (e.g. the UTC date). Exactly one claimer wins
    a fresh key; an unfinished run whose owner went quiet for ``stale_after``
    seconds may be taken over (a conditional update: one taker)."""
    values = {"task": task, "run_key": run_key, "owner": owner, "started_at": db_now()}
    if _insert_ignoring_conflict(conn, maintenance_runs, values, ["task", "run_key"]):
        return True
    taken = conn.execute(
        update(maintenance_runs)
        .where(maintenance_runs.c.task == task, maintenance_runs.c.run_key == run_key,
               maintenance_runs.c.finished_at.is_(None),
               maintenance_runs.c.started_at < db_now() - stale_after)
        .values(owner=owner, started_at=db_now())
    )
    return int(taken.rowcount) == 1


def touch_maintenance_run(conn: Connection, task: str, run_key: str, owner: str) -> None:
    """Keep a long run from looking stale."""
    conn.execute(
        update(maintenance_runs)
        .where(maintenance_runs.c.task == task, maintenance_runs.c.run_key == run_key,
               maintenance_runs.c.owner == owner, maintenance_runs.c.finished_at.is_(None))
        .values(started_at=db_now())
    )


def finish_maintenance_run(conn: Connection, task: str, run_key: str, owner: str,
                           rows_deleted: int) -> None:
    conn.execute(
        update(maintenance_runs)
        .where(maintenance_runs.c.task == task, maintenance_runs.c.run_key == run_key,
               maintenance_runs.c.owner == owner)
        .values(finished_at=db_now(), rows_deleted=rows_deleted)
    )


def get_maintenance_run(conn: Connection, task: str, run_key: str) -> RowMapping | None:
    stmt = select(maintenance_runs).where(maintenance_runs.c.task == task,
                                          maintenance_runs.c.run_key == run_key)
    return conn.execute(stmt).mappings().first()


__all__ = [
    "DoomedJob",
    "RetentionGroup",
    "cancel_doomed",
    "claim_maintenance_run",
    "claim_tick",
    "count_expired_jobs",
    "count_old_events",
    "delete_expired_jobs_batch",
    "delete_old_events_batch",
    "delete_schedule",
    "doomed_pending_jobs",
    "finish_maintenance_run",
    "fires_of",
    "get_maintenance_run",
    "get_schedule",
    "insert_schedule",
    "list_schedules",
    "promote_ready_pending",
    "record_fire",
    "retention_groups",
    "set_schedule_enabled",
    "touch_maintenance_run",
]
