"""Handlers used by the tests (allowed through DARTWING_JOBS_HANDLER_MODULES).

``ledger`` handlers record every run in a ``ledger`` table over their own
connection, so that fault tests can check invariants with SQL afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from sqlalchemy import (
    Column,
    Double,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    update,
)
from sqlalchemy.engine import Engine as SAEngine

from dartwing_jobs import JobContext, PermanentFailure

LEDGER_ENV = "DWJ_TEST_LEDGER_URL"
ledger_metadata = MetaData()
ledger = Table(
    "ledger", ledger_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", Double, nullable=False),
    Column("ended", Double),
)
_ledger_engine: SAEngine | None = None


def _ledger() -> SAEngine:
    global _ledger_engine
    if _ledger_engine is None:
        url = os.environ[LEDGER_ENV]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        _ledger_engine = create_engine(url, connect_args={"timeout": 30}
                                       if url.startswith("sqlite") else {})
    return _ledger_engine


def create_ledger(url: str) -> None:
    os.environ[LEDGER_ENV] = url
    ledger_metadata.create_all(_ledger())


def noop(ctx: JobContext) -> dict[str, Any]:
    return {"ok": True}


def record(ctx: JobContext) -> dict[str, Any]:
    """Records start and end; optional sleep, and an optional crash of the whole
    process on given attempts."""
    eng = _ledger()
    with eng.begin() as conn:
        row_id = conn.execute(insert(ledger).values(
            job_id=ctx.job_id, attempt=ctx.attempt, pid=os.getpid(), started=time.time(),
        )).inserted_primary_key[0]
    if ctx.attempt in ctx.parameters.get("crash_on_attempts", []):
        os._exit(9)
    time.sleep(float(ctx.parameters.get("sleep", 0)))
    with eng.begin() as conn:
        conn.execute(update(ledger).where(ledger.c.id == row_id).values(ended=time.time()))
    return {"attempt": ctx.attempt}


def fail_times(ctx: JobContext) -> dict[str, Any]:
    if ctx.attempt <= int(ctx.parameters.get("fail", 2)):
        raise RuntimeError(f"failing on purpose, attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


def busy_loop(ctx: JobContext) -> None:
    while True:
        pass


def sleep_long(ctx: JobContext) -> None:
    time.sleep(3600)


def stubborn(ctx: JobContext) -> None:
    """Ignores SIGTERM and swallows every exception, even BaseException."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        with contextlib.suppress(BaseException):
            time.sleep(3600)


def blocked_in_c(ctx: JobContext) -> None:
    """Blocked inside a C call that never returns (reading a pipe nobody writes)."""
    r, _w = os.pipe()
    os.read(r, 1)


def cooperative(ctx: JobContext) -> dict[str, Any]:
    for i in range(10_000):
        ctx.progress(min(99, i / 100), f"step {i}")
        time.sleep(0.01)
    return {"done": True}


def progress_steps(ctx: JobContext) -> dict[str, Any]:
    steps = int(ctx.parameters.get("steps", 10))
    for i in range(1, steps + 1):
        ctx.progress(100 * i / steps, f"step {i} of {steps}")
        time.sleep(float(ctx.parameters.get("delay", 0.01)))
    return {"steps": steps}


def checkpoint_then_crash(ctx: JobContext) -> dict[str, Any]:
    if ctx.last_checkpoint is None:
        ctx.checkpoint({"page": 12})
        os._exit(5)
    return {"resumed_from": ctx.last_checkpoint}


def poison(ctx: JobContext) -> None:
    os._exit(3)


def permanent(ctx: JobContext) -> None:
    raise PermanentFailure("this can never work")


def bad_result(ctx: JobContext) -> object:
    return object()


async def async_handler(ctx: JobContext) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"async": True, "params": ctx.parameters}


NOT_CALLABLE = 42


# -- added for the worker system tests (tests/system) -------------------------

_fast_ledger_engine: SAEngine | None = None


def _fast_ledger() -> SAEngine:
    """The ledger without waiting for fsync on SQLite (the tests never lose power):
    thousands of ledger rows must not slow the worker under test down."""
    global _fast_ledger_engine
    if _fast_ledger_engine is None:
        eng = _ledger()
        if eng.dialect.name == "sqlite":
            from sqlalchemy import event

            @event.listens_for(eng, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA synchronous=OFF")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.close()

        _fast_ledger_engine = eng
    return _fast_ledger_engine


def record_beat(ctx: JobContext) -> dict[str, Any]:
    """Like ``record`` but keeps ``ended`` fresh while it runs (every ``beat``
    seconds), so a run that is killed still shows until when it was alive: the
    ledger's ``[started, ended]`` is a lower bound of the real run and overlap
    checks stay meaningful for killed runs. ``sleep <= 0`` writes one row only.
    ``slow_first``: sleep only when the job has no earlier ledger row."""
    eng = _fast_ledger()
    started = time.time()
    sleep = float(ctx.parameters.get("sleep", 0))
    if ctx.parameters.get("slow_first"):
        with eng.connect() as conn:
            earlier = conn.execute(
                ledger.select().where(ledger.c.job_id == ctx.job_id)
            ).first()
        if earlier is not None:
            sleep = 0.0
    if sleep <= 0:
        with eng.begin() as conn:
            conn.execute(insert(ledger).values(
                job_id=ctx.job_id, attempt=ctx.attempt, pid=os.getpid(), started=started,
                ended=time.time(),
            ))
        return {"attempt": ctx.attempt, "pid": os.getpid()}
    beat = float(ctx.parameters.get("beat", 0.05))
    with eng.begin() as conn:
        row_id = conn.execute(insert(ledger).values(
            job_id=ctx.job_id, attempt=ctx.attempt, pid=os.getpid(), started=started,
            ended=started,
        )).inserted_primary_key[0]
    deadline = started + sleep
    while (now := time.time()) < deadline:
        time.sleep(min(beat, deadline - now))
        with eng.begin() as conn:
            conn.execute(update(ledger).where(ledger.c.id == row_id).values(ended=time.time()))
    return {"attempt": ctx.attempt, "pid": os.getpid()}


def returns_nul(ctx: JobContext) -> dict[str, Any]:
    return {"text": "a\x00b"}


def raises_hostile(ctx: JobContext) -> None:
    raise ValueError("bad \x00 byte and a lone \ud800 surrogate")
