"""The scheduler on both backends: dependencies (chain, diamond, fan-in, failure
cascades, a 1,000-deep chain), lease rescue, periodic schedules fired exactly
once by two schedulers side by side, and the loop itself."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from dartwing_jobs import Engine
from dartwing_jobs.domain.errors import Conflict, Forbidden, NotFound, ValidationError
from dartwing_jobs.domain.outcomes import Outcome, OutcomeKind
from dartwing_jobs.scheduler import (
    DependencyPromoter,
    LeaseRescuer,
    PeriodicScheduler,
    Scheduler,
    SchedulerOptions,
    latest_tick,
)
from dartwing_jobs.schedules import Schedules
from dartwing_jobs.store import maintenance
from dartwing_jobs.store.clock import db_now
from dartwing_jobs.store.schema import job_dependencies, job_events, jobs, schedule_fires
from tests.conftest import TEST_HANDLER_MODULES, World

# -- helpers -------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0,
               interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def status(engine: Engine, job_id: str) -> str:
    return engine.get_job(job_id).status


def statuses(engine: Engine, ids: Sequence[str]) -> dict[str, str]:
    with engine.store.read() as conn:
        rows = conn.execute(select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(list(ids))))
        return {r.id: r.status for r in rows}


def finish(engine: Engine, job_ids: Sequence[str],
           kind: OutcomeKind = OutcomeKind.COMPLETED) -> list[str]:
    """Claim the given due jobs and write their outcomes, as a worker would (the
    completion transaction promotes or cancels dependents)."""
    with engine.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id.in_(list(job_ids)))
                     .values(priority=0))  # claim these first
        claimed = engine.store.claim_jobs(conn, "test-worker", len(job_ids), 30.0)
        assert sorted(r["id"] for r in claimed) == sorted(job_ids), "jobs were not due"
        outcomes = [
            Outcome(job_id=r["id"], attempt=r["attempts"], kind=kind, worker_id="test-worker",
                    started_at=time.time(), duration_ms=1.0, result={"ok": True},
                    error_type=None if kind is OutcomeKind.COMPLETED else "boom",
                    error_message=None if kind is OutcomeKind.COMPLETED else "boom")
            for r in claimed
        ]
        return engine.store.record_outcomes(conn, outcomes)


def run_in_rounds(engine: Engine, ids: Sequence[str]) -> list[set[str]]:
    """Complete every queued job of ``ids`` round by round; the rounds show the
    order dependencies allowed."""
    rounds: list[set[str]] = []
    while True:
        current = statuses(engine, ids)
        ready = sorted(i for i, s in current.items() if s == "queued")
        if not ready:
            break
        finish(engine, ready)
        rounds.append(set(ready))
    assert all(s == "completed" for s in statuses(engine, ids).values())
    return rounds


def force_status(engine: Engine, job_id: str, new_status: str) -> None:
    """Change a status behind the engine's back (no promotion, no cascade), to
    show the scheduler's sweep repairs what slipped through."""
    with engine.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id)
                     .values(status=new_status, completed_at=db_now(), modified_at=db_now()))


def status_events(engine: Engine, job_id: str, event_status: str) -> int:
    with engine.store.read() as conn:
        return int(conn.execute(
            select(func.count()).select_from(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.status == event_status,
                   job_events.c.kind == "status")).scalar_one())


def job_error(engine: Engine, job_id: str) -> tuple[str | None, str | None]:
    with engine.store.read() as conn:
        row = conn.execute(select(jobs.c.error_type, jobs.c.error_message)
                           .where(jobs.c.id == job_id)).one()
        return row.error_type, row.error_message


# -- dependencies ----------------------------------------------------------------


def test_chain_completes_in_order(world: World) -> None:
    engine = world.engine
    a = world.submit().id
    b = world.submit(depends_on=[a]).id
    c = world.submit(depends_on=[b]).id
    assert statuses(engine, [a, b, c]) == {a: "queued", b: "pending", c: "pending"}
    assert run_in_rounds(engine, [a, b, c]) == [{a}, {b}, {c}]


def test_diamond_completes_in_order(world: World) -> None:
    engine = world.engine
    a = world.submit().id
    b = world.submit(depends_on=[a]).id
    c = world.submit(depends_on=[a]).id
    d = world.submit(depends_on=[b, c]).id
    assert run_in_rounds(engine, [a, b, c, d]) == [{a}, {b, c}, {d}]
    # One promotion each, however many parents completed.
    assert status_events(engine, d, "queued") == 1


def test_fan_in_waits_for_every_dependency(world: World) -> None:
    engine = world.engine
    parents = [world.submit().id for _ in range(5)]
    z = world.submit(depends_on=parents).id
    finish(engine, parents[:4])
    DependencyPromoter(engine).run_once()
    assert status(engine, z) == "pending"
    finish(engine, parents[4:])
    assert status(engine, z) == "queued"


def test_sweep_promotes_what_the_worker_did_not(world: World) -> None:
    engine = world.engine
    a = world.submit().id
    b = world.submit(depends_on=[a]).id
    force_status(engine, a, "completed")
    assert status(engine, b) == "pending"
    first = DependencyPromoter(engine).run_once()
    second = DependencyPromoter(engine).run_once()
    assert first.promoted == [b] and second.promoted == []
    assert status(engine, b) == "queued"
    assert status_events(engine, b, "queued") == 1


def _tree(world: World) -> dict[str, str]:
    """a -> b, c; b -> d; (c, d) -> e; f independent."""
    a = world.submit().id
    b = world.submit(depends_on=[a]).id
    c = world.submit(depends_on=[a]).id
    d = world.submit(depends_on=[b]).id
    e = world.submit(depends_on=[c, d]).id
    f = world.submit().id
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}


def _assert_subtree_canceled(engine: Engine, t: dict[str, str], root_status: str) -> None:
    for name in "bcde":
        assert status(engine, t[name]) == "canceled", name
        assert status_events(engine, t[name], "canceled") == 1, name
    assert job_error(engine, t["b"]) == (
        "dependency_failed", f"dependency {t['a']} ended {root_status}")
    assert job_error(engine, t["c"]) == (
        "dependency_failed", f"dependency {t['a']} ended {root_status}")
    assert job_error(engine, t["d"]) == (
        "dependency_failed", f"dependency {t['b']} ended canceled")
    etype, emsg = job_error(engine, t["e"])
    assert etype == "dependency_failed"
    assert emsg in (f"dependency {t['c']} ended canceled", f"dependency {t['d']} ended canceled")
    assert status(engine, t["f"]) == "queued"


def test_failed_parent_cancels_whole_subtree(world: World) -> None:
    engine = world.engine
    t = _tree(world)
    finish(engine, [t["a"]], OutcomeKind.PERMANENT)
    assert status(engine, t["a"]) == "dead_letter"
    _assert_subtree_canceled(engine, t, "dead_letter")
    # The sweep finds nothing left to do and writes nothing twice.
    assert DependencyPromoter(engine).run_once().canceled == []
    _assert_subtree_canceled(engine, t, "dead_letter")


def test_canceled_parent_cancels_whole_subtree(world: World) -> None:
    engine = world.engine
    t = _tree(world)
    engine.cancel_job(t["a"])
    assert status(engine, t["a"]) == "canceled"
    _assert_subtree_canceled(engine, t, "canceled")


@pytest.mark.parametrize("root_status", ["dead_letter", "canceled"])
def test_sweep_cancels_subtree_the_cascade_missed(world: World, root_status: str) -> None:
    engine = world.engine
    t = _tree(world)
    force_status(engine, t["a"], root_status)
    result = DependencyPromoter(engine).run_once()
    assert sorted(result.canceled) == sorted(t[n] for n in "bcde")
    _assert_subtree_canceled(engine, t, root_status)


def test_retrying_dead_lettered_parent_does_not_resurrect_children(world: World) -> None:
    engine = world.engine
    a = world.submit().id
    b = world.submit(depends_on=[a]).id
    finish(engine, [a], OutcomeKind.PERMANENT)
    assert status(engine, b) == "canceled"
    engine.retry_job(a)
    finish(engine, [a])
    DependencyPromoter(engine).run_once()
    assert status(engine, a) == "completed"
    assert status(engine, b) == "canceled"  # documented: canceled children stay canceled
    engine.retry_job(b)  # ...until retried by hand; the dependency is now met
    assert status(engine, b) == "queued"


def _chain(world: World, depth: int) -> list[str]:
    """A chain of ``depth`` jobs, each depending on the one before, written in two
    bulk inserts (submitting 1,000 jobs one by one would time the engine's
    submission path, not the scheduler). Rows as ``submit_job`` writes them."""
    engine = world.engine
    ids = [str(uuid.uuid4()) for _ in range(depth)]
    with engine.store.transaction() as conn:
        now = engine.store.now(conn)
        conn.execute(insert(jobs), [
            {"id": job_id, "job_type": "nodedup", "organization": "acme",
             "parameters": {"link": i}, "priority": 2,
             "status": "queued" if i == 0 else "pending", "job_hash": f"chain-{job_id}",
             "deduplicate": False, "max_retries": 0, "timeout_seconds": 0,
             "retry_backoff": 1.0, "retry_backoff_max": 1.0, "due_at": now + i * 1e-6,
             "created_at": now + i * 1e-6, "modified_at": now}
            for i, job_id in enumerate(ids)
        ])
        conn.execute(insert(job_dependencies), [
            {"job_id": ids[i], "depends_on_id": ids[i - 1]} for i in range(1, depth)])
    return ids


def test_thousand_deep_chain_cascade_is_one_sweep(world: World) -> None:
    engine = world.engine
    ids = _chain(world, 1000)
    force_status(engine, ids[0], "dead_letter")
    started = time.monotonic()
    result = DependencyPromoter(engine).run_once()
    elapsed = time.monotonic() - started
    assert len(result.canceled) == 999
    current = statuses(engine, ids)
    assert all(current[i] == "canceled" for i in ids[1:])
    assert job_error(engine, ids[1]) == ("dependency_failed",
                                         f"dependency {ids[0]} ended dead_letter")
    assert job_error(engine, ids[500]) == ("dependency_failed",
                                           f"dependency {ids[499]} ended canceled")
    assert elapsed < 20  # generous; one recursive query, not 999 sweeps


def test_worker_and_sweep_side_by_side_on_a_chain(world: World) -> None:
    """A worker completes each link (promoting the next in the same
    transaction), while a scheduler's sweep runs alongside in a thread: the chain
    runs strictly in order and the sweep never queues a job early."""
    engine = world.engine
    ids = _chain(world, 100)
    sweeper = Engine(engine.settings.database_url, handler_modules=TEST_HANDLER_MODULES)
    stop = threading.Event()
    early: list[str] = []

    def sweep() -> None:
        promoter = DependencyPromoter(sweeper)
        while not stop.is_set():
            early.extend(promoter.run_once().promoted)
            stop.wait(0.05)

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        for i, job_id in enumerate(ids):
            finish(engine, [job_id])
            if i + 1 < len(ids):
                # The next link is queued at once, by the completion itself.
                assert status(engine, ids[i + 1]) == "queued"
    finally:
        stop.set()
        thread.join()
        sweeper.close()
    assert early == []  # the worker had already promoted everything
    with engine.store.read() as conn:
        rows = conn.execute(select(jobs.c.id, jobs.c.started_at)
                            .where(jobs.c.id.in_(ids))).all()
    started = {r.id: r.started_at for r in rows}
    assert all(started[ids[i]] <= started[ids[i + 1]] for i in range(len(ids) - 1))


def test_thousand_deep_chain_promotes_link_by_link_by_the_sweep(world: World) -> None:
    """Promotion by the sweep alone (the worker's promotion bypassed): each sweep
    over 1,000 pending jobs queues exactly the next link and nothing else."""
    engine = world.engine
    ids = _chain(world, 1000)
    promoter = DependencyPromoter(engine)
    for i in range(len(ids) - 1):
        force_status(engine, ids[i], "completed")
        assert promoter.run_once().promoted == [ids[i + 1]]
    assert statuses(engine, ids)[ids[-1]] == "queued"


def test_promotion_is_prompt_with_a_running_scheduler(world: World) -> None:
    engine = world.engine
    a = world.submit().id
    b = world.submit(depends_on=[a]).id
    scheduler = Scheduler(engine, SchedulerOptions(run_cleanup=False))
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        force_status(engine, a, "completed")
        started = time.monotonic()
        wait_until(lambda: status(engine, b) == "queued", timeout=5)
        assert time.monotonic() - started < 1.5
    finally:
        scheduler.request_stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_real_worker_runs_a_diamond_in_order(world: World) -> None:
    from dartwing_jobs.worker import Supervisor, WorkerOptions

    engine = world.engine
    a = world.submit().id
    b = world.submit(depends_on=[a]).id
    c = world.submit(depends_on=[a]).id
    d = world.submit(depends_on=[b, c]).id
    supervisor = Supervisor(engine, WorkerOptions(concurrency=1))
    scheduler = Scheduler(engine, SchedulerOptions(run_cleanup=False))
    threads = [threading.Thread(target=supervisor.run), threading.Thread(target=scheduler.run)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: status(engine, d) in ("completed", "dead_letter", "canceled"),
                   timeout=60, interval=0.05)
    finally:
        supervisor.request_stop(immediate=True)
        scheduler.request_stop()
        for t in threads:
            t.join(timeout=30)
    with engine.store.read() as conn:
        rows = {r.id: r for r in conn.execute(
            select(jobs.c.id, jobs.c.status, jobs.c.started_at, jobs.c.completed_at)
            .where(jobs.c.id.in_([a, b, c, d])))}
    assert all(r.status == "completed" for r in rows.values())
    assert rows[a].completed_at <= rows[b].started_at
    assert rows[a].completed_at <= rows[c].started_at
    assert max(rows[b].completed_at, rows[c].completed_at) <= rows[d].started_at


# -- lease rescue ------------------------------------------------------------------


def test_lease_rescuer_takes_back_expired_leases(world: World) -> None:
    engine = world.engine
    job = world.submit()
    with engine.store.transaction() as conn:
        claimed = engine.store.claim_jobs(conn, "vanished-worker", 1, -1.0)  # already expired
    assert [r["id"] for r in claimed] == [job.id]
    assert LeaseRescuer(engine).run_once() == 1
    rescued = engine.get_job(job.id)
    assert rescued.status == "retrying"
    assert (rescued.error or {}).get("type") == "worker_lost"
    assert LeaseRescuer(engine).run_once() == 0


# -- periodic schedules -------------------------------------------------------------


def _db_now(engine: Engine) -> float:
    with engine.store.read() as conn:
        return engine.store.now(conn)


def _fires(engine: Engine, name: str) -> list[Any]:
    with engine.store.read() as conn:
        return maintenance.fires_of(conn, name)


def _jobs_of_type(engine: Engine, job_type: str) -> int:
    with engine.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs)
                                .where(jobs.c.job_type == job_type)).scalar_one())


def test_two_schedulers_twenty_ticks_exactly_twenty_jobs(world: World) -> None:
    engine = world.engine
    engine.job_types.register("tick", handler="tests.handlers:noop", deduplicate=False)
    Schedules(engine).add("every-second", cron="* * * * * *", job_type="tick",
                          organization="acme", parameters={"report": "x"})
    start = math.ceil(_db_now(engine)) + 1.0
    engines = [Engine(engine.settings.database_url, handler_modules=TEST_HANDLER_MODULES)
               for _ in range(2)]
    barrier = threading.Barrier(2)
    fired: list[list[float]] = [[], []]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            periodic = PeriodicScheduler(engines[index])
            barrier.wait()
            for tick in range(20):
                # Each scheduler looks several times per tick, at its own offsets.
                for offset in (0.1, 0.4, 0.7) if index == 0 else (0.2, 0.5, 0.9):
                    for fire in periodic.run_once(now=start + tick + offset):
                        fired[index].append(fire.tick_at)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for e in engines:
        e.close()
    assert not errors, errors
    assert _jobs_of_type(engine, "tick") == 20
    fires = _fires(engine, "every-second")
    assert [f["tick_at"] for f in fires] == [start + i for i in range(20)]
    assert all(f["job_id"] is not None for f in fires)
    assert sorted(fired[0] + fired[1]) == [start + i for i in range(20)]


def test_missed_ticks_catch_up_at_most_one(world: World) -> None:
    engine = world.engine
    Schedules(engine).add("minutely", cron="* * * * *", job_type="nodedup",
                          organization="acme")
    start = math.ceil(_db_now(engine) / 60) * 60 + 60
    periodic = PeriodicScheduler(engine)
    assert [f.tick_at for f in periodic.run_once(now=start + 1)] == [start]
    # Down for an hour and a half: one fire for the latest tick, not ninety.
    later = start + 90 * 60 + 30
    assert [f.tick_at for f in periodic.run_once(now=later)] == [latest_tick("* * * * *", later)]
    assert periodic.run_once(now=later) == []
    assert PeriodicScheduler(engine).run_once(now=later + 5) == []
    assert _jobs_of_type(engine, "nodedup") == 2
    assert len(_fires(engine, "minutely")) == 2


def test_tick_of_a_still_running_job_is_skipped_with_one_log_line(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    engine = world.engine
    Schedules(engine).add("dedup", cron="* * * * * *", job_type="noop", organization="acme",
                          parameters={"same": True})
    start = math.ceil(_db_now(engine)) + 1.0
    periodic = PeriodicScheduler(engine)
    first = periodic.run_once(now=start)
    assert [f.outcome for f in first] == ["fired"]
    with caplog.at_level(logging.INFO, logger="dartwing_jobs.scheduler.periodic"):
        second = periodic.run_once(now=start + 1)
    assert [f.outcome for f in second] == ["duplicate"]
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and first[0].job_id in skipped[0].getMessage()
    fires = _fires(engine, "dedup")
    assert [(f["tick_at"], f["job_id"]) for f in fires] == [
        (start, first[0].job_id), (start + 1, None)]
    assert _jobs_of_type(engine, "noop") == 1
    # Once the first job finished, the next tick fires again.
    finish(engine, [first[0].job_id])  # type: ignore[list-item]
    assert [f.outcome for f in periodic.run_once(now=start + 2)] == ["fired"]


def test_disabled_and_future_schedules_do_not_fire(world: World) -> None:
    engine = world.engine
    schedules = Schedules(engine)
    schedules.add("off", cron="* * * * * *", job_type="nodedup", organization="acme",
                  enabled=False)
    schedules.add("yearly", cron="0 0 1 1 *", job_type="nodedup", organization="acme")
    now = math.ceil(_db_now(engine)) + 1.0
    assert PeriodicScheduler(engine).run_once(now=now) == []  # yearly's last tick predates it
    schedules.enable("off")
    assert [f.schedule for f in PeriodicScheduler(engine).run_once(now=now)] == ["off"]


def test_schedules_api_validates(world: World) -> None:
    engine = world.engine
    schedules = Schedules(engine)
    created = schedules.add("nightly", cron="0 3 * * *", job_type="noop",
                            organization="acme", parameters={"k": 1})
    assert created["name"] == "nightly" and created["enabled"] is True
    assert created["next_fire_at"] is not None and created["next_fire_at"].endswith("Z")
    with pytest.raises(ValidationError):
        schedules.add("bad", cron="not a cron", job_type="noop", organization="acme")
    with pytest.raises(ValidationError):
        schedules.add("bad", cron="61 * * * *", job_type="noop", organization="acme")
    with pytest.raises(ValidationError):
        schedules.add("bad", cron="* * * * *", job_type="nope", organization="acme")
    with pytest.raises(ValidationError):
        schedules.add("bad", cron="* * * * *", job_type="noop", organization="initech")
    with pytest.raises(ValidationError):
        schedules.add("bad", cron="* * * * *", job_type="noop", organization="acme",
                      parameters=[1])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        schedules.add("bad name!", cron="* * * * *", job_type="noop", organization="acme")
    with pytest.raises(Conflict):
        schedules.add("nightly", cron="* * * * *", job_type="noop", organization="acme")
    with pytest.raises(Forbidden):
        schedules.add("mine", cron="* * * * *", job_type="noop", organization="acme",
                      actor=World.ADMIN)
    with pytest.raises(Forbidden):
        schedules.list(actor=World.MEMBER)
    assert [s["name"] for s in schedules.list(actor=World.SM)] == ["nightly"]
    assert schedules.enable("nightly", False)["enabled"] is False
    assert schedules.get("nightly")["next_fire_at"] is None
    schedules.remove("nightly", actor=World.SM)
    with pytest.raises(NotFound):
        schedules.remove("nightly")
    assert schedules.list() == []


def test_removing_a_schedule_removes_its_fires(world: World) -> None:
    engine = world.engine
    Schedules(engine).add("gone", cron="* * * * * *", job_type="nodedup", organization="acme")
    PeriodicScheduler(engine).run_once(now=math.ceil(_db_now(engine)) + 1.0)
    assert len(_fires(engine, "gone")) == 1
    Schedules(engine).remove("gone")
    with engine.store.read() as conn:
        assert conn.execute(select(func.count()).select_from(schedule_fires)).scalar_one() == 0


def test_scheduler_loop_fires_real_ticks_and_stops(world: World) -> None:
    engine = world.engine
    Schedules(engine).add("live", cron="* * * * * *", job_type="nodedup", organization="acme")
    scheduler = Scheduler(engine, SchedulerOptions(run_cleanup=False))
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        wait_until(lambda: _jobs_of_type(engine, "nodedup") >= 2, timeout=10)
    finally:
        scheduler.request_stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert scheduler.errors == {}
