"""Reading the job events outbox (``job_events``) in id order, without skipping.

Ids come from a sequence, and a sequence does not commit in order: a transaction
that drew id 5 can commit after the one that drew id 6. A reader that only
remembers the highest id it has delivered would skip 5 for good. This reader
remembers the highest id it has delivered (``max_seen``) and, below it, every id
it has not seen yet (the *gaps*); each cycle it asks for the ids above
``max_seen`` and for the gaps, and delivers whatever is there, in id order.

A gap is given up only when it provably never will commit. On PostgreSQL the
proof is a transaction snapshot: right after the read that first saw the gap we
note ``xmax`` of the current snapshot (every transaction that already holds an
id below a visible one, and so already holds an xid, has an xid below it, since
events are always inserted after the transaction's first write). Once a later
snapshot's ``xmin`` reaches that value, every such transaction has ended, so one
more read finds the row if it committed; if it is not there it was rolled back
(or deleted by retention) and the gap is dropped. Until then the gap is probed
each cycle and newer events keep flowing: nothing waits for a slow transaction.

On SQLite writers are serialised, so a visible id implies every lower id has
ended; the snapshot is reported as ``(0, 0)`` and gaps (deleted rows) resolve on
the next cycle: the same code on both backends.

For one job, events are written by transactions that each lock the job's row
before they insert the event, so per job id order is commit order and a
consumer that applies events in delivered order sees each job's lifecycle in
order. ``ProgressGuard`` additionally drops progress values that would go
backwards within an attempt.

The reader is pure SQLAlchemy Core with bound parameters. PostgreSQL ``LISTEN``
on ``EVENTS_CHANNEL`` (and on the submit channel) wakes it; polling is the
fallback and SQLite's only way.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.engine import Connection, RowMapping

from ..domain.statuses import TERMINAL
from ..store.base import Store
from ..store.postgres import EVENTS_CHANNEL  # notified by PostgresStore.insert_events
from ..store.schema import job_events
from ..views import iso

log = logging.getLogger("dartwing_jobs.realtime.outbox")

#: Ids a fresh reader looks back below the current maximum for events that have
#: not committed yet.
STARTUP_LOOKBACK = 1000
#: A jump in ids larger than this is not recorded id by id (e.g. after ``setval``).
MAX_GAP_SPAN = 10_000
#: Safety valve: at most this many gaps are remembered; the oldest are given up.
MAX_GAPS = 100_000
#: At most this many gaps are probed in one read.
MAX_PROBE = 2_000
_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


def notify_events(conn: Connection) -> None:
    """``NOTIFY`` the outbox readers; delivered at commit, only if it commits.
    Call it on PostgreSQL after inserting job events (a no-op elsewhere)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_notify(EVENTS_CHANNEL, "")))


@dataclass(frozen=True)
class OutboxEvent:
    """One row of ``job_events``."""

    id: int
    job_id: str
    organization: str
    job_type: str
    kind: str
    status: str
    attempt: int
    progress: float | None
    message: str | None
    error: Any
    created_at: float

    @classmethod
    def from_row(cls, row: RowMapping) -> OutboxEvent:
        progress = row["progress"]
        return cls(
            id=int(row["id"]), job_id=str(row["job_id"]), organization=str(row["organization"]),
            job_type=str(row["job_type"]), kind=str(row["kind"]), status=str(row["status"]),
            attempt=int(row["attempt"]),
            progress=None if progress is None else float(progress),
            message=row["message"], error=row["error"], created_at=float(row["created_at"]),
        )

    @property
    def room(self) -> str:
        return room_of(self.organization)

    def socket_event(self) -> tuple[str, dict[str, Any]]:
        """The Socket.IO event name and payload (SPEC 5.4, plus ``event_id`` and,
        on progress, ``attempt``)."""
        if self.kind == "progress":
            return "job_progress", {
                "event_id": self.id, "job_id": self.job_id, "organization": self.organization,
                "job_type": self.job_type, "status": self.status, "attempt": self.attempt,
                "progress": self.progress, "message": self.message,
                "at": iso(self.created_at),
            }
        return "job_status", {
            "event_id": self.id, "job_id": self.job_id, "organization": self.organization,
            "job_type": self.job_type, "status": self.status, "attempt": self.attempt,
            "error": self.error, "at": iso(self.created_at),
        }


def room_of(organization: str) -> str:
    return f"job_progress:{organization}"


@dataclass
class _Gap:
    horizon: int | None  # xmax noted after the read that first saw the gap
    since: float  # monotonic time first seen


@dataclass
class Batch:
    """What one read found: ``events`` to deliver in this order, and the reader
    position to adopt once they are delivered (``OutboxReader.commit``)."""

    events: list[OutboxEvent]
    max_seen: int
    gaps: dict[int, _Gap]
    dropped: list[int] = field(default_factory=list)
    more: bool = False  # the read was cut at the batch size; read again at once

    @property
    def changed(self) -> bool:
        return bool(self.events or self.dropped)


class OutboxReader:
    """Reads ``job_events`` from its position. ``fetch`` then ``commit`` advance
    it (one reader thread at a time); ``delivered`` and ``replay`` may be called
    from other threads and see the last committed position."""

    def __init__(self, store: Store, *, batch_size: int = 1000) -> None:
        self.store = store
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self.max_seen = 0
        self._gaps: dict[int, _Gap] = {}
        self._ids_reused = store.engine.dialect.name == "sqlite"  # rowids after emptying
        self._started = False

    # -- position ----------------------------------------------------------

    @property
    def pending_gaps(self) -> list[int]:
        with self._lock:
            return sorted(self._gaps)

    def start_at_end(self) -> None:
        """Start after the newest event; ids just below it that have not
        committed yet are remembered as gaps, so they are delivered when they do."""
        with self.store.read() as conn:
            top = conn.execute(select(func.max(job_events.c.id))).scalar()
            top_id = int(top) if top is not None else 0
            present = set(conn.execute(
                select(job_events.c.id).where(job_events.c.id > top_id - STARTUP_LOOKBACK)
            ).scalars().all())
            _xmin, xmax = self._snapshot(conn)
        now = time.monotonic()
        gaps = {i: _Gap(xmax, now) for i in range(max(1, top_id - STARTUP_LOOKBACK + 1), top_id)
                if i not in present}
        with self._lock:
            self.max_seen = top_id
            self._gaps = gaps
            self._started = True

    def start_at(self, position: int) -> None:
        """Start after event id ``position`` (events above it are delivered)."""
        with self._lock:
            self.max_seen = position
            self._gaps = {}
            self._started = True

    def delivered(self, event_id: int) -> bool:
        """Whether ``event_id`` is at or behind the committed position."""
        with self._lock:
            return event_id <= self.max_seen and event_id not in self._gaps

    # -- reading -----------------------------------------------------------

    def _snapshot(self, conn: Connection) -> tuple[int, int]:
        if conn.dialect.name != "postgresql":
            return 0, 0
        snap = func.pg_current_snapshot()
        row = conn.execute(select(cast(func.pg_snapshot_xmin(snap), String),
                                  cast(func.pg_snapshot_xmax(snap), String))).one()
        return int(row[0]), int(row[1])

    def fetch(self) -> Batch:
        """Read what is new since the committed position (does not move it)."""
        if not self._started:
            self.start_at_end()
        with self._lock:
            max_seen = self.max_seen
            gaps = dict(self._gaps)
        with self.store.read() as conn:
            xmin, _ = self._snapshot(conn)
            if self._ids_reused and max_seen:
                top = conn.execute(select(func.max(job_events.c.id))).scalar()
                if top is not None and int(top) < max_seen:
                    # SQLite reuses rowids once the table was emptied (retention):
                    # everything there now is new.
                    log.info("job_events ids restarted below %d; reading from 0", max_seen)
                    max_seen, gaps = 0, {}
            final = {i for i, g in gaps.items() if g.horizon is not None and xmin >= g.horizon}
            probe = sorted(gaps)[:MAX_PROBE]
            cond = job_events.c.id > max_seen
            if probe:
                cond = or_(cond, job_events.c.id.in_(probe))
            rows = conn.execute(
                select(job_events).where(cond).order_by(job_events.c.id).limit(self.batch_size)
            ).mappings().all()
            _, xmax = self._snapshot(conn)
        events = [OutboxEvent.from_row(r) for r in rows]
        more = len(rows) >= self.batch_size
        now = time.monotonic()
        new_max = max_seen
        for ev in events:
            if ev.id in gaps:
                del gaps[ev.id]
            elif ev.id > new_max:
                if ev.id - new_max - 1 <= MAX_GAP_SPAN:
                    for missing in range(new_max + 1, ev.id):
                        gaps[missing] = _Gap(None, now)
                else:
                    log.warning("job_events ids jumped from %d to %d; not tracking the gap",
                                new_max, ev.id)
                new_max = ev.id
        dropped: list[int] = []
        # A gap that was final before this read and is still missing never commits.
        # (When the read was cut short, only gaps below its last row were probed.)
        probed = set(probe) if not more else {i for i in probe if events and i < events[-1].id}
        for i in sorted(final & probed):
            if i in gaps:
                del gaps[i]
                dropped.append(i)
        for gap in gaps.values():
            if gap.horizon is None:
                gap.horizon = xmax
        if len(gaps) > MAX_GAPS:
            for i in sorted(gaps, key=lambda k: gaps[k].since)[: len(gaps) - MAX_GAPS]:
                log.warning("giving up on job event id %d (too many open gaps)", i)
                del gaps[i]
                dropped.append(i)
        return Batch(events=events, max_seen=new_max, gaps=gaps, dropped=dropped, more=more)

    def commit(self, batch: Batch) -> None:
        """Adopt the position of a delivered batch."""
        with self._lock:
            self.max_seen = batch.max_seen
            self._gaps = batch.gaps

    def poll(self) -> list[OutboxEvent]:
        """``fetch`` and ``commit`` in one (for callers that deliver synchronously)."""
        batch = self.fetch()
        self.commit(batch)
        return batch.events

    def replay(self, organization: str, since: int, *, page: int = 1000,
               limit: int | None = None) -> list[OutboxEvent]:
        """Events of ``organization`` after id ``since`` that this reader has
        already delivered, in id order. Together with what ``fetch`` delivers
        after this call it is every event after ``since``, each once, provided
        no ``commit`` happens while it runs (the caller holds that off)."""
        with self._lock:
            max_seen = self.max_seen
            gaps = set(self._gaps)
        out: list[OutboxEvent] = []
        position = since
        with self.store.read() as conn:
            while position < max_seen:
                rows = conn.execute(
                    select(job_events)
                    .where(job_events.c.organization == organization,
                           job_events.c.id > position, job_events.c.id <= max_seen)
                    .order_by(job_events.c.id).limit(page)
                ).mappings().all()
                if not rows:
                    break
                out.extend(OutboxEvent.from_row(r) for r in rows if int(r["id"]) not in gaps)
                position = int(rows[-1]["id"])
                if limit is not None and len(out) >= limit:
                    return out[:limit]
        return out


class ProgressGuard:
    """Per job: progress never goes backwards within an attempt, and progress of
    an older attempt (or after the attempt ended) is dropped. Status events
    always pass. Bounded: the least recently seen jobs are forgotten."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._last: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def admit(self, event: OutboxEvent) -> bool:
        last = self._last.get(event.job_id)
        if event.kind != "progress":
            if event.status in _TERMINAL_VALUES:
                self._remember(event.job_id, (event.attempt, math.inf))
            elif last is None or event.attempt > last[0]:
                self._remember(event.job_id, (event.attempt, -math.inf))
            return True
        value = event.progress if event.progress is not None else -math.inf
        if last is not None and (event.attempt < last[0]
                                 or (event.attempt == last[0] and value < last[1])):
            return False
        self._remember(event.job_id, (event.attempt, value))
        return True

    def _remember(self, job_id: str, state: tuple[int, float]) -> None:
        self._last[job_id] = state
        self._last.move_to_end(job_id)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)

    def filter(self, events: Iterable[OutboxEvent]) -> list[OutboxEvent]:
        return [e for e in events if self.admit(e)]


class Waker:
    """Wakes a reader: ``LISTEN`` on PostgreSQL in its own thread and connection
    (reconnecting quietly), and ``wait(timeout)`` as the polling fallback."""

    def __init__(self, store: Store, channels: Sequence[str] = ()) -> None:
        self.store = store
        self.channels = list(channels)
        self._event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> None:
        if self.store.engine.dialect.name != "postgresql" or not self.channels:
            return
        self._thread = threading.Thread(target=self._listen, name="outbox-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def _listen(self) -> None:
        import psycopg
        from psycopg import sql

        from ..store.postgres import psycopg_url

        while not self._stop.is_set():
            try:
                with psycopg.connect(psycopg_url(self.store.url), autocommit=True) as conn:
                    for channel in self.channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.listening.set()
                    self._event.set()  # anything committed while we were away
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._event.set()
            except Exception as exc:  # reconnect on any failure
                log.debug("outbox listener reconnecting: %s", exc)
            finally:
                self.listening.clear()
            self._stop.wait(1.0)


def default_channels() -> list[str]:
    from ..store.postgres import NOTIFY_CHANNEL

    return [EVENTS_CHANNEL, NOTIFY_CHANNEL]

