"""SQLite: the embedded default. One file in WAL mode, ``synchronous=FULL`` so that
a committed job survives a power loss, and writers serialised by ``BEGIN
IMMEDIATE`` (a write transaction takes the lock up front instead of failing to
upgrade a read lock halfway through)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Engine, create_engine, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, RowMapping

from ..domain.outcomes import Outcome
from . import sqlite_hot as hot
from .base import Store, sqlite_path
from .schema import ACTIVE_HASH_PREDICATE, jobs

# The claimed rows' JSON columns come back decoded, as from the Core statements.
_CLAIM_IN_ORDER = hot.CLAIM_IN_ORDER.columns(parameters=JSON, checkpoint=JSON)
_CLAIM_IN_ORDER_OF_TYPES = hot.CLAIM_IN_ORDER_OF_TYPES.columns(parameters=JSON,
                                                               checkpoint=JSON)
_CLAIM_CHOSEN = hot.CLAIM_CHOSEN.columns(parameters=JSON, checkpoint=JSON)

_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}


#: Waits between two tries for the write lock: short, growing to a cap.
LOCK_RETRY_FIRST = 0.0005
LOCK_RETRY_CAP = 0.004


def _begin_immediate(conn: Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE``, retried every few milliseconds until ``timeout``.
    SQLite's own busy handler backs off to 25, 50, then 100 ms between tries: a
    submission waiting for the lock while a worker commits back to back missed
    window after window (start latency p99 over 100 ms). The last try goes
    through SQLAlchemy, so a timeout raises its usual ``OperationalError``.
    Other statements keep the connection's busy timeout."""
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    deadline = time.monotonic() + timeout
    delay = LOCK_RETRY_FIRST
    dbapi_conn.execute("PRAGMA busy_timeout=0")
    try:
        while time.monotonic() + delay < deadline:
            try:
                dbapi_conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, LOCK_RETRY_CAP)
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        dbapi_conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000):d}")  # an int


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
                _begin_immediate(conn, busy_ms / 1000)

        return engine

    def _insert_ignoring_duplicate(self, row: dict[str, Any] | list[dict[str, Any]]) -> Any:
        return sqlite_insert(jobs).values(row).on_conflict_do_nothing(
            index_elements=[jobs.c.job_hash],
            index_where=ACTIVE_HASH_PREDICATE,
        )

    # -- the worker's hot path: static statements, values as one JSON array --

    def _claim_in_order(self, conn: Connection, worker_id: str, limit: int,
                        lease_seconds: float, job_type_filter: Sequence[str] | None
                        ) -> list[RowMapping]:
        params: dict[str, Any] = {
            "worker_id": worker_id, "lease": float(lease_seconds), "limit": int(limit)}
        stmt = _CLAIM_IN_ORDER
        if job_type_filter:
            stmt, params["types"] = _CLAIM_IN_ORDER_OF_TYPES, json.dumps(list(job_type_filter))
        rows = conn.execute(stmt, params).mappings().all()
        self._status_events(conn, rows)
        return list(rows)

    def _claim_chosen(self, conn: Connection, worker_id: str, lease_seconds: float,
                      chosen: Sequence[tuple[str, int, str | None]]) -> list[RowMapping]:
        rows = conn.execute(_CLAIM_CHOSEN, {
            "worker_id": worker_id, "lease": float(lease_seconds),
            "ids": json.dumps([job_id for job_id, _, _ in chosen]),
        }).mappings().all()
        self._status_events(conn, rows)
        return list(rows)

    def _complete_many(self, conn: Connection, outcomes: Sequence[Outcome]) -> list[str]:
        rows = conn.execute(hot.COMPLETE_MANY, {
            "batch": json.dumps([[o.job_id, o.attempt, o.result] for o in outcomes]),
        }).mappings().all()
        by_key = {(o.job_id, o.attempt): o for o in outcomes}
        done = [by_key[(r["id"], r["attempts"])] for r in rows]
        if done:
            conn.execute(hot.COMPLETED_LOG, {"batch": json.dumps(
                [[o.job_id, o.worker_id, o.started_at, o.duration_ms] for o in done])})
        self._status_events(conn, rows)
        return [r["id"] for r in rows]

    @staticmethod
    def _status_events(conn: Connection, rows: Sequence[RowMapping]) -> None:
        if rows:
            conn.execute(hot.STATUS_EVENTS, {"ids": json.dumps([r["id"] for r in rows])})

    def cancel_requests(self, conn: Connection, held: Sequence[tuple[str, int]]
                        ) -> set[tuple[str, int]]:
        if not held:
            return set()
        rows = conn.execute(hot.CANCEL_REQUESTS, {"held": json.dumps(list(held))})
        return {(r.id, r.attempts) for r in rows}

    def having_dependents(self, conn: Connection, job_ids: Sequence[str]) -> list[str]:
        return list(conn.execute(hot.HAVING_DEPENDENTS, {"ids": json.dumps(list(job_ids))})
                    .scalars())
