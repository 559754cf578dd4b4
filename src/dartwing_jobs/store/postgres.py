"""PostgreSQL: production and many machines. psycopg 3 under SQLAlchemy's
connection pool; ``NOTIFY`` after a submit wakes idle workers, ``FOR UPDATE SKIP
LOCKED`` lets many workers claim without blocking each other."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import (
    Boolean,
    Engine,
    Integer,
    String,
    bindparam,
    cast,
    create_engine,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import ClauseElement

from ..domain.outcomes import Outcome
from ..domain.statuses import Status
from . import postgres_hot as hot
from .base import Store, Units, Walk
from .clock import db_now
from .fairness import WalkClaim
from .schema import (
    ACTIVE_HASH_PREDICATE,
    ALL_JOB_TYPES,
    job_events,
    job_types,
    jobs,
    organization_limits,
    organizations,
)

NOTIFY_CHANNEL = "dartwing_jobs"
EVENTS_CHANNEL = "dartwing_jobs_events"


def literal_column_or(value: Any) -> Any:
    """A SQL expression as is; a plain value as a bound parameter."""
    return value if isinstance(value, ClauseElement) else literal(value)


def sqlalchemy_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and run them on psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def psycopg_url(url: str) -> str:
    return "postgresql://" + sqlalchemy_url(url)[len("postgresql+psycopg://"):]


SHOW_AUTOVACUUM = text("SHOW autovacuum")
#: For the rest of a fair claim's transaction: plan each (prepared) statement
#: once, not at every execution. The fair claim's statements are index probes and
#: key lookups whatever the values; a custom plan of its organization walk cost
#: about 0.5 ms of planning per claim, a third of its execution. (Not for the
#: unfair claim: its generic plan, blind to the LIMIT, sorts the queue.)
GENERIC_PLANS = text("SET LOCAL plan_cache_mode = force_generic_plan")
#: The same for a kept autocommit connection, which runs the idle fast claim
#: only (``CLAIM_NOTIFIED``, by id): re-planned at every execution it cost about
#: a third of a millisecond of each idle start once the jobs table had
#: statistics. ``RESET`` before the connection goes back to the pool.
GENERIC_PLANS_SESSION = text("SET plan_cache_mode = force_generic_plan")
DEFAULT_PLANS_SESSION = text("RESET plan_cache_mode")
#: Where a locked job row is (static text): the claim updates it there
#: (``CLAIM_CHOSEN``), with no second descent of the primary key. A row locked by
#: the claim's own transaction cannot move before that update.
ROW_ADDRESS = literal_column("background_jobs.ctid", String).label("tid")
#: The tables the retention cleanup deletes from (static text).
RECLAIM_SPACE = text(
    "VACUUM (ANALYZE) background_jobs, job_events, job_execution_log, job_dependencies")


class HeldUnits(Units):
    """A thread's own connections, kept between its units of work: one for
    transactions and reads, one in autocommit for single statements. The pool
    pings every connection it hands out (a round trip), which the worker would
    pay at every claim, group commit and idle fast claim: in the idle fast path,
    between a submit's notification and the claim, it was a fifth of the time. A
    connection that fails is dropped; the next unit takes a new one from the
    pool (pinged there). The autocommit one plans its statements generically
    (``GENERIC_PLANS_SESSION``). Nothing is lost by keeping one: every worker write is
    fenced, and a unit that fails is retried by its caller."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._kept: dict[bool, Connection] = {}

    def _connection(self, autocommit: bool) -> Connection:
        conn = self._kept.get(autocommit)
        if conn is None:
            conn = self.store.engine.connect()
            if autocommit:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(GENERIC_PLANS_SESSION)
            self._kept[autocommit] = conn
        return conn

    def _drop(self, autocommit: bool) -> None:
        conn = self._kept.pop(autocommit, None)
        if conn is not None:
            with suppress(Exception):
                conn.invalidate()
            with suppress(Exception):
                conn.close()

    def _lost(self, conn: Connection, exc: DBAPIError) -> bool:
        """Whether the error ended the session (the connection is dropped then); a
        statement the server refused leaves it usable."""
        return bool(exc.connection_invalidated or conn.invalidated or conn.closed)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        conn = self._connection(False)
        try:
            with conn.begin():
                yield conn
        except DBAPIError as exc:
            if self._lost(conn, exc):
                self._drop(False)
            raise

    read = transaction  # read-only work needs nothing else on PostgreSQL

    @contextmanager
    def single_statement(self) -> Iterator[Connection]:
        conn = self._connection(True)
        try:
            yield conn
            conn.commit()  # ends SQLAlchemy's own transaction; the server's is done
        except DBAPIError as exc:
            if self._lost(conn, exc):
                self._drop(True)
            else:
                with suppress(Exception):
                    conn.rollback()
            raise
        except BaseException:
            conn.rollback()
            raise

    def close(self) -> None:
        for autocommit in list(self._kept):
            conn = self._kept.pop(autocommit)
            if autocommit:
                try:  # back to the pool as the pool handed it out
                    conn.execute(DEFAULT_PLANS_SESSION)
                except Exception:
                    with suppress(Exception):
                        conn.invalidate()
            with suppress(Exception):
                conn.close()


class PostgresStore(Store):
    backend = "postgresql"
    notifies_workers = True
    walk_locks_heads = True
    concurrent_writers = True

    def _create_engine(self, url: str, **options: Any) -> Engine:
        engine = create_engine(
            sqlalchemy_url(url),
            pool_size=int(options.get("pool_size", 10)),
            max_overflow=20,
            # A ping per checkout (one round trip): a session the server ended
            # is replaced before use. Pinging only idle or "spoken to" connections
            # was tried and raced a termination still in flight.
            pool_pre_ping=True,
            connect_args={"application_name": options.get("application_name", "dartwing-jobs")},
        )
        return engine

    @contextmanager
    def single_statement(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    def units(self) -> Units:
        return HeldUnits(self)

    def configuration_warnings(self) -> list[str]:
        with self.read() as conn:
            autovacuum = conn.execute(SHOW_AUTOVACUUM).scalar()
        if str(autovacuum).lower() == "off":
            return ["autovacuum is off: every claim, progress write and completion "
                    "leaves a dead row version that only a vacuum reclaims; the "
                    "retention cleanup vacuums what it deletes from, once a day, so "
                    "the job tables grow in between (turn autovacuum on)"]
        return []

    def reclaim_space(self) -> bool:
        """``VACUUM (ANALYZE)`` of the tables the cleanup deletes from: the dead
        rows' space is reused at once and the statistics follow the smaller
        tables, whether or not autovacuum is on (it can be off: a queue's tables,
        updated several times per job, then grow without bound). VACUUM takes no
        lock that blocks readers or writers."""
        with self.single_statement() as conn:  # VACUUM runs outside a transaction
            conn.execute(RECLAIM_SPACE)
        return True

    def _insert_ignoring_duplicate(self, row: dict[str, Any] | list[dict[str, Any]]) -> Any:
        return pg_insert(jobs).values(row).on_conflict_do_nothing(
            index_elements=[jobs.c.job_hash],
            index_where=ACTIVE_HASH_PREDICATE,
        )

    def _insert_new_job(self, conn: Connection, row: dict[str, Any]) -> RowMapping | None:
        """One statement and one round trip for a submission: the insert (or
        nothing, when an active twin exists), its status event, and the
        notifications that wake the realtime readers and idle workers. The
        workers' notification names the job (an idle worker claims it by id); one
        per transaction is enough, since a worker told of one job that is not the
        only one due claims fairly among all of them."""
        plain = {k: v for k, v in row.items() if not isinstance(v, ClauseElement)}
        transaction = conn.get_transaction()
        wake = transaction is None or conn.info.get(
            "dartwing_notified", {}).get(NOTIFY_CHANNEL) is not transaction
        shape = ("submit", wake, tuple(sorted(plain)),
                 tuple(sorted(k for k in row if k not in plain)))
        stmt = self._statements.get(shape)
        if stmt is None:  # built once per shape; the values are bound at execution
            stmt = self._statements[shape] = self._submit_statement(
                self._insert_ignoring_duplicate(dict(row, **{
                    k: bindparam(f"v_{k}", type_=jobs.c[k].type) for k in plain})), wake)
        created: RowMapping | None = conn.execute(
            stmt, {f"v_{k}": v for k, v in plain.items()}).mappings().first()
        if created is not None:
            self._mark_notified(conn, EVENTS_CHANNEL)
            if wake and created["status"] == Status.QUEUED.value:
                self._mark_notified(conn, NOTIFY_CHANNEL)
        return created

    def insert_typed_job(self, conn: Connection, values: dict[str, Any],
                         priority: int | None, run_at: float | None,
                         check_organization: bool) -> RowMapping | None:
        """The common submission in one statement and one round trip: the job
        type's settings are read by the insert itself (``INSERT ... SELECT FROM
        job_types``), which inserts nothing unless the type exists and is
        enabled, the organization has no queued-job quota of its own and, with
        ``check_organization``, exists; nor when an active twin exists. Nothing
        inserted: the caller takes the general path, which tells why."""
        stmt = self._statements.get(("submit-typed",))
        if stmt is None:
            stmt = self._statements[("submit-typed",)] = self._typed_submit_statement()
        created: RowMapping | None = conn.execute(stmt, {
            "t_id": values["id"], "t_job_type": values["job_type"],
            "t_organization": values["organization"], "t_parameters": values["parameters"],
            "t_priority": priority, "t_job_hash": values["job_hash"],
            "t_submitted_by": values["submitted_by"], "t_run_at": run_at,
            "t_check_org": check_organization,
        }).mappings().first()
        if created is not None:
            self._mark_notified(conn, EVENTS_CHANNEL)
            self._mark_notified(conn, NOTIFY_CHANNEL)
        return created

    def _typed_submit_statement(self) -> Any:
        """Built once; every value is bound at execution."""
        jt = job_types
        org = bindparam("t_organization", type_=jobs.c.organization.type)
        run_at = bindparam("t_run_at", type_=jobs.c.run_at.type)
        org_exists = select(organizations.c.name).where(organizations.c.name == org).exists()
        own_quota = select(organization_limits.c.organization).where(
            organization_limits.c.organization == org,
            organization_limits.c.job_type == ALL_JOB_TYPES,
            organization_limits.c.max_queued.is_not(None)).exists()
        columns = {
            "id": bindparam("t_id", type_=jobs.c.id.type),
            "job_type": jt.c.name,
            "organization": org,
            "parameters": bindparam("t_parameters", type_=jobs.c.parameters.type),
            "priority": func.coalesce(bindparam("t_priority", type_=jobs.c.priority.type),
                                      jt.c.default_priority),
            "status": literal(Status.QUEUED.value, jobs.c.status.type),
            "job_hash": bindparam("t_job_hash", type_=jobs.c.job_hash.type),
            "deduplicate": jt.c.deduplicate,
            "max_retries": jt.c.max_retries,
            "timeout_seconds": jt.c.default_timeout,
            "retry_backoff": jt.c.retry_backoff,
            "retry_backoff_max": jt.c.retry_backoff_max,
            "submitted_by": bindparam("t_submitted_by", type_=jobs.c.submitted_by.type),
            "due_at": func.coalesce(run_at, db_now()),
            "run_at": run_at,
            "created_at": db_now(),
            "modified_at": db_now(),
        }
        chosen = select(*columns.values()).where(
            jt.c.name == bindparam("t_job_type", type_=jt.c.name.type), jt.c.enabled,
            or_(~bindparam("t_check_org", type_=Boolean), org_exists), ~own_quota)
        insert_stmt = pg_insert(jobs).from_select(list(columns), chosen).on_conflict_do_nothing(
            index_elements=[jobs.c.job_hash], index_where=ACTIVE_HASH_PREDICATE)
        return self._submit_statement(insert_stmt, wake=True)

    def _submit_statement(self, insert_stmt: Any, wake: bool) -> Any:
        ins = insert_stmt.returning(*jobs.c).cte("ins")
        event = insert(job_events).from_select(
            ["job_id", "organization", "job_type", "kind", "status", "attempt", "progress",
             "message", "error", "created_at"],
            select(ins.c.id, ins.c.organization, ins.c.job_type, literal("status"),
                   ins.c.status, ins.c.attempts, ins.c.progress, ins.c.progress_message,
                   null(), db_now()),
        ).cte("event")
        woke_readers = select(func.pg_notify(EVENTS_CHANNEL, "")).scalar_subquery()
        if not wake:
            return select(ins, woke_readers.label("_woke_readers")).add_cte(event)
        # The payload names the job: an idle worker claims it by id (no fair walk).
        woke_workers = (select(func.pg_notify(NOTIFY_CHANNEL, ins.c.id))
                        .where(ins.c.status == Status.QUEUED.value).scalar_subquery())
        return select(ins, woke_readers.label("_woke_readers"),
                      woke_workers.label("_woke_workers")).add_cte(event)

    @staticmethod
    def _mark_notified(conn: Connection, channel: str) -> None:
        transaction = conn.get_transaction()
        if transaction is not None:
            conn.info.setdefault("dartwing_notified", {})[channel] = transaction

    def _prepare_fair_claim(self, conn: Connection) -> None:
        conn.execute(GENERIC_PLANS)

    def _lock_for_claim(self, stmt: Any) -> Any:
        return stmt.with_for_update(skip_locked=True)

    def walk_around(
        self, conn: Connection, priority: int, cursor: str, steps: int,
        job_type_filter: Sequence[str] | None, paused_types: frozenset[str],
        enough: int | None = None, claim: WalkClaim | None = None,
    ) -> Walk:
        """One statement (``postgres_hot.WALK_AROUND``), the wrap-around included,
        locking each organization's first due job, stopping after ``enough`` of
        them and, asked to, claiming them when it locked ``claim.want``: a claim
        of one job from each of as many organizations is then one round trip.
        Reused as ``_reused_walk`` says."""
        seen = ("around", tuple(job_type_filter or ()), tuple(sorted(paused_types)),
                priority, cursor)
        reused = self._reused_walk(seen, steps)
        if reused is not None:
            return reused
        enough = steps if enough is None else enough
        rows = conn.execute(hot.WALK_AROUND, {
            "after": cursor, "steps": steps, "enough": enough, "priority": priority,
            "types": list(job_type_filter) if job_type_filter else None,
            "paused": sorted(paused_types),
            "claim_want": claim.want if claim else 0,
            "worker_id": claim.worker_id if claim else None,
            "lease": float(claim.lease_seconds) if claim else 0.0,
            "channel": EVENTS_CHANNEL}).all()
        # Rows read by attribute, mappings made only for the heads: a walk of a
        # claim of 100 from as many organizations returns 100 rows. ``tid`` is the
        # address of the version the lock holds (after a recheck, the newest).
        walked: list[tuple[str, bool]] = [(r.org, r.has_due) for r in rows]
        heads: dict[str, RowMapping] = {r.org: r._mapping for r in rows if r.id is not None}
        found = rows[-1].found if rows else 0
        claimed = [r._mapping for r in rows if r.status is not None]
        if claimed:
            self._mark_notified(conn, EVENTS_CHANNEL)
        # A walk that stopped at ``enough`` answers only walks as long as itself
        # (it did not reach the end).
        self._keep_walk(seen, len(walked) if found >= enough else steps, walked)
        return Walk(walked, heads, claimed)

    def organization_heads(
        self, conn: Connection, priority: int, wanted: Sequence[tuple[str, int]],
        job_type_filter: Sequence[str] | None, paused_types: frozenset[str],
        blocked_pairs: Sequence[tuple[str, str]], exclude_ids: Sequence[str],
    ) -> list[RowMapping]:
        """One statement for every organization: ``unnest`` of (organization, k)
        joined LATERAL to its first ``k`` due jobs, locked ``FOR UPDATE SKIP LOCKED``
        (jobs another claimer holds are passed over, never waited for)."""
        if not wanted:
            return []
        params = {"head_orgs": [o for o, _ in wanted], "head_ks": [k for _, k in wanted],
                  "priority": priority}
        key = ("heads", tuple(job_type_filter or ()), tuple(sorted(paused_types)))
        if blocked_pairs or exclude_ids:  # rare shapes: built for this call
            stmt = self._heads_statement(job_type_filter, paused_types, blocked_pairs,
                                         exclude_ids)
        else:
            stmt = self._statements.get(key)
            if stmt is None:
                stmt = self._statements[key] = self._heads_statement(
                    job_type_filter, paused_types, (), ())
        return list(conn.execute(stmt, params).mappings())

    def _heads_statement(
        self, job_type_filter: Sequence[str] | None, paused_types: frozenset[str],
        blocked_pairs: Sequence[tuple[str, str]], exclude_ids: Sequence[str],
    ) -> Any:
        share = func.unnest(
            bindparam("head_orgs", type_=ARRAY(String)),
            bindparam("head_ks", type_=ARRAY(Integer)),
        ).table_valued("org", "k").render_derived()
        head = (select(jobs.c.id, jobs.c.organization, jobs.c.job_type, jobs.c.due_at,
                       jobs.c.attempts, ROW_ADDRESS)
                .where(jobs.c.organization == share.c.org,
                       jobs.c.priority == bindparam("priority", type_=Integer),
                       *self._claim_filters(job_type_filter, paused_types)))
        if blocked_pairs:
            head = head.where(tuple_(jobs.c.organization, jobs.c.job_type)
                              .not_in(list(blocked_pairs)))
        if exclude_ids:
            head = head.where(jobs.c.id.not_in(list(exclude_ids)))
        lateral = (head.order_by(jobs.c.due_at).limit(share.c.k)
                   .with_for_update(skip_locked=True).lateral("head"))
        return select(*lateral.c).select_from(share.join(lateral, true()))

    def _claim_in_order(self, conn: Connection, worker_id: str, limit: int,
                        lease_seconds: float, job_type_filter: Sequence[str] | None
                        ) -> list[RowMapping]:
        rows = conn.execute(hot.CLAIM_IN_ORDER, {
            "worker_id": worker_id, "lease": float(lease_seconds), "limit": int(limit),
            "types": list(job_type_filter) if job_type_filter else None,
            "channel": EVENTS_CHANNEL,
        }).mappings().all()
        return self._sent_events(conn, rows)

    def claim_notified(self, conn: Connection, worker_id: str, job_ids: Sequence[str],
                       lease_seconds: float, job_type_filter: Sequence[str] | None = None,
                       ) -> list[RowMapping]:
        if not job_ids or self.claim_policy.default_max_running is not None:
            return []
        rows = conn.execute(hot.CLAIM_NOTIFIED, {
            "worker_id": worker_id, "lease": float(lease_seconds), "ids": list(job_ids),
            "types": list(job_type_filter) if job_type_filter else None,
            "channel": EVENTS_CHANNEL,
        }).mappings().all()
        return sorted(self._sent_events(conn, rows),
                      key=lambda r: (r["priority"], r["due_at"], r["id"]))

    def _claim_chosen(self, conn: Connection, worker_id: str, lease_seconds: float,
                      chosen: Sequence[tuple[str, int, str | None]]) -> list[RowMapping]:
        rows = conn.execute(hot.CLAIM_CHOSEN, {
            "worker_id": worker_id, "lease": float(lease_seconds),
            "chosen": json.dumps([{"id": i, "attempts": a, "tid": t} for i, a, t in chosen]),
            "channel": EVENTS_CHANNEL,
        }).mappings().all()
        return self._sent_events(conn, rows)

    def _complete_many(self, conn: Connection, outcomes: Sequence[Outcome]) -> list[str]:
        """One statement for a whole batch of successes: rows, log, events."""
        rows = conn.execute(hot.COMPLETE_MANY, {
            "batch": json.dumps([{
                "id": o.job_id, "attempt": o.attempt, "result": json.dumps(o.result),
                "worker_id": o.worker_id, "started_at": float(o.started_at),
                "duration_ms": float(o.duration_ms)} for o in outcomes]),
            "channel": EVENTS_CHANNEL,
        }).mappings().all()
        return [r["id"] for r in self._sent_events(conn, rows)]

    def having_dependents(self, conn: Connection, job_ids: Sequence[str]) -> list[str]:
        return list(conn.execute(hot.HAVING_DEPENDENTS,
                                 {"ids": json.dumps(list(job_ids))}).scalars())

    def cancel_requests(self, conn: Connection, held: Sequence[tuple[str, int]]
                        ) -> set[tuple[str, int]]:
        if not held:
            return set()
        rows = conn.execute(hot.CANCEL_REQUESTS, {"held": json.dumps(
            [{"id": i, "attempts": a} for i, a in held])})
        return {(r.id, r.attempts) for r in rows}

    def _sent_events(self, conn: Connection, rows: Sequence[RowMapping]) -> list[RowMapping]:
        """Rows of a hot statement, which notified the realtime readers itself."""
        if rows:
            self._mark_notified(conn, EVENTS_CHANNEL)
        return list(rows)

    def insert_rows(self, conn: Connection, table: Any, rows: Sequence[dict[str, Any]],
                    **constants: Any) -> None:
        """``INSERT ... SELECT unnest(:a), unnest(:b), ...``: one statement whose text
        does not depend on the number of rows, so it is compiled and prepared once,
        and one round trip whatever the batch size."""
        if not rows:
            return
        names = list(rows[0])
        arrays = [
            func.unnest(cast(bindparam(f"rows_{name}", type_=ARRAY(table.c[name].type)),
                             ARRAY(table.c[name].type)))
            for name in names
        ]
        stmt = insert(table).from_select(
            [*names, *constants],
            select(*arrays, *(literal_column_or(v) for v in constants.values())),
        )
        conn.execute(stmt, {f"rows_{name}": [r[name] for r in rows] for name in names})

    def insert_events(self, conn: Connection, events: Sequence[dict[str, Any]]) -> None:
        super().insert_events(conn, events)
        if events:
            # Wakes the realtime outbox readers at commit.
            self._notify_once(conn, EVENTS_CHANNEL)

    def notify_jobs_available(self, conn: Connection) -> None:
        self._notify_once(conn, NOTIFY_CHANNEL)

    @staticmethod
    def _notify_once(conn: Connection, channel: str) -> None:
        """``NOTIFY`` is delivered at commit, only if the transaction commits, and
        once however often it is sent: so send it once per transaction."""
        transaction = conn.get_transaction()
        sent = conn.info.setdefault("dartwing_notified", {})
        if transaction is not None and sent.get(channel) is transaction:
            return
        conn.execute(select(func.pg_notify(channel, "")))
        if transaction is not None:
            sent[channel] = transaction
