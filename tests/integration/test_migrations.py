"""The migrations produce exactly the declared schema (store/schema.py), on both
backends, and running them again changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dartwing_jobs import Engine
from dartwing_jobs.store.schema import metadata


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("fresh_pg_database"))


def test_migrations_match_the_declared_schema(fresh_url: str, backend: str) -> None:
    engine = Engine(fresh_url)
    try:
        if backend == "postgresql":  # the fixture's database is cloned already migrated
            with engine.store.engine.begin() as conn:
                conn.exec_driver_sql("DROP SCHEMA public CASCADE")
                conn.exec_driver_sql("CREATE SCHEMA public")
        engine.migrate()
        engine.migrate()  # a second run is harmless
        with engine.store.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        assert diff == []
    finally:
        engine.close()


@pytest.fixture
def locale_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A new database whose default collation is not byte order where the server
    has one (ICU ``en-US`` on PostgreSQL: "a" before "B", "_z" first), so that
    the organization columns' own collation is what orders them."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'locale.db'}"
        return
    import psycopg

    from tests.conftest import _admin_exec, pg_url

    name = f"dwj_test_icu_{uuid.uuid4().hex[:12]}"
    try:
        _admin_exec(f'CREATE DATABASE "{name}" TEMPLATE template0 '
                    "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
    except psycopg.Error:  # a server built without ICU: its default collation
        _admin_exec(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield pg_url(name)
    finally:
        _admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_organization_names_compare_bytewise(locale_url: str, backend: str) -> None:
    """Every organization-name column sorts by bytes, as Python sorts the names,
    also in a database whose own collation does not: the fair claim's rotation
    order is the same on both backends (and its walk's index descents skip the
    locale). Alembic's schema comparison does not look at collations, so this
    test does; and downgrading restores the database default."""
    from alembic import command

    from dartwing_jobs.store.migrations import alembic_config
    from dartwing_jobs.store.schema import OrgName

    org_columns = sorted((t.name, c.name) for t in metadata.sorted_tables
                         for c in t.columns if c.type is OrgName)
    assert len(org_columns) == 7

    engine = Engine(locale_url)
    try:
        engine.migrate()
        names = ["b", "B", "_z", "a-1", "a.1", "Z", "é", "e"]
        for name in names:
            engine.create_organization(name)
        with engine.store.read() as conn:
            stored = [r[0] for r in conn.exec_driver_sql(
                "SELECT name FROM organizations ORDER BY name")]  # static text
        assert stored == sorted(names)
        if backend != "postgresql":
            return

        def collations() -> dict[tuple[str, str], str | None]:
            with engine.store.engine.connect() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT table_name, column_name, collation_name "
                    "FROM information_schema.columns WHERE table_schema = 'public'").all()
            return {(t, c): coll for t, c, coll in rows if (t, c) in org_columns}

        assert collations() == {col: "C" for col in org_columns}
        with engine.store.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0005")
        assert collations() == {col: None for col in org_columns}
        engine.migrate()
        assert collations() == {col: "C" for col in org_columns}
    finally:
        engine.close()
