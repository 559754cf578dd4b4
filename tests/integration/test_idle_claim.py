"""The idle fast path: a submit's notification names its job, and an idle worker
whose last claim emptied the queue claims that job by id in one statement, with
no fair walk. Limits, pauses and a default limit leave the job to the fair claim.
The store part is PostgreSQL's own (SQLite has no notifications: the store claims
nothing by id there); the exchanger's choices run on both backends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select

from dartwing_jobs.domain.outcomes import Outcome, OutcomeKind
from dartwing_jobs.store.postgres import NOTIFY_CHANNEL, psycopg_url
from dartwing_jobs.store.schema import job_events
from dartwing_jobs.worker.exchanger import HINTS_CAP, Exchanger
from tests.conftest import World


def claim_notified(world: World, ids: list[str], job_types: list[str] | None = None
                   ) -> list[str]:
    with world.engine.store.single_statement() as conn:
        rows = world.engine.store.claim_notified(conn, "w1", ids, 30.0, job_types)
    return [r["id"] for r in rows]


def status(world: World, job_id: str) -> str:
    return str(world.engine.get_job(job_id).status)


@pytest.fixture
def pg_world(world: World) -> World:
    if world.engine.store.backend != "postgresql":
        pytest.skip("claims by notified id are PostgreSQL's (SQLite has no notifications)")
    return world


def test_sqlite_claims_nothing_by_id(world: World) -> None:
    if world.engine.store.backend != "sqlite":
        pytest.skip("the SQLite case")
    job = world.submit()
    assert claim_notified(world, [job.id]) == []
    assert status(world, job.id) == "queued"


def test_a_named_job_is_claimed_with_its_status_event(pg_world: World) -> None:
    first = pg_world.submit()
    assert claim_notified(pg_world, [first.id]) == [first.id]
    job = pg_world.engine.get_job(first.id)
    assert (job.status, job.attempts) == ("running", 1)
    with pg_world.engine.store.read() as conn:
        running_events = conn.execute(select(func.count()).select_from(job_events).where(
            job_events.c.job_id == first.id, job_events.c.status == "running")).scalar_one()
    assert running_events == 1
    # Named again (a late notification): it is not claimed twice.
    assert claim_notified(pg_world, [first.id]) == []
    assert pg_world.engine.get_job(first.id).attempts == 1


@pytest.mark.parametrize("other", ["higher priority", "other organization"])
def test_a_named_job_is_left_while_any_other_job_is_due(pg_world: World, other: str) -> None:
    """A burst (one transaction of many jobs), or anything else waiting: which job
    goes first is the fair claim's decision, not the notification's."""
    if other == "higher priority":
        waiting = pg_world.submit(priority="critical", parameters={"n": 0})
        named = pg_world.submit(priority="low")
    else:
        waiting = pg_world.submit(organization="globex", parameters={"n": 0})
        named = pg_world.submit()
    assert claim_notified(pg_world, [named.id]) == []
    assert {status(pg_world, waiting.id), status(pg_world, named.id)} == {"queued"}


def test_due_jobs_of_job_types_the_worker_does_not_run_are_no_competition(
        pg_world: World) -> None:
    pg_world.submit(job_type="nodedup")
    named = pg_world.submit()
    assert claim_notified(pg_world, [named.id], job_types=["noop"]) == [named.id]


def test_jobs_not_due_or_of_other_job_types_stay(pg_world: World) -> None:
    later = pg_world.submit(run_at=time.time() + 3600)
    other = pg_world.submit(job_type="nodedup")
    assert claim_notified(pg_world, [later.id, other.id], job_types=["noop"]) == []
    assert status(pg_world, later.id) == "queued"
    assert status(pg_world, other.id) == "queued"


@pytest.mark.parametrize("control", ["org_limit", "org_paused", "type_limit", "type_paused",
                                     "default_limit"])
def test_controlled_jobs_are_left_to_the_fair_claim(pg_world: World, control: str) -> None:
    engine = pg_world.engine
    job = pg_world.submit()
    if control == "org_limit":
        engine.set_limits("acme", max_running=5)
    elif control == "org_paused":
        engine.pause(organization="acme")
    elif control == "type_limit":
        engine.set_limits("acme", job_type="noop", max_running=5)
    elif control == "type_paused":
        engine.pause(job_type="noop")
    else:
        engine.store.claim_policy = replace(engine.store.claim_policy, default_max_running=5)
    assert claim_notified(pg_world, [job.id]) == []
    assert status(pg_world, job.id) == "queued"


def notifications(world: World, submit: Any) -> list[str]:
    """The payloads of the worker notifications sent by ``submit(tx)``'s commit."""
    with psycopg.connect(psycopg_url(world.engine.settings.database_url),
                         autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")  # a constant channel name
        with world.engine.transaction() as tx:
            submit(tx)
        return [n.payload for n in listener.notifies(timeout=1.0)]


def test_a_submit_names_its_job(pg_world: World) -> None:
    named: list[str] = []
    payloads = notifications(pg_world, lambda tx: named.append(
        pg_world.engine.submit_job("noop", "acme", {"n": 1}, tx=tx).id))
    assert payloads == named


def test_one_transaction_of_many_submits_sends_one_notification(pg_world: World) -> None:
    """The first names its job; a worker told of it finds the others due beside it
    and claims them all fairly."""
    named: list[str] = []

    def submit(tx: Any) -> None:
        for n in range(20):
            named.append(pg_world.engine.submit_job("noop", "acme", {"n": n}, tx=tx).id)
        pg_world.engine.submit_jobs("noop", "acme", [{"n": 20}, {"n": 21}], tx=tx)

    assert notifications(pg_world, submit) == named[:1]
    assert claim_notified(pg_world, named[:1]) == []  # not the only one due


def test_a_bulk_submit_wakes_workers_without_naming_a_job(pg_world: World) -> None:
    payloads = notifications(pg_world, lambda tx: pg_world.engine.submit_jobs(
        "noop", "acme", [{"n": 1}, {"n": 2}], tx=tx))
    assert payloads == [""]


# -- the exchanger's choices ---------------------------------------------------


class Spy:
    """Counts which claim path the exchanger took."""

    def __init__(self, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        store = world.engine.store
        for name in ("claim_notified", "claim_jobs"):
            real = getattr(store, name)

            def spy(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                self.calls.append(_name)
                return _real(*args, **kw)

            monkeypatch.setattr(store, name, spy)


@pytest.fixture
def exchanger(world: World) -> Iterator[tuple[Exchanger, list[str]]]:
    claimed: list[str] = []
    ex = Exchanger(world.engine.store, "w1", 30.0, None, 1.0, lambda: 4,
                   lambda rows: claimed.extend(r["id"] for r in rows))
    yield ex, claimed


def test_an_idle_worker_claims_the_named_job_without_the_fair_walk(
        pg_world: World, exchanger: tuple[Exchanger, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ex, claimed = exchanger
    spy = Spy(pg_world, monkeypatch)
    ex.kick(work_available=True)
    assert ex._exchange(claim=True, want=4) == []  # the queue is empty: drained
    job = pg_world.submit()
    ex.kick(work_available=True, job_id=job.id)
    rows = ex._exchange(claim=True, want=4)
    assert [r["id"] for r in rows or []] == [job.id] == claimed
    assert spy.calls == ["claim_jobs", "claim_notified"]


def test_a_worker_that_did_not_empty_the_queue_claims_fairly(
        world: World, exchanger: tuple[Exchanger, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Never drained (just started, or its last claim was full): the named job
    may not be the fair next one, so the fair claim decides."""
    ex, claimed = exchanger
    spy = Spy(world, monkeypatch)
    urgent = world.submit(priority="high")
    job = world.submit(parameters={"n": 2})
    ex.kick(work_available=True, job_id=job.id)
    ex._exchange(claim=True, want=1)
    assert claimed == [urgent.id]
    assert spy.calls == ["claim_jobs"]


def test_several_named_jobs_go_to_the_fair_claim(
        world: World, exchanger: tuple[Exchanger, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ex, claimed = exchanger
    ex._drained = True
    spy = Spy(world, monkeypatch)
    jobs = [world.submit(parameters={"n": i}) for i in range(3)]
    for job in jobs:
        ex.kick(work_available=True, job_id=job.id)
    ex._exchange(claim=True, want=2)
    assert len(claimed) == 2
    assert spy.calls == ["claim_jobs"]


def test_a_named_job_the_fast_path_leaves_is_claimed_fairly(
        world: World, exchanger: tuple[Exchanger, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Limited organization: the fast path leaves the job, the fair claim (which
    enforces the limit) takes it in the same exchange."""
    ex, claimed = exchanger
    ex._drained = True
    world.engine.set_limits("acme", max_running=1)
    spy = Spy(world, monkeypatch)
    job = world.submit()
    ex.kick(work_available=True, job_id=job.id)
    ex._exchange(claim=True, want=4)
    assert claimed == [job.id]
    assert spy.calls == ["claim_notified", "claim_jobs"]


def test_a_notification_for_a_job_already_claimed_here_is_no_news(
        world: World, exchanger: tuple[Exchanger, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ex, claimed = exchanger
    job = world.submit()
    ex.kick(work_available=True)
    ex._exchange(claim=True, want=4)
    assert claimed == [job.id]
    spy = Spy(world, monkeypatch)
    ex.kick(work_available=True, job_id=job.id)  # arrives after the claim took it
    assert ex._exchange(claim=True, want=4) == []
    assert spy.calls == []


def test_outcomes_written_while_drained_claim_nothing_on_postgresql(
        world: World, exchanger: tuple[Exchanger, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where submits notify, a drained worker writing an outcome does not claim:
    new work would have been announced. SQLite has no announcements and claims."""
    ex, _ = exchanger
    job = world.submit()
    ex.kick(work_available=True)
    ex._exchange(claim=True, want=4)
    (attempt,) = [world.engine.get_job(job.id).attempts]
    spy = Spy(world, monkeypatch)
    ex.submit(Outcome(job_id=job.id, attempt=attempt, kind=OutcomeKind.COMPLETED,
                      worker_id="w1", started_at=time.time(), duration_ms=1.0))
    ex._exchange(claim=True, want=4)
    assert status(world, job.id) == "completed"
    expected = [] if world.engine.store.notifies_workers else ["claim_jobs"]
    assert spy.calls == expected


def test_a_flood_of_notifications_becomes_one_fair_claim(
        world: World, exchanger: tuple[Exchanger, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ex, claimed = exchanger
    ex._drained = True
    spy = Spy(world, monkeypatch)
    job = world.submit()
    for i in range(HINTS_CAP + 1):
        ex.kick(work_available=True, job_id=f"not-a-job-{i}")
    ex.kick(work_available=True, job_id=job.id)
    ex._exchange(claim=True, want=4)
    assert claimed == [job.id]
    assert spy.calls == ["claim_jobs"]


def test_a_drained_worker_still_polls_for_jobs_nobody_announced(
        world: World, exchanger: tuple[Exchanger, list[str]]) -> None:
    """A retry or a ``run_at`` falling due is announced to nobody: the poll finds
    it, however busy the worker is with announced jobs and outcomes."""
    ex, claimed = exchanger
    ex.kick(work_available=True)
    assert ex._exchange(claim=True, want=4) == []  # drained
    job = world.submit()  # stands for a job the clock made due: no kick names it
    ex.kick()  # a slot freed
    ex._exchange(claim=True, want=4)
    if world.engine.store.notifies_workers:
        assert claimed == []
        ex._next_look = time.monotonic()  # the poll is due
        ex._exchange(claim=True, want=4)
    assert claimed == [job.id]


def test_a_short_claim_with_jobs_still_due_is_not_an_empty_queue(
        world: World, exchanger: tuple[Exchanger, list[str]]) -> None:
    """An organization at its limit (or rows another worker had locked) makes a
    claim short while jobs wait: the worker must keep looking when slots free."""
    ex, claimed = exchanger
    world.engine.set_limits("acme", max_running=1)
    first, second = world.submit(), world.submit(parameters={"n": 2})
    ex.kick(work_available=True)
    ex._exchange(claim=True, want=4)
    assert len(claimed) == 1
    assert ex._drained is False
    world.engine.set_limits("acme", max_running=2)  # (as a finished job would free one)
    ex.kick()  # a slot freed: no announcement, yet it looks
    ex._exchange(claim=True, want=4)
    assert sorted(claimed) == sorted([first.id, second.id])
