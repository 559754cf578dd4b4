"""Fair claiming, per-organization concurrency limits, queued-job quotas, pause
and resume (issue 10), on SQLite and PostgreSQL. Claims are driven through
``Store.claim_jobs`` directly, as the worker's exchanger calls it; the real-worker
versions are in ``tests/system/test_fairness_worker.py``."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import RowMapping

from dartwing_jobs import Engine
from dartwing_jobs.domain.errors import Forbidden, NotFound, QuotaExceeded, ValidationError
from dartwing_jobs.domain.outcomes import Outcome, OutcomeKind
from dartwing_jobs.store.schema import jobs, metadata
from tests.conftest import TEST_HANDLER_MODULES, World
from tests.integration.api_support import Api

ORGS = ("acme", "globex", "initech")


@pytest.fixture
def three(world: World) -> World:
    world.engine.create_organization("initech", title="Initech")
    return world


def claim(engine: Engine, limit: int, worker: str = "w1",
          job_types: list[str] | None = None) -> list[RowMapping]:
    with engine.store.transaction() as conn:
        return engine.store.claim_jobs(conn, worker, limit, 30.0, job_types)


def complete(engine: Engine, rows: list[RowMapping]) -> None:
    with engine.store.transaction() as conn:
        engine.store.record_outcomes(conn, [
            Outcome(job_id=r["id"], attempt=r["attempts"], kind=OutcomeKind.COMPLETED,
                    worker_id="test", started_at=time.time(), duration_ms=1.0)
            for r in rows])


def submit_many(engine: Engine, org: str, n: int, job_type: str = "noop",
                priority: str | None = None) -> list[str]:
    return [j.id for j in engine.submit_jobs(
        job_type, org, [{"n": uuid.uuid4().hex} for _ in range(n)], priority=priority)]


def count(engine: Engine, **where: Any) -> int:
    with engine.store.read() as conn:
        stmt = select(func.count()).select_from(jobs)
        for key, value in where.items():
            stmt = stmt.where(jobs.c[key] == value)
        return int(conn.execute(stmt).scalar_one())


# -- fair claiming -------------------------------------------------------------------


def test_round_robin_among_three_organizations(three: World) -> None:
    """acme submits 6 jobs before globex and initech submit 3 each; one-job claims
    take the organizations in turn, and so does the order inside a large claim."""
    engine = three.engine
    submit_many(engine, "acme", 6)
    submit_many(engine, "globex", 3)
    submit_many(engine, "initech", 3)
    order = [claim(engine, 1)[0]["organization"] for _ in range(6)]
    assert order == ["acme", "globex", "initech"] * 2
    big = claim(engine, 10, worker="w2")
    assert [r["organization"] for r in big] == ["acme", "globex", "initech", "acme", "acme",
                                                "acme"]
    assert claim(engine, 10) == []


def test_round_robin_resumes_after_the_organization_served_last(three: World) -> None:
    engine = three.engine
    for org in ORGS:
        submit_many(engine, org, 4)
    first = claim(engine, 2)
    assert [r["organization"] for r in first] == ["acme", "globex"]
    assert engine.store.claim_cursor("w1") == "globex"
    # A claim of one takes the next organization in turn, wrapping around.
    assert [claim(engine, 1)[0]["organization"] for _ in range(4)] == [
        "initech", "acme", "globex", "initech"]
    # An explicit cursor (another caller's rotation) is honoured.
    with engine.store.transaction() as conn:
        rows = engine.store.claim_jobs(conn, "w9", 1, 30.0, after_organization="acme")
    assert rows[0]["organization"] == "globex"


def test_fair_claim_keeps_each_organizations_own_order(three: World) -> None:
    engine = three.engine
    acme = [engine.submit_job("noop", "acme", {"i": i}, run_at=time.time() - 100 + i).id
            for i in range(5)]
    globex = [engine.submit_job("noop", "globex", {"i": i}, run_at=time.time() - 50 + i).id
              for i in range(2)]
    rows = claim(engine, 7)
    assert [r["id"] for r in rows if r["organization"] == "acme"] == acme
    assert [r["id"] for r in rows if r["organization"] == "globex"] == globex
    assert [r["organization"] for r in rows] == ["acme", "globex", "acme", "globex", "acme",
                                                 "acme", "acme"]


def test_consecutive_claims_of_one_organization_fill_the_batch(world: World) -> None:
    """The organization walk is reused between close claims; reusing it must not
    list an organization twice (which would halve each claim)."""
    engine = world.engine
    submit_many(engine, "acme", 100)
    sizes = [len(claim(engine, 20)) for _ in range(5)]
    assert sizes == [20] * 5


def test_one_busy_organization_does_not_delay_others(three: World) -> None:
    engine = three.engine
    submit_many(engine, "acme", 500)
    late = three.submit(organization="globex").id
    rows = claim(engine, 10)
    assert late in [r["id"] for r in rows[:2]]


def test_priority_before_fairness(three: World) -> None:
    engine = three.engine
    submit_many(engine, "acme", 3, priority="critical")
    submit_many(engine, "globex", 3, priority="high")
    submit_many(engine, "initech", 3, priority="low")
    crit = three.submit(organization="initech", priority="critical").id
    rows = claim(engine, 6)
    assert [r["priority"] for r in rows] == [0, 0, 0, 0, 1, 1]
    assert crit in [r["id"] for r in rows[:2]]  # acme and initech share critical
    assert [r["organization"] for r in rows[:4]].count("initech") == 1
    rest = claim(engine, 10)
    assert [r["priority"] for r in rest] == [1, 3, 3, 3]


def test_unfair_setting_keeps_plain_priority_then_age(world: World) -> None:
    engine = world.engine
    engine.store.claim_policy = replace(engine.store.claim_policy, fair=False)
    submit_many(engine, "acme", 5)
    submit_many(engine, "globex", 2)
    assert [r["organization"] for r in claim(engine, 6)] == ["acme"] * 5 + ["globex"]


def test_job_type_filter_with_fairness(three: World) -> None:
    engine = three.engine
    submit_many(engine, "acme", 3, job_type="nodedup")
    submit_many(engine, "globex", 3)
    submit_many(engine, "initech", 3, job_type="nodedup")
    rows = claim(engine, 4, job_types=["nodedup"])
    assert [r["organization"] for r in rows] == ["acme", "initech", "acme", "initech"]


def many_organizations(engine: Engine, n: int, jobs_each: int) -> dict[str, list[str]]:
    """``n`` organizations, each with ``jobs_each`` due jobs (ids in due order)."""
    made: dict[str, list[str]] = {}
    for i in range(n):
        org = f"tenant-{i:02d}"
        engine.create_organization(org)
        made[org] = [engine.submit_job("noop", org, {"i": k},
                                       run_at=time.time() - 100 + k).id
                     for k in range(jobs_each)]
    return made


def test_one_job_per_organization_is_each_ones_first(world: World,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim of fewer jobs than there are organizations takes each organization's
    first due job, in rotation order. On PostgreSQL those jobs come locked from
    the organization walk itself: the per-organization fetch is not sent."""
    engine = world.engine
    made = many_organizations(engine, 12, 3)
    if engine.store.walk_locks_heads:
        def no_fetch(*args: Any, **kwargs: Any) -> list[RowMapping]:
            raise AssertionError("the walk's jobs were enough")
        monkeypatch.setattr(engine.store, "organization_heads", no_fetch)
    rows = claim(engine, 5)
    assert [r["organization"] for r in rows] == [f"tenant-{i:02d}" for i in range(5)]
    assert [r["id"] for r in rows] == [made[f"tenant-{i:02d}"][0] for i in range(5)]
    rows = claim(engine, 5)
    assert [r["id"] for r in rows] == [made[f"tenant-{i:02d}"][0] for i in range(5, 10)]


@contextmanager
def sent_statements(engine: Engine) -> Iterator[list[str]]:
    """The text of every statement the store sends meanwhile."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(engine.store.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.store.engine, "before_cursor_execute", record)


@contextmanager
def captured_walks(engine: Engine) -> Iterator[list[int]]:
    """The number of organizations each walk of the store returned."""
    lengths: list[int] = []
    original = engine.store.walk_around

    def walk_around(*args: Any, **kwargs: Any) -> Any:
        walk = original(*args, **kwargs)
        lengths.append(len(walk.steps))
        return walk

    engine.store.walk_around = walk_around  # type: ignore[method-assign]
    try:
        yield lengths
    finally:
        del engine.store.walk_around


def test_concurrent_claims_of_one_job_per_organization(world: World) -> None:
    """A claim holds the jobs its walk locked until it commits, and its walk stops
    once it has the heads it wants (no limits set): a concurrent claim over the
    same organizations takes the next jobs of those it holds and the first jobs of
    the others, never the same one, and nothing is left unclaimed."""
    engine = world.engine
    if not engine.store.walk_locks_heads:
        pytest.skip("row locks are PostgreSQL's (SQLite serialises writers)")
    made = many_organizations(engine, 6, 3)
    with engine.store.transaction() as first:
        mine = engine.store.claim_jobs(first, "w1", 3, 30.0, after_organization="")
        assert [r["id"] for r in mine] == [made[f"tenant-{i:02d}"][0] for i in range(3)]
        with engine.store.transaction() as second:
            second.execute(text("SET LOCAL lock_timeout = '5s'"))  # fail, never hang
            theirs = engine.store.claim_jobs(second, "w2", 6, 30.0, after_organization="")
        # The first claim locked the three heads it took and no more.
        assert [r["id"] for r in theirs] == (
            [made[f"tenant-{i:02d}"][1] for i in range(3)]
            + [made[f"tenant-{i:02d}"][0] for i in range(3, 6)])
    rest = claim(engine, 100, worker="w3")
    everything = [r["id"] for r in mine + theirs + rest]
    assert sorted(everything) == sorted(i for ids in made.values() for i in ids)


def test_walk_stops_at_the_heads_it_wants_unless_limits_may_pass_some_over(
        world: World) -> None:
    """Without limits the walk stops once it has as many due heads as the claim
    wants; with a limit set anywhere it walks its whole step bound (an
    organization at its limit is passed over after the walk)."""
    engine = world.engine
    if not engine.store.walk_locks_heads:
        pytest.skip("the stopping walk is PostgreSQL's")
    many_organizations(engine, 20, 2)
    with engine.store.transaction() as conn, captured_walks(engine) as walks:
        engine.store.claim_jobs(conn, "w1", 3, 30.0, after_organization="")
    assert walks == [3]
    engine.set_limits("tenant-19", max_running=5)
    with engine.store.transaction() as conn, captured_walks(engine) as walks:
        rows = engine.store.claim_jobs(conn, "w1", 3, 30.0, after_organization="")
    assert len(rows) == 3 and walks == [3 + 8]


def test_walk_passes_over_a_job_another_claim_holds(world: World) -> None:
    """An organization whose first due job another transaction has locked still
    counts, with its next due job."""
    engine = world.engine
    if not engine.store.walk_locks_heads:
        pytest.skip("row locks are PostgreSQL's (SQLite serialises writers)")
    made = many_organizations(engine, 3, 2)
    held = made["tenant-01"][0]
    with engine.store.transaction() as other:
        other.execute(select(jobs.c.id).where(jobs.c.id == held).with_for_update())
        with engine.store.transaction() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '5s'"))  # fail, never hang
            rows = engine.store.claim_jobs(conn, "w1", 3, 30.0)
    assert [r["id"] for r in rows] == [made["tenant-00"][0], made["tenant-01"][1],
                                       made["tenant-02"][0]]


# -- concurrency limits ----------------------------------------------------------------


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda t: (t[0], t[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_limit_two_with_four_concurrent_claimers(world: World) -> None:
    """50 jobs of one organization, limit 2, four claimers in threads each with
    its own connection: never more than 2 of them run at once, all 50 complete.
    Each run is recorded from after its claim committed to before its completion
    is written, inside the time the database counts it running."""
    engine = world.engine
    engine.set_limits("acme", max_running=2)
    ids = set(submit_many(engine, "acme", 50))
    other = set(submit_many(engine, "globex", 10))
    intervals: list[tuple[float, float]] = []
    ran: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def claimer(n: int) -> None:
        try:
            while time.monotonic() < deadline:
                rows = claim(engine, 3, worker=f"w{n}")
                mine = [r for r in rows if r["organization"] == "acme"]
                if not rows:
                    with lock:
                        if len(ran) >= len(ids):
                            return
                    time.sleep(0.005)
                    continue
                started = time.monotonic()
                time.sleep(random.uniform(0.005, 0.02))
                ended = time.monotonic()
                with lock:
                    intervals.extend((started, ended) for _ in mine)
                    ran.extend(r["id"] for r in mine)
                complete(engine, rows)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert sorted(ran) == sorted(ids)  # each exactly once
    assert max_overlap(intervals) <= 2
    assert count(engine, status="completed") == len(ids) + len(other)


def test_limit_counts_jobs_already_running(three: World) -> None:
    engine = three.engine
    engine.set_limits("acme", max_running=3)
    submit_many(engine, "acme", 10)
    submit_many(engine, "globex", 10)
    first = claim(engine, 4)
    assert [r["organization"] for r in first].count("acme") == 2
    second = claim(engine, 10)
    assert [r["organization"] for r in second].count("acme") == 1
    assert claim(engine, 10, worker="w2") == []  # acme is full, globex is done
    complete(engine, [r for r in first if r["organization"] == "acme"])
    assert [r["organization"] for r in claim(engine, 10)] == ["acme", "acme"]


def test_global_default_limit_and_override(database_url: str) -> None:
    engine = Engine(database_url, handler_modules=TEST_HANDLER_MODULES,
                    max_running_per_organization=1)
    try:
        world = World(engine)
        engine.set_limits("globex", max_running=3)
        submit_many(engine, "acme", 5)
        submit_many(engine, "globex", 5)
        rows = claim(engine, 10)
        orgs = [r["organization"] for r in rows]
        assert (orgs.count("acme"), orgs.count("globex")) == (1, 3)
        assert world.engine.get_operator_metrics()["running_by_organization"] == {
            "acme": 1, "globex": 3}
    finally:
        engine.close()


def test_limit_zero_pauses_and_raising_it_resumes(world: World) -> None:
    engine = world.engine
    engine.set_limits("acme", max_running=0)
    acme = submit_many(engine, "acme", 3)
    submit_many(engine, "globex", 2)
    assert {r["organization"] for r in claim(engine, 10)} == {"globex"}
    assert claim(engine, 10) == []
    assert count(engine, organization="acme", status="queued") == 3
    engine.set_limits("acme", max_running=2)
    rows = claim(engine, 10)
    assert len(rows) == 2 and {r["id"] for r in rows} < set(acme)
    engine.set_limits("acme", max_running=None)  # back to the default: no limit
    assert len(claim(engine, 10)) == 1


def test_per_job_type_limit(world: World) -> None:
    engine = world.engine
    engine.set_limits("acme", job_type="noop", max_running=1)
    submit_many(engine, "acme", 4)
    submit_many(engine, "acme", 4, job_type="nodedup")
    rows = claim(engine, 10)
    types = [r["job_type"] for r in rows]
    assert (types.count("noop"), types.count("nodedup")) == (1, 4)
    assert claim(engine, 10) == []


# -- pause and resume ------------------------------------------------------------------


def test_pausing_a_job_type_leaves_other_types_running(world: World) -> None:
    engine = world.engine
    paused = [engine.submit_job("noop", "acme", {"i": i}, run_at=time.time() - 10 + i).id
              for i in range(3)]
    other = submit_many(engine, "acme", 2, job_type="nodedup")
    assert engine.pause(job_type="noop") == {"organization": None, "job_type": "noop",
                                             "paused": True}
    with engine.store.read() as conn:
        assert engine.store.has_due_jobs(conn, ["noop"]) is False
    assert sorted(r["id"] for r in claim(engine, 10)) == sorted(other)
    assert claim(engine, 10) == []
    assert count(engine, job_type="noop", status="queued") == 3
    assert engine.list_limits()["paused_job_types"] == ["noop"]
    engine.resume(job_type="noop")
    assert [r["id"] for r in claim(engine, 10)] == paused  # in their order


def test_pausing_an_organization_and_one_of_its_types(three: World) -> None:
    engine = three.engine
    submit_many(engine, "acme", 2)
    submit_many(engine, "acme", 2, job_type="nodedup")
    submit_many(engine, "globex", 2)
    engine.pause(organization="acme")
    assert {r["organization"] for r in claim(engine, 10)} == {"globex"}
    engine.pause(organization="acme", job_type="noop")
    engine.resume(organization="acme")
    assert {r["job_type"] for r in claim(engine, 10)} == {"nodedup"}
    engine.resume(organization="acme", job_type="noop")
    assert [r["job_type"] for r in claim(engine, 10)] == ["noop", "noop"]
    assert engine.list_limits()["organizations"] == []  # nothing left set


def test_controls_are_system_manager_only(world: World) -> None:
    engine = world.engine
    for call in (lambda: engine.pause(organization="acme", actor=World.ADMIN),
                 lambda: engine.resume(job_type="noop", actor=World.MEMBER),
                 lambda: engine.set_limits("acme", max_running=1, actor=World.ADMIN),
                 lambda: engine.list_limits(actor=World.MEMBER),
                 lambda: engine.get_operator_metrics(actor=World.ADMIN)):
        with pytest.raises(Forbidden):
            call()
    assert engine.list_limits()["organizations"] == []
    with pytest.raises(NotFound):
        engine.pause(organization="nope", actor=World.SM)
    with pytest.raises(NotFound):
        engine.pause(job_type="nope", actor=World.SM)
    with pytest.raises(ValidationError):
        engine.pause(actor=World.SM)
    with pytest.raises(ValidationError):
        engine.set_limits("acme", max_running=-1, actor=World.SM)
    with pytest.raises(ValidationError):
        engine.set_limits("acme", job_type="noop", max_queued=3, actor=World.SM)
    assert engine.pause(organization="acme", actor=World.SM)["paused"] is True


# -- quota -------------------------------------------------------------------------------


def test_quota_exceeded_writes_nothing(world: World) -> None:
    engine = world.engine
    engine.set_limits("acme", max_queued=3)
    for _ in range(3):
        world.submit()
    before = count(engine)
    with pytest.raises(QuotaExceeded) as info:
        world.submit(actor=World.MEMBER)
    assert info.value.code == "quota_exceeded" and info.value.http_status == 429
    with pytest.raises(QuotaExceeded):
        engine.submit_jobs("noop", "acme", [{"a": 1}])
    assert count(engine) == before
    world.submit(organization="globex")  # other organizations are not affected
    complete(engine, claim(engine, 1))  # a started job frees a place
    world.submit()


def test_quota_counts_a_whole_batch(world: World) -> None:
    engine = world.engine
    engine.set_limits("acme", max_queued=5)
    submit_many(engine, "acme", 3)
    with pytest.raises(QuotaExceeded):
        submit_many(engine, "acme", 3)
    assert count(engine, organization="acme") == 3
    submit_many(engine, "acme", 2)


def test_default_quota_setting(database_url: str) -> None:
    engine = Engine(database_url, handler_modules=TEST_HANDLER_MODULES,
                    max_queued_per_organization=2)
    try:
        world = World(engine)
        world.submit()
        world.submit()
        with pytest.raises(QuotaExceeded):
            world.submit()
        engine.set_limits("acme", max_queued=10)
        world.submit()
    finally:
        engine.close()


# -- HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def api(world: World) -> Iterator[Api]:
    yield Api(world.engine)


def test_http_quota_exceeded_is_429(world: World, api: Api) -> None:
    api.engine.set_limits("acme", max_queued=1)
    body = {"job_type": "noop", "organization": "acme", "parameters": {"a": 1}}
    assert api.post("/jobs", World.MEMBER, json=body).status_code == 201
    before = count(api.engine)
    response = api.post("/jobs", World.MEMBER, json={**body, "parameters": {"a": 2}})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert count(api.engine) == before


def test_http_pause_resume_and_limits(world: World, api: Api) -> None:
    assert api.post("/pause", World.ADMIN, json={"organization": "acme"}).status_code == 403
    assert api.get("/limits", World.MEMBER).status_code == 403
    assert api.get("/operator/metrics", World.ADMIN).status_code == 403
    r = api.post("/pause", json={"job_type": "noop"})
    assert r.status_code == 200 and r.json()["paused"] is True
    r = api.call("PUT", "/organizations/acme/limits", json={"max_running": 2, "max_queued": 9})
    assert r.status_code == 200, r.text
    assert r.json() == {"organization": "acme", "job_type": None, "max_running": 2,
                        "max_queued": 9, "paused": False}
    r = api.call("PUT", "/organizations/acme/limits", json={"max_running": None})
    assert r.json()["max_running"] is None and r.json()["max_queued"] == 9
    assert api.call("PUT", "/organizations/nope/limits",
                    json={"max_running": 1}).status_code == 404
    assert api.call("PUT", "/organizations/acme/limits",
                    json={"max_running": -1}).status_code == 422
    limits = api.get("/limits").json()
    assert limits["paused_job_types"] == ["noop"]
    assert limits["organizations"][0]["max_queued"] == 9
    assert api.post("/resume", json={"job_type": "noop"}).json()["paused"] is False
    world.submit()
    claim(api.engine, 1)
    metrics = api.get("/operator/metrics").json()
    assert metrics["running_by_organization"] == {"acme": 1}


# -- schema -----------------------------------------------------------------------------------


def test_migrated_schema_matches_the_declared_one(engine: Engine) -> None:
    with engine.store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    tables = {"organization_limits", "paused_job_types"}
    mine = [d for d in diff if any(t in repr(d) for t in tables)]
    assert mine == []


def test_a_walk_past_the_last_organization_wraps_around(world: World) -> None:
    """After the last organization in name order the rotation starts again from
    the first and ends with the organization served last; every organization
    comes once per claim, with its first due job."""
    engine = world.engine
    made = many_organizations(engine, 6, 2)
    with engine.store.transaction() as conn:
        rows = engine.store.claim_jobs(conn, "w1", 6, 30.0, after_organization="tenant-03")
    order = ["tenant-04", "tenant-05", "tenant-00", "tenant-01", "tenant-02", "tenant-03"]
    assert [r["organization"] for r in rows] == order
    assert [r["id"] for r in rows] == [made[o][0] for o in order]


def test_a_wrapping_walk_is_one_statement_on_postgresql(world: World) -> None:
    """The walk, its wrap-around and the organizations' first jobs: one statement
    (a walk that reached the end used to send a second)."""
    engine = world.engine
    if not engine.store.walk_locks_heads:
        pytest.skip("the one-statement walk is PostgreSQL's")
    many_organizations(engine, 5, 2)
    with sent_statements(engine) as sent, engine.store.transaction() as conn:
        rows = engine.store.claim_jobs(conn, "w1", 5, 30.0, after_organization="tenant-02")
    assert [r["organization"] for r in rows] == [
        "tenant-03", "tenant-04", "tenant-00", "tenant-01", "tenant-02"]
    assert sum("RECURSIVE" in s for s in sent) == 1, sent
    assert not any("unnest" in s for s in sent), sent  # no per-organization fetch


def test_a_claim_of_one_job_from_each_organization_is_one_statement_on_postgresql(
        world: World) -> None:
    """When the walk locks as many first jobs as the claim wants (one from each of
    that many organizations, no limits), it claims them itself: one statement, the
    status events and the attempt written as by any claim. When it locks fewer,
    it claims nothing and the organizations' next jobs are fetched and claimed as
    before, in round-robin order."""
    engine = world.engine
    if not engine.store.walk_locks_heads:
        pytest.skip("the one-statement walk is PostgreSQL's")
    made = many_organizations(engine, 4, 3)
    with sent_statements(engine) as walk_only, engine.store.transaction() as conn:
        first = engine.store.claim_jobs(conn, "w1", 3, 30.0, after_organization="")
    with sent_statements(engine) as sent, engine.store.transaction() as conn:
        second = engine.store.claim_jobs(conn, "w2", 5, 30.0, after_organization="tenant-02")
    assert [r["id"] for r in first] == [made[f"tenant-{i:02d}"][0] for i in range(3)]
    assert [(r["status"], r["attempts"]) for r in first] == [("running", 1)] * 3
    updates = [s for s in walk_only if "UPDATE background_jobs" in s]
    assert len(updates) == 1 and "RECURSIVE" in updates[0], walk_only
    # Four organizations have a due job: fewer than five, so the walk only looks.
    assert [r["id"] for r in second] == [
        made["tenant-03"][0], made["tenant-00"][1], made["tenant-01"][1],
        made["tenant-02"][1], made["tenant-03"][1]]
    assert sum("UPDATE background_jobs" in s for s in sent) == 2, sent
    with engine.store.read() as conn:
        events = conn.execute(text(
            "SELECT job_id, status, attempt FROM job_events WHERE kind = 'status' "
            "AND status = 'running'")).all()
        states = dict(conn.execute(select(jobs.c.id, jobs.c.status)).all())
    claimed = [r["id"] for r in first + second]
    assert sorted((e.job_id, e.attempt) for e in events) == sorted((i, 1) for i in claimed)
    assert sorted(i for i, s in states.items() if s == "running") == sorted(claimed)


def test_a_walk_claims_no_more_heads_than_wanted(world: World) -> None:
    """Organizations whose first claimable job is a more urgent one not due yet
    still have a due head at the walked priority, found behind it; the walk may
    lock more heads than the claim wants then, and claims only the first ones in
    rotation order (every backend: the same jobs, and no more)."""
    engine = world.engine
    made = many_organizations(engine, 4, 1)
    for org in ("tenant-00", "tenant-01"):
        engine.submit_job("noop", org, {"later": True}, priority="critical",
                          run_at=time.time() + 3600)
    with engine.store.transaction() as conn:
        rows = engine.store.claim_jobs(conn, "w1", 2, 30.0, after_organization="")
    assert [r["id"] for r in rows] == [made["tenant-00"][0], made["tenant-01"][0]]
    assert count(engine, status="running") == 2
    rows = claim(engine, 10)
    assert [r["id"] for r in rows] == [made["tenant-02"][0], made["tenant-03"][0]]
