"""Handlers of bench/soak.py. Every run writes a row to ``soak_ledger`` (job id,
attempt, pid, start; the end once it returns or raises) in the soak's own
PostgreSQL database (``$BENCH_SOAK_LEDGER``), so that two overlapping runs of one
job can be found with SQL afterwards."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

from dartwing_jobs.worker.context import JobContext

LEDGER_ENV = "BENCH_SOAK_LEDGER"
LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS soak_ledger (id bigserial PRIMARY KEY, job_id text NOT NULL, "
    "attempt int NOT NULL, pid int NOT NULL, started double precision NOT NULL, "
    "ended double precision)"
)
_conn: psycopg.Connection[Any] | None = None
_conn_pid = 0


def _ledger() -> psycopg.Connection[Any]:
    global _conn, _conn_pid
    if _conn is None or _conn_pid != os.getpid() or _conn.closed:
        _conn = psycopg.connect(os.environ[LEDGER_ENV], autocommit=True)
        _conn_pid = os.getpid()
    return _conn


def _start(ctx: JobContext) -> int:
    row = _ledger().execute(
        "INSERT INTO soak_ledger (job_id, attempt, pid, started) VALUES (%s, %s, %s, %s) "
        "RETURNING id", (ctx.job_id, ctx.attempt, os.getpid(), time.time())).fetchone()
    assert row is not None
    return int(row[0])


def _end(row_id: int) -> None:
    _ledger().execute("UPDATE soak_ledger SET ended = %s WHERE id = %s", (time.time(), row_id))


def soak_progress(ctx: JobContext) -> dict[str, Any]:
    row = _start(ctx)
    try:
        for i in range(1, 6):
            ctx.progress(20 * i, f"step {i} of 5")
            time.sleep(0.02)
        return {"steps": 5}
    finally:
        _end(row)


def soak_flaky(ctx: JobContext) -> dict[str, Any]:
    """Fails its first attempt, succeeds on the retry."""
    row = _start(ctx)
    try:
        if ctx.attempt == 1:
            raise RuntimeError("failing the first attempt on purpose")
        return {"attempt": ctx.attempt}
    finally:
        _end(row)


def soak_slow(ctx: JobContext) -> None:
    """Sleeps past its type's 1 s timeout: the worker kills it (no end written)."""
    _start(ctx)
    time.sleep(float(ctx.parameters.get("sleep", 3)))


def soak_child(ctx: JobContext) -> dict[str, Any]:
    """Submitted depending on a ``soak_progress`` job."""
    row = _start(ctx)
    _end(row)
    return {"child": True}
