"""Claim controls (issue 10): per-organization concurrency limits (optionally per
job type), queued-job quotas, and pauses of organizations and job types.

They live in two small tables (``organization_limits``, ``paused_job_types``) that
every claim reads, so a change takes effect at the next claim of every worker on
every machine, without restarting anything. The global defaults come from the
settings and reach the store as a :class:`ClaimPolicy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    Integer,
    String,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from ..domain.statuses import Status
from .clock import db_now
from .schema import ALL_JOB_TYPES, jobs, organization_limits, organizations, paused_job_types

#: Jobs that count against the queued-job quota: accepted and not started yet.
WAITING = (Status.PENDING.value, Status.QUEUED.value, Status.RETRYING.value)


@dataclass(frozen=True)
class ClaimPolicy:
    """How claims choose jobs; set by the engine from its settings."""

    fair: bool = True
    default_max_running: int | None = None
    default_max_queued: int | None = None
    #: Skip-scan steps per wanted organization before a claim gives up looking
    #: (bounds the cost of a claim when many organizations are paused or full).
    scan_factor: int = 1


@dataclass(frozen=True)
class Controls:
    """The claim-relevant rows of the control tables, read once per claim."""

    paused_types: frozenset[str] = frozenset()
    paused_orgs: frozenset[str] = frozenset()
    org_limits: dict[str, int] = field(default_factory=dict)
    # (organization, job type) -> max running; a paused pair is 0.
    type_limits: dict[tuple[str, str], int] = field(default_factory=dict)

    def active(self, policy: ClaimPolicy) -> bool:
        return bool(self.paused_types or self.paused_orgs or self.limited(policy))

    def limited(self, policy: ClaimPolicy) -> bool:
        """Any concurrency limit set (an organization may be at its limit)."""
        return bool(self.org_limits or self.type_limits
                    or policy.default_max_running is not None)

    def org_limit(self, organization: str, policy: ClaimPolicy) -> int | None:
        if organization in self.paused_orgs:
            return 0
        return self.org_limits.get(organization, policy.default_max_running)

    def limited_types(self, organization: str) -> dict[str, int]:
        return {t: n for (o, t), n in self.type_limits.items() if o == organization}


#: Both control tables in one statement (every claim reads them): limit rows,
#: then paused job types as rows with no organization. Built once: it has no
#: parameters, and building it took about as long as the server took to run it.
_CONTROLS = union_all(
    select(organization_limits.c.organization, organization_limits.c.job_type,
           organization_limits.c.max_running, organization_limits.c.paused).where(
        or_(organization_limits.c.paused.is_(True),
            organization_limits.c.max_running.is_not(None))),
    select(literal(None, String).label("organization"), paused_job_types.c.job_type,
           literal(None, Integer).label("max_running"),
           literal(True, Boolean).label("paused")),
)


def read_controls(conn: Connection) -> Controls:
    """The claim-relevant control rows, in one round trip."""
    paused_types: set[str] = set()
    paused_orgs: set[str] = set()
    org_limits: dict[str, int] = {}
    type_limits: dict[tuple[str, str], int] = {}
    for org, job_type, max_running, paused in conn.execute(_CONTROLS).all():
        if org is None:
            paused_types.add(job_type)
        elif job_type == ALL_JOB_TYPES:
            if paused or max_running == 0:
                paused_orgs.add(org)
            elif max_running is not None:
                org_limits[org] = int(max_running)
        else:
            type_limits[(org, job_type)] = 0 if paused else int(max_running)
    return Controls(frozenset(paused_types), frozenset(paused_orgs), org_limits, type_limits)


def list_limits(conn: Connection) -> list[RowMapping]:
    return list(conn.execute(
        select(organization_limits)
        .order_by(organization_limits.c.organization, organization_limits.c.job_type)
    ).mappings())


def get_limit(conn: Connection, organization: str, job_type: str) -> RowMapping | None:
    return conn.execute(
        select(organization_limits).where(organization_limits.c.organization == organization,
                                          organization_limits.c.job_type == job_type)
    ).mappings().first()


def set_limit(conn: Connection, organization: str, job_type: str,
              values: dict[str, Any]) -> RowMapping:
    """Upsert the row of (organization, job type) with ``values``; a row left with
    nothing set (no limit, no quota, not paused) is deleted."""
    where = (organization_limits.c.organization == organization,
             organization_limits.c.job_type == job_type)
    for _ in range(3):
        changed = conn.execute(
            update(organization_limits).where(*where).values(**values, modified_at=db_now())
        ).rowcount
        if changed:
            break
        try:
            with conn.begin_nested():
                conn.execute(insert(organization_limits).values(
                    organization=organization, job_type=job_type,
                    **{"paused": False, **values}, modified_at=db_now()))
            break
        except IntegrityError:  # inserted concurrently: update it instead
            continue
    row = conn.execute(select(organization_limits).where(*where)).mappings().one()
    if row["max_running"] is None and row["max_queued"] is None and not row["paused"]:
        conn.execute(delete(organization_limits).where(*where))
    return row


def pause_job_type(conn: Connection, job_type: str) -> None:
    exists = conn.execute(select(literal(1)).where(paused_job_types.c.job_type == job_type))
    if exists.first() is None:
        try:
            with conn.begin_nested():
                conn.execute(insert(paused_job_types).values(job_type=job_type,
                                                             paused_at=db_now()))
        except IntegrityError:
            pass  # paused concurrently: the same outcome


def resume_job_type(conn: Connection, job_type: str) -> None:
    conn.execute(delete(paused_job_types).where(paused_job_types.c.job_type == job_type))


def paused_types(conn: Connection) -> list[str]:
    return [str(t) for t in conn.execute(
        select(paused_job_types.c.job_type).order_by(paused_job_types.c.job_type)).scalars()]


def lock_organization(conn: Connection, organization: str) -> None:
    """Hold the organization's row until commit (PostgreSQL ``FOR NO KEY UPDATE``:
    foreign-key checks of inserted jobs do not wait for it; SQLite's write
    transactions are serialised anyway)."""
    conn.execute(select(organizations.c.name).where(organizations.c.name == organization)
                 .with_for_update(key_share=True))


def count_waiting(conn: Connection, organization: str, cap: int) -> int:
    """Jobs of the organization not started yet, counted up to ``cap`` only (the
    cost of the check is bounded by the quota, not by the queue)."""
    capped = (select(literal(1).label("one"))
              .where(jobs.c.organization == organization, jobs.c.status.in_(WAITING))
              .limit(cap).subquery())
    return int(conn.execute(select(func.count()).select_from(capped)).scalar_one())


def running_counts(conn: Connection, organizations: Sequence[str]
                   ) -> dict[tuple[str, str], int]:
    """Running jobs of these organizations by job type."""
    if not organizations:
        return {}
    rows = conn.execute(
        select(jobs.c.organization, jobs.c.job_type, func.count())
        .where(jobs.c.organization.in_(list(organizations)),
               jobs.c.status == Status.RUNNING.value)
        .group_by(jobs.c.organization, jobs.c.job_type)
    ).all()
    return {(str(o), str(t)): int(n) for o, t, n in rows}


def running_by_organization(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        select(jobs.c.organization, func.count())
        .where(jobs.c.status == Status.RUNNING.value)
        .group_by(jobs.c.organization)
        .order_by(jobs.c.organization)
    ).all()
    return {str(o): int(n) for o, n in rows}
