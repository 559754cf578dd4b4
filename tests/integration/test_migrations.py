"""The migrations produce exactly the declared schema (store/schema.py), on both
backends, and running them again changes nothing."""

from __future__ import annotations

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
