"""The supervisor's database side: one thread that group-commits finished attempts
and claims the next jobs in the same transaction, while the supervisor's loop keeps
handing buffered jobs to children. Nobody waits for a commit to start the next job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import DBAPIError

from ..domain.outcomes import Outcome
from ..store.base import Store

log = logging.getLogger("dartwing_jobs.worker")


def in_transaction(store: Store, work: Callable[[Any], Any], read: bool = False) -> Any:
    """Run ``work(conn)`` in one transaction; None when the database failed (logged:
    the caller goes on and tries again later)."""
    try:
        with store.read() if read else store.transaction() as conn:
            return work(conn)
    except DBAPIError as exc:
        log.warning("database error (will retry): %s", str(exc).splitlines()[0])
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
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease = lease
        self.job_types = job_types
        self.poll_interval = poll_interval
        self._want = want
        self._on_claimed = on_claimed
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._claiming = True
        self._notified = False
        self._thread: threading.Thread | None = None
        self.written = 0

    # -- called from the supervisor's loop -----------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="exchanger", daemon=True)
        self._thread.start()

    def submit(self, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes.append(outcome)
        self._kick.set()

    def kick(self, work_available: bool = False) -> None:
        """Something changed (a slot freed, a notification): look again now.
        ``work_available`` (a submit notification) skips the "anything due?" read."""
        if work_available:
            self._notified = True
        self._kick.set()

    def stop_claiming(self) -> None:
        self._claiming = False

    def pending(self) -> int:
        with self._lock:
            return len(self._outcomes)

    def drop_pending(self) -> None:
        with self._lock:
            self._outcomes.clear()

    def stop(self, flush_attempts: int = 5) -> None:
        """Stop the thread, then write what is left (a few tries on errors)."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(30)
        for i in range(flush_attempts):
            if self._exchange(claim=False) is not None or not self.pending():
                return
            time.sleep(0.2 * (i + 1))

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            kicked = self._kick.wait(max(0.0, next_poll - time.monotonic()))
            self._kick.clear()
            if self._stop.is_set():
                return
            want = self._want() if self._claiming else 0
            if not self.pending():
                if not want:
                    next_poll = time.monotonic() + self.poll_interval
                    continue
                if not kicked and time.monotonic() < next_poll:
                    continue
            rows = self._exchange(claim=True, want=want)
            # A full claim suggests more is waiting: ask again without sleeping.
            full = rows is not None and bool(want) and len(rows) == want
            next_poll = time.monotonic() + (0.0 if full else self.poll_interval)

    def _exchange(self, claim: bool, want: int = 0) -> list[RowMapping] | None:
        with self._lock:
            batch = list(self._outcomes)
        if not batch and not (claim and want):
            return []
        notified, self._notified = self._notified, False
        if not batch and not notified and not in_transaction(
            self.store, lambda conn: self.store.has_due_jobs(conn, self.job_types), read=True
        ):
            return []

        def work(conn: Any) -> list[RowMapping]:
            if batch:
                self.store.record_outcomes(conn, batch)
            if not (claim and want):
                return []
            return self.store.claim_jobs(conn, self.worker_id, want, self.lease, self.job_types)

        rows: list[RowMapping] | None = in_transaction(self.store, work)
        if rows is None:
            return None
        with self._lock:
            del self._outcomes[: len(batch)]
        self.written += len(batch)
        if rows:
            self._on_claimed(rows)
        return rows
