"""Operator metrics (issue 7, item 3): the Prometheus text of ``OperatorCollector``
parses with prometheus-client's own parser and its counters, gauges and histograms
match the jobs run in the test, on both backends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dartwing_jobs import Engine
from dartwing_jobs.api.prometheus import OperatorCollector
from dartwing_jobs.domain.outcomes import Outcome, OutcomeKind
from tests.conftest import TEST_HANDLER_MODULES, World

FOREVER = 1e12  # one counting period covering the whole test


def scrape(engine: Engine, **kw: Any) -> tuple[str, dict[str, dict[tuple[Any, ...], float]]]:
    """The exposition text and ``{sample name: {sorted label items: value}}``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OperatorCollector(engine, **kw))
    text = generate_latest(registry).decode()
    samples: dict[str, dict[tuple[Any, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return text, samples


def key(**labels: str) -> tuple[Any, ...]:
    return tuple(sorted(labels.items()))


def run_one(engine: Engine, job_id: str, kind: OutcomeKind | None,
            duration_ms: float = 1.0) -> None:
    """Claim the only due job (``job_id``) and, unless ``kind`` is None, finish it."""
    with engine.store.transaction() as conn:
        claimed = engine.store.claim_jobs(conn, "test-worker", 1, 30.0)
        assert [r["id"] for r in claimed] == [job_id]
        if kind is None:
            return
        row = claimed[0]
        failed = kind is not OutcomeKind.COMPLETED
        engine.store.record_outcomes(conn, [Outcome(
            job_id=job_id, attempt=row["attempts"], kind=kind, worker_id="test-worker",
            started_at=time.time(), duration_ms=duration_ms,
            error_type="boom" if failed else None, error_message="boom" if failed else None)])


@pytest.fixture
def ran(world: World) -> World:
    """Eight submissions, one at a time so that each claim takes the right job:
    a1, a2 completed (100 ms, 2 s); c1 failed once (retrying); d1 permanent
    (dead_letter); p1 pending on c1; q1 canceled; h1 queued; r1 running."""
    eng = world.engine
    a1 = world.submit()
    run_one(eng, a1.id, OutcomeKind.COMPLETED, 100.0)
    a2 = world.submit()
    run_one(eng, a2.id, OutcomeKind.COMPLETED, 2000.0)
    c1 = world.submit(priority="critical")
    run_one(eng, c1.id, OutcomeKind.FAILED)
    d1 = world.submit(job_type="nodedup", priority="low")
    run_one(eng, d1.id, OutcomeKind.PERMANENT)
    world.submit(depends_on=[c1.id])
    q1 = world.submit()
    eng.cancel_job(q1.id)
    r1 = world.submit(job_type="nodedup", priority="normal")
    run_one(eng, r1.id, None)
    world.submit(priority="high")
    return world


def test_counters_match_the_jobs_run(ran: World) -> None:
    _, s = scrape(ran.engine, counter_period_seconds=FOREVER)
    expected = {
        "dartwing_jobs_submitted_total": {
            key(job_type="noop", priority="normal"): 4,  # a1, a2, p1, q1
            key(job_type="noop", priority="critical"): 1,
            key(job_type="noop", priority="high"): 1,
            key(job_type="nodedup", priority="low"): 1,
            key(job_type="nodedup", priority="normal"): 1,
        },
        "dartwing_jobs_started_total": {
            key(job_type="noop", priority="normal"): 2,
            key(job_type="noop", priority="critical"): 1,
            key(job_type="nodedup", priority="low"): 1,
            key(job_type="nodedup", priority="normal"): 1,
        },
        "dartwing_jobs_completed_total": {key(job_type="noop", priority="normal"): 2},
        "dartwing_jobs_failed_total": {key(job_type="noop", priority="critical"): 1,
                                       key(job_type="nodedup", priority="low"): 1},
        "dartwing_jobs_retried_total": {key(job_type="noop", priority="critical"): 1},
        "dartwing_jobs_dead_lettered_total": {key(job_type="nodedup", priority="low"): 1},
        "dartwing_jobs_canceled_total": {key(job_type="noop", priority="normal"): 1},
    }
    for name, values in expected.items():
        assert s[name] == values, name
        created = s[name.replace("_total", "_created")]
        assert set(created) == set(values)


def test_gauges(ran: World) -> None:
    _, s = scrape(ran.engine, counter_period_seconds=FOREVER)
    priorities = ["critical", "high", "normal", "low"]
    depth = {key(job_type=t, priority=p): 0.0 for t in ("noop", "nodedup") for p in priorities}
    assert s["dartwing_jobs_queue_depth"] == {**depth, key(job_type="noop", priority="high"): 1}
    assert s["dartwing_jobs_running"] == {**depth,
                                          key(job_type="nodedup", priority="normal"): 1}


def test_histograms(ran: World) -> None:
    _, s = scrape(ran.engine, counter_period_seconds=FOREVER)
    normal = key(job_type="noop", priority="normal")
    assert s["dartwing_jobs_processing_seconds_count"] == {normal: 2}
    assert s["dartwing_jobs_processing_seconds_sum"][normal] == pytest.approx(2.1)
    buckets = {dict(k)["le"]: v for k, v in s["dartwing_jobs_processing_seconds_bucket"].items()}
    assert (buckets["0.05"], buckets["0.1"], buckets["1.0"], buckets["2.5"],
            buckets["+Inf"]) == (0, 1, 1, 2, 2)
    # Five first attempts started: a1, a2 (noop normal), c1, d1, r1.
    waits = s["dartwing_jobs_wait_seconds_count"]
    assert sum(waits.values()) == 5
    assert waits[normal] == 2
    assert all(v >= 0 for v in s["dartwing_jobs_wait_seconds_sum"].values())
    inf = {k: v for k, v in s["dartwing_jobs_wait_seconds_bucket"].items()
           if dict(k)["le"] == "+Inf"}
    assert sum(inf.values()) == 5


def test_a_new_period_starts_from_zero(ran: World) -> None:
    # A period of a millisecond began after every event of the test.
    _, s = scrape(ran.engine, counter_period_seconds=0.001)
    assert "dartwing_jobs_submitted_total" not in s
    assert "dartwing_jobs_processing_seconds_count" not in s
    # Gauges are the present state, whatever the period.
    assert s["dartwing_jobs_queue_depth"][key(job_type="noop", priority="high")] == 1


def test_every_process_reports_the_same(ran: World, database_url: str) -> None:
    other = Engine(database_url, handler_modules=TEST_HANDLER_MODULES)
    try:
        first, _ = scrape(ran.engine, counter_period_seconds=FOREVER)
        second, _ = scrape(other, counter_period_seconds=FOREVER)
    finally:
        other.close()
    assert first == second


@pytest.fixture
def per_org(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Stands for the setting ``metrics_per_organization = True``.
    monkeypatch.setattr(OperatorCollector, "per_organization", property(lambda self: True))
    yield


def test_organization_labels_only_when_enabled(ran: World) -> None:
    text, _ = scrape(ran.engine, counter_period_seconds=FOREVER)
    assert "organization=" not in text
    assert "acme" not in text


@pytest.mark.usefixtures("per_org")
def test_per_organization_labels(ran: World) -> None:
    ran.submit(organization="globex", priority="low")
    _, s = scrape(ran.engine, counter_period_seconds=FOREVER)
    submitted = s["dartwing_jobs_submitted_total"]
    assert submitted[key(job_type="noop", priority="normal", organization="acme")] == 4
    assert submitted[key(job_type="noop", priority="low", organization="globex")] == 1
    assert s["dartwing_jobs_queue_depth"] == {
        key(job_type="noop", priority="high", organization="acme"): 1,
        key(job_type="noop", priority="low", organization="globex"): 1,
    }


def test_empty_store_scrapes(world: World) -> None:
    text, s = scrape(world.engine)
    assert "dartwing_jobs_queue_depth" in s
    assert set(s["dartwing_jobs_queue_depth"].values()) == {0}
    assert "# TYPE dartwing_jobs_submitted_total counter" in text
