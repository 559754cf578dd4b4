"""SQLite: the embedded default. One file in WAL mode, ``synchronous=FULL`` so that
a committed job survives a power loss, and writers serialised by ``BEGIN
IMMEDIATE`` (a write transaction takes the lock up front instead of failing to
upgrade a read lock halfway through)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from .base import Store, sqlite_path
from .schema import ACTIVE_HASH_PREDICATE, jobs

_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}


class SQLiteStore(Store):
    backend = "sqlite"

    def _create_engine(self, url: str, **options: Any) -> Engine:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        synchronous = str(options.get("synchronous", "FULL")).upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"unknown SQLite synchronous mode {synchronous!r}")
        busy_ms = int(options.get("busy_timeout_ms", 30000))
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_ms / 1000},
            pool_size=int(options.get("pool_size", 10)),
            max_overflow=20,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event emit BEGIN itself.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")  # checked against a fixed set
            cursor.execute(f"PRAGMA busy_timeout={busy_ms:d}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("dartwing_read_only"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _insert_ignoring_duplicate(self, row: dict[str, Any] | list[dict[str, Any]]) -> Any:
        return sqlite_insert(jobs).values(row).on_conflict_do_nothing(
            index_elements=[jobs.c.job_hash],
            index_where=ACTIVE_HASH_PREDICATE,
        )
