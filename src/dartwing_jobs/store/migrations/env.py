"""Alembic environment: always run on a connection handed in by the Store."""

from __future__ import annotations

from alembic import context

from dartwing_jobs.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the Store runs migrations
    raise RuntimeError("run migrations through dartwing_jobs (engine.migrate or db upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
