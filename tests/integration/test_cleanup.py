"""Retention cleanup on both backends: exactly the old terminal jobs go, with
their logs, events and dependency rows; batches commit one by one; a dry run
deletes nothing; an interrupted run loses nothing; the daily run is claimed by
one scheduler."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from dartwing_jobs import Engine
from dartwing_jobs.domain.errors import ValidationError
from dartwing_jobs.scheduler import CleanupProgress, RetentionCleaner
from dartwing_jobs.store import maintenance
from dartwing_jobs.store.schema import (
    job_dependencies,
    job_events,
    job_execution_log,
    jobs,
    maintenance_runs,
)
from tests.conftest import TEST_HANDLER_MODULES, World

DAY = 86400.0
ALL_STATUSES = ("pending", "queued", "running", "retrying", "completed", "dead_letter",
                "canceled")
TERMINAL = ("completed", "dead_letter", "canceled")


def make_job(world: World, status: str, age_days: float, *, job_type: str = "nodedup",
             depends_on: list[str] | None = None) -> str:
    """A job of the given status whose last change (and end) was ``age_days`` ago,
    with one execution log row and its events."""
    engine = world.engine
    job = world.submit(job_type=job_type, depends_on=depends_on)
    with engine.store.transaction() as conn:
        now = engine.store.now(conn)
        at = now - age_days * DAY
        ended = at if status in TERMINAL else None
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(
            status=status, modified_at=at, completed_at=ended, created_at=at - 60))
        conn.execute(insert(job_execution_log).values(
            job_id=job.id, organization="acme", job_type=job_type, attempt=1,
            worker_id="w", started_at=at - 1, finished_at=ended, outcome=status))
        conn.execute(insert(job_events).values(
            job_id=job.id, organization="acme", job_type=job_type, kind="status",
            status=status, attempt=1, created_at=at))
        # The submission's own event is as old as the job.
        conn.execute(update(job_events).where(job_events.c.job_id == job.id)
                     .values(created_at=at))
    return job.id


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where))
                   .scalar_one())


def present(engine: Engine, job_id: str) -> dict[str, int]:
    return {
        "jobs": count(engine, jobs, jobs.c.id == job_id),
        "logs": count(engine, job_execution_log, job_execution_log.c.job_id == job_id),
        "events": count(engine, job_events, job_events.c.job_id == job_id),
        "deps": count(engine, job_dependencies, (job_dependencies.c.job_id == job_id)
                      | (job_dependencies.c.depends_on_id == job_id)),
    }


def test_removes_exactly_the_old_terminal_jobs_with_their_rows(world: World) -> None:
    engine = world.engine
    old = {s: make_job(world, s, 40) for s in ALL_STATUSES}
    young = {s: make_job(world, s, 10) for s in ALL_STATUSES}
    # An old finished parent and child: both go, with the dependency row.
    parent = make_job(world, "completed", 45)
    child = make_job(world, "completed", 41, depends_on=[parent])
    # An old finished parent of a job still pending stays (it is still a dependency).
    kept_parent = make_job(world, "queued", 50)
    waiting = make_job(world, "queued", 1, depends_on=[kept_parent])
    with engine.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == kept_parent)
                     .values(status="completed", completed_at=jobs.c.modified_at))
        conn.execute(update(jobs).where(jobs.c.id == waiting).values(status="pending"))
    assert present(engine, child)["deps"] == 1

    result = RetentionCleaner(engine).cleanup(batch_size=2)

    gone = [old[s] for s in TERMINAL] + [parent, child]
    assert result.jobs_deleted == len(gone) == result.jobs_matched
    for job_id in gone:
        assert present(engine, job_id) == {"jobs": 0, "logs": 0, "events": 0, "deps": 0}
    for s in ALL_STATUSES:
        if s not in TERMINAL:
            assert present(engine, old[s])["jobs"] == 1, s
            assert present(engine, old[s])["logs"] == 1, s
        assert present(engine, young[s]) == {"jobs": 1, "logs": 1, "events": 2, "deps": 0}, s
    assert present(engine, kept_parent)["jobs"] == 1
    assert present(engine, waiting)["deps"] == 1
    # Old events of jobs that stay are pruned as the outbox retention says.
    assert present(engine, old["running"])["events"] == 0
    assert result.events_deleted > 0


def test_job_type_retention_overrides_the_default(world: World) -> None:
    engine = world.engine
    engine.job_types.register("short_lived", handler="tests.handlers:noop", deduplicate=False,
                              retention_days=5)
    short = make_job(world, "completed", 10, job_type="short_lived")
    default = make_job(world, "completed", 10)
    result = RetentionCleaner(engine).cleanup()
    assert result.per_job_type_retention == {"short_lived": 5.0}
    assert present(engine, short)["jobs"] == 0
    assert present(engine, default)["jobs"] == 1
    # An explicit period for everybody.
    RetentionCleaner(engine).cleanup(retention_days=7, use_job_type_overrides=False)
    assert present(engine, default)["jobs"] == 0


def test_dry_run_deletes_nothing(world: World) -> None:
    engine = world.engine
    ids = [make_job(world, s, 40) for s in ALL_STATUSES]
    before = {i: present(engine, i) for i in ids}
    events_before = count(engine, job_events)
    result = RetentionCleaner(engine).cleanup(dry_run=True)
    assert result.dry_run and result.jobs_matched == 3 and result.jobs_deleted == 0
    assert result.events_matched == events_before
    assert {i: present(engine, i) for i in ids} == before
    assert count(engine, job_events) == events_before


def test_batches_commit_one_by_one(world: World) -> None:
    engine = world.engine
    for i in range(25):
        make_job(world, TERMINAL[i % 3], 40)
    keep = make_job(world, "queued", 40)
    observer = Engine(engine.settings.database_url, handler_modules=TEST_HANDLER_MODULES)
    seen: list[int] = []
    phases: list[str] = []

    def progress(p: CleanupProgress) -> None:
        # Another connection sees each batch as soon as it is reported: committed.
        phases.append(p.phase)
        if p.phase == "jobs":
            seen.append(count(observer, jobs))

    try:
        result = RetentionCleaner(engine).cleanup(batch_size=10, progress=progress)
    finally:
        observer.close()
    assert seen == [26, 16, 6, 1]
    assert result.jobs_deleted == 25 and result.batches >= 3
    assert phases[0] == "jobs" and "events" in phases
    assert present(engine, keep)["jobs"] == 1


def test_interrupted_cleanup_loses_nothing_and_the_next_run_finishes(world: World) -> None:
    engine = world.engine
    old = [make_job(world, TERMINAL[i % 3], 40) for i in range(12)]
    kept = [make_job(world, s, 40) for s in ("pending", "running")] + [
        make_job(world, "completed", 1)]

    class Crash(Exception):
        pass

    def crash_after_first_batch(p: CleanupProgress) -> None:
        if p.batches == 1:
            raise Crash("scheduler killed mid-cleanup")

    with pytest.raises(Crash):
        RetentionCleaner(engine).cleanup(batch_size=5, progress=crash_after_first_batch)
    remaining = [i for i in old if present(engine, i)["jobs"]]
    assert len(remaining) == 7  # the first batch committed, nothing else moved
    for job_id in old:
        rows = present(engine, job_id)
        # Each job is either wholly gone or wholly there, never half-deleted.
        assert rows in ({"jobs": 0, "logs": 0, "events": 0, "deps": 0},
                        {"jobs": 1, "logs": 1, "events": 2, "deps": 0})
    result = RetentionCleaner(engine).cleanup(batch_size=5)
    assert result.jobs_deleted == 7
    assert all(present(engine, i)["jobs"] == 0 for i in old)
    assert all(present(engine, i)["jobs"] == 1 for i in kept)


def test_cleanup_validates_its_arguments(world: World) -> None:
    cleaner = RetentionCleaner(world.engine)
    with pytest.raises(ValidationError):
        cleaner.cleanup(retention_days=-1)
    with pytest.raises(ValidationError):
        cleaner.cleanup(batch_size=0)


def test_daily_run_is_claimed_by_one_scheduler(world: World) -> None:
    engine = world.engine
    for i in range(6):
        make_job(world, TERMINAL[i % 3], 40)
    engines = [Engine(engine.settings.database_url, handler_modules=TEST_HANDLER_MODULES)
               for _ in range(2)]
    results: list[Any] = [None, None]
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = RetentionCleaner(engines[i]).run_once()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for e in engines:
        e.close()
    ran = [r for r in results if r is not None]
    assert len(ran) == 1 and ran[0].jobs_deleted == 6
    # The same day again: nothing; the next day: a new run.
    assert RetentionCleaner(engine).run_once() is None
    with engine.store.read() as conn:
        now = engine.store.now(conn)
    assert RetentionCleaner(engine).run_once(now=now + DAY) is not None
    assert count(engine, maintenance_runs, maintenance_runs.c.finished_at.is_not(None)) == 2


def test_a_stale_daily_run_is_taken_over(world: World) -> None:
    engine = world.engine
    with engine.store.transaction() as conn:
        assert maintenance.claim_maintenance_run(conn, "retention_cleanup", "2030-01-01",
                                                 "crashed", 3600)
        conn.execute(update(maintenance_runs).values(started_at=maintenance_runs.c.started_at
                                                     - 7200))
    with engine.store.transaction() as conn:
        assert maintenance.claim_maintenance_run(conn, "retention_cleanup", "2030-01-01",
                                                 "heir", 3600)
        assert not maintenance.claim_maintenance_run(conn, "retention_cleanup", "2030-01-01",
                                                     "third", 3600)


def vacuum_counts(engine: Engine) -> dict[str, int]:
    """Manual VACUUMs so far of the cleaned tables in this test's schema."""
    from sqlalchemy import text

    with engine.store.read() as conn:
        rows = conn.execute(text(
            "SELECT relname, vacuum_count FROM pg_stat_user_tables"
            " WHERE schemaname = current_schema() AND relname IN"
            " ('background_jobs', 'job_events', 'job_execution_log', 'job_dependencies')"))
        return {str(r.relname): int(r.vacuum_count) for r in rows}


def test_a_cleanup_that_deleted_reclaims_the_space(world: World) -> None:
    """PostgreSQL: the tables it deleted from are vacuumed and analyzed at once
    (autovacuum may be off, as on the CI machine's server); SQLite reuses freed
    pages by itself and reports nothing done."""
    engine = world.engine
    for _ in range(3):
        make_job(world, "completed", 40)
    postgres = engine.store.backend == "postgresql"
    before = vacuum_counts(engine) if postgres else {}
    result = RetentionCleaner(engine).cleanup()
    assert result.jobs_deleted == 3
    assert result.space_reclaimed is postgres
    assert result.to_dict()["space_reclaimed"] is postgres
    if postgres:
        after = vacuum_counts(engine)
        assert set(after) == {"background_jobs", "job_events", "job_execution_log",
                              "job_dependencies"}
        assert all(after[t] == before.get(t, 0) + 1 for t in after), (before, after)


def test_a_cleanup_that_deleted_nothing_reclaims_nothing(world: World) -> None:
    make_job(world, "completed", 1)
    result = RetentionCleaner(world.engine).cleanup()
    assert (result.jobs_deleted, result.events_deleted) == (0, 0)
    assert result.space_reclaimed is False


def test_a_failed_reclaim_keeps_the_deletes(world: World,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The deletes are committed batch by batch; a VACUUM that fails (or a
    backend that cannot) is logged and left to autovacuum or the next run."""
    engine = world.engine
    gone = make_job(world, "completed", 40)

    def failing() -> bool:
        raise RuntimeError("canceling statement due to user request")

    monkeypatch.setattr(engine.store, "reclaim_space", failing)
    result = RetentionCleaner(engine).cleanup()
    assert result.jobs_deleted == 1 and result.space_reclaimed is False
    assert present(engine, gone)["jobs"] == 0


def test_a_server_without_autovacuum_is_named_at_start(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL with autovacuum off (as on the CI machine's server) is named in
    a warning when a scheduler or worker starts; SQLite has nothing to say."""
    from sqlalchemy import text

    from dartwing_jobs.store.base import warn_about_configuration

    store = world.engine.store
    expected = False
    if store.backend == "postgresql":
        with store.read() as conn:
            expected = str(conn.execute(text("SHOW autovacuum")).scalar()) == "off"
    with caplog.at_level("WARNING", logger="dartwing_jobs.store"):
        warnings = warn_about_configuration(store)
    assert any("autovacuum is off" in w for w in warnings) is expected
    assert ("autovacuum is off" in caplog.text) is expected


def test_a_configuration_that_cannot_be_read_warns_of_nothing(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from dartwing_jobs.store.base import warn_about_configuration

    def unreachable() -> list[str]:
        raise ConnectionError("server closed the connection unexpectedly")

    monkeypatch.setattr(world.engine.store, "configuration_warnings", unreachable)
    assert warn_about_configuration(world.engine.store) == []


@pytest.mark.parametrize("setting", ["on", "off"])
def test_the_autovacuum_warning_follows_the_setting(
        world: World, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    if world.engine.store.backend != "postgresql":
        pytest.skip("autovacuum is PostgreSQL's")
    from sqlalchemy import literal, select

    from dartwing_jobs.store import postgres

    monkeypatch.setattr(postgres, "SHOW_AUTOVACUUM", select(literal(setting)))
    warnings = world.engine.store.configuration_warnings()
    assert bool(warnings) is (setting == "off")
