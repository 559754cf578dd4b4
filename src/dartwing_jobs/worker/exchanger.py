"""The supervisor's database side: group commits of finished attempts and claims
of the next jobs, while the supervisor's loop keeps handing buffered jobs to
children. Nobody waits for a commit to start the next job.

Where writers serialise on the database (SQLite's one write lock, one fsync per
transaction), one thread does both in the same transaction. Where they do not
(PostgreSQL), a writer thread group-commits outcomes and progress on its own
connection while the claim thread claims on another: the two statements that
cost the most per job run side by side instead of one after the other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import DBAPIError

from ..domain.outcomes import Outcome
from ..store.base import Store, Units

log = logging.getLogger("dartwing_jobs.worker")

PROGRESS_INTERVAL = 0.25  # seconds between two progress writes of one job
#: Group commit: while the children still have prefetched jobs to run, finished
#: attempts wait up to this long (or until GROUP_SIZE of them) so that one
#: transaction's fixed cost (round trips, commit flush) is shared by many jobs.
GROUP_DELAY = 0.02
GROUP_SIZE = 500
#: Job ids named by submit notifications, kept for a claim by id. More than this
#: between two claims means the worker is not idle: it claims fairly instead.
HINTS_CAP = 64
#: Seconds before the writer thread tries a failed group commit again.
WRITE_RETRY = 0.2


def in_transaction(store: Store | Units, work: Callable[[Any], Any], read: bool = False,
                   single: bool = False) -> Any:
    """Run ``work(conn)`` in one transaction (``single``: one statement, atomic by
    itself) of the store's pool or of a thread's ``Units``; None when the database
    failed (logged: the caller goes on and tries again later)."""
    try:
        unit = store.read() if read else store.single_statement() if single else (
            store.transaction())
        with unit as conn:
            return work(conn)
    except DBAPIError as exc:
        log.warning("database error (will retry): %s", str(exc).splitlines()[0])
        return None
    except Exception:
        # Not the database's fault (a bug, a value it refused to encode): keep the
        # thread alive and retry later rather than stop writing outcomes for good.
        log.exception("unexpected error in a worker transaction (will retry)")
        return None


class Exchanger:
    def __init__(
        self,
        store: Store,
        worker_id: str,
        lease: float,
        job_types: Sequence[str] | None,
        poll_interval: float,
        want: Callable[[], int],
        on_claimed: Callable[[list[RowMapping]], None],
        well_fed: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease = lease
        self.job_types = job_types
        self.poll_interval = poll_interval
        self._want = want
        self._on_claimed = on_claimed
        self._well_fed = well_fed
        self._first_pending: float | None = None  # when the oldest waiting outcome came
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._kick = threading.Event()
        #: Outcomes and progress wake the writer thread (the claim thread when
        #: there is no writer thread).
        self._split = store.concurrent_writers
        self._write_kick = threading.Event() if self._split else self._kick
        self._stop = threading.Event()
        self._claiming = True
        self._notified = False
        # Idle fast path: ids of jobs submitted since the last claim (from the
        # notifications' payloads), and whether that claim left the queue empty.
        self._hints: dict[str, None] = {}
        self._drained = False
        # When the database must next be asked for due jobs unprompted (the poll:
        # jobs the clock made due announce themselves to nobody).
        self._next_look = 0.0
        #: The last claim took all it asked for (more is likely waiting).
        self._last_full = False
        # Jobs this worker claimed lately: a notification that arrives after a
        # claim already took its job is no news.
        self._claimed_lately: dict[str, None] = {}
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        #: The connections of the threads that keep theirs (``held_connections``).
        self._local = threading.local()
        self.written = 0
        # Progress: the latest value per job, written at most every
        # PROGRESS_INTERVAL per job (the first one at once), always the last one.
        self._progress: dict[str, tuple[int, float, str | None]] = {}
        self._progress_written: dict[str, float] = {}

    # -- called from the supervisor's loop -----------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="exchanger", daemon=True)
        self._thread.start()
        if self._split:
            self._writer = threading.Thread(target=self._run_writer, name="outcome-writer",
                                            daemon=True)
            self._writer.start()

    def submit(self, outcome: Outcome) -> None:
        with self._lock:
            if not self._outcomes:
                self._first_pending = time.monotonic()
            self._outcomes.append(outcome)
        self._write_kick.set()
        self._kick.set()  # a slot freed: maybe claim

    def _hold_back(self, now: float) -> float | None:
        """When to write the waiting outcomes if not now (None: now). They wait
        only while the children have work buffered and no outcome is older than
        GROUP_DELAY: start latency never waits for a group, completion at most
        GROUP_DELAY longer."""
        with self._lock:
            first, count = self._first_pending, len(self._outcomes)
        if first is None or count >= GROUP_SIZE or self._stop.is_set():
            return None
        at = first + GROUP_DELAY
        return at if at > now and self._well_fed() else None

    def progress(self, job_id: str, attempt: int, percent: float, message: str | None) -> None:
        with self._lock:
            self._progress[job_id] = (attempt, percent, message)
            due = time.monotonic() - self._progress_written.get(job_id, 0.0) >= PROGRESS_INTERVAL
        # The writer thread sleeps until told (it has no poll): it must hear of a
        # value that is not due yet too, to set its timer for it.
        if due or self._split:
            self._write_kick.set()

    def _due_progress(self, now: float) -> tuple[list[tuple[str, int, float, str | None]], float]:
        """Progress values due for writing, and when the next one falls due."""
        due: list[tuple[str, int, float, str | None]] = []
        next_due = float("inf")
        with self._lock:
            for job_id, (attempt, percent, message) in list(self._progress.items()):
                at = self._progress_written.get(job_id, 0.0) + PROGRESS_INTERVAL
                if at <= now:
                    due.append((job_id, attempt, percent, message))
                    del self._progress[job_id]
                    self._progress_written[job_id] = now
                else:
                    next_due = min(next_due, at)
            if len(self._progress_written) > 10_000:  # forget jobs long finished
                cutoff = now - 60
                self._progress_written = {
                    k: v for k, v in self._progress_written.items() if v > cutoff}
        return due, next_due

    def kick(self, work_available: bool = False, job_id: str | None = None) -> None:
        """Something changed (a slot freed, a notification): look again now.
        ``work_available`` (a notification) skips the "anything due?" read;
        ``job_id`` is the job a submit notification named."""
        if work_available:
            with self._lock:
                if job_id and len(self._hints) < HINTS_CAP:
                    self._hints[job_id] = None
                else:
                    self._notified = True
        self._kick.set()

    def announced(self, job_id: str | None) -> None:
        """A notification arrived (called on the listener's thread). When this
        worker is idle (its last claim emptied the queue, nothing else announced
        and waiting, a slot free), the named job is claimed here and now, so that
        it never waits behind a group commit on the exchanger's thread; otherwise
        the exchanger is told."""
        with self._lock:
            idle = (job_id is not None and self._drained and not self._notified
                    and not self._hints and job_id not in self._claimed_lately)
        if not (idle and self._claiming and self._want() > 0):
            self.kick(work_available=True, job_id=job_id)
            return
        assert job_id is not None
        if not self._claim_hinted([job_id]):
            self.kick(work_available=True)  # left for the fair claim (or taken)

    @contextmanager
    def held_connections(self) -> Iterator[None]:
        """While this lasts, the calling thread's units of work reuse connections
        of its own (``Store.units``) instead of the pool's: the exchanger's threads
        and the notification listener, whose units follow each other all day."""
        units = self.store.units()
        self._local.units = units
        try:
            yield
        finally:
            self._local.units = None
            units.close()

    def _source(self) -> Store | Units:
        units: Units | None = getattr(self._local, "units", None)
        return units if units is not None else self.store

    def stop_claiming(self) -> None:
        self._claiming = False

    def pending(self) -> int:
        with self._lock:
            return len(self._outcomes)

    def stop(self, flush_attempts: int = 5) -> None:
        """Stop the thread, then write what is left (a few tries on errors)."""
        self._stop.set()
        self._kick.set()
        self._write_kick.set()
        for thread in (self._thread, self._writer):
            if thread is not None:
                thread.join(30)
        for i in range(flush_attempts):
            if self._exchange(claim=False) is not None or not self.pending():
                return
            time.sleep(0.2 * (i + 1))

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        with self.held_connections():
            self._claim_loop()

    def _claim_loop(self) -> None:
        next_poll = 0.0
        next_progress = float("inf")
        while not self._stop.is_set():
            wake_at = min(next_poll, next_progress)
            kicked = self._kick.wait(max(0.0, wake_at - time.monotonic()))
            self._kick.clear()
            if self._stop.is_set():
                return
            progress: list[tuple[str, int, float, str | None]] = []
            pending = 0
            if not self._split:
                progress, next_progress = self._due_progress(time.monotonic())
                hold = None if progress else self._hold_back(time.monotonic())
                if hold is not None:
                    next_poll = hold
                    continue
                pending = self.pending()
            want = self._want() if self._claiming else 0
            if not pending and not progress:
                if not want:
                    next_poll = time.monotonic() + self.poll_interval
                    continue
                if not kicked and time.monotonic() < next_poll:
                    continue
            rows = self._exchange(claim=True, want=want, progress=progress,
                                  write=not self._split)
            # A full claim suggests more is waiting: ask again without sleeping.
            full = rows is not None and bool(want) and len(rows) == want
            self._last_full = full
            next_poll = time.monotonic() if full else self._next_look

    def _run_writer(self) -> None:
        """The writer thread (``concurrent_writers``): outcomes in group commits and
        progress, on a connection of its own."""
        with self.held_connections():
            self._write_loop()

    def _write_loop(self) -> None:
        wake_at = float("inf")
        while not self._stop.is_set():
            timeout = None if wake_at == float("inf") else max(0.0, wake_at - time.monotonic())
            self._write_kick.wait(timeout)
            self._write_kick.clear()
            if self._stop.is_set():
                return  # stop() writes what is left
            progress, next_progress = self._due_progress(time.monotonic())
            hold = None if progress else self._hold_back(time.monotonic())
            if hold is not None:
                wake_at = min(hold, next_progress)
                continue
            wake_at = next_progress
            had_outcomes = bool(self.pending())
            if not had_outcomes and not progress:
                continue
            if self._exchange(claim=False, progress=progress) is None:
                wake_at = min(wake_at, time.monotonic() + WRITE_RETRY)
            elif had_outcomes:
                # Committed: a claim that counted an organization's running jobs
                # before this commit (its limit) may find room now.
                self._kick.set()

    def _exchange(
        self, claim: bool, want: int = 0,
        progress: list[tuple[str, int, float, str | None]] | None = None,
        write: bool = True,
    ) -> list[RowMapping] | None:
        """One transaction: progress, then the finished attempts (unless not
        ``write``), then the claim."""
        with self._lock:
            batch = list(self._outcomes) if write else []
            hints: list[str] = []
            notified = False
            if claim:
                hints = [h for h in self._hints if h not in self._claimed_lately]
                self._hints.clear()
                notified, self._notified = self._notified, False
        fast: list[RowMapping] = []
        if claim and want and hints:
            if self._drained and not notified and len(hints) == 1:
                fast = self._claim_hinted(hints)
                want -= len(fast)
            # Anything the fast path did not take (limits, pauses, another worker,
            # or not tried at all) is the fair claim's to look at.
            notified = notified or len(fast) < len(hints)
        now = time.monotonic()
        if (claim and want and not notified and self._drained and now < self._next_look
                and self.store.notifies_workers):
            # Nothing was announced (beyond what the fast path took) since the last
            # claim emptied the queue: a freed slot or an outcome to write is no
            # reason to look, until the poll looks for jobs the clock made due.
            want = 0
        if claim and want:
            self._next_look = now + self.poll_interval
        if (claim and want and not batch and not notified
                and not (self._split and self._last_full) and not self._due_now()):
            self._drained = True
            want = 0
        if not batch and not progress and not (claim and want):
            return fast

        def work(conn: Any) -> list[RowMapping]:
            if progress:
                self.store.write_progress(conn, progress)
            if batch:
                self.store.record_outcomes(conn, batch)
            if not (claim and want):
                return []
            return self.store.claim_jobs(conn, self.worker_id, want, self.lease, self.job_types)

        rows: list[RowMapping] | None = in_transaction(self._source(), work)
        if rows is None:
            self._drained = False
            return None
        if claim and want:
            # A short claim is not an empty queue (rows another worker had locked,
            # an organization at its limit): drained only if nothing is due now.
            self._drained = (len(rows) < want and self.store.notifies_workers
                             and self._due_now() is False)
        if batch:
            with self._lock:
                del self._outcomes[: len(batch)]
                if not self._outcomes:
                    self._first_pending = None
                self.written += len(batch)
        if rows:
            self._remember_claimed(rows)
            self._on_claimed(rows)
        return fast + rows

    def _due_now(self) -> bool | None:
        """Whether any job is due for this worker; None when the database failed."""
        due: bool | None = in_transaction(
            self._source(), lambda conn: self.store.has_due_jobs(conn, self.job_types),
            read=True)
        return due

    def _remember_claimed(self, rows: list[RowMapping]) -> None:
        with self._lock:
            self._claimed_lately.update((r["id"], None) for r in rows)
            while len(self._claimed_lately) > 4 * HINTS_CAP:
                del self._claimed_lately[next(iter(self._claimed_lately))]

    def _claim_hinted(self, job_ids: list[str]) -> list[RowMapping]:
        """The idle fast path: claim the jobs the notifications named, by id, in one
        statement and no transaction round trips, and hand them over at once."""
        rows: list[RowMapping] | None = in_transaction(
            self._source(), lambda conn: self.store.claim_notified(
                conn, self.worker_id, job_ids, self.lease, self.job_types), single=True)
        if not rows:
            return []
        self._remember_claimed(rows)
        self._on_claimed(rows)
        return rows
