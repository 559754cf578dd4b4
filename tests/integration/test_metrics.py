"""Per-organization metrics (SPEC 5.5; the plan's P1-001 and P3-004): exact figures
on known data, the window, access and hostile organization names, both backends.

Rows are written straight into the tables with known times (taken from the
database's clock) and durations, and every expected figure is computed by hand
below: p50/p95 follow the definition in ``store/metrics.py`` (PostgreSQL's
``percentile_cont``: ``h = p * (n - 1)``, ``x[floor h] + frac(h) * (x[ceil h] -
x[floor h])``).
"""

from __future__ import annotations

import math
import random
import uuid
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Connection

from dartwing_jobs import Engine, NotFound, Unauthorized, ValidationError
from dartwing_jobs.access import FORBIDDEN_ORG
from dartwing_jobs.domain.errors import Forbidden
from dartwing_jobs.metrics import MAX_WINDOW_HOURS, get_metrics
from dartwing_jobs.store import metrics as queries
from dartwing_jobs.store.schema import job_execution_log, jobs
from tests.conftest import World

HOUR = 3600.0
ALL_STATUSES = ["pending", "queued", "running", "retrying", "completed", "dead_letter",
                "canceled"]
ALL_PRIORITIES = ["critical", "high", "normal", "low"]


def _job(conn: Connection, org: str, status: str, *, priority: int = 2,
         due_at: float, job_type: str = "noop") -> str:
    job_id = str(uuid.uuid4())
    conn.execute(insert(jobs).values(
        id=job_id, job_type=job_type, organization=org, parameters={}, priority=priority,
        status=status, job_hash=uuid.uuid4().hex, deduplicate=True, max_retries=3,
        timeout_seconds=60, retry_backoff=1.0, retry_backoff_max=10.0, due_at=due_at,
        created_at=due_at, modified_at=due_at,
    ))
    return job_id


def _log(conn: Connection, org: str, job_type: str, outcome: str, duration_ms: float,
         finished_at: float) -> None:
    conn.execute(insert(job_execution_log).values(
        job_id=str(uuid.uuid4()), organization=org, job_type=job_type, attempt=1,
        started_at=finished_at - duration_ms / 1000.0, finished_at=finished_at,
        duration_ms=duration_ms, outcome=outcome,
    ))


def _load_known_data(engine: Engine, org: str = "acme", other: str = "globex") -> None:
    """The data set every figure below is computed from."""
    engine.job_types.register("idle", handler="tests.handlers:noop")
    with engine.store.transaction() as conn:
        now = engine.store.now(conn)
        past, future = now - 60.0, now + HOUR
        # jobs_by_status: pending 1, queued 4, running 1, retrying 2, completed 3,
        # dead_letter 1, canceled 0.
        _job(conn, org, "pending", due_at=past)
        _job(conn, org, "queued", priority=2, due_at=past)      # due: normal
        _job(conn, org, "queued", priority=2, due_at=past)      # due: normal
        _job(conn, org, "queued", priority=0, due_at=past)      # due: critical
        _job(conn, org, "queued", priority=1, due_at=future)    # not due yet
        _job(conn, org, "retrying", priority=3, due_at=past)    # due: low
        _job(conn, org, "retrying", priority=2, due_at=future)  # backing off
        _job(conn, org, "running", priority=0, due_at=past)
        for _ in range(3):
            _job(conn, org, "completed", due_at=past)
        _job(conn, org, "dead_letter", due_at=past)
        # The other organization: plenty that must never show up in ``org``.
        for priority in range(4):
            for status in ALL_STATUSES:
                _job(conn, other, status, priority=priority, due_at=past)

        inside = now - 23 * HOUR  # well inside the 24 h window
        # noop: completed 10, 20, 30, 40, 100 ms; failed, timeout; canceled.
        for ms in (40.0, 10.0, 100.0, 30.0, 20.0):  # not in order on purpose
            _log(conn, org, "noop", "completed", ms, inside)
        _log(conn, org, "noop", "failed", 5.0, inside)
        _log(conn, org, "noop", "timeout", 60000.0, inside)
        _log(conn, org, "noop", "canceled", 1.0, inside)
        # Just outside the window (one minute before its start): not counted.
        _log(conn, org, "noop", "completed", 5000.0, now - 24 * HOUR - 60.0)
        _log(conn, org, "noop", "failed", 5.0, now - 24 * HOUR - 60.0)
        # nodedup: completed 7.5 and 12.5 ms; worker_lost, permanent.
        _log(conn, org, "nodedup", "completed", 12.5, now - 30.0)
        _log(conn, org, "nodedup", "completed", 7.5, now - 2 * HOUR)
        _log(conn, org, "nodedup", "worker_lost", 30000.0, now - 30.0)
        _log(conn, org, "nodedup", "permanent", 2.0, now - 30.0)
        # The other organization: huge durations and failures only.
        for ms in (1e6, 2e6, 3e6):
            _log(conn, other, "noop", "completed", ms, now - 30.0)
            _log(conn, other, "noop", "failed", ms, now - 30.0)


EXPECTED_24H: dict[str, Any] = {
    "jobs_by_status": {"pending": 1, "queued": 4, "running": 1, "retrying": 2,
                       "completed": 3, "dead_letter": 1, "canceled": 0},
    "queue_depth_by_priority": {"critical": 1, "high": 0, "normal": 2, "low": 1},
    "processing_time": {
        # n=2: p50 h=0.5 -> 7.5 + 0.5*5 = 10; p95 h=0.95 -> 7.5 + 0.95*5 = 12.25
        "nodedup": {"count": 2, "avg_ms": 10.0, "p50_ms": 10.0, "p95_ms": 12.25,
                    "max_ms": 12.5},
        "idle": {"count": 0, "avg_ms": None, "p50_ms": None, "p95_ms": None, "max_ms": None},
        # n=5 sorted 10,20,30,40,100: p50 h=2 -> 30; p95 h=3.8 -> 40 + 0.8*60 = 88
        "noop": {"count": 5, "avg_ms": 40.0, "p50_ms": 30.0, "p95_ms": 88.0, "max_ms": 100.0},
    },
    "failure_rate": {
        "nodedup": {"attempts": 4, "failures": 2, "rate": 0.5},
        "idle": {"attempts": 0, "failures": 0, "rate": 0.0},
        # 5 completed + failed + timeout + canceled: 2 failures of 8
        "noop": {"attempts": 8, "failures": 2, "rate": 0.25},
    },
}


def test_exact_figures_on_known_data(world: World) -> None:
    _load_known_data(world.engine)
    got = get_metrics(world.engine, "acme", actor=World.MEMBER)
    assert got == {"organization": "acme", "window_hours": 24.0, **EXPECTED_24H}
    # Keys in the documented order, every status and priority present.
    assert list(got["jobs_by_status"]) == ALL_STATUSES
    assert list(got["queue_depth_by_priority"]) == ALL_PRIORITIES


def test_window_excludes_older_attempts(world: World) -> None:
    _load_known_data(world.engine)
    got = get_metrics(world.engine, "acme", window_hours=1, actor=World.MEMBER)
    assert got["window_hours"] == 1.0
    # Only the nodedup attempts 30 s ago remain: 12.5 ms completed, 2 failures.
    assert got["processing_time"]["noop"]["count"] == 0
    assert got["processing_time"]["nodedup"] == {
        "count": 1, "avg_ms": 12.5, "p50_ms": 12.5, "p95_ms": 12.5, "max_ms": 12.5}
    assert got["failure_rate"]["noop"] == {"attempts": 0, "failures": 0, "rate": 0.0}
    assert got["failure_rate"]["nodedup"] == {"attempts": 3, "failures": 2, "rate": 0.6667}
    # Present state does not depend on the window.
    assert got["jobs_by_status"] == EXPECTED_24H["jobs_by_status"]
    # A window reaching back past the outside rows takes them in.
    wide = get_metrics(world.engine, "acme", window_hours=25, actor=World.MEMBER)
    assert wide["processing_time"]["noop"]["count"] == 6
    assert wide["processing_time"]["noop"]["max_ms"] == 5000.0
    assert wide["failure_rate"]["noop"] == {"attempts": 10, "failures": 3, "rate": 0.3}


def test_empty_organization_has_every_key_with_zeros(world: World) -> None:
    got = get_metrics(world.engine, "acme", actor=World.MEMBER)
    assert got["jobs_by_status"] == dict.fromkeys(ALL_STATUSES, 0)
    assert got["queue_depth_by_priority"] == dict.fromkeys(ALL_PRIORITIES, 0)
    assert got["failure_rate"] == {
        "nodedup": {"attempts": 0, "failures": 0, "rate": 0.0},
        "noop": {"attempts": 0, "failures": 0, "rate": 0.0},
    }
    assert {t: v["count"] for t, v in got["processing_time"].items()} == {
        "nodedup": 0, "noop": 0}


def test_figures_of_jobs_run_through_the_engine(world: World) -> None:
    """Submitted through the engine, not inserted: counts follow the real writes."""
    for _ in range(3):
        world.submit()
    world.submit(priority="critical")
    got = get_metrics(world.engine, "acme", actor=World.MEMBER)
    assert got["jobs_by_status"]["queued"] == 4
    assert got["queue_depth_by_priority"] == {"critical": 1, "high": 0, "normal": 3, "low": 0}
    assert get_metrics(world.engine, "globex", actor=World.OTHER)["jobs_by_status"] == (
        dict.fromkeys(ALL_STATUSES, 0))


# -- access ---------------------------------------------------------------------

@pytest.mark.parametrize("actor", [World.MEMBER, World.ADMIN, World.SM, None])
def test_readers(world: World, actor: str | None) -> None:
    _load_known_data(world.engine)
    assert get_metrics(world.engine, "acme", actor=actor)["jobs_by_status"] == (
        EXPECTED_24H["jobs_by_status"])


@pytest.mark.parametrize("actor", [World.INACTIVE, World.OTHER, World.NOBODY])
@pytest.mark.parametrize("organization", ["acme", "no-such-org", "x' OR '1'='1"])
def test_others_are_forbidden_alike(world: World, actor: str, organization: str) -> None:
    with pytest.raises(Forbidden) as caught:
        get_metrics(world.engine, organization, actor=actor)
    assert caught.value.message == FORBIDDEN_ORG
    assert caught.value.to_dict() == {"code": "forbidden", "message": FORBIDDEN_ORG}


def test_member_of_a_is_forbidden_for_b(world: World) -> None:
    _load_known_data(world.engine)
    with pytest.raises(Forbidden):
        get_metrics(world.engine, "globex", actor=World.MEMBER)
    with pytest.raises(Forbidden):
        get_metrics(world.engine, "acme", actor=World.OTHER)


def test_unknown_user_is_unauthorized(world: World) -> None:
    with pytest.raises(Unauthorized):
        get_metrics(world.engine, "acme", actor="ghost@example.com")


@pytest.mark.parametrize("actor", [World.SM, None])
@pytest.mark.parametrize("organization", ["no-such-org", "x' OR '1'='1", "nul\x00byte"])
def test_system_manager_learns_a_missing_organization(
        world: World, actor: str | None, organization: str) -> None:
    with pytest.raises(NotFound):
        get_metrics(world.engine, organization, actor=actor)


# -- hostile organization names (P1-001) ----------------------------------------

HOSTILE = ["x' OR '1'='1", "%", "_", "acme%", "ac_e", "🚀 Ünïcødé 日本語",
           "'; DELETE FROM background_jobs; --"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_organization_names_are_just_data(world: World, name: str) -> None:
    eng = world.engine
    _load_known_data(eng)
    eng.create_organization(name, title="hostile")
    eng.set_member(name, World.MEMBER, create=True)
    with eng.store.transaction() as conn:
        now = eng.store.now(conn)
        _job(conn, name, "queued", priority=1, due_at=now - 1.0)
        _log(conn, name, "noop", "completed", 3.0, now - 1.0)
        _log(conn, name, "noop", "failed", 4.0, now - 1.0)
    got = get_metrics(eng, name, actor=World.MEMBER)
    assert got["organization"] == name
    assert got["jobs_by_status"] == {**dict.fromkeys(ALL_STATUSES, 0), "queued": 1}
    assert got["queue_depth_by_priority"] == {"critical": 0, "high": 1, "normal": 0, "low": 0}
    assert got["processing_time"]["noop"] == {
        "count": 1, "avg_ms": 3.0, "p50_ms": 3.0, "p95_ms": 3.0, "max_ms": 3.0}
    assert got["failure_rate"]["noop"] == {"attempts": 2, "failures": 1, "rate": 0.5}
    assert got["failure_rate"]["nodedup"]["attempts"] == 0
    # acme's figures are untouched by the hostile organization, and vice versa.
    assert get_metrics(eng, "acme", actor=World.MEMBER) == {
        "organization": "acme", "window_hours": 24.0, **EXPECTED_24H}


# -- validation -------------------------------------------------------------------

@pytest.mark.parametrize("hours", [0, -1, 0.0, MAX_WINDOW_HOURS + 1, math.nan, math.inf,
                                   "24", None, True])
def test_window_hours_validation(world: World, hours: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        get_metrics(world.engine, "acme", window_hours=hours, actor=World.MEMBER)
    assert caught.value.details == {"field": "window_hours"}


@pytest.mark.parametrize("hours", [0.001, 1, 24, MAX_WINDOW_HOURS])
def test_window_hours_accepted(world: World, hours: float) -> None:
    got = get_metrics(world.engine, "acme", window_hours=hours, actor=World.MEMBER)
    assert got["window_hours"] == float(hours)


def test_organization_must_be_a_string(world: World) -> None:
    with pytest.raises(ValidationError):
        get_metrics(world.engine, 42, actor=World.MEMBER)  # type: ignore[arg-type]


# -- the percentile definition ----------------------------------------------------

def _percentile_cont(values: list[float], p: float) -> float:
    """PostgreSQL's percentile_cont, operation for operation."""
    xs = sorted(values)
    h = p * (len(xs) - 1)
    lo, hi = math.floor(h), math.ceil(h)
    return xs[lo] if hi == lo else xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_the_definition_exactly(world: World, seed: int) -> None:
    """Random data (ties included): the SQL of this backend equals the reference
    to the last bit; on PostgreSQL the portable window-function form is run too
    and equals ``percentile_cont``."""
    eng = world.engine
    rng = random.Random(seed)
    data: dict[str, list[float]] = {"noop": [], "nodedup": []}
    with eng.store.transaction() as conn:
        now = eng.store.now(conn)
        for job_type, values in data.items():
            for _ in range(rng.randint(1, 150)):
                ms = rng.choice([rng.uniform(0, 5000), float(rng.randint(1, 20))])
                values.append(ms)
                _log(conn, "acme", job_type, "completed", ms, now - rng.uniform(1, 3000))
    since = now - HOUR
    dialects = ["sqlite"] if eng.store.backend == "sqlite" else ["postgresql", "portable"]
    with eng.store.read() as conn:
        for dialect in dialects:
            stmt = queries.processing_time_statement("acme", since, dialect=dialect)
            rows = {r["job_type"]: r for r in conn.execute(stmt).mappings()}
            for job_type, values in data.items():
                row = rows[job_type]
                assert row["count"] == len(values)
                assert row["max_ms"] == max(values)
                assert row["p50_ms"] == _percentile_cont(values, 0.5), dialect
                assert row["p95_ms"] == _percentile_cont(values, 0.95), dialect
                assert round(float(row["avg_ms"]), 3) == round(sum(values) / len(values), 3)
