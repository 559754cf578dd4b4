"""The exchanger's threads, run for real. Where writers do not serialise on the
database (PostgreSQL), outcomes are group-committed on a writer thread of their
own while the claim thread claims: a slow claim never holds back an outcome. On
SQLite one thread does both in one transaction (one write lock, one fsync)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dartwing_jobs.domain.outcomes import Outcome, OutcomeKind
from dartwing_jobs.worker.exchanger import Exchanger
from tests.conftest import World


def completed(job_id: str, attempt: int) -> Outcome:
    return Outcome(job_id=job_id, attempt=attempt, kind=OutcomeKind.COMPLETED,
                   worker_id="w1", started_at=time.time(), duration_ms=1.0, result={"ok": 1})


def claim_one(world: World) -> Any:
    with world.engine.store.transaction() as conn:
        (row,) = world.engine.store.claim_jobs(conn, "w1", 1, 30.0)
    return row


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def hold(monkeypatch: pytest.MonkeyPatch, store: Any, method: str
         ) -> tuple[threading.Event, threading.Event]:
    """Make ``store.method`` block until ``release`` is set; ``entered`` is set
    once a call is inside the database transaction."""
    entered, release = threading.Event(), threading.Event()
    real = getattr(store, method)

    def held(*args: Any, **kw: Any) -> Any:
        entered.set()
        release.wait(10)
        return real(*args, **kw)

    monkeypatch.setattr(store, method, held)
    return entered, release


@pytest.fixture
def running(world: World, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[Exchanger, threading.Event, threading.Event, list[str]]]:
    """An exchanger whose threads run, with a claim that blocks until released
    (``entered`` is set once a claim is inside the database transaction)."""
    store = world.engine.store
    world.submit(parameters={"n": 1})
    first = claim_one(world)  # running, to be reported while a claim hangs
    waiting = world.submit(parameters={"n": 2})  # due: the claim thread will ask
    entered, release = hold(monkeypatch, store, "claim_jobs")
    claimed: list[str] = []
    want = {"n": 0}
    ex = Exchanger(store, "w1", 30.0, None, 0.05, lambda: want["n"],
                   lambda rows: claimed.extend(r["id"] for r in rows))
    ex.start()
    want["n"] = 1
    ex.kick(work_available=True)
    try:
        assert entered.wait(10), "the claim thread never claimed"
        ex.submit(completed(first["id"], int(first["attempts"])))
        yield ex, entered, release, [first["id"], waiting.id]
    finally:
        release.set()
        ex.stop()


def test_postgresql_writes_outcomes_while_a_claim_is_in_flight(
        world: World,
        running: tuple[Exchanger, threading.Event, threading.Event, list[str]]) -> None:
    if not world.engine.store.concurrent_writers:
        pytest.skip("one write transaction at a time is SQLite's (see the test below)")
    ex, _, release, (first, waiting) = running
    assert wait_for(lambda: world.engine.get_job(first).status == "completed")
    assert wait_for(lambda: ex.written == 1) and ex.pending() == 0
    release.set()  # the claim goes on and takes the waiting job
    assert wait_for(lambda: world.engine.get_job(waiting).status == "running")


def test_sqlite_writes_outcomes_with_the_next_claim(
        world: World,
        running: tuple[Exchanger, threading.Event, threading.Event, list[str]]) -> None:
    if world.engine.store.concurrent_writers:
        pytest.skip("SQLite's single write transaction")
    ex, _, release, (first, waiting) = running
    time.sleep(0.3)
    assert world.engine.get_job(first).status == "running"  # behind the claim
    assert ex.pending() == 1
    release.set()
    assert wait_for(lambda: world.engine.get_job(first).status == "completed")
    assert wait_for(lambda: world.engine.get_job(waiting).status == "running")


def test_stop_writes_what_the_writer_had_not_yet_written(world: World) -> None:
    """Outcomes that arrive as the worker stops are written by ``stop`` (on both
    backends, whichever thread would have written them)."""
    store = world.engine.store
    ex = Exchanger(store, "w1", 30.0, None, 0.05, lambda: 0, lambda rows: None)
    rows = []
    for i in range(3):
        world.submit(parameters={"i": i})
        rows.append(claim_one(world))
    ex.start()
    for row in rows:
        ex.submit(completed(row["id"], int(row["attempts"])))
    ex.stop()
    assert ex.pending() == 0
    assert {world.engine.get_job(r["id"]).status for r in rows} == {"completed"}


def test_a_throttled_progress_value_is_written_without_another_report(
        world: World) -> None:
    """A value that arrives inside the throttle interval and is followed by
    nothing (the handler computes quietly) is still written once it falls due:
    the writer thread sets a timer for it."""
    store = world.engine.store
    world.submit(parameters={"p": 1})
    row = claim_one(world)
    ex = Exchanger(store, "w1", 30.0, None, 0.05, lambda: 0, lambda rows: None)
    ex.start()
    try:
        attempt = int(row["attempts"])
        ex.progress(row["id"], attempt, 10.0, "first")
        assert wait_for(lambda: world.engine.get_job(row["id"]).progress == 10.0)
        ex.progress(row["id"], attempt, 20.0, "second")  # inside the interval
        assert wait_for(lambda: world.engine.get_job(row["id"]).progress == 20.0, 5.0)
    finally:
        ex.stop()


def test_outcomes_that_come_during_a_group_commit_are_written_after_it(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outcomes that come while the writer commits a group (the children well
    fed, so groups are held back) are written once that commit is done, with no
    outcome coming after them."""
    store = world.engine.store
    for i in range(2):
        world.submit(parameters={"n": i})
    rows = [claim_one(world) for _ in range(2)]
    entered, release = hold(monkeypatch, store, "record_outcomes")
    ex = Exchanger(store, "w1", 30.0, None, 0.05, lambda: 0, lambda rows: None,
                   well_fed=lambda: True)
    ex.start()
    try:
        ex.submit(completed(rows[0]["id"], int(rows[0]["attempts"])))
        assert entered.wait(10), "the first group was never written"
        ex.submit(completed(rows[1]["id"], int(rows[1]["attempts"])))  # during the commit
        release.set()
        assert wait_for(lambda: ex.written == 2, timeout=5), ex.written
        assert {world.engine.get_job(r["id"]).status for r in rows} == {"completed"}
    finally:
        release.set()
        ex.stop()
