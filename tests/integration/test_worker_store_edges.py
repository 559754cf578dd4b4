"""Edge cases of the worker's storage path, found in review: cancels that must
stick, batches that are all or nothing, leases fenced by attempt, and handler text
that the database would refuse, outcomes kept through a failed write, job types
that cannot be read."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from dartwing_jobs.domain.errors import DuplicateJob
from dartwing_jobs.domain.outcomes import Outcome, OutcomeKind
from dartwing_jobs.store.schema import jobs
from dartwing_jobs.worker.child import ChildRunner
from dartwing_jobs.worker.exchanger import Exchanger
from dartwing_jobs.worker.supervisor import (
    AHEAD_BYTES,
    JOB_TYPES_TTL,
    Slot,
    Supervisor,
    WorkerOptions,
)
from tests.conftest import World


def claim(world: World, n: int = 1) -> list[dict[str, object]]:
    with world.engine.store.transaction() as conn:
        return [dict(r) for r in world.engine.store.claim_jobs(conn, "w1", n, 30.0)]


def failed(job_id: str, attempt: int) -> Outcome:
    return Outcome(job_id=job_id, attempt=attempt, kind=OutcomeKind.FAILED, worker_id="w1",
                   started_at=0.0, duration_ms=1.0, error_type="RuntimeError",
                   error_message="boom")


def test_a_failing_attempt_of_a_cancel_requested_job_ends_canceled(world: World) -> None:
    job = world.submit()
    (row,) = claim(world)
    assert world.engine.cancel_job(job.id).cancel_requested is True
    with world.engine.store.transaction() as conn:
        world.engine.store.record_outcomes(conn, [failed(job.id, int(row["attempts"]))])
    assert world.engine.get_job(job.id).status == "canceled"


def test_shutdown_does_not_requeue_a_cancel_requested_job(world: World) -> None:
    job = world.submit()
    (row,) = claim(world)
    world.engine.cancel_job(job.id)
    with world.engine.store.transaction() as conn:
        world.engine.store.return_to_queue(conn, [(job.id, int(row["attempts"]))])
    assert world.engine.get_job(job.id).status == "canceled"


def test_leases_are_renewed_per_attempt_not_per_job(world: World) -> None:
    job = world.submit()
    (row,) = claim(world)
    attempt = int(row["attempts"])
    with world.engine.store.transaction() as conn:
        kept = world.engine.store.renew_leases(conn, "w1", [(job.id, attempt + 1)], 30.0)
        assert kept == {}
        kept = world.engine.store.renew_leases(conn, "w1", [(job.id, attempt)], 30.0)
    assert kept == {(job.id, attempt): False}


def test_cancel_requests_name_only_running_attempts_asked_to_stop(world: World) -> None:
    """The heartbeat's question, for many held attempts at once: only attempts
    that still run and whose job was asked to stop come back, each by (id,
    attempt); a stale attempt number or a job not running never does."""
    ids = [world.submit(parameters={"n": i}).id for i in range(6)]
    rows = claim(world, 6)
    attempt = {str(r["id"]): int(r["attempts"]) for r in rows}
    for job_id in ids[:3]:
        world.engine.cancel_job(job_id)
    with world.engine.store.transaction() as conn:  # ids[2] finishes: not running
        world.engine.store.record_outcomes(conn, [failed(ids[2], attempt[ids[2]])])
    held = [(i, attempt[i]) for i in ids] + [(ids[1], attempt[ids[1]] + 1)]
    with world.engine.store.read() as conn:
        assert world.engine.store.cancel_requests(conn, held) == {
            (ids[0], attempt[ids[0]]), (ids[1], attempt[ids[1]])}
        assert world.engine.store.cancel_requests(conn, held[3:]) == set()
        assert world.engine.store.cancel_requests(conn, [(ids[1], attempt[ids[1]] + 1)]) == set()
        assert world.engine.store.cancel_requests(conn, []) == set()


def test_submit_jobs_keeps_nothing_of_a_refused_batch_in_the_caller_s_transaction(
        world: World) -> None:
    first = world.submit(parameters={"n": "dup"})

    def count() -> int:
        with world.engine.store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(jobs)).scalar_one())

    before = count()
    with world.engine.transaction() as tx:
        with pytest.raises(DuplicateJob) as info:
            world.engine.submit_jobs("noop", "acme", [{"n": "fresh"}, {"n": "dup"}], tx=tx)
        assert info.value.existing_job_id == first.id
    assert count() == before


@pytest.mark.parametrize("handler", ["returns_nul", "raises_hostile"])
def test_handler_text_the_database_refuses_becomes_a_storable_failure(
        world: World, handler: str) -> None:
    world.engine.job_types.register(handler, handler=f"tests.handlers:{handler}",
                                    max_retries=0)
    job = world.submit(job_type=handler)
    (row,) = claim(world)
    runner = ChildRunner(None, world.engine.settings.database_url,  # type: ignore[arg-type]
                         world.engine.settings.handler_prefixes)
    spec = {"job_id": job.id, "attempt": row["attempts"], "organization": "acme",
            "job_type": handler, "handler": f"tests.handlers:{handler}",
            "parameters": {}, "checkpoint": None}
    kind, result, error = runner._run(spec, threading.Event())
    assert kind is OutcomeKind.FAILED and result is None and error is not None
    outcome = Outcome(job_id=job.id, attempt=int(row["attempts"]), kind=kind, worker_id="w1",
                      started_at=0.0, duration_ms=1.0, error_type=error["type"],
                      error_message=error["message"], error_traceback=error["traceback"])
    with world.engine.store.transaction() as conn:
        assert world.engine.store.record_outcomes(conn, [outcome]) == [job.id]
    stored = world.engine.get_job(job.id)
    assert stored.status == "dead_letter"
    assert stored.error is not None and "\x00" not in stored.error["message"]


def test_retry_waits_for_dependencies_to_complete(world: World) -> None:
    parent = world.submit()
    child = world.submit(depends_on=[parent.id])
    world.engine.cancel_job(parent.id)  # the child is canceled with dependency_failed
    assert world.engine.get_job(child.id).status == "canceled"
    from dartwing_jobs.domain.errors import InvalidState

    with pytest.raises(InvalidState) as info:
        world.engine.retry_job(child.id)
    assert parent.id in info.value.message
    assert world.engine.get_job(child.id).status == "canceled"  # nothing changed
    world.engine.retry_job(parent.id)
    (row,) = claim(world)
    with world.engine.store.transaction() as conn:
        world.engine.store.record_outcomes(conn, [Outcome(
            job_id=parent.id, attempt=int(row["attempts"]), kind=OutcomeKind.COMPLETED,
            worker_id="w1", started_at=0.0, duration_ms=1.0, result={})])
    assert world.engine.retry_job(child.id).status == "queued"


def completed(job_id: str, attempt: int) -> Outcome:
    return Outcome(job_id=job_id, attempt=attempt, kind=OutcomeKind.COMPLETED,
                   worker_id="w1", started_at=0.0, duration_ms=1.0, result={"ok": True})


def test_outcomes_received_survive_a_failed_write(world: World,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A group commit that fails (the database went away) keeps its outcomes and
    writes them at the next try, instead of dropping them."""
    job = world.submit()
    (row,) = claim(world)
    store = world.engine.store
    exchanger = Exchanger(store, "w1", 30.0, None, 0.05, lambda: 0, lambda rows: None)
    exchanger.submit(completed(job.id, int(row["attempts"])))
    real = store.record_outcomes
    calls = []

    def failing_once(conn: object, outcomes: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE ...", {}, Exception("connection lost"))
        return real(conn, outcomes)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "record_outcomes", failing_once)
    assert exchanger._exchange(claim=False) is None  # the failed try
    assert exchanger.pending() == 1
    assert world.engine.get_job(job.id).status == "running"
    assert exchanger._exchange(claim=False) == []
    assert exchanger.pending() == 0
    assert world.engine.get_job(job.id).status == "completed"


def test_a_failed_job_type_read_gives_the_job_back(world: World,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """When the job types cannot be read, a claimed job goes back to the front of
    the buffer (to be dispatched later), never to the dead letters."""
    job = world.submit()
    (row,) = claim(world)
    supervisor = Supervisor(world.engine, WorkerOptions(concurrency=1))

    def unreachable(conn: object) -> object:
        raise OperationalError("SELECT ...", {}, Exception("connection lost"))

    monkeypatch.setattr(world.engine.store, "list_job_types", unreachable)
    slot = Slot(index=0, process=None, conn=None, control=None,  # type: ignore[arg-type]
                ready=True)
    supervisor._dispatch(slot, row)  # type: ignore[arg-type]
    assert slot.job is None
    assert [r["id"] for r in supervisor._buffer] == [job.id]
    assert supervisor._exchanger.pending() == 0
    assert world.engine.get_job(job.id).status == "running"


def test_jobs_sent_ahead_to_a_busy_child_stay_within_what_its_pipe_holds(
        world: World) -> None:
    """A busy child reads its pipe only between jobs: jobs sent ahead to it must
    fit the pipe's buffer, or the supervisor's loop (and its lease renewals) would
    block until the running job ends. Jobs too big to send ahead wait in the
    buffer, in order, for a free child."""
    small = [world.submit(parameters={"i": i}) for i in range(2)]
    big = [world.submit(parameters={"blob": f"{i}" * (AHEAD_BYTES // 2)}) for i in range(3)]
    running, *claimed = claim(world, 6)
    supervisor = Supervisor(world.engine, WorkerOptions(concurrency=1))
    supervisor._recent_duration = 0.001  # short jobs: sending ahead is on
    reader, writer = Pipe()
    slot = Slot(index=0, process=None, conn=writer, control=None,  # type: ignore[arg-type]
                ready=True)
    supervisor._slots = [slot]
    supervisor._start(slot, running)  # type: ignore[arg-type]
    supervisor._buffer.extend(claimed)  # type: ignore[arg-type]
    supervisor._send_ahead()
    sent = [s["job_id"] for s in reader.recv()[1:]]
    while reader.poll():
        sent += [s["job_id"] for s in reader.recv()[1:]]
    assert sent == [r["id"] for r in slot.queued]
    unread = sum(size for _, size in slot.unread)
    assert 0 < unread <= AHEAD_BYTES
    assert {j.id for j in small} - {running["id"]} <= set(sent)
    assert len(set(sent) & {j.id for j in big}) <= 1
    assert [r["id"] for r in slot.queued] + [r["id"] for r in supervisor._buffer] == [
        r["id"] for r in claimed]
    # Nothing more is tried until the child starts a job sent ahead (it has read
    # that message then).
    assert slot.ahead_full
    supervisor._send_ahead()
    assert not reader.poll()
    supervisor._start(slot, slot.queued.popleft())
    assert not slot.ahead_full and sum(size for _, size in slot.unread) < unread


def test_job_types_are_read_again_by_the_loop_not_at_a_job_start(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's start never waits for the job types to be read again: a known
    type's settings are refreshed by the supervisor's loop once they are older
    than JOB_TYPES_TTL (a type disabled meanwhile then ends its jobs), and only a
    type not seen yet is read on the way to a start."""
    supervisor = Supervisor(world.engine, WorkerOptions(concurrency=1))
    store = world.engine.store
    reads: list[int] = []
    original = store.list_job_types

    def counted(conn: object) -> object:
        reads.append(1)
        return original(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "list_job_types", counted)
    assert supervisor._job_type("noop")["enabled"]
    assert len(reads) == 1
    world.engine.job_types.disable("noop")
    supervisor._job_types_loaded -= JOB_TYPES_TTL + 1
    assert supervisor._job_type("noop")["enabled"]  # stale, but not read here
    assert len(reads) == 1
    supervisor._refresh_job_types(supervisor._job_types_loaded + 1)
    assert len(reads) == 1  # still fresh enough from the loop's point of view
    supervisor._refresh_job_types(supervisor._job_types_loaded + JOB_TYPES_TTL + 1)
    assert len(reads) == 2
    assert not supervisor._job_type("noop")["enabled"]
    assert supervisor._job_type("never-registered") is None
    assert len(reads) == 3
