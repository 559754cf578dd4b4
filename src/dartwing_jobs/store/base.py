"""The storage contract: one class whose queries are SQLAlchemy Core (bound
parameters only), with a small subclass per backend for what differs (connection
setup, claiming, notifications).

Methods take an open ``Connection`` so that the service layer decides transaction
boundaries, including running inside a caller's own transaction.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    Engine,
    Integer,
    String,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from ..domain.errors import Conflict, DuplicateJob, InvalidState
from ..domain.ids import new_id
from ..domain.outcomes import Outcome, OutcomeKind
from ..domain.priorities import Priority
from ..domain.retry import retry_delay
from ..domain.statuses import (
    CANCELABLE_AT_ONCE,
    RETRYABLE_BY_HAND,
    Status,
)
from .clock import db_now
from .controls import ClaimPolicy, read_controls
from .fairness import FairChoice, WalkClaim
from .schema import (
    ACTIVE_HASH_PREDICATE,
    ALL_JOB_TYPES,
    CLAIMABLE_PREDICATE,
    api_tokens,
    job_dependencies,
    job_events,
    job_execution_log,
    job_types,
    jobs,
    org_members,
    organization_limits,
    organizations,
    persons,
    users,
)

LOG = logging.getLogger("dartwing_jobs.store")
INSERT_CHUNK = 500
# What a status event and the execution log need of a job row: hot paths return
# only these instead of every column.
EVENT_COLUMNS = (jobs.c.id, jobs.c.organization, jobs.c.job_type, jobs.c.status,
                 jobs.c.attempts, jobs.c.progress, jobs.c.progress_message,
                 jobs.c.error_type, jobs.c.error_message)
# What the worker needs of a claimed job.
CLAIM_COLUMNS = (*EVENT_COLUMNS, jobs.c.parameters, jobs.c.checkpoint, jobs.c.priority,
                 jobs.c.due_at, jobs.c.timeout_seconds)


class SubmissionContext(NamedTuple):
    organization_exists: bool
    job_type: Mapping[str, Any] | None
    max_queued: int | None  # the organization's own quota (None: the default applies)


#: How long a fair claim's organization walk is reused (seconds).
WALK_REUSE_SECONDS = 0.05


class Walk(NamedTuple):
    """One organization walk of a fair claim."""

    #: (organization, has a due job at the priority), in rotation order.
    steps: list[tuple[str, bool]]
    #: Each organization's first due job, locked by this walk's transaction
    #: (``id, organization, job_type, due_at, attempts``); empty where the backend
    #: has no row locks or the walk was reused. Heads in ``claimed`` are here too,
    #: as read before the walk updated them (their ``tid`` is the old version's).
    heads: dict[str, RowMapping]
    #: Heads the walk's own statement claimed (asked with ``claim`` and it locked
    #: as many as were wanted), in rotation order, as ``claim_jobs`` returns rows.
    claimed: Sequence[RowMapping] = ()


def warn_about_configuration(store: Store) -> list[str]:
    """Log what the database's configuration will cost the queue (best effort: a
    database that cannot be asked now is asked again at the next start)."""
    try:
        warnings = store.configuration_warnings()
    except Exception as exc:
        LOG.debug("could not read the database's configuration: %s", exc)
        return []
    for warning in warnings:
        LOG.warning("database configuration: %s", warning)
    return warnings


class Units:
    """Where a long-lived thread (the worker's claim and writer threads, its
    notification listener) opens its units of work. Here: from the store's pool
    each time. Backends whose pool checkout costs a round trip keep connections
    instead (``Store.units``). Used by one thread; ``close`` when it ends."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def transaction(self) -> AbstractContextManager[Connection]:
        return self.store.transaction()

    def read(self) -> AbstractContextManager[Connection]:
        return self.store.read()

    def single_statement(self) -> AbstractContextManager[Connection]:
        return self.store.single_statement()

    def close(self) -> None:
        """Give back what is kept (nothing here)."""


class Store(ABC):
    """Shared Core queries. Subclasses provide ``_create_engine`` and backend-only
    behaviour; nothing here depends on the dialect except through SQLAlchemy."""

    backend: str = "base"
    #: Whatever makes a job ready (a submit, a release, a rescue, a retry asked
    #: for) wakes idle workers through the database; only the clock (a retry or a
    #: ``run_at`` falling due) is left to their polling.
    notifies_workers: bool = False
    #: The fair claim's organization walk also locks and returns each
    #: organization's first due job (backends with ``SKIP LOCKED``).
    walk_locks_heads: bool = False
    #: Writers do not serialise on the database (row locks, not one file lock):
    #: a worker writes outcomes and claims jobs on two connections at once. Where
    #: every write transaction takes the one lock (and its own fsync), one
    #: transaction for both is cheaper.
    concurrent_writers: bool = False

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options
        self.claim_policy = ClaimPolicy()
        # The organization each worker of this process served last (fair claims).
        self._claim_cursors: dict[str, str] = {}
        # Statements of the claim path, built once per shape (values bound later).
        self._statements: dict[tuple[Any, ...], Any] = {}
        # Recent organization walks: (expires at, steps, result) by question.
        self._walks: dict[tuple[Any, ...], tuple[float, int, list[tuple[str, bool]]]] = {}
        self.engine: Engine = self._create_engine(url, **options)

    # -- connections -------------------------------------------------------

    @abstractmethod
    def _create_engine(self, url: str, **options: Any) -> Engine:
        """The backend's SQLAlchemy engine, configured for it."""

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction, committed on success and rolled back on error."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only unit of work (no write lock taken on SQLite)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(dartwing_read_only=True)
            with conn.begin():
                yield conn

    @contextmanager
    def single_statement(self) -> Iterator[Connection]:
        """For work whose only write is one statement, atomic by itself (reads
        may come before it): no ``BEGIN``/``COMMIT`` round trips where the backend
        can avoid them (PostgreSQL autocommit). Never for two writes: each would
        commit on its own."""
        with self.transaction() as conn:
            yield conn

    def units(self) -> Units:
        """Units of work for one long-lived thread (see ``Units``)."""
        return Units(self)

    def configuration_warnings(self) -> list[str]:
        """Settings of the database that hurt a job queue, in words for the
        operator (logged when a scheduler or worker starts). None here."""
        return []

    def reclaim_space(self) -> bool:
        """After the retention cleanup deleted rows: make their space reusable now
        and refresh the planner's statistics. True when the backend did anything.
        Nothing to do here (SQLite reuses freed pages by itself)."""
        return False

    def dispose(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        from alembic import command

        from .migrations import alembic_config

        with self.engine.begin() as conn:
            cfg = alembic_config(conn)
            command.upgrade(cfg, "head")

    def notify_jobs_available(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Wake idle workers after commit. No-op where workers poll."""

    def now(self, conn: Connection) -> float:
        return float(conn.execute(select(db_now())).scalar_one())

    # -- identity ----------------------------------------------------------

    def _insert_unique(self, conn: Connection, stmt: Any, what: str) -> None:
        try:
            with conn.begin_nested():
                conn.execute(stmt)
        except IntegrityError as exc:
            raise Conflict(f"{what} already exists") from exc

    def create_organization(self, conn: Connection, name: str, title: str) -> None:
        self._insert_unique(
            conn,
            insert(organizations).values(name=name, title=title, created_at=db_now()),
            f"organization {name!r}",
        )

    def get_organizations(
        self, conn: Connection, names: Sequence[str] | None = None
    ) -> list[RowMapping]:
        stmt = select(organizations).order_by(organizations.c.name)
        if names is not None:
            stmt = stmt.where(organizations.c.name.in_(list(names)))
        return list(conn.execute(stmt).mappings())

    def organization_exists(self, conn: Connection, name: str) -> bool:
        stmt = select(literal(1)).where(organizations.c.name == name)
        return conn.execute(stmt).first() is not None

    def create_user(
        self, conn: Connection, user_id: str, full_name: str, is_system_manager: bool
    ) -> None:
        self._insert_unique(
            conn,
            insert(users).values(
                id=user_id,
                full_name=full_name,
                is_system_manager=is_system_manager,
                enabled=True,
                created_at=db_now(),
            ),
            f"user {user_id!r}",
        )

    def get_user(self, conn: Connection, user_id: str) -> RowMapping | None:
        return conn.execute(select(users).where(users.c.id == user_id)).mappings().first()

    def create_person(self, conn: Connection, name: str, user_id: str | None) -> str:
        person_id = new_id()
        self._insert_unique(
            conn,
            insert(persons).values(id=person_id, name=name, user_id=user_id, created_at=db_now()),
            "a person for this user",
        )
        return person_id

    def find_persons(self, conn: Connection, key: str) -> list[RowMapping]:
        """Persons matching an id, a linked user's e-mail, or a name."""
        stmt = select(persons).where(
            or_(persons.c.id == key, persons.c.user_id == key, persons.c.name == key)
        )
        return list(conn.execute(stmt).mappings())

    def upsert_member(
        self,
        conn: Connection,
        organization: str,
        person_id: str,
        status: str | None,
        role: str | None,
        create: bool,
    ) -> RowMapping:
        where = and_(
            org_members.c.organization == organization, org_members.c.person_id == person_id
        )
        current = conn.execute(select(org_members).where(where)).mappings().first()
        if current is None:
            if not create:
                raise InvalidState("that person is not a member of the organization", status="none")
            self._insert_unique(
                conn,
                insert(org_members).values(
                    organization=organization,
                    person_id=person_id,
                    status=status or "Active",
                    role=role or "member",
                    created_at=db_now(),
                ),
                "membership",
            )
        elif create:
            raise Conflict("that person is already a member of the organization")
        else:
            values = {k: v for k, v in (("status", status), ("role", role)) if v is not None}
            if values:
                conn.execute(update(org_members).where(where).values(**values))
        return conn.execute(select(org_members).where(where)).mappings().one()

    def memberships_of_user(self, conn: Connection, user_id: str) -> dict[str, str]:
        """Organizations the user reaches: User -> Person -> active Org Member."""
        stmt = (
            select(org_members.c.organization, org_members.c.role)
            .join(persons, persons.c.id == org_members.c.person_id)
            .where(persons.c.user_id == user_id, org_members.c.status == "Active")
        )
        return {row.organization: row.role for row in conn.execute(stmt)}

    def create_token(
        self, conn: Connection, token_id: str, user_id: str, token_hash: str,
        expires_in_seconds: float | None,
    ) -> None:
        expires = db_now() + expires_in_seconds if expires_in_seconds is not None else None
        conn.execute(
            insert(api_tokens).values(
                id=token_id,
                user_id=user_id,
                token_hash=token_hash,
                created_at=db_now(),
                expires_at=expires,
            )
        )

    def find_live_token(self, conn: Connection, token_hash: str) -> RowMapping | None:
        stmt = (
            select(api_tokens, users.c.enabled)
            .join(users, users.c.id == api_tokens.c.user_id)
            .where(
                api_tokens.c.token_hash == token_hash,
                api_tokens.c.revoked_at.is_(None),
                or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > db_now()),
            )
        )
        return conn.execute(stmt).mappings().first()

    def list_tokens(self, conn: Connection, user_id: str) -> list[RowMapping]:
        stmt = (
            select(api_tokens.c.id, api_tokens.c.user_id, api_tokens.c.created_at,
                   api_tokens.c.expires_at, api_tokens.c.revoked_at)
            .where(api_tokens.c.user_id == user_id)
            .order_by(api_tokens.c.created_at)
        )
        return list(conn.execute(stmt).mappings())

    def revoke_token(self, conn: Connection, token_id: str) -> bool:
        stmt = (
            update(api_tokens)
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=db_now())
        )
        return conn.execute(stmt).rowcount == 1

    # -- job types ---------------------------------------------------------

    def insert_job_type(self, conn: Connection, values: dict[str, Any]) -> None:
        self._insert_unique(
            conn,
            insert(job_types).values(**values, created_at=db_now(), modified_at=db_now()),
            f"job type {values['name']!r}",
        )

    def update_job_type(self, conn: Connection, name: str, values: dict[str, Any]) -> bool:
        stmt = (
            update(job_types)
            .where(job_types.c.name == name)
            .values(**values, modified_at=db_now())
        )
        return conn.execute(stmt).rowcount == 1

    def submission_context(self, conn: Connection, organization: str, job_type: str
                           ) -> SubmissionContext:
        """What a submission checks before it writes, in one round trip: the job
        type's row, whether the organization exists, its queued-job quota override."""
        stmt = self._statements.get(("submission",))
        if stmt is None:
            org = bindparam("ctx_org", type_=organizations.c.name.type)
            exists = select(literal(True)).where(organizations.c.name == org)
            quota = select(organization_limits.c.max_queued).where(
                organization_limits.c.organization == org,
                organization_limits.c.job_type == ALL_JOB_TYPES)
            stmt = self._statements[("submission",)] = select(
                *job_types.c, exists.scalar_subquery().label("ctx_org_exists"),
                quota.scalar_subquery().label("ctx_max_queued"),
            ).where(job_types.c.name == bindparam("ctx_type", type_=job_types.c.name.type))
        row = conn.execute(stmt, {"ctx_org": organization, "ctx_type": job_type}
                           ).mappings().first()
        if row is None:  # unknown job type: the organization is asked on its own
            return SubmissionContext(self.organization_exists(conn, organization), None, None)
        max_queued = row["ctx_max_queued"]
        return SubmissionContext(
            bool(row["ctx_org_exists"]),
            {k: v for k, v in row.items() if not k.startswith("ctx_")},
            None if max_queued is None else int(max_queued))

    def get_job_type(self, conn: Connection, name: str) -> RowMapping | None:
        return conn.execute(select(job_types).where(job_types.c.name == name)).mappings().first()

    def list_job_types(self, conn: Connection) -> list[RowMapping]:
        return list(conn.execute(select(job_types).order_by(job_types.c.name)).mappings())

    # -- jobs: submission --------------------------------------------------

    def lock_dependencies(
        self, conn: Connection, ids: Sequence[str]
    ) -> list[RowMapping]:
        """Read the dependencies, holding a share lock where the backend has one, so
        that a parent cannot finish between this read and our commit unnoticed."""
        stmt = (
            select(jobs.c.id, jobs.c.organization, jobs.c.status)
            .where(jobs.c.id.in_(list(ids)))
            .with_for_update(read=True)
        )
        return list(conn.execute(stmt).mappings())

    def insert_job(
        self, conn: Connection, values: dict[str, Any], depends_on: Sequence[str],
        run_at: float | None,
    ) -> RowMapping:
        """Insert a job, or raise ``DuplicateJob`` naming the active twin.

        The partial unique index decides; ``ON CONFLICT DO NOTHING`` keeps the
        caller's transaction usable. If the twin finishes between our conflict and
        our look-up, the insert is simply tried again.
        """
        now = db_now()
        row = dict(values, due_at=now if run_at is None else run_at, run_at=run_at,
                   created_at=now, modified_at=now)
        for _ in range(20):
            created = self._insert_new_job(conn, row)
            if created is not None:
                if depends_on:
                    conn.execute(
                        insert(job_dependencies),
                        [{"job_id": created["id"], "depends_on_id": d} for d in depends_on],
                    )
                return created
            twin = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.job_hash == values["job_hash"],
                    ACTIVE_HASH_PREDICATE,
                )
            ).scalar()
            if twin is not None:
                raise DuplicateJob(twin)
        raise Conflict("could not insert the job: its duplicate kept changing; try again")

    def insert_typed_job(self, conn: Connection, values: dict[str, Any],
                         priority: int | None, run_at: float | None,
                         check_organization: bool) -> RowMapping | None:
        """A submission whose job type's settings the insert reads itself, in one
        round trip; None when it inserted nothing (here: always, the general path
        costs no round trips on an embedded database)."""
        return None

    def _insert_new_job(self, conn: Connection, row: dict[str, Any]) -> RowMapping | None:
        """Insert one job with its status event and, when it is queued, wake idle
        workers; None when an active twin exists. Backends may do it all in one
        statement."""
        stmt = self._insert_ignoring_duplicate(row).returning(*jobs.c)
        created: RowMapping | None = conn.execute(stmt).mappings().first()
        if created is not None:
            self.insert_status_event(conn, created)
            if created["status"] == Status.QUEUED.value:
                self.notify_jobs_available(conn)
        return created

    def insert_jobs(self, conn: Connection, values: Sequence[dict[str, Any]]) -> list[RowMapping]:
        """Insert queued jobs in one statement; a duplicate (of an active job, or
        within the batch) raises ``DuplicateJob`` and the caller's transaction is
        to be rolled back."""
        now = db_now()
        rows = [dict(v, due_at=now, run_at=None, created_at=now, modified_at=now)
                for v in values]
        created: list[RowMapping] = []
        twin: str | None = None
        # A savepoint: on a duplicate, none of the batch stays, even when the caller
        # catches the error and commits its own transaction.
        with conn.begin_nested() as savepoint:
            for start in range(0, len(rows), INSERT_CHUNK):  # bound-parameter limits
                created += conn.execute(
                    self._insert_ignoring_duplicate(rows[start:start + INSERT_CHUNK])
                    .returning(*jobs.c)
                ).mappings().all()
            if len(created) < len(rows):
                inserted = {r["id"] for r in created}
                missing = next(v for v in values if v["id"] not in inserted)
                twin = conn.execute(
                    select(jobs.c.id).where(jobs.c.job_hash == missing["job_hash"],
                                            ACTIVE_HASH_PREDICATE)
                ).scalar() or ""
                savepoint.rollback()
        if twin is not None:
            raise DuplicateJob(twin)
        self.insert_events(conn, [self.status_event(r) for r in created])
        by_id = {r["id"]: r for r in created}
        return [by_id[v["id"]] for v in values]

    @abstractmethod
    def _insert_ignoring_duplicate(self, row: dict[str, Any] | list[dict[str, Any]]) -> Any:
        """An INSERT of ``row`` that does nothing on a duplicate of an active job."""

    # -- jobs: reads -------------------------------------------------------

    def get_job(self, conn: Connection, job_id: str) -> RowMapping | None:
        return conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()

    def dependencies_of(self, conn: Connection, job_ids: Sequence[str]) -> dict[str, list[str]]:
        if not job_ids:
            return {}
        stmt = (
            select(job_dependencies.c.job_id, job_dependencies.c.depends_on_id)
            .where(job_dependencies.c.job_id.in_(list(job_ids)))
            .order_by(job_dependencies.c.job_id, job_dependencies.c.depends_on_id)
        )
        result: dict[str, list[str]] = {}
        for row in conn.execute(stmt):
            result.setdefault(row.job_id, []).append(row.depends_on_id)
        return result

    def list_jobs(
        self,
        conn: Connection,
        *,
        organizations_in: Sequence[str] | None,
        statuses: Sequence[str] | None,
        job_type: str | None,
        after: tuple[float, str] | None,
        limit: int,
    ) -> list[RowMapping]:
        """Newest first, keyset-paged on (created_at, id)."""
        stmt = select(jobs)
        if organizations_in is not None:
            stmt = stmt.where(jobs.c.organization.in_(list(organizations_in)))
        if statuses:
            stmt = stmt.where(jobs.c.status.in_(list(statuses)))
        if job_type is not None:
            stmt = stmt.where(jobs.c.job_type == job_type)
        if after is not None:
            stmt = stmt.where(tuple_(jobs.c.created_at, jobs.c.id) < tuple_(*after))
        stmt = stmt.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        return list(conn.execute(stmt).mappings())

    def execution_log(self, conn: Connection, job_id: str) -> list[RowMapping]:
        stmt = (
            select(job_execution_log)
            .where(job_execution_log.c.job_id == job_id)
            .order_by(job_execution_log.c.attempt)
        )
        return list(conn.execute(stmt).mappings())

    # -- jobs: state changes -----------------------------------------------

    def cancel_job(self, conn: Connection, job_id: str) -> RowMapping:
        """One conditional update decides: a job not yet running is canceled, a
        running one is asked to stop. Whatever the claimer does concurrently, the
        database serialises the two updates, so never both and never neither.
        (A job that moved from running to retrying between the two is tried again:
        it is still cancelable.)"""
        cancelable = {s.value for s in CANCELABLE_AT_ONCE} | {Status.RUNNING.value}
        status = "unknown"
        for _ in range(3):
            row = self._cancel_once(conn, job_id)
            if row is not None:
                return row
            current = self.get_job(conn, job_id)
            if current is None:
                raise InvalidState("the job no longer exists", status="deleted")
            status = current["status"]
            if status not in cancelable:
                raise InvalidState(f"a {status} job cannot be canceled", status=status)
        raise InvalidState("the job kept changing state; try again", status=status)

    def _cancel_once(self, conn: Connection, job_id: str) -> RowMapping | None:
        canceled = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id,
                   jobs.c.status.in_([s.value for s in CANCELABLE_AT_ONCE]))
            .values(
                status=Status.CANCELED.value,
                completed_at=db_now(),
                modified_at=db_now(),
                error_type="canceled",
                error_message="canceled by request",
                lease_expires_at=None,
            )
            .returning(*jobs.c)
        ).mappings().first()
        if canceled is not None:
            self.insert_status_event(conn, canceled)
            return canceled
        requested = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == Status.RUNNING.value)
            .values(cancel_requested=True, modified_at=db_now())
            .returning(*jobs.c)
        ).mappings().first()
        return requested

    def retry_job(self, conn: Connection, job_id: str) -> RowMapping:
        """Manual retry: the same job, queued again with a fresh retry budget."""
        try:
            with conn.begin_nested():
                row = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id,
                           jobs.c.status.in_([s.value for s in RETRYABLE_BY_HAND]))
                    .values(
                        status=Status.QUEUED.value,
                        attempts_offset=jobs.c.attempts,
                        cancel_requested=False,
                        due_at=db_now(),
                        next_retry_at=None,
                        completed_at=None,
                        modified_at=db_now(),
                        error_type=None,
                        error_message=None,
                        error_traceback=None,
                        result=None,
                    )
                    .returning(*jobs.c)
                ).mappings().first()
        except IntegrityError:
            current = self.get_job(conn, job_id)
            assert current is not None
            twin = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.job_hash == current["job_hash"],
                    ACTIVE_HASH_PREDICATE,
                )
            ).scalar()
            raise DuplicateJob(twin or "") from None
        if row is None:
            current = self.get_job(conn, job_id)
            status = current["status"] if current is not None else "deleted"
            raise InvalidState(f"a {status} job cannot be retried", status=status)
        self.insert_status_event(conn, row)
        self.notify_jobs_available(conn)
        return row

    @staticmethod
    def status_event(job: RowMapping, error: dict[str, Any] | None = None) -> dict[str, Any]:
        if error is None and job["error_type"] is not None:
            error = {"type": job["error_type"], "message": job["error_message"]}
        return {
            "job_id": job["id"],
            "organization": job["organization"],
            "job_type": job["job_type"],
            "kind": "status",
            "status": job["status"],
            "attempt": job["attempts"],
            "progress": job["progress"],
            "message": job["progress_message"],
            "error": error,
        }

    def insert_events(self, conn: Connection, events: Sequence[dict[str, Any]]) -> None:
        if events:
            self.insert_rows(conn, job_events, events, created_at=db_now())

    def insert_rows(self, conn: Connection, table: Any, rows: Sequence[dict[str, Any]],
                    **constants: Any) -> None:
        """Insert many rows of ``table`` (same keys each), with ``constants`` (SQL
        expressions allowed) in every row."""
        conn.execute(insert(table).values(**constants), list(rows))

    def insert_status_event(
        self, conn: Connection, job: RowMapping, error: dict[str, Any] | None = None
    ) -> None:
        self.insert_events(conn, [self.status_event(job, error)])

    def promote_ready_dependents(self, conn: Connection, parent_id: str) -> list[str]:
        """Queue the pending dependents of ``parent_id`` whose every dependency has
        completed. Conditional on ``status = 'pending'``, so running it twice (two
        schedulers, or a worker and a scheduler) is harmless."""
        dep = job_dependencies.alias("dep")
        parent = jobs.alias("parent")
        unfinished = exists().where(
            dep.c.job_id == jobs.c.id,
            parent.c.id == dep.c.depends_on_id,
            parent.c.status != Status.COMPLETED.value,
        )
        candidates = select(job_dependencies.c.job_id).where(
            job_dependencies.c.depends_on_id == parent_id
        )
        # Lock the pending dependents first: two workers completing two parents of
        # one job at once then decide one after the other, the second seeing the
        # first's commit (its next statement takes a fresh snapshot).
        locked = conn.execute(
            select(jobs.c.id)
            .where(jobs.c.id.in_(candidates), jobs.c.status == Status.PENDING.value)
            .with_for_update()
        ).scalars().all()
        if not locked:
            return []
        rows = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(locked), jobs.c.status == Status.PENDING.value, ~unfinished)
            .values(status=Status.QUEUED.value, due_at=func.coalesce(jobs.c.run_at, db_now()),
                    modified_at=db_now())
            .returning(*jobs.c)
        ).mappings().all()
        for row in rows:
            self.insert_status_event(conn, row)
        if rows:
            self.notify_jobs_available(conn)
        return [r["id"] for r in rows]

    def cancel_dependents(self, conn: Connection, parent_id: str, parent_status: str) -> list[str]:
        """Cancel the pending dependents of a failed parent, and theirs, to the end
        of the chain; each records which dependency failed."""
        canceled: list[str] = []
        frontier = [(parent_id, parent_status)]
        while frontier:
            failed_id, failed_status = frontier.pop()
            candidates = select(job_dependencies.c.job_id).where(
                job_dependencies.c.depends_on_id == failed_id
            )
            rows = conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(candidates), jobs.c.status == Status.PENDING.value)
                .values(
                    status=Status.CANCELED.value,
                    completed_at=db_now(),
                    modified_at=db_now(),
                    error_type="dependency_failed",
                    error_message=f"dependency {failed_id} ended {failed_status}",
                )
                .returning(*jobs.c)
            ).mappings().all()
            for row in rows:
                self.insert_status_event(conn, row)
                canceled.append(row["id"])
                frontier.append((row["id"], Status.CANCELED.value))
        return canceled

    # -- jobs: the worker's path -------------------------------------------

    def _claimable(self, job_type_filter: Sequence[str] | None) -> Any:
        stmt = select(jobs.c.id).where(
            # The index's own predicate text, so both planners match the partial index.
            CLAIMABLE_PREDICATE, jobs.c.due_at <= db_now()
        )
        if job_type_filter:
            stmt = stmt.where(jobs.c.job_type.in_(list(job_type_filter)))
        return stmt

    def has_due_jobs(self, conn: Connection, job_type_filter: Sequence[str] | None) -> bool:
        """A cheap read to ask before taking the write lock of a claim. Paused job
        types and organizations do not count as work."""
        stmt = self._claimable(job_type_filter)
        controls = read_controls(conn)
        if controls.paused_types:
            stmt = stmt.where(jobs.c.job_type.not_in(sorted(controls.paused_types)))
        if controls.paused_orgs:
            stmt = stmt.where(jobs.c.organization.not_in(sorted(controls.paused_orgs)))
        return conn.execute(stmt.limit(1)).first() is not None

    def _lock_for_claim(self, stmt: Any) -> Any:
        """Backends with row locks skip rows another claimer holds."""
        return stmt

    def claim_cursor(self, worker_id: str) -> str:
        """The organization this worker served last (where its next fair claim
        resumes the rotation)."""
        return self._claim_cursors.get(worker_id, "")

    def claim_jobs(
        self, conn: Connection, worker_id: str, limit: int, lease_seconds: float,
        job_type_filter: Sequence[str] | None = None, *,
        after_organization: str | None = None,
    ) -> list[RowMapping]:
        """Claim up to ``limit`` due jobs. Each claim starts a new attempt
        (``attempts + 1``) that every later write of this worker is fenced by.

        Fair claiming (the default): priority first, then organizations in turn
        inside the top ready priority (round robin from the organization after
        ``after_organization``, by default the one this worker served last), each
        organization's jobs by due time; per-organization limits and pauses are
        enforced here, in the claim's transaction. Unfair (``fair=False`` and no
        controls set): priority, then due time, across all organizations.
        The rows come back in the order the worker should start them."""
        if limit <= 0:
            return []
        controls = read_controls(conn)
        policy = self.claim_policy
        if not policy.fair and not controls.active(policy):
            rows = self._claim_in_order(conn, worker_id, limit, lease_seconds, job_type_filter)
            return sorted(rows, key=lambda r: (r["priority"], r["due_at"], r["id"]))
        cursor = after_organization
        if cursor is None:
            cursor = self._claim_cursors.get(worker_id, "")
        self._prepare_fair_claim(conn)
        choice = FairChoice(self, conn, controls, job_type_filter,
                            claim_as=(worker_id, lease_seconds))
        ids, cursor = choice.choose(limit, cursor)
        self._claim_cursors[worker_id] = cursor
        if not ids:
            return []
        rows = list(choice.claimed.values())  # by its walk's own statement
        rest = [(i, *choice.fences[i]) for i in ids if i not in choice.claimed]
        if rest:
            rows += self._claim_chosen(conn, worker_id, lease_seconds, rest)
        order = {job_id: i for i, job_id in enumerate(ids)}
        return sorted(rows, key=lambda r: order[r["id"]])

    def _prepare_fair_claim(self, conn: Connection) -> None:
        """Settings for the rest of a fair claim's transaction (none here)."""
        return None

    def claim_notified(self, conn: Connection, worker_id: str, job_ids: Sequence[str],
                       lease_seconds: float, job_type_filter: Sequence[str] | None = None,
                       ) -> list[RowMapping]:
        """Claim jobs an idle worker was just told about, by id, in one statement
        (no fair walk: the caller asks only when its last claim emptied the queue).
        Jobs of organizations with limits or pauses, of paused job types, or any job
        while a default limit is configured are left for ``claim_jobs``. Backends
        whose notifications carry no job ids never get here and claim nothing."""
        return []

    def _claim_in_order(self, conn: Connection, worker_id: str, limit: int,
                        lease_seconds: float, job_type_filter: Sequence[str] | None
                        ) -> list[RowMapping]:
        """Claim the first ``limit`` due jobs by (priority, due time), with their
        status events. Backends may do it in fewer round trips."""
        chosen = self._lock_for_claim(
            self._claimable(job_type_filter)
            .order_by(jobs.c.priority, jobs.c.due_at, jobs.c.id)
            .limit(limit)
        )
        return self._mark_claimed(conn, worker_id, lease_seconds,
                                  jobs.c.id.in_(chosen.scalar_subquery()))

    def _claim_chosen(self, conn: Connection, worker_id: str, lease_seconds: float,
                      chosen: Sequence[tuple[str, int, str | None]]) -> list[RowMapping]:
        """Claim the jobs a fair choice picked, ``(id, attempts as read, row
        address)``, with their status events. The row address (PostgreSQL's
        ``ctid``, None elsewhere) is where the locked row is: a backend may update
        it there instead of looking the id up again."""
        return self._mark_claimed(conn, worker_id, lease_seconds,
                                  jobs.c.id.in_([job_id for job_id, _, _ in chosen]))

    def _mark_claimed(self, conn: Connection, worker_id: str, lease_seconds: float,
                      which: Any) -> list[RowMapping]:
        rows = conn.execute(
            update(jobs)
            .where(which, CLAIMABLE_PREDICATE)
            .values(
                status=Status.RUNNING.value,
                attempts=jobs.c.attempts + 1,
                worker_id=worker_id,
                lease_expires_at=db_now() + lease_seconds,
                started_at=db_now(),
                modified_at=db_now(),
                next_retry_at=None,
            )
            .returning(*CLAIM_COLUMNS)
        ).mappings().all()
        self.insert_events(conn, [self.status_event(r) for r in rows])
        return list(rows)

    # -- fair claiming: the statements (backends may override) ----------------

    def _claim_filters(self, job_type_filter: Sequence[str] | None,
                       paused_types: frozenset[str], table: Any = jobs) -> list[Any]:
        where: list[Any] = [CLAIMABLE_PREDICATE, table.c.due_at <= db_now()]
        if job_type_filter:
            where.append(table.c.job_type.in_(list(job_type_filter)))
        if paused_types:
            where.append(table.c.job_type.not_in(sorted(paused_types)))
        return where

    def due_priorities(self, conn: Connection, job_type_filter: Sequence[str] | None,
                       paused_types: frozenset[str]) -> list[int]:
        """The priorities with a due job, most urgent first: one statement with
        one probe per level. Each probe is an equality on the claim index's
        leading column, so the plan stays a short index scan even when the
        table's statistics still describe it as nearly empty (right after a burst
        of submissions), where a range condition would tempt the planner into
        reading and sorting every due row."""
        levels = [int(p) for p in Priority]
        key = ("priorities", tuple(job_type_filter or ()), tuple(sorted(paused_types)))
        stmt = self._statements.get(key)
        if stmt is None:  # once per shape: building it took longer than the server ran it
            filters = self._claim_filters(job_type_filter, paused_types)

            def first_due(level: int) -> Any:
                # Ordered like the claim index, so that index serves it (no sort);
                # the id is read from the heap, so the scan is a plain index scan,
                # which marks the entries of jobs claimed since as dead (an
                # index-only scan would visit each of them again at every claim
                # until a vacuum).
                return (select(jobs.c.id).where(jobs.c.priority == level, *filters)
                        .order_by(jobs.c.due_at).limit(1).scalar_subquery()
                        .is_not(None).label(f"p{level}"))

            stmt = self._statements[key] = select(*[first_due(level) for level in levels])
        found = conn.execute(stmt).one()
        return [level for level, due in zip(levels, found, strict=True) if due]

    def walk_around(
        self, conn: Connection, priority: int, cursor: str, steps: int,
        job_type_filter: Sequence[str] | None, paused_types: frozenset[str],
        enough: int | None = None, claim: WalkClaim | None = None,
    ) -> Walk:
        """The organizations with claimable jobs in rotation order: by name after
        ``cursor``, then from the start around to ``cursor`` itself; at most
        ``steps`` of them, each with whether it has a due job at ``priority``.
        Here two bounded skip scans (``walk_organizations``) when the first
        reaches the end, locking nothing. Backends may do it in one statement,
        and backends with row locks (``walk_locks_heads``) also lock and return
        each organization's first due job at ``priority`` (``FOR UPDATE SKIP
        LOCKED``): when a claim wants one job per organization (many
        organizations, the usual multi-tenant case) those are the jobs it
        claims, and the separate per-organization fetch is not needed; they may
        also stop once ``enough`` organizations had a due head (a hint, ignored
        by the walk here, which locks nothing), and, asked with ``claim``, claim
        the first ``claim.want`` heads in rotation order in the same statement
        when they locked that many (what the fair choice would take then; heads
        they locked but could not claim stay in ``heads``): ignored here."""
        walked = self.walk_organizations(conn, priority, cursor, None, steps,
                                         job_type_filter, paused_types).steps
        if len(walked) < steps and cursor:  # reached the end: wrap around
            walked = walked + self.walk_organizations(
                conn, priority, "", cursor, steps - len(walked), job_type_filter,
                paused_types).steps
        return Walk(walked, {})

    def _reused_walk(self, seen: tuple[Any, ...], steps: int) -> Walk | None:
        """A walk of the same question asked within WALK_REUSE_SECONDS by this
        process (the steady state of a busy queue), if it answers this one: an
        organization that gets its first due job meanwhile waits at most that
        long for its turn, and one that ran dry is merely probed once more by
        the next step. A reused walk brings no jobs (their locks belonged to an
        earlier transaction). Pauses and limits are never cached."""
        cached = self._walks.get(seen)
        if cached is not None and cached[0] > time.monotonic():
            _, taken, before = cached
            if taken >= steps or len(before) < taken:  # as long, or it reached the end
                return Walk(before[:steps], {})
        return None

    def _keep_walk(self, seen: tuple[Any, ...], steps: int,
                   walked: list[tuple[str, bool]]) -> None:
        if len(self._walks) > 64:
            self._walks.clear()
        self._walks[seen] = (time.monotonic() + WALK_REUSE_SECONDS, steps, list(walked))

    def walk_organizations(
        self, conn: Connection, priority: int, after: str, upto: str | None, steps: int,
        job_type_filter: Sequence[str] | None, paused_types: frozenset[str],
    ) -> Walk:
        """A bounded skip scan over the organization index: the organizations with
        claimable jobs, in name order, strictly after ``after`` (and not beyond
        ``upto``), at most ``steps`` of them, each with whether it has a due job
        at ``priority``. Every step is one index probe, however many jobs an
        organization holds. Reused as ``_reused_walk`` says."""
        shape = (upto is not None, tuple(job_type_filter or ()), tuple(sorted(paused_types)))
        seen = (shape, priority, after, upto)
        reused = self._reused_walk(seen, steps)
        if reused is not None:
            return reused
        stmt = self._statements.get(("walk", *shape))
        if stmt is None:
            stmt = self._statements[("walk", *shape)] = self._walk_statement(
                upto is not None, job_type_filter, paused_types)
        params: dict[str, Any] = {"after": after, "steps": steps, "priority": priority}
        if upto is not None:
            params["upto"] = upto
        walked = [(str(row["org"]), bool(row["has_due"]))
                  for row in conn.execute(stmt, params).mappings()]
        self._keep_walk(seen, steps, walked)
        return Walk(walked, {})

    def _walk_statement(self, bounded: bool, job_type_filter: Sequence[str] | None,
                        paused_types: frozenset[str]) -> Any:
        """Built once per shape; values are bound at execution. Each step's
        next-organization probe reads one heap row (``id`` is not in the index):
        a plain index scan marks the entries of jobs claimed since as dead, where
        an index-only scan would visit every one of them again at each claim
        until the next vacuum."""
        nxt = jobs.alias("nxt")

        def next_org(prev: Any) -> Any:
            # Ordered like ix_background_jobs_org_claimable, so that this partial
            # index serves the probe: ordered by organization alone, the planner
            # may take (organization, status) instead and step over every finished
            # job of the next organization (its 'completed' entries sort first).
            return (select(nxt.c.organization)
                    .where(CLAIMABLE_PREDICATE, nxt.c.organization > prev,
                           nxt.c.id.is_not(None))
                    .order_by(nxt.c.organization, nxt.c.priority, nxt.c.due_at)
                    .limit(1).scalar_subquery())

        walk = select(next_org(bindparam("after", type_=String)).label("org"),
                      literal(1, Integer).label("n")).cte("walk", recursive=True)
        step = select(next_org(walk.c.org), walk.c.n + 1).where(
            walk.c.org.is_not(None), walk.c.n < bindparam("steps", type_=Integer))
        if bounded:
            step = step.where(walk.c.org < bindparam("upto", type_=String))
        walk = walk.union_all(step)
        due = jobs.alias("due")
        has_due = exists(select(literal(1)).where(
            due.c.organization == walk.c.org,
            due.c.priority == bindparam("priority", type_=Integer),
            *self._claim_filters(job_type_filter, paused_types, due)))
        stmt = select(walk.c.org, has_due.label("has_due")).where(walk.c.org.is_not(None))
        if bounded:
            stmt = stmt.where(walk.c.org <= bindparam("upto", type_=String))
        return stmt.order_by(walk.c.n)

    def lock_organizations(self, conn: Connection, names: Sequence[str]) -> set[str]:
        """Serialise the limit checks of one organization between claimers: the
        organizations we got (a claimer holding one makes us skip it, on backends
        with row locks; SQLite serialises whole write transactions anyway)."""
        stmt = (select(organizations.c.name).where(organizations.c.name.in_(list(names)))
                .order_by(organizations.c.name)
                .with_for_update(key_share=True, skip_locked=True))
        return {str(n) for n in conn.execute(stmt).scalars()}

    def organization_heads(
        self, conn: Connection, priority: int, wanted: Sequence[tuple[str, int]],
        job_type_filter: Sequence[str] | None, paused_types: frozenset[str],
        blocked_pairs: Sequence[tuple[str, str]], exclude_ids: Sequence[str],
    ) -> list[RowMapping]:
        """The first ``k`` due jobs at ``priority`` of each ``(organization, k)``, by
        due time: rows ``(id, organization, job_type, due_at, attempts)``. Here one LIMITed
        index range per organization, glued with UNION ALL."""
        members = []
        for org, k in wanted:
            stmt = (select(jobs.c.id, jobs.c.organization, jobs.c.job_type, jobs.c.due_at,
                           jobs.c.attempts)
                    .where(jobs.c.organization == org, jobs.c.priority == priority,
                           *self._claim_filters(job_type_filter, paused_types))
                    .order_by(jobs.c.due_at).limit(k))
            types = [t for o, t in blocked_pairs if o == org]
            if types:
                stmt = stmt.where(jobs.c.job_type.not_in(types))
            if exclude_ids:
                stmt = stmt.where(jobs.c.id.not_in(list(exclude_ids)))
            members.append(select(*stmt.subquery().c))
        if not members:
            return []
        query = members[0] if len(members) == 1 else union_all(*members)
        return list(conn.execute(query).mappings())

    def renew_leases(
        self, conn: Connection, worker_id: str, held: Sequence[tuple[str, int]],
        lease_seconds: float,
    ) -> dict[tuple[str, int], bool]:
        """Extend the leases this worker still holds. Returns, for each attempt still
        held, whether a cancel was requested; an attempt missing from the answer
        was taken away (rescued, or the job deleted) and must stop."""
        if not held:
            return {}
        rows = conn.execute(
            update(jobs)
            .where(tuple_(jobs.c.id, jobs.c.attempts).in_(list(held)),
                   jobs.c.worker_id == worker_id, jobs.c.status == Status.RUNNING.value)
            .values(lease_expires_at=db_now() + lease_seconds)
            .returning(jobs.c.id, jobs.c.attempts, jobs.c.cancel_requested)
        ).all()
        return {(r.id, r.attempts): bool(r.cancel_requested) for r in rows}

    def cancel_requests(
        self, conn: Connection, held: Sequence[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        """The attempts among ``held`` whose job was asked to stop."""
        if not held:
            return set()
        rows = conn.execute(
            select(jobs.c.id, jobs.c.attempts).where(
                tuple_(jobs.c.id, jobs.c.attempts).in_(list(held)),
                jobs.c.cancel_requested.is_(True), jobs.c.status == Status.RUNNING.value,
            )
        ).all()
        return {(r.id, r.attempts) for r in rows}

    def write_progress(
        self, conn: Connection, updates: Sequence[tuple[str, int, float, str | None]]
    ) -> int:
        """Throttled progress from running attempts; fenced like every other write."""
        events = []
        for job_id, attempt, percent, message in updates:
            row = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.attempts == attempt,
                       jobs.c.status == Status.RUNNING.value)
                .values(progress=percent, progress_message=message)
                .returning(jobs.c.id, jobs.c.organization, jobs.c.job_type, jobs.c.status,
                           jobs.c.attempts)
            ).mappings().first()
            if row is not None:
                events.append({
                    "job_id": row["id"], "organization": row["organization"],
                    "job_type": row["job_type"], "kind": "progress", "status": row["status"],
                    "attempt": row["attempts"], "progress": percent, "message": message,
                    "error": None,
                })
        self.insert_events(conn, events)
        return len(events)

    def write_checkpoint(self, conn: Connection, job_id: str, attempt: int, state: Any) -> bool:
        stmt = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.attempts == attempt,
                   jobs.c.status == Status.RUNNING.value)
            .values(checkpoint=state)
        )
        return conn.execute(stmt).rowcount == 1

    def record_outcomes(self, conn: Connection, outcomes: Sequence[Outcome]) -> list[str]:
        """Write the ends of attempts. Each write is conditional on the job still
        running this very attempt, so a worker that lost its lease (and a rescuer
        racing a late worker) changes nothing. Returns the ids actually written."""
        logs: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        failed: list[tuple[str, str]] = []
        successes = [o for o in outcomes if o.kind is OutcomeKind.COMPLETED]
        completed = self._complete_many(conn, successes) if successes else []
        written = list(completed)
        for outcome in outcomes:
            if outcome.kind is OutcomeKind.COMPLETED:
                continue
            row = self._apply_outcome(conn, outcome)
            if row is None:
                continue
            written.append(outcome.job_id)
            events.append(self.status_event(row))
            logs.append(self.log_row(outcome, row))
            if row["status"] == Status.COMPLETED.value:
                completed.append(outcome.job_id)
            elif row["status"] in (Status.DEAD_LETTER.value, Status.CANCELED.value):
                failed.append((outcome.job_id, row["status"]))
        if logs:
            self.insert_rows(conn, job_execution_log, logs)
        self.insert_events(conn, events)
        # Asked by a later statement than the one that completed them: that one's
        # snapshot can predate a dependent committed while it waited for a lock.
        parents = self.having_dependents(conn, completed) if completed else []
        for parent in parents:
            self.promote_ready_dependents(conn, parent)
        for parent, status in failed:
            self.cancel_dependents(conn, parent, status)
        return written

    def _complete_many(self, conn: Connection, outcomes: Sequence[Outcome]) -> list[str]:
        """Mark successful attempts completed, with their log rows and status
        events; the ids written. Backends may do it in one statement."""
        written: list[str] = []
        logs: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for outcome in outcomes:
            row = self._apply_outcome(conn, outcome)
            if row is not None:
                written.append(outcome.job_id)
                logs.append(self.log_row(outcome, row))
                events.append(self.status_event(row))
        if logs:
            self.insert_rows(conn, job_execution_log, logs)
        self.insert_events(conn, events)
        return written

    def having_dependents(self, conn: Connection, job_ids: Sequence[str]) -> list[str]:
        """Those of ``job_ids`` that other jobs depend on."""
        return list(conn.execute(
            select(job_dependencies.c.depends_on_id).distinct()
            .where(job_dependencies.c.depends_on_id.in_(list(job_ids)))
        ).scalars())

    @staticmethod
    def log_row(outcome: Outcome, row: RowMapping) -> dict[str, Any]:
        """The execution-log row of one finished attempt."""
        return {
            "job_id": outcome.job_id, "organization": row["organization"],
            "job_type": row["job_type"], "attempt": outcome.attempt,
            "worker_id": outcome.worker_id, "started_at": outcome.started_at,
            "finished_at": outcome.started_at + outcome.duration_ms / 1000.0,
            "duration_ms": outcome.duration_ms,
            "outcome": outcome.error_type if outcome.kind is OutcomeKind.FAILED
            and outcome.error_type in ("timeout", "worker_lost") else outcome.kind.value,
            "error_type": outcome.error_type, "error_message": outcome.error_message,
            "error_traceback": outcome.error_traceback,
        }

    def _apply_outcome(self, conn: Connection, outcome: Outcome) -> RowMapping | None:
        fence = and_(jobs.c.id == outcome.job_id, jobs.c.attempts == outcome.attempt,
                     jobs.c.status == Status.RUNNING.value)
        common = {"modified_at": db_now(), "lease_expires_at": None}
        if outcome.kind is OutcomeKind.COMPLETED:
            values = dict(common, status=Status.COMPLETED.value, result=outcome.result,
                          progress=100.0, completed_at=db_now(), error_type=None,
                          error_message=None, error_traceback=None)
        elif outcome.kind is OutcomeKind.CANCELED:
            values = dict(common, status=Status.CANCELED.value, completed_at=db_now(),
                          error_type="canceled",
                          error_message=outcome.error_message or "canceled by request",
                          error_traceback=outcome.error_traceback)
        else:
            current = conn.execute(
                select(jobs.c.attempts, jobs.c.attempts_offset, jobs.c.max_retries,
                       jobs.c.retry_backoff, jobs.c.retry_backoff_max,
                       jobs.c.cancel_requested).where(fence)
            ).first()
            if current is None:
                return None
            used = current.attempts - current.attempts_offset
            errors = {"error_type": outcome.error_type, "error_message": outcome.error_message,
                      "error_traceback": outcome.error_traceback}
            if current.cancel_requested:
                # The cancel was accepted: a failing attempt must not bring it back.
                values = dict(common, **errors, status=Status.CANCELED.value,
                              completed_at=db_now())
            elif outcome.kind is OutcomeKind.FAILED and used <= current.max_retries:
                delay = retry_delay(used, current.retry_backoff, current.retry_backoff_max)
                values = dict(common, **errors, status=Status.RETRYING.value,
                              next_retry_at=db_now() + delay, due_at=db_now() + delay)
            else:
                values = dict(common, **errors, status=Status.DEAD_LETTER.value,
                              completed_at=db_now())
        result: RowMapping | None = conn.execute(
            update(jobs).where(fence).values(**values).returning(*jobs.c)
        ).mappings().first()
        return result

    def expired_leases(self, conn: Connection, limit: int) -> list[RowMapping]:
        stmt = self._lock_for_claim(
            select(jobs.c.id, jobs.c.attempts, jobs.c.started_at, jobs.c.worker_id)
            .where(jobs.c.status == Status.RUNNING.value, jobs.c.lease_expires_at < db_now())
            .order_by(jobs.c.lease_expires_at)
            .limit(limit)
        )
        return list(conn.execute(stmt).mappings())

    def return_to_queue(self, conn: Connection, held: Sequence[tuple[str, int]]) -> int:
        """Give back attempts stopped by a shutdown, without charging them."""
        returned = 0
        for job_id, attempt in held:
            fence = and_(jobs.c.id == job_id, jobs.c.attempts == attempt,
                         jobs.c.status == Status.RUNNING.value)
            canceled = conn.execute(
                update(jobs)
                .where(fence, jobs.c.cancel_requested.is_(True))
                .values(status=Status.CANCELED.value, completed_at=db_now(),
                        modified_at=db_now(), lease_expires_at=None, error_type="canceled",
                        error_message="canceled by request")
                .returning(*jobs.c)
            ).mappings().first()
            if canceled is not None:  # a cancel was accepted: it stays canceled
                self.insert_status_event(conn, canceled)
                self.cancel_dependents(conn, job_id, Status.CANCELED.value)
                continue
            row = conn.execute(
                update(jobs)
                .where(fence)
                .values(status=Status.QUEUED.value, attempts=jobs.c.attempts - 1,
                        worker_id=None, lease_expires_at=None, started_at=None,
                        due_at=db_now(), modified_at=db_now())
                .returning(*jobs.c)
            ).mappings().first()
            if row is not None:
                returned += 1
                self.insert_status_event(conn, row)
        if returned:
            self.notify_jobs_available(conn)
        return returned

    def delete_jobs(self, conn: Connection, job_ids: Sequence[str]) -> int:
        ids = list(job_ids)
        conn.execute(delete(job_dependencies).where(
            or_(job_dependencies.c.job_id.in_(ids), job_dependencies.c.depends_on_id.in_(ids))))
        conn.execute(delete(job_execution_log).where(job_execution_log.c.job_id.in_(ids)))
        conn.execute(delete(job_events).where(job_events.c.job_id.in_(ids)))
        return int(conn.execute(delete(jobs).where(jobs.c.id.in_(ids))).rowcount)


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    rest = url[len(prefix):].split("?", 1)[0]
    return None if rest in ("", ":memory:") else Path(rest)
