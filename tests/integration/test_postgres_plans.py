"""Query plans of the hot paths (plan P1-004): with ~20,000 jobs, mostly finished,
the claim query and the duplicate lookup must use their partial indexes
(``ix_background_jobs_claim``, ``ux_background_jobs_active_hash``) rather than
scan the table or every active row.

The statements under test are captured from the store as it really issues them
(``before_cursor_execute``) and then explained with the same bound parameters,
so a change to the store's SQL is what these tests see. PostgreSQL is the
``postgres_only`` part; SQLite's ``EXPLAIN QUERY PLAN`` is checked alongside.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from psycopg import sql as psycopg_sql
from sqlalchemy import event, insert, select
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Connection

from dartwing_jobs import DuplicateJob, Engine
from dartwing_jobs.domain.statuses import ACTIVE
from dartwing_jobs.store.clock import db_now
from dartwing_jobs.store.schema import (
    ACTIVE_HASH_PREDICATE,
    CLAIMABLE_PREDICATE,
    jobs,
)
from tests.conftest import World

ACTIVE_VALUES = sorted(s.value for s in ACTIVE)
N_JOBS = 20_000
CLAIM_INDEX = "ix_background_jobs_claim"
HASH_INDEX = "ux_background_jobs_active_hash"
# Of every 100 jobs: 90 finished, 5 queued, 2 retrying, 3 running - a store that
# has been running for a while.
STATUS_MIX = ["completed"] * 80 + ["dead_letter"] * 5 + ["canceled"] * 5 + [
    "queued"] * 5 + ["retrying"] * 2 + ["running"] * 3

pg_only = [pytest.mark.postgres_only,
           pytest.mark.parametrize("backend", ["postgresql"], indirect=True)]
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _apply(marks: Sequence[Any]) -> Any:
    def deco(fn: Any) -> Any:
        for mark in reversed(marks):
            fn = mark(fn)
        return fn
    return deco


def seed(engine: Engine, organizations: Sequence[str] | None = None,
         mix: Sequence[str] = STATUS_MIX, priorities: int = 4) -> None:
    """Insert N_JOBS jobs with one executemany (bound parameters), then ANALYZE
    so the planner knows the distribution."""
    with engine.store.read() as conn:
        now = engine.store.now(conn)
    for org in organizations or ():
        engine.create_organization(org)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "job_type": "noop",
            # Given organizations hold consecutive runs of rows (as one submit
            # after another leaves them), so that the table is ordered by them.
            "organization": (organizations[i * len(organizations) // N_JOBS]
                             if organizations else "acme" if i % 3 else "globex"),
            "parameters": {"i": i},
            "priority": i % priorities,
            "status": mix[i % len(mix)],
            "job_hash": uuid.uuid4().hex * 2,
            "deduplicate": True,
            "max_retries": 3,
            "timeout_seconds": 60,
            "retry_backoff": 10.0,
            "retry_backoff_max": 3600.0,
            # Half the claimable jobs are due, half scheduled in the future.
            "due_at": now - 3600 + (i % 7200),
            "created_at": now - N_JOBS + i,
            "modified_at": now - N_JOBS + i,
        }
        for i in range(N_JOBS)
    ]
    with engine.store.transaction() as conn:
        conn.execute(insert(jobs), rows)
    with engine.store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")  # static text
        conn.commit()


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the store sends to the driver, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> None:
        seen.append((statement, parameters))

    event.listen(engine.store.engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine.store.engine, "before_cursor_execute", listener)


def plan(conn: Connection, statement: str, parameters: Any) -> str:
    """EXPLAIN (PostgreSQL) or EXPLAIN QUERY PLAN (SQLite) of a driver-level
    statement with its bound parameters, as text."""
    prefix = "EXPLAIN " if conn.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    rows = conn.exec_driver_sql(prefix + statement, parameters).all()
    return "\n".join(" ".join(str(c) for c in r) for r in rows)


def generic_plan(conn: Connection, statement: str, parameters: dict[str, Any]) -> str:
    """EXPLAIN of the plan PostgreSQL caches for a prepared statement under
    ``plan_cache_mode = force_generic_plan``: built without the values (as the
    fair claim's statements run). The driver's ``%(name)s`` placeholders become
    ``$n`` of a ``PREPARE``; the values are bound to its ``EXECUTE``."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    body = re.sub(r"%\((\w+)\)s", number, statement).replace("%%", "%")
    conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    conn.exec_driver_sql("PREPARE generic_probe AS " + body)
    try:
        # EXECUTE inside EXPLAIN takes no bound parameters: the driver quotes them.
        raw = conn.connection.dbapi_connection
        arguments = ", ".join(
            psycopg_sql.Literal(parameters[n]).as_string(raw) for n in names)  # type: ignore[arg-type]
        rows = conn.exec_driver_sql(f"EXPLAIN EXECUTE generic_probe({arguments})").all()
    finally:
        conn.exec_driver_sql("DEALLOCATE generic_probe")
        conn.exec_driver_sql("RESET plan_cache_mode")
    return "\n".join(" ".join(str(c) for c in r) for r in rows)


def plan_of(conn: Connection, stmt: Any) -> str:
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    if compiled.positiontup is not None:
        params: Any = tuple(compiled.params[name] for name in compiled.positiontup)
    else:
        params = compiled.params
    return plan(conn, compiled.string, params)


def store_claim_plan(engine: Engine) -> str:
    """The plan of the unfair claim exactly as ``Store.claim_jobs`` issues it."""
    engine.store.claim_policy = replace(engine.store.claim_policy, fair=False)
    with engine.store.engine.connect() as conn, captured(engine) as seen:
        trans = conn.begin()
        engine.store.claim_jobs(conn, "plan-test", 10, 30.0)
        trans.rollback()
    (statement, params), *_ = [(s, p) for s, p in seen if "lease_expires_at" in s
                               and s.lstrip().upper().startswith(("UPDATE", "WITH"))]
    with engine.store.engine.connect() as conn:
        return plan(conn, statement, params)


def store_fair_claim_plans(engine: Engine, generic: bool = False) -> dict[str, str]:
    """The plans of the fair claim's statements on the jobs table, by role: the top
    due priority, the organization walk, the organizations' first jobs, the claim
    of the chosen ones (``generic``:
    the plans cached without the values, as the claim's transaction runs them)."""
    with engine.store.engine.connect() as conn, captured(engine) as seen:
        trans = conn.begin()
        rows = engine.store.claim_jobs(conn, "plan-test", 10, 30.0)
        trans.rollback()
    assert rows
    plans: dict[str, str] = {}
    with engine.store.engine.connect() as conn:
        for statement, params in seen:
            head = statement.lstrip().upper()
            if "BACKGROUND_JOBS" not in head or not head.startswith(("SELECT", "WITH")):
                continue
            role = ("walk" if "RECURSIVE" in head else
                    "claim" if "UPDATE BACKGROUND_JOBS" in head else
                    "heads" if "UNION" in head or "LATERAL" in head else
                    "priority" if head.startswith("SELECT (SELECT") else "other")
            plans[role] = (generic_plan(conn, statement, params) if generic
                           else plan(conn, statement, params))
    return plans


def store_duplicate_lookup_plan(world: World) -> str:
    """The plan of the twin lookup ``insert_job`` runs when a submission collides."""
    first = world.submit(parameters={"plan": "dup"})
    with captured(world.engine) as seen, pytest.raises(DuplicateJob) as info:
        world.submit(parameters={"plan": "dup"})
    assert info.value.existing_job_id == first.id
    lookups = [(s, p) for s, p in seen
               if s.lstrip().upper().startswith("SELECT") and "job_hash" in s
               and "INSERT" not in s.upper()]
    assert lookups, [s for s, _ in seen]
    statement, params = lookups[-1]
    with world.engine.store.engine.connect() as conn:
        return plan(conn, statement, params)


def brief_claim_query() -> Any:
    return (
        select(jobs.c.id)
        .where(jobs.c.status.in_(["queued", "retrying"]), jobs.c.due_at <= db_now())
        .order_by(jobs.c.priority, jobs.c.due_at)
        .limit(10)
        .with_for_update(skip_locked=True)
    )


def predicate_claim_query() -> Any:
    """The claim written with the index's own predicate text (static SQL)."""
    return (
        select(jobs.c.id)
        .where(CLAIMABLE_PREDICATE, jobs.c.due_at <= db_now())
        .order_by(jobs.c.priority, jobs.c.due_at)
        .limit(10)
        .with_for_update(skip_locked=True)
    )


def predicate_duplicate_lookup(job_hash: str) -> Any:
    return select(jobs.c.id).where(jobs.c.job_hash == job_hash, ACTIVE_HASH_PREDICATE)


def bound_duplicate_lookup(job_hash: str) -> Any:
    """The twin lookup as ``insert_job`` writes it."""
    return select(jobs.c.id).where(
        jobs.c.job_hash == job_hash,
        jobs.c.deduplicate.is_(True),
        jobs.c.status.in_(ACTIVE_VALUES),
    )


# -- PostgreSQL ---------------------------------------------------------------------


@_apply(pg_only)
def test_pg_claim_query_uses_the_claim_index(world: World) -> None:
    seed(world.engine)
    text = store_claim_plan(world.engine)
    assert CLAIM_INDEX in text, text
    assert "Seq Scan on background_jobs" not in text, text
    with world.engine.store.engine.connect() as conn:
        for stmt in (brief_claim_query(), predicate_claim_query()):
            text = plan_of(conn, stmt)
            assert CLAIM_INDEX in text, text
            assert "LockRows" in text  # FOR UPDATE SKIP LOCKED kept


ORG_INDEX = "ix_background_jobs_org_claimable"


def indexes_used(plan_text: str) -> set[str]:
    """The index names a plan reads (PostgreSQL ``using X``, SQLite ``INDEX X``)."""
    return set(re.findall(r"(?:using|INDEX) (\w+)", plan_text))


@_apply(pg_only)
@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
def test_pg_fair_claim_uses_the_claim_and_organization_indexes(world: World,
                                                               generic: bool) -> None:
    """Generic too: a fair claim's transaction has PostgreSQL plan its statements
    once, without the values; those plans must probe the same indexes."""
    seed(world.engine)
    plans = store_fair_claim_plans(world.engine, generic)
    assert {"priority", "walk", "heads"} <= set(plans), plans
    assert CLAIM_INDEX in plans["priority"], plans["priority"]
    # Every probe of the walk (next organization, its first due job) reads the
    # partial index of claimable jobs only: never an index that also holds the
    # finished jobs, which a step would have to pass over one by one.
    assert indexes_used(plans["walk"]) == {ORG_INDEX}, plans["walk"]
    assert "LockRows" in plans["walk"], plans["walk"]  # the walk locks each first job
    # ... and claims them where it locked them, when it locked as many as wanted:
    # its update reaches each by a tid scan, no index.
    update = plans["walk"].split("Update on background_jobs", 1)
    assert len(update) == 2, plans["walk"]
    assert "Tid Scan on background_jobs" in update[1], plans["walk"]
    assert ORG_INDEX in plans["heads"], plans["heads"]
    assert "LockRows" in plans["heads"], plans["heads"]  # FOR UPDATE SKIP LOCKED kept
    # The chosen rows are updated where their locks found them: no index at all.
    assert "Tid Scan on background_jobs" in plans["claim"], plans["claim"]
    assert indexes_used(plans["claim"]) == set(), plans["claim"]
    for role, text in plans.items():
        assert "Seq Scan on background_jobs" not in text, (role, text)
        if role != "walk":  # the walk sorts its own few steps, never jobs
            assert "Sort" not in text.replace("Incremental Sort", ""), (role, text)


@_apply(pg_only)
def test_pg_walk_never_steps_over_finished_jobs(world: World) -> None:
    """Many organizations whose jobs mostly finished since the statistics were
    taken: ordered by organization alone, the walk's next-organization probe was
    planned on ``(organization, status)``, whose entries of finished jobs come
    first in each organization ('completed' < 'queued'): a cost per step that
    grows with every job an organization ever finished."""
    orgs = [f"tenant-{i:03d}" for i in range(200)]
    seed(world.engine, orgs, ["queued"], priorities=1)
    # Then most of each organization's jobs finish, faster than the statistics
    # follow (they still say every job is queued: a busy queue's usual state).
    with world.engine.store.transaction() as conn:
        conn.execute(sql_text("UPDATE background_jobs SET status = 'completed' WHERE id IN ("
                          "SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY "
                          "organization ORDER BY due_at) AS n FROM background_jobs) AS r "
                          "WHERE n <= 60)"))
    plans = store_fair_claim_plans(world.engine)
    assert indexes_used(plans["walk"]) == {ORG_INDEX}, plans["walk"]


@_apply(pg_only)
def test_pg_duplicate_lookup_can_use_the_hash_index(world: World) -> None:
    seed(world.engine)
    with world.engine.store.engine.connect() as conn:
        text = plan_of(conn, predicate_duplicate_lookup("ab" * 32))
    assert HASH_INDEX in text, text


@_apply(pg_only)
def test_pg_store_duplicate_lookup_uses_the_hash_index(world: World) -> None:
    seed(world.engine)
    text = store_duplicate_lookup_plan(world)
    assert HASH_INDEX in text, text


# -- SQLite ------------------------------------------------------------------------


@sqlite_only
def test_sqlite_index_predicates_are_usable(world: World) -> None:
    """With the predicate text of the index, SQLite uses both partial indexes."""
    seed(world.engine)
    with world.engine.store.engine.connect() as conn:
        claim = plan_of(conn, predicate_claim_query())
        dup = plan_of(conn, predicate_duplicate_lookup("ab" * 32))
    assert CLAIM_INDEX in claim, claim
    assert "TEMP B-TREE" not in claim, claim
    assert HASH_INDEX in dup, dup


@sqlite_only
def test_sqlite_store_claim_uses_the_claim_index(world: World) -> None:
    seed(world.engine)
    text = store_claim_plan(world.engine)
    assert CLAIM_INDEX in text, text


@sqlite_only
def test_sqlite_fair_claim_uses_the_claim_and_organization_indexes(world: World) -> None:
    seed(world.engine)
    plans = store_fair_claim_plans(world.engine)
    assert {"priority", "walk", "heads"} <= set(plans), plans
    assert CLAIM_INDEX in plans["priority"], plans["priority"]
    assert indexes_used(plans["walk"]) == {ORG_INDEX}, plans["walk"]
    assert ORG_INDEX in plans["heads"], plans["heads"]
    for role, text in plans.items():
        for line in text.splitlines():
            assert not line.rstrip().endswith(("SCAN background_jobs", "SCAN due", "SCAN nxt")), (
                role, text)
        if role != "walk":  # the walk sorts its own few steps, never jobs
            assert "TEMP B-TREE FOR ORDER BY" not in text, (role, text)


@sqlite_only
def test_sqlite_store_duplicate_lookup_uses_the_hash_index(world: World) -> None:
    seed(world.engine)
    text = store_duplicate_lookup_plan(world)
    assert HASH_INDEX in text, text


FINISHED_INDEX = "ix_background_jobs_finished"


def captured_plans(engine: Engine, work: Any, marker: str) -> list[str]:
    """The plans of the statements ``work(conn)`` sends that mention ``marker``,
    run in a transaction that is rolled back."""
    with engine.store.engine.connect() as conn, captured(engine) as seen:
        trans = conn.begin()
        work(conn)
        trans.rollback()
    chosen = [(s, p) for s, p in seen if marker in s]
    assert chosen, [s for s, _ in seen]
    with engine.store.engine.connect() as conn:
        return [plan(conn, s, p) for s, p in chosen]


@_apply(pg_only)
def test_pg_finished_job_lookups_use_the_terminal_only_index(world: World) -> None:
    """Retention and the dependency sweeps find finished jobs by their last change
    in an index that holds terminal jobs only (migration 0005: a claim adds no
    entry to it)."""
    from dartwing_jobs.store import maintenance

    seed(world.engine)
    with world.engine.store.read() as conn:
        now = world.engine.store.now(conn)
    recent = now - 200  # the last 1% of the seeded history
    groups = [maintenance.RetentionGroup(sql_text("true"), (N_JOBS - 200) / 86_400)]
    works = {
        "promote": lambda conn: maintenance.promote_ready_pending(
            world.engine.store, conn, 100, since=recent),
        "doomed": lambda conn: maintenance.doomed_pending_jobs(conn, since=recent),
        "retention": lambda conn: maintenance.count_expired_jobs(conn, groups, now),
    }
    plans = {name: captured_plans(world.engine, work, "modified_at")
             for name, work in works.items()}
    for name, texts in plans.items():
        for text in texts:
            assert "Seq Scan on background_jobs" not in text, (name, text)
    # Retention starts from the old finished jobs (the sweeps start from the few
    # dependency rows while there are few).
    assert all(FINISHED_INDEX in text for text in plans["retention"]), plans["retention"]
    with world.engine.store.engine.connect() as conn:
        predicate = conn.execute(sql_text(
            "SELECT pg_get_expr(indpred, indrelid) FROM pg_index"
            " WHERE indexrelid = CAST(:name AS regclass)"), {"name": FINISHED_INDEX}).scalar()
    assert predicate is not None and "running" not in predicate, predicate


@_apply(pg_only)
def test_pg_jobs_by_status_of_an_organization_reads_an_index_only(world: World) -> None:
    """The per-organization jobs-by-status metric: an index-only scan of the
    (organization, status, created_at) index, whose prefix serves it (migration
    0005 dropped the (organization, status) index)."""
    from dartwing_jobs.store import metrics

    orgs = [f"tenant-{i:02d}" for i in range(50)]
    seed(world.engine, orgs)
    with world.engine.store.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("VACUUM background_jobs")  # static text: all-visible pages
    (text,) = captured_plans(
        world.engine, lambda conn: metrics.jobs_by_status(conn, orgs[7]), "background_jobs")
    assert "Index Only Scan using ix_background_jobs_org_status_created" in text, text


@_apply(pg_only)
def test_pg_only_the_fair_claim_plans_once(world: World) -> None:
    """The fair claim's transaction asks for generic plans; the unfair claim's
    does not (its generic plan, blind to the LIMIT, would sort the queue)."""
    world.submit()
    store = world.engine.store
    for fair, expected in ((True, "force_generic_plan"), (False, "auto")):
        store.claim_policy = replace(store.claim_policy, fair=fair)
        with store.engine.connect() as conn:
            trans = conn.begin()
            store.claim_jobs(conn, "plan-test", 10, 30.0)
            mode = conn.exec_driver_sql("SHOW plan_cache_mode").scalar()
            trans.rollback()
            assert mode == expected, (fair, mode)
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"


@_apply(pg_only)
def test_pg_idle_fast_claim_generic_plan_uses_the_primary_key_and_claim_index(
        world: World) -> None:
    """The idle fast claim runs on a connection that plans generically: its plan,
    built without the ids, still finds the named jobs by primary key and asks the
    partial indexes of claimable jobs whether anything else is due, never
    scanning the table or an index that holds finished jobs."""
    seed(world.engine)
    job = world.submit()
    store = world.engine.store
    with store.engine.connect() as conn, captured(world.engine) as seen:
        trans = conn.begin()
        store.claim_notified(conn, "plan-test", [job.id], 30.0)
        trans.rollback()
    (statement, params), = [(s, p) for s, p in seen if "lease_expires_at" in s]
    with store.engine.connect() as conn:
        text = generic_plan(conn, statement, params)
    assert "Seq Scan on background_jobs" not in text, text
    assert indexes_used(text) <= {"pk_background_jobs", CLAIM_INDEX, ORG_INDEX}, text
    assert "pk_background_jobs" in text, text
    assert CLAIM_INDEX in text or ORG_INDEX in text, text
