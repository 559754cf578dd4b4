"""The worker supervisor: claims jobs, hands them to child processes, holds their
leases, enforces timeouts and cancels by killing children, and writes outcomes in
group commits.

One thread runs the loop below (children, deadlines, leases, cancels); the
``Exchanger`` thread writes outcomes and claims jobs; a third listens for
PostgreSQL notifications and merely wakes the others. Every write is fenced in SQL
by (job id, attempt, status), so a late or duplicate write changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy.engine import RowMapping

from ..domain.outcomes import Outcome, OutcomeKind
from ..engine import Engine
from ..store.base import warn_about_configuration
from .child import child_main
from .exchanger import Exchanger, in_transaction
from .pipes import frame, send_message

log = logging.getLogger("dartwing_jobs.worker")

FAILPOINT_ENV = "DARTWING_JOBS_FAILPOINT"
_UNKNOWN = object()  # a job type that could not be looked up
#: Work held ahead of the children while recent jobs were short, in seconds of
#: running them: enough to cover a group commit, small enough that a job of
#: another organization (or a more urgent one) claimed meanwhile waits little.
PREFETCH_SECONDS = 0.1
SEND_AHEAD_SECONDS = 0.02
SHORT_JOB = 0.05  # seconds: jobs shorter than this on average are prefetched
#: Seconds a job type's settings (enabled, handler) are used before they are read
#: again: a job type disabled meanwhile still starts jobs up to this long.
JOB_TYPES_TTL = 5.0
#: Bytes asked for per read of a child's pipe.
INBOX_READ = 1 << 16
#: Bytes of jobs sent ahead that a busy child may leave unread. A child reads its
#: pipe only between jobs, so a send beyond what the pipe buffers would block the
#: supervisor's loop (and its lease renewals) until the running job ends; the
#: smallest pipe buffer (8 KiB, Windows) bounds this.
AHEAD_BYTES = 6 * 1024
#: Pipe ends that are plain file descriptors (POSIX), read directly.
RAW_CONNECTION = multiprocessing.connection.Connection


def take_messages(inbox: bytearray) -> list[Any]:
    """The whole messages at the front of ``inbox`` (removed from it), framed as
    ``multiprocessing.connection.Connection.send`` frames them: a signed 4-byte
    big-endian length (-1: an 8-byte length follows), then the pickle."""
    messages: list[Any] = []
    start = 0
    while len(inbox) - start >= 4:
        (size,) = struct.unpack_from("!i", inbox, start)
        header = 4
        if size == -1:
            if len(inbox) - start < 12:
                break
            (size,) = struct.unpack_from("!Q", inbox, start + 4)
            header = 12
        end = start + header + size
        if len(inbox) < end:
            break
        messages.append(pickle.loads(inbox[start + header:end]))
        start = end
    del inbox[:start]
    return messages


@dataclass
class Slot:
    """One child process, the attempt it runs, if any, and the short jobs sent
    ahead to it, which it starts one after the other as soon as the previous one
    has been reported (so that a child never waits for the supervisor between
    two short jobs)."""

    index: int
    process: BaseProcess
    conn: Connection
    #: Cancels go here: the child's main thread reads ``conn`` only between jobs.
    control: Connection
    ready: bool = False
    job: RowMapping | None = None
    queued: deque[RowMapping] = field(default_factory=deque)
    started_mono: float = 0.0
    started_epoch: float = 0.0
    deadline: float | None = None  # hard timeout (monotonic)
    kill_at: float | None = None  # end of the cancel grace period (monotonic)
    #: Bytes read from the child's pipe and not yet a whole message.
    inbox: bytearray = field(default_factory=bytearray)
    #: Messages of jobs sent ahead that the child has not read yet, as (first
    #: job's id, size in bytes): it reads one when it starts that job.
    unread: deque[tuple[str, int]] = field(default_factory=deque)
    #: A send-ahead was refused for its size; tried again when a job starts.
    ahead_full: bool = False

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def attempt(self) -> tuple[str, int]:
        assert self.job is not None
        return self.job["id"], self.job["attempts"]


@dataclass
class WorkerOptions:
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    job_types: Sequence[str] | None = None
    poll_interval: float | None = None  # seconds between idle polls; backend default
    heartbeat_interval: float = 0.25  # progress flush and cancel checks
    shutdown_grace: float = 30.0
    claim_batch: int = 500
    #: Short jobs sent ahead to a busy child (0: one job at a time).
    child_queue: int = 8


class Supervisor:
    def __init__(self, engine: Engine, options: WorkerOptions | None = None) -> None:
        self.engine = engine
        self.store = engine.store
        self.options = options or WorkerOptions()
        self.settings = engine.settings
        self.lease = float(self.settings.lease_seconds)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        postgres = self.store.backend == "postgresql"
        self.poll_interval = self.options.poll_interval or (1.0 if postgres else 0.02)
        self._ctx = multiprocessing.get_context("spawn")
        self._slots: list[Slot] = []
        # Claimed but not yet handed to a child: short jobs are prefetched so that
        # children never wait for a commit to get their next job.
        self._buffer: deque[RowMapping] = deque()
        self._buffer_lock = threading.Lock()
        self._recent_duration: float | None = None  # moving average, seconds
        self._job_types: dict[str, RowMapping] = {}
        self._job_types_loaded = 0.0
        self._stopping = False
        self._stop_now = False
        self._stop_deadline: float | None = None
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._listener: threading.Thread | None = None
        self._listener_stop = threading.Event()
        self._last_renewal_ok = time.monotonic()
        self._db_since: float | None = None
        self._next_renewal = 0.0
        self._next_heartbeat = 0.0
        self._next_rescue = 0.0
        self._failpoint = os.environ.get(FAILPOINT_ENV, "")
        self._exchanger = Exchanger(
            self.store, self.worker_id, self.lease, self.options.job_types,
            self.poll_interval, self._want, self._claimed, self._well_fed,
        )

    @property
    def completed_count(self) -> int:
        """Outcomes written so far (any kind)."""
        return self._exchanger.written

    # -- lifecycle ---------------------------------------------------------

    def request_stop(self, immediate: bool = False) -> None:
        """First call: finish running attempts (up to the grace period). A second
        call, or ``immediate``: stop at once and give the attempts back."""
        if self._stopping or immediate:
            self._stop_now = True
        self._stopping = True
        self._wake()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %s: %s", signum, "stopping now" if self._stopping else "draining")
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        log.info("worker %s starting %d processes", self.worker_id, self.options.concurrency)
        warn_about_configuration(self.store)
        self._slots = [self._spawn(i) for i in range(self.options.concurrency)]
        if self.store.backend == "postgresql":
            self._listener = threading.Thread(target=self._listen, name="notify-listener",
                                              daemon=True)
            self._listener.start()
        self._exchanger.start()
        threading.Thread(target=self._lease_watchdog, name="lease-watchdog", daemon=True).start()
        try:
            while True:
                if self._stopping and self._shutdown_step():
                    break
                self._tick()
        finally:
            self._listener_stop.set()
            if self._listener is not None:
                # It may be claiming an announced job: wait, so that the job is in
                # the buffer given back below rather than left to its lease.
                self._listener.join(5.0)
            self._exchanger.stop()
            with self._buffer_lock:  # a claim in flight when the loop ended
                leftover = [(r["id"], r["attempts"]) for r in self._buffer]
                self._buffer.clear()
            if leftover:
                self._db(lambda conn: self.store.return_to_queue(conn, leftover))
            for slot in self._slots:
                self._stop_child(slot)
            log.info("worker %s stopped", self.worker_id)

    def _shutdown_step(self) -> bool:
        """True when the shutdown is complete."""
        now = time.monotonic()
        if self._stop_deadline is None:
            self._stop_deadline = now + self.options.shutdown_grace
            self._exchanger.stop_claiming()
        if self._buffer:  # never started: give them back at once
            with self._buffer_lock:
                buffered = [(r["id"], r["attempts"]) for r in self._buffer]
                self._buffer.clear()
            if self._db(lambda conn: self.store.return_to_queue(conn, buffered)) is None:
                log.warning("could not give back %d prefetched jobs; their leases will "
                            "expire and they will be rescued", len(buffered))
        busy = [s for s in self._slots if s.busy]
        if busy and (self._stop_now or now >= self._stop_deadline):
            returned = []
            for slot in busy:
                returned.append(slot.attempt)
                returned += [(r["id"], r["attempts"]) for r in slot.queued]
                slot.queued.clear()
                self._kill(slot)
                slot.job = None
            self._exchanger.stop()
            self._db(lambda conn: self.store.return_to_queue(conn, returned))
            return True
        if not busy:
            self._wait(0.05 if self._exchanger.pending() else 0.0)
        else:
            self._tick()
        return not busy and not self._exchanger.pending()

    # -- the loop ----------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        self._dispatch_buffer()
        self._wait(self._timeout(now))
        now = time.monotonic()
        self._enforce_deadlines(now)
        self._dispatch_buffer()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.options.heartbeat_interval
            self._heartbeat(now)
            self._refresh_job_types(now)
        if now >= self._next_rescue:
            self._next_rescue = now + max(1.0, self.lease / 3)
            self._db(lambda conn: self.engine.rescue_expired_leases(conn=conn))

    def _want(self) -> int:
        """How many jobs to claim now: one per free child, plus a prefetch while
        recent jobs were short (long jobs are not hoarded from other workers)."""
        if self._stopping:
            return 0
        free = len(self._free_slots())
        extra = self._prefetch_target()
        return max(0, min(self.options.claim_batch, free + extra - len(self._buffer)))

    def _prefetch_target(self) -> int:
        """Jobs to hold ahead of the children (0 unless recent jobs were short)."""
        return self._ahead(PREFETCH_SECONDS * len(self._slots), self.options.claim_batch)

    def _ahead(self, seconds: float, cap: int) -> int:
        """How many recent-sized jobs fill ``seconds`` (0 unless jobs are short)."""
        recent = self._recent_duration
        if recent is None or recent >= SHORT_JOB:
            return 0
        return min(cap, int(seconds / max(recent, 1e-4)))

    def _well_fed(self) -> bool:
        """Enough prefetched jobs that the children will not run dry soon."""
        ahead = len(self._buffer) + sum(len(s.queued) for s in self._slots)
        return ahead >= max(2 * len(self._slots), self._prefetch_target() // 4)

    def _claimed(self, rows: list[RowMapping]) -> None:
        """Called by the exchanger thread with freshly claimed jobs."""
        with self._buffer_lock:
            self._buffer.extend(rows)
        self._wake()

    def _dispatch_buffer(self) -> None:
        free = self._free_slots()
        while free:
            with self._buffer_lock:
                if not self._buffer:
                    return
                row = self._buffer.popleft()
            self._dispatch(free.pop(0), row)
        self._send_ahead()

    def _send_ahead(self) -> None:
        """Top up the queues of busy children while recent jobs were short; a job
        type that cannot be looked up right now stops the top-up."""
        depth = self._ahead(SEND_AHEAD_SECONDS, self.options.child_queue)
        if not depth:
            return
        for slot in self._slots:
            if (slot.job is None or slot.kill_at is not None or slot.ahead_full
                    or len(slot.queued) >= depth):
                continue
            specs = []
            while len(slot.queued) < depth:
                with self._buffer_lock:
                    if not self._buffer:
                        break
                    row = self._buffer.popleft()
                spec = self._spec(row)
                if spec is _UNKNOWN:
                    with self._buffer_lock:
                        self._buffer.appendleft(row)
                    break
                if spec is not None:
                    slot.queued.append(row)
                    specs.append(spec)
            refused = len(specs) - self._send_ahead_to(slot, specs) if specs else 0
            if refused:
                # Too big to leave unread: they wait here for a free child.
                back = [slot.queued.pop() for _ in range(refused)]
                with self._buffer_lock:
                    self._buffer.extendleft(back)
            if not self._buffer:
                return

    def _send_ahead_to(self, slot: Slot, specs: list[Any]) -> int:
        """Send jobs ahead to a busy child, as many of ``specs`` (a prefix) as keep
        the bytes it has not read within ``AHEAD_BYTES``; how many were sent."""
        room = AHEAD_BYTES - sum(size for _, size in slot.unread)
        data = frame(("run", *specs))
        count = len(specs)
        while len(data) > room and count:
            # Rare (large parameters): find the prefix that fits, one job less
            # each time, and try no more until the child starts one of them.
            slot.ahead_full = True
            count -= 1
            data = frame(("run", *specs[:count]))
        if not count:
            return 0
        slot.unread.append((specs[0]["job_id"], len(data)))
        try:
            slot.conn.send_bytes(data)
        except (OSError, EOFError):
            self._child_died(slot)
        return count

    def _timeout(self, now: float) -> float:
        candidates = [self._next_heartbeat - now]
        if self._buffer and self._free_slots():
            candidates.append(0.0)
        for slot in self._slots:
            for moment in (slot.deadline, slot.kill_at):
                if moment is not None:
                    candidates.append(moment - now)
        return max(0.0, min(candidates))

    def _wait(self, timeout: float) -> None:
        waitables: list[Any] = [self._wake_r]
        for slot in self._slots:
            waitables.append(slot.conn)
            waitables.append(slot.process.sentinel)
        for ready in wait(waitables, timeout):
            if ready is self._wake_r:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
                self._exchanger.kick()
                continue
            for slot in self._slots:
                if ready is slot.conn:
                    self._receive(slot)
                elif ready == slot.process.sentinel and not slot.process.is_alive():
                    self._child_died(slot)

    def _free_slots(self) -> list[Slot]:
        return [s for s in self._slots if s.ready and not s.busy]

    # -- claiming and dispatching ------------------------------------------

    def _dispatch(self, slot: Slot, job: RowMapping) -> None:
        spec = self._spec(job)
        if spec is _UNKNOWN:
            # The job types could not be read (the database blinked): try it again
            # later rather than condemn the job.
            with self._buffer_lock:
                self._buffer.appendleft(job)
            return
        if spec is None:
            return
        self._start(slot, job)
        try:
            send_message(slot.conn, ("run", spec))
        except (OSError, EOFError):
            self._child_died(slot)

    def _start(self, slot: Slot, job: RowMapping) -> None:
        """``job`` is now the one ``slot``'s child runs (just sent, or next in its
        queue after the previous one was reported)."""
        slot.job = job
        slot.ahead_full = False
        if slot.unread and slot.unread[0][0] == job["id"]:
            slot.unread.popleft()  # the child has read the message that held it
        slot.started_mono = time.monotonic()
        slot.started_epoch = time.time()
        slot.deadline = (
            slot.started_mono + job["timeout_seconds"] if job["timeout_seconds"] else None
        )
        slot.kill_at = None

    def _spec(self, job: RowMapping) -> Any:
        """What a child needs to run ``job``; None when the job ended here (its job
        type is disabled or gone), ``_UNKNOWN`` when job types cannot be read."""
        job_type = self._job_type(job["job_type"])
        if job_type is _UNKNOWN:
            return _UNKNOWN
        if job_type is None or not job_type["enabled"]:
            reason = "is disabled" if job_type is not None else "no longer exists"
            self._exchanger.submit(Outcome(
                job_id=job["id"], attempt=job["attempts"], kind=OutcomeKind.PERMANENT,
                worker_id=self.worker_id, started_at=time.time(), duration_ms=0.0,
                error_type="job_type_disabled",
                error_message=f"job type {job['job_type']!r} {reason}",
            ))
            return None
        return {
            "job_id": job["id"],
            "attempt": job["attempts"],
            "organization": job["organization"],
            "job_type": job["job_type"],
            "handler": job_type["handler"],
            "parameters": job["parameters"],
            "checkpoint": job["checkpoint"],
        }

    def _job_type(self, name: str) -> Any:
        """The job type's row, None if it does not exist, or ``_UNKNOWN`` when the
        database could not be asked. Read from the database here only for a name
        not known yet; the loop refreshes the known ones every JOB_TYPES_TTL
        (``_refresh_job_types``), so no job's start waits for that read."""
        if name not in self._job_types and not self._load_job_types():
            return _UNKNOWN
        return self._job_types.get(name)

    def _refresh_job_types(self, now: float) -> None:
        if self._job_types and now - self._job_types_loaded > JOB_TYPES_TTL:
            self._load_job_types()

    def _load_job_types(self) -> bool:
        """False when the database could not be asked (the cache stays)."""
        rows = self._db(lambda conn: self.store.list_job_types(conn), read=True)
        if rows is None:
            return False
        self._job_types = {r["name"]: r for r in rows}
        self._job_types_loaded = time.monotonic()
        return True

    # -- messages from children --------------------------------------------

    def _receive(self, slot: Slot) -> None:
        if not self._drain(slot, ready=True):
            self._child_died(slot)

    def _drain(self, slot: Slot, ready: bool = False) -> bool:
        """Handle every message the child has sent; False once its pipe is closed
        (what a dead child wrote before it died is still read first). ``ready``:
        the pipe was just reported readable, so one read is made without asking
        first, and whatever arrives later is the next wake-up's.

        On POSIX the pipe is read in large chunks into the slot's inbox and split
        into messages here (the framing of ``multiprocessing.connection``): one
        system call for all the reports that arrived together, where
        ``Connection.recv`` makes two per message and ``poll`` one more."""
        if not isinstance(slot.conn, RAW_CONNECTION):
            return self._drain_messages(slot)
        fd = slot.conn.fileno()
        while True:
            if not ready:
                try:
                    if not slot.conn.poll():
                        return True
                except (EOFError, OSError):
                    return False
            try:
                data = os.read(fd, INBOX_READ)
            except OSError:
                data = b""
            slot.inbox += data
            for message in take_messages(slot.inbox):
                self._handle(slot, message)
            if not data:
                return False
            if ready:
                return True

    def _drain_messages(self, slot: Slot) -> bool:
        """``_drain`` through ``Connection.recv`` (pipes that are not plain file
        descriptors, as on Windows)."""
        while True:
            try:
                if not slot.conn.poll():
                    return True
                message = slot.conn.recv()
            except (EOFError, OSError):
                return False
            self._handle(slot, message)

    def _handle(self, slot: Slot, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            slot.ready = True
        elif kind == "progress":
            _, job_id, attempt, percent, text = message
            if slot.job is not None and slot.attempt == (job_id, attempt):
                self._exchanger.progress(job_id, attempt, percent, text)
        elif kind == "done":
            _, job_id, attempt, outcome, result, error, started, duration, label = message
            if slot.job is None or slot.attempt != (job_id, attempt):
                return  # an attempt we already gave up on (timeout or cancel)
            if self._failpoint == "before_completion_write":
                os._exit(70)
            seconds = duration / 1000.0
            self._recent_duration = seconds if self._recent_duration is None else (
                0.8 * self._recent_duration + 0.2 * seconds)
            self._exchanger.submit(Outcome(
                job_id=job_id, attempt=attempt, kind=OutcomeKind(outcome),
                worker_id=label, started_at=started, duration_ms=duration, result=result,
                error_type=error["type"] if error else None,
                error_message=error["message"] if error else None,
                error_traceback=error.get("traceback") if error else None,
            ))
            self._release(slot)
            if slot.queued:
                self._start(slot, slot.queued.popleft())

    def _finish(self, slot: Slot, kind: OutcomeKind, result: Any,
                error: dict[str, Any] | None) -> None:
        assert slot.job is not None
        self._exchanger.submit(Outcome(
            job_id=slot.job["id"], attempt=slot.job["attempts"], kind=kind,
            worker_id=f"{socket.gethostname()}:{slot.process.pid}",
            started_at=slot.started_epoch,
            duration_ms=(time.monotonic() - slot.started_mono) * 1000.0,
            result=result,
            error_type=error["type"] if error else None,
            error_message=error["message"] if error else None,
        ))
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        slot.job = None
        slot.deadline = None
        slot.kill_at = None

    def _child_died(self, slot: Slot) -> None:
        if slot.process.is_alive():
            return
        self._drain(slot)  # reports it sent before it died come first
        if slot.busy:
            self._finish(slot, OutcomeKind.FAILED, None, {
                "type": "worker_lost",
                "message": f"the worker process died (exit code {slot.process.exitcode})",
            })
        self._replace(slot)

    # -- deadlines, cancels, leases ----------------------------------------

    def _enforce_deadlines(self, now: float) -> None:
        for slot in self._slots:
            if not slot.busy:
                continue
            canceled = slot.kill_at is not None and now >= slot.kill_at
            timed_out = slot.deadline is not None and now >= slot.deadline
            if canceled or timed_out:
                self._stop_attempt(slot, canceled)

    def _stop_attempt(self, slot: Slot, canceled: bool) -> None:
        """Kill the child whose attempt ran over its timeout or cancel grace. Its
        reports are read first, and again after the kill: if the attempt ended
        just in time, the child was running the next job, which is given back."""
        target = slot.attempt
        if not self._drain(slot):
            self._child_died(slot)
            return
        if not slot.busy or slot.attempt != target:
            return  # it finished in time; the next job's clock starts now
        self._kill(slot)
        self._drain(slot)
        if slot.busy and slot.attempt != target:
            assert slot.job is not None
            with self._buffer_lock:
                self._buffer.appendleft(slot.job)
            self._release(slot)
        elif slot.busy and canceled:
            self._finish(slot, OutcomeKind.CANCELED, None, {
                "type": "canceled",
                "message": "canceled; the handler did not stop within the grace period",
            })
        elif slot.busy:
            assert slot.job is not None
            self._finish(slot, OutcomeKind.FAILED, None, {
                "type": "timeout",
                "message": f"the attempt ran over its timeout of "
                           f"{slot.job['timeout_seconds']} s and was killed",
            })
        self._replace(slot)

    def _heartbeat(self, now: float) -> None:
        busy = [s for s in self._slots if s.busy]
        with self._buffer_lock:
            buffered = [(r["id"], r["attempts"]) for r in self._buffer]
        sent_ahead = {(r["id"], r["attempts"]): s for s in busy for r in s.queued}
        held = [s.attempt for s in busy] + list(sent_ahead) + buffered
        renew = now >= self._next_renewal
        if not held:
            # Nothing to renew or report: no transaction (on SQLite, no write lock).
            self._last_renewal_ok = now
            return

        def beat(conn: Any) -> tuple[dict[tuple[str, int], bool] | None,
                                     set[tuple[str, int]]]:
            if renew:
                kept = self.store.renew_leases(conn, self.worker_id, held, self.lease)
                return kept, {key for key, flag in kept.items() if flag}
            return None, self.store.cancel_requests(conn, held)

        answer = self._db(beat)
        if answer is None:
            if now - self._last_renewal_ok > self.lease * 0.6:
                self._abandon_all("database unreachable: cannot renew leases")
            return
        kept, cancels = answer
        if kept is not None:
            self._last_renewal_ok = now
            self._next_renewal = now + self.lease / 3
            lost = set(held) - set(kept)
            for slot in busy:
                if slot.busy and (slot.attempt in lost
                                  or any((r["id"], r["attempts"]) in lost for r in slot.queued)):
                    log.warning("lost the lease of a job of child %s; stopping it", slot.index)
                    self._kill(slot)
                    self._release(slot)
                    self._replace(slot)
            if lost:
                with self._buffer_lock:
                    self._buffer = deque(r for r in self._buffer
                                         if (r["id"], r["attempts"]) not in lost)
        self._cancel_buffered(cancels)
        grace = float(self.settings.cancel_grace_seconds)
        for slot in busy:
            if slot.busy and slot.attempt in cancels and slot.kill_at is None:
                slot.kill_at = now + grace
                try:
                    send_message(slot.control, ("cancel", slot.attempt[0]))
                except (OSError, EOFError):
                    self._child_died(slot)
        for key, slot in sent_ahead.items():
            # The child reports it canceled when it gets to it, without running it.
            if key in cancels and slot.busy and any(
                    (r["id"], r["attempts"]) == key for r in slot.queued):
                with contextlib.suppress(OSError, EOFError):
                    send_message(slot.control, ("cancel", key[0]))

    def _cancel_buffered(self, cancels: set[tuple[str, int]]) -> None:
        """A job canceled while still in the buffer never starts."""
        with self._buffer_lock:
            canceled = [r for r in self._buffer if (r["id"], r["attempts"]) in cancels]
            for row in canceled:
                self._buffer.remove(row)
        for row in canceled:
            self._exchanger.submit(Outcome(
                job_id=row["id"], attempt=row["attempts"], kind=OutcomeKind.CANCELED,
                worker_id=self.worker_id, started_at=time.time(), duration_ms=0.0,
                error_type="canceled", error_message="canceled before it started",
            ))

    def _abandon_all(self, reason: str) -> None:
        """Stop every attempt before its lease can expire: a rescuer may soon run
        the job elsewhere, and it must never run twice at once."""
        for slot in self._slots:
            if slot.busy:
                log.warning("%s; stopping job %s", reason, slot.attempt[0])
                self._kill(slot)
                self._release(slot)
                self._replace(slot)
        with self._buffer_lock:
            self._buffer.clear()
        # Outcomes already received stay queued: their writes are fenced, and a
        # completed job must not be rescued as lost.

    # -- child processes ---------------------------------------------------

    def _spawn(self, index: int) -> Slot:
        parent, child = self._ctx.Pipe()
        control_child, control = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=child_main,
            args=(child, control_child, self.settings.database_url,
                  self.settings.handler_prefixes),
            name=f"dartwing-jobs-child-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        control_child.close()
        return Slot(index=index, process=process, conn=parent, control=control)

    def _replace(self, slot: Slot) -> None:
        self._give_back_queued(slot)
        self._stop_child(slot, kill=True)
        fresh = self._spawn(slot.index)
        self._slots[slot.index] = fresh

    def _give_back_queued(self, slot: Slot) -> None:
        """Jobs sent ahead to a child that is being replaced never started: they
        go back to the front of the buffer, same attempt."""
        if slot.queued and time.monotonic() - self._last_renewal_ok <= self.lease * 0.6:
            # (With leases this stale, they are abandoned with the rest instead.)
            with self._buffer_lock:
                self._buffer.extendleft(reversed(slot.queued))
        slot.queued.clear()

    def _kill(self, slot: Slot) -> None:
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join(timeout=5)

    def _stop_child(self, slot: Slot, kill: bool = False) -> None:
        if not kill and slot.process.is_alive():
            with contextlib.suppress(OSError, EOFError):
                send_message(slot.conn, ("stop",))
            slot.process.join(timeout=2)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(timeout=5)
        slot.conn.close()
        slot.control.close()

    # -- database access ---------------------------------------------------

    def _db(self, work: Any, read: bool = False) -> Any:
        self._db_since = time.monotonic()
        try:
            return in_transaction(self.store, work, read)
        finally:
            self._db_since = None

    def _lease_watchdog(self) -> None:
        """The loop cannot stop attempts while it hangs in a database call (a
        network black hole: no error, no timeout). Then this thread kills the busy
        children before their leases can expire; the loop sees them die."""
        while not self._listener_stop.wait(0.1):
            if self._db_since is None or (
                    time.monotonic() - self._last_renewal_ok <= self.lease * 0.6):
                continue
            with self._buffer_lock:
                self._buffer.clear()
            for slot in list(self._slots):
                if slot.job is not None and slot.process.is_alive():
                    log.warning("database call hanging, leases not renewed; killing the "
                                "child running job %s", slot.job["id"])
                    slot.process.kill()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"1")

    def _listen(self) -> None:
        """PostgreSQL LISTEN in its own connection: a submit wakes an idle worker
        within milliseconds; polling stays as the fallback."""
        import psycopg

        from ..store.postgres import NOTIFY_CHANNEL, psycopg_url

        url = psycopg_url(self.settings.database_url)
        with self._exchanger.held_connections():  # for the idle fast claims
            while not self._listener_stop.is_set():
                try:
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")  # a constant channel name
                        while not self._listener_stop.is_set():
                            for note in conn.notifies(timeout=1.0, stop_after=1):
                                self._exchanger.announced(note.payload or None)
                except Exception as exc:  # reconnect on any failure, quietly
                    log.debug("notify listener reconnecting: %s", exc)
                    self._listener_stop.wait(1.0)
