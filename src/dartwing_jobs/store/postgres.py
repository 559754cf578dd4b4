"""PostgreSQL: production and many machines. psycopg 3 under SQLAlchemy's
connection pool; ``NOTIFY`` after a submit wakes idle workers, ``FOR UPDATE SKIP
LOCKED`` lets many workers claim without blocking each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Integer, String, column, create_engine, func, select, update, values
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, RowMapping

from ..domain.outcomes import Outcome
from ..domain.statuses import Status
from .base import EVENT_COLUMNS, Store
from .clock import db_now
from .schema import ACTIVE_HASH_PREDICATE, jobs

NOTIFY_CHANNEL = "dartwing_jobs"
EVENTS_CHANNEL = "dartwing_jobs_events"


def sqlalchemy_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and run them on psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def psycopg_url(url: str) -> str:
    return "postgresql://" + sqlalchemy_url(url)[len("postgresql+psycopg://"):]


class PostgresStore(Store):
    backend = "postgresql"

    def _create_engine(self, url: str, **options: Any) -> Engine:
        return create_engine(
            sqlalchemy_url(url),
            pool_size=int(options.get("pool_size", 10)),
            max_overflow=20,
            pool_pre_ping=True,
            connect_args={"application_name": options.get("application_name", "dartwing-jobs")},
        )

    def _insert_ignoring_duplicate(self, row: dict[str, Any] | list[dict[str, Any]]) -> Any:
        return pg_insert(jobs).values(row).on_conflict_do_nothing(
            index_elements=[jobs.c.job_hash],
            index_where=ACTIVE_HASH_PREDICATE,
        )

    def _lock_for_claim(self, stmt: Any) -> Any:
        return stmt.with_for_update(skip_locked=True)

    def _complete_many(
        self, conn: Connection, outcomes: Sequence[Outcome]
    ) -> dict[tuple[str, int], RowMapping]:
        """One ``UPDATE ... FROM (VALUES ...)`` for a whole batch of successes,
        fenced per row by (id, attempt, status) exactly like the one-row path."""
        done = values(
            column("id", String), column("attempt", Integer), column("result", JSONB),
            name="done",
        ).data([(o.job_id, o.attempt, o.result) for o in outcomes])
        rows = conn.execute(
            update(jobs)
            .where(jobs.c.id == done.c.id, jobs.c.attempts == done.c.attempt,
                   jobs.c.status == Status.RUNNING.value)
            .values(status=Status.COMPLETED.value, result=done.c.result, progress=100.0,
                    completed_at=db_now(), modified_at=db_now(), lease_expires_at=None,
                    error_type=None, error_message=None, error_traceback=None)
            .returning(*EVENT_COLUMNS)
        ).mappings().all()
        return {(r["id"], r["attempts"]): r for r in rows}

    def insert_events(self, conn: Connection, events: Sequence[dict[str, Any]]) -> None:
        super().insert_events(conn, events)
        if events:
            # Wakes the realtime outbox readers at commit.
            conn.execute(select(func.pg_notify(EVENTS_CHANNEL, "")))

    def notify_jobs_available(self, conn: Connection) -> None:
        # Delivered at commit, and only if the transaction commits.
        conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, "")))
