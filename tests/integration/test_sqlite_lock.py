"""SQLite's write lock is retried every few milliseconds (SQLite's own busy
handler backs off to 100 ms between tries), up to the busy timeout."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from dartwing_jobs.store import sqlite as sqlite_store
from dartwing_jobs.store.sqlite import sqlite_path
from tests.conftest import World


@pytest.fixture
def sqlite_world(world: World) -> World:
    if world.engine.store.backend != "sqlite":
        pytest.skip("the write lock of one file is SQLite's")
    return world


def hold_write_lock(world: World, seconds: float) -> threading.Thread:
    path = sqlite_path(world.engine.settings.database_url)
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(5)
    return thread


def test_a_writer_waits_for_the_lock_and_goes_on(sqlite_world: World) -> None:
    holder = hold_write_lock(sqlite_world, 0.3)
    job = sqlite_world.submit()  # waits for the lock, then writes
    holder.join()
    assert sqlite_world.engine.get_job(job.id).status == "queued"


def test_a_writer_gives_up_after_the_busy_timeout(sqlite_world: World,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[float] = []
    real = sqlite_store._begin_immediate

    def short(conn: Any, timeout: float) -> None:
        tries.append(timeout)
        real(conn, 0.05)

    monkeypatch.setattr(sqlite_store, "_begin_immediate", short)
    holder = hold_write_lock(sqlite_world, 0.5)
    started = time.monotonic()
    with pytest.raises(OperationalError, match="locked"):
        sqlite_world.submit()
    assert time.monotonic() - started < 0.4
    holder.join()
    assert tries
    sqlite_world.submit()  # the connection is usable afterwards
