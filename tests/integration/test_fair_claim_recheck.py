"""A fair claim whose organization walk locks a head at a version committed after
the walk's snapshot (PostgreSQL's recheck of a row lock). The race is made
deterministic with a row-level-security policy, on the claiming role only, that
waits on an advisory lock the test holds while the walk's statement is running."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url, select, text
from sqlalchemy.engine import RowMapping

from dartwing_jobs import Engine
from dartwing_jobs.store.schema import jobs
from tests.conftest import TEST_HANDLER_MODULES, World
from tests.integration.test_fairness import many_organizations, sent_statements

#: Generous bounds: the test fails (never hangs) if the race cannot be staged.
WAIT_SECONDS = 30.0


@contextmanager
def gated_role(database_url: str, gate_key: int) -> Iterator[str]:
    """A login role of its own whose reads of ``background_jobs`` inside the
    organization walk (the statement with ``WITH RECURSIVE``) wait on advisory
    lock ``gate_key``; every other role (the superuser) bypasses the policy. Yields
    the role's database URL; drops the policy, the function and the role after."""
    role = f"dwj_gated_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex  # for servers that ask for one (trust ignores it)
    names = {"role": sql.Identifier(role), "gate": sql.Identifier(f"{role}_gate"),
             "policy": sql.Identifier(f"{role}_policy"), "key": sql.Literal(int(gate_key)),
             "password": sql.Literal(password), "name": sql.Literal(role)}

    def run(admin: psycopg.Connection[Any], statement: str) -> None:
        admin.execute(sql.SQL(statement).format(**names))  # identifiers quoted

    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SET lock_timeout = '10s'")
        run(admin, "CREATE ROLE {role} LOGIN PASSWORD {password}")
        try:
            run(admin, "GRANT USAGE ON SCHEMA public TO {role}")
            run(admin, "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
            run(admin, "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
            run(admin, """
                CREATE FUNCTION {gate}() RETURNS boolean
                LANGUAGE plpgsql VOLATILE AS $$
                BEGIN
                    IF current_query() LIKE '%WITH RECURSIVE%' THEN
                        PERFORM pg_advisory_xact_lock_shared({key});
                    END IF;
                    RETURN true;
                END $$""")
            run(admin, """
                CREATE POLICY {policy} ON background_jobs TO {role}
                USING ({gate}()) WITH CHECK (true)""")
            admin.execute("ALTER TABLE background_jobs ENABLE ROW LEVEL SECURITY")
            yield make_url(database_url).set(username=role, password=password
                                             ).render_as_string(hide_password=False)
        finally:
            # Each step on its own: a claim left hanging must not keep the rest.
            cleanup = [
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {name}",
                "ALTER TABLE background_jobs DISABLE ROW LEVEL SECURITY",
                "DROP POLICY IF EXISTS {policy} ON background_jobs",
                "DROP FUNCTION IF EXISTS {gate}()",
                "DROP OWNED BY {role}",
                "DROP ROLE {role}",
            ]
            for statement in cleanup:
                with suppress(psycopg.Error):
                    run(admin, statement)


def wait_for_walk_at_gate(conn: psycopg.Connection[Any], gate_key: int) -> None:
    """Until a backend running the organization walk waits on the gate (its
    statement has taken its snapshot and locked nothing yet)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid) "
            "WHERE l.locktype = 'advisory' AND NOT l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = 0 AND l.objid = %s AND l.objsubid = 1 "
            "AND a.query LIKE '%%WITH RECURSIVE%%'", (gate_key,)).fetchone()
        if waiting is not None and waiting[0] > 0:
            return
        time.sleep(0.02)
    raise AssertionError("the claim's organization walk never reached the gate")


def test_a_head_updated_after_the_walks_snapshot_is_still_claimed(
        world: World, database_url: str) -> None:
    """The walk's claiming UPDATE reads the statement's snapshot, but its row lock
    is rechecked at the newest committed version, whose ctid that snapshot cannot
    see: a head another session updated after the snapshot was taken is locked and
    returned, yet not updated, by the walk. The claim must still take it (with a
    statement of its own, fresh snapshot), once: running, attempt 1, one event."""
    engine = world.engine
    if not engine.store.walk_locks_heads:
        pytest.skip("row locks and their recheck are PostgreSQL's (SQLite serialises "
                    "writers)")
    made = many_organizations(engine, 2, 1)
    heads = [made["tenant-00"][0], made["tenant-01"][0]]
    touched = made["tenant-01"][0]
    gate_key = 0x5EED0000 + uuid.uuid4().int % 0xFFFF

    with gated_role(database_url, gate_key) as role_url:
        claimer = Engine(role_url, handler_modules=TEST_HANDLER_MODULES)
        result: list[RowMapping] = []
        errors: list[BaseException] = []

        def claim() -> None:
            try:
                with claimer.store.transaction() as conn:
                    conn.execute(text("SET LOCAL lock_timeout = '30s'"))
                    conn.execute(text("SET LOCAL statement_timeout = '60s'"))
                    result.extend(claimer.store.claim_jobs(
                        conn, "w1", 2, 30.0, after_organization=""))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=claim, name="gated-claim", daemon=True)
        try:
            with (sent_statements(claimer) as sent,
                  psycopg.connect(database_url, autocommit=True) as gate):
                gate.execute("SELECT pg_advisory_lock(%s)", (gate_key,))
                thread.start()
                wait_for_walk_at_gate(gate, gate_key)
                # Nothing claim-relevant changes; the row gets a new version.
                with engine.store.transaction() as other:
                    other.execute(text("SET LOCAL lock_timeout = '10s'"))
                    other.execute(text(
                        "UPDATE background_jobs SET modified_at = modified_at + 1 "
                        "WHERE id = :id"), {"id": touched})
                gate.execute("SELECT pg_advisory_unlock(%s)", (gate_key,))
                thread.join(WAIT_SECONDS * 2)
                assert not thread.is_alive(), "the claim did not finish"
        finally:
            with suppress(Exception):
                thread.join(WAIT_SECONDS * 2)
            claimer.close()
    if errors:
        raise errors[0]

    assert sorted(r["id"] for r in result) == sorted(heads)
    assert [(r["status"], r["attempts"]) for r in result] == [("running", 1)] * 2
    # The race happened: the walk claimed one head, the separate claim the other.
    walks = [s for s in sent if "WITH RECURSIVE" in s]
    separate = [s for s in sent if "json_to_recordset" in s and "UPDATE background_jobs" in s]
    assert len(walks) == 1 and len(separate) == 1, sent

    with engine.store.read() as conn:
        states = {r.id: (r.status, r.attempts, r.worker_id) for r in conn.execute(
            select(jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.worker_id))}
        events = conn.execute(text(
            "SELECT job_id, attempt FROM job_events "
            "WHERE kind = 'status' AND status = 'running'")).all()
    assert states == {i: ("running", 1, "w1") for i in heads}
    assert sorted((e.job_id, e.attempt) for e in events) == sorted((i, 1) for i in heads)
