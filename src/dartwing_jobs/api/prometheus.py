"""Operator metrics for Prometheus (issue 7, item 3), next to ``JobsCollector``.

Everything is computed by the database at scrape time, so every API process behind
a load balancer exposes the same values:

* counters ``dartwing_jobs_{submitted,started,completed,failed,retried,
  dead_lettered,canceled}_total`` from the status events (``job_events``):
  submitted = a job's first event; started = ``running``; completed;
  failed = an attempt that failed (``retrying`` or ``dead_letter``);
  retried = ``retrying`` (an automatic retry was scheduled); dead_lettered;
  canceled;
* histograms ``dartwing_jobs_processing_seconds`` (the execution log's duration of
  completed attempts) and ``dartwing_jobs_wait_seconds`` (submission to first
  start, database clock);
* gauges ``dartwing_jobs_queue_depth`` (due ``queued``/``retrying`` jobs) and
  ``dartwing_jobs_running``.

All are labelled by ``job_type`` and ``priority`` (``unknown`` once a job has been
deleted by retention), and by ``organization`` only when the setting
``metrics_per_organization`` is true (cardinality: one series per organization).

Counting periods. A database-derived counter cannot count forever: events and
logs are pruned by retention. Counters and histograms therefore count what
happened since the start of the current period (``counter_period_seconds``,
default one hour, aligned to the epoch on the database's clock) and expose that
start as their ``_created`` timestamp. At each period boundary they fall back to
zero, which ``rate()`` and ``increase()`` treat as the counter reset it is; only
the events between the last scrape of a period and its end are missed by those
functions. The period also bounds the cost of a scrape: the queries read one
period of events (by the ``job_events.created_at`` index, joined to jobs and logs
by primary/unique key) and the live queue (by partial indexes), never whole tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..domain.priorities import Priority
from ..engine import Engine
from ..store import stats

DEFAULT_PERIOD_SECONDS = 3600.0
PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                      60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                3600.0, 21600.0, 86400.0)

# counter name -> the event kinds (status values, or ``submitted``) it counts
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "submitted": ("Jobs submitted", (stats.SUBMITTED,)),
    "started": ("Attempts started (claimed by a worker)", ("running",)),
    "completed": ("Jobs completed", ("completed",)),
    "failed": ("Attempts failed (error, timeout, lost worker or permanent failure)",
               ("retrying", "dead_letter")),
    "retried": ("Automatic retries scheduled after a failed attempt", ("retrying",)),
    "dead_lettered": ("Jobs moved to dead_letter", ("dead_letter",)),
    "canceled": ("Jobs canceled", ("canceled",)),
}


def priority_label(value: int | None) -> str:
    if value is None:
        return "unknown"
    try:
        return Priority(value).label
    except ValueError:
        return str(value)


class OperatorCollector(Collector):
    """Register next to ``JobsCollector``: ``registry.register(OperatorCollector(engine))``."""

    def __init__(self, engine: Engine, *, counter_period_seconds: float | None = None) -> None:
        self.engine = engine
        self.period = float(counter_period_seconds or DEFAULT_PERIOD_SECONDS)

    @property
    def per_organization(self) -> bool:
        return bool(getattr(self.engine.settings, "metrics_per_organization", False))

    def _labels(self) -> list[str]:
        return ["job_type", "priority", "organization"] if self.per_organization else [
            "job_type", "priority"]

    def _values(self, job_type: str, priority: int | None, org: str | None) -> list[str]:
        values = [job_type, priority_label(priority)]
        return [*values, org or ""] if self.per_organization else values

    def collect(self) -> Iterator[Metric]:
        per_org = self.per_organization
        with self.engine.store.read() as conn:
            now = self.engine.store.now(conn)
            since = math.floor(now / self.period) * self.period
            transitions = stats.transition_counts(conn, since, per_organization=per_org)
            depth, running = stats.live_counts(conn, now, per_organization=per_org)
            processing = stats.processing_histogram(
                conn, since, PROCESSING_BUCKETS, per_organization=per_org)
            waits = stats.wait_histogram(conn, since, WAIT_BUCKETS, per_organization=per_org)
            types = [] if per_org else [
                str(t["name"]) for t in self.engine.store.list_job_types(conn)]
        labels = self._labels()
        for name, (doc, kinds) in COUNTERS.items():
            family = CounterMetricFamily(
                f"dartwing_jobs_{name}", f"{doc} since the start of the counting period",
                labels=labels)
            sums: dict[tuple[str, ...], int] = {}
            for kind, job_type, priority, org, n in transitions:
                if kind in kinds:
                    key = tuple(self._values(job_type, priority, org))
                    sums[key] = sums.get(key, 0) + n
            for key, n in sorted(sums.items()):
                family.add_metric(list(key), n, created=since)
            yield family
        yield self._gauge("dartwing_jobs_queue_depth",
                          "Due queued and retrying jobs", depth, types)
        yield self._gauge("dartwing_jobs_running", "Running jobs", running, types)
        yield self._histogram("dartwing_jobs_processing_seconds",
                              "Processing time of completed attempts", processing,
                              PROCESSING_BUCKETS)
        yield self._histogram("dartwing_jobs_wait_seconds",
                              "Wait from submission to the first start", waits,
                              WAIT_BUCKETS)

    def _gauge(self, name: str, doc: str, rows: Iterable[tuple[str, int, str | None, int]],
               job_types: Sequence[str]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=self._labels())
        values: dict[tuple[str, ...], int] = {}
        if not self.per_organization:
            # Without organizations the label set is small: report zeros too, so a
            # queue that drains shows 0 rather than vanishing.
            for job_type in job_types:
                for p in Priority:
                    values[tuple(self._values(job_type, int(p), None))] = 0
        for job_type, priority, org, n in rows:
            values[tuple(self._values(job_type, priority, org))] = n
        for key, n in sorted(values.items()):
            family.add_metric(list(key), n)
        return family

    def _histogram(self, name: str, doc: str, rows: Iterable[stats.HistogramRow],
                   bounds: Sequence[float]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, f"{doc}, in seconds, since the start of the "
                                             "counting period", labels=self._labels())
        merged: dict[tuple[str, ...], tuple[list[int], int, float]] = {}
        for job_type, priority, org, cumulative, count, total in rows:
            key = tuple(self._values(job_type, priority, org))
            if key in merged:  # e.g. two unknown priorities of one type
                old = merged[key]
                cumulative = [a + b for a, b in zip(old[0], cumulative, strict=True)]
                count, total = old[1] + count, old[2] + total
            merged[key] = (cumulative, count, total)
        for key, (cumulative, count, total) in sorted(merged.items()):
            buckets = [(_le(b), n) for b, n in zip(bounds, cumulative, strict=True)]
            family.add_metric(list(key), [*buckets, ("+Inf", count)], sum_value=total)
        return family


def _le(bound: float) -> str:
    return repr(float(bound))


__all__ = ["COUNTERS", "OperatorCollector", "priority_label"]
