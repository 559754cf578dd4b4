"""Shared fixtures. Every test that touches storage runs on SQLite and on
PostgreSQL (``backend`` parameter). PostgreSQL tests get a fresh database cloned
from a migrated template; without a reachable server they are skipped with the
reason, except under ``CI=true`` where that is a failure."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dartwing_jobs import Engine

PG_ADMIN_URL = os.environ.get(
    "DARTWING_JOBS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_HANDLER_MODULES = "dartwing_jobs.demo,tests.handlers"
_TEMPLATE_DB = f"dwj_template_{os.getpid()}"


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means "not reachable"
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}"


_PG_PROBLEM = _pg_reachable()


def pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def _admin_exec(*statements: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)  # static text naming our own test databases


def require_postgres() -> None:
    if _PG_PROBLEM is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {_PG_PROBLEM}")
    pytest.skip(_PG_PROBLEM)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    require_postgres()
    _admin_exec(f'DROP DATABASE IF EXISTS "{_TEMPLATE_DB}"', f'CREATE DATABASE "{_TEMPLATE_DB}"')
    engine = Engine(pg_url(_TEMPLATE_DB), handler_modules=TEST_HANDLER_MODULES)
    engine.migrate()
    engine.close()
    yield _TEMPLATE_DB
    _admin_exec(f'DROP DATABASE IF EXISTS "{_TEMPLATE_DB}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = Engine(f"sqlite:///{path}", handler_modules=TEST_HANDLER_MODULES)
    engine.migrate()
    engine.close()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_postgres()
    return str(request.param)


@pytest.fixture(scope="session")
def pg_session_db(pg_template: str) -> Iterator[str]:
    """One database for the session's PostgreSQL tests, emptied before each test.
    Creating and dropping a database per test costs a checkpoint each; emptying
    the tables costs milliseconds. Commits here need not wait for the disk."""
    name = f"dwj_run_{os.getpid()}"
    _admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"',
                f'ALTER DATABASE "{name}" SET synchronous_commit TO off')
    yield name
    _admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _empty_pg_database(name: str) -> None:
    """TRUNCATE every table but Alembic's (tests may add their own, such as the
    ledger), resetting sequences. A backend left in a transaction by an earlier
    test is terminated rather than waited for."""
    from psycopg import sql

    with psycopg.connect(pg_url(name), autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'")]
        if not tables:
            return
        statement = sql.SQL("TRUNCATE TABLE {} RESTART IDENTITY CASCADE").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in tables))
        conn.execute("SET lock_timeout = '3s'")
        for attempt in range(3):
            try:
                conn.execute(statement)
                return
            except psycopg.errors.LockNotAvailable:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                if attempt == 2:
                    raise


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database for one test."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "jobs.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    name: str = request.getfixturevalue("pg_session_db")
    _empty_pg_database(name)
    yield pg_url(name)


@pytest.fixture
def fresh_pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of its own, for the few tests that change the schema or the
    database itself."""
    template_db: str = request.getfixturevalue("pg_template")
    name = f"dwj_test_{uuid.uuid4().hex[:12]}"
    _admin_exec(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield pg_url(name)
    finally:
        _admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = Engine(database_url, handler_modules=TEST_HANDLER_MODULES)
    yield eng
    eng.close()


class World:
    """A small tenant world most tests start from: organizations ``acme`` and
    ``globex``; users: a System Manager, an acme member, an acme admin, an
    inactive acme member, a globex admin, a user with no person."""

    SM = "root@example.com"
    MEMBER = "alice@acme.test"
    ADMIN = "adam@acme.test"
    INACTIVE = "ivan@acme.test"
    OTHER = "olga@globex.test"
    NOBODY = "nora@nowhere.test"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        engine.create_organization("acme", title="Acme")
        engine.create_organization("globex", title="Globex")
        engine.create_user(self.SM, system_manager=True)
        for email in (self.MEMBER, self.ADMIN, self.INACTIVE, self.OTHER, self.NOBODY):
            engine.create_user(email)
        engine.set_member("acme", self.MEMBER, create=True)
        engine.set_member("acme", self.ADMIN, role="admin", create=True)
        engine.set_member("acme", self.INACTIVE, create=True)
        engine.set_member("acme", self.INACTIVE, status="Inactive", create=False)
        engine.set_member("globex", self.OTHER, role="admin", create=True)
        # NOBODY's person is unlinked from the user: a user without a person.
        from sqlalchemy import update

        from dartwing_jobs.store.schema import persons

        with engine.store.transaction() as conn:
            conn.execute(update(persons).where(persons.c.user_id == self.NOBODY)
                         .values(user_id=None))
        engine.job_types.register("noop", handler="tests.handlers:noop", max_retries=2)
        engine.job_types.register("nodedup", handler="tests.handlers:noop", deduplicate=False)

    def submit(self, **kw: Any) -> Any:
        kw.setdefault("job_type", "noop")
        kw.setdefault("organization", "acme")
        kw.setdefault("parameters", {"n": uuid.uuid4().hex})
        return self.engine.submit_job(kw.pop("job_type"), kw.pop("organization"), **kw)


@pytest.fixture
def world(engine: Engine) -> World:
    return World(engine)
