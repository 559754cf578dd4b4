"""The worker child process: runs one attempt at a time for its supervisor.

Started with the ``spawn`` method (no fork-only tricks, no ``SIGALRM``), so the same
design runs on every OS. A child is disposable: the supervisor kills it to enforce
a timeout or a cancel and starts another.

Two pipes come from the supervisor. The main thread reads jobs from the first
itself, between jobs: a job handed over by another thread of this process waited
for that thread to wake this one (about a quarter of a millisecond of every
job's start latency, measured on a 2-core VM). Cancels come on the second, read
by a watcher thread while a handler runs; the watcher also ends the child when
the supervisor is gone, so that nobody can still run a job whose outcome no one
may write.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing import parent_process
from multiprocessing.connection import Connection, wait
from typing import Any

from ..domain.errors import DartwingError, PermanentFailure
from ..domain.outcomes import OutcomeKind
from ..domain.validation import storable_text, validate_json_result
from ..handlers import resolve_handler
from .context import JobCanceled, JobContext
from .pipes import send_message

MAX_TRACEBACK = 20_000


class _LeaseLost(Exception):
    """The attempt no longer holds its job (rescued elsewhere)."""


#: Cancel requests remembered for jobs not started yet (or already finished).
CANCELS_KEPT = 1000


def child_main(conn: Connection, control: Connection, database_url: str,
               handler_prefixes: tuple[str, ...]) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the supervisor decides
    # what happens to running attempts, not the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = parent_process()
    ChildRunner(conn, database_url, handler_prefixes, control=control,
                parent_sentinel=parent.sentinel if parent is not None else None).serve()


class ChildRunner:
    def __init__(
        self, conn: Connection, database_url: str, handler_prefixes: tuple[str, ...],
        *, control: Connection | None = None, parent_sentinel: Any = None,
    ) -> None:
        self.conn = conn
        self.control = control
        self.parent_sentinel = parent_sentinel
        self.database_url = database_url
        self.prefixes = handler_prefixes
        self.worker_label = f"{socket.gethostname()}:{os.getpid()}"
        self._send_lock = threading.Lock()
        self._pending: deque[dict[str, Any]] = deque()
        # The running job's cancel flag, and the ids asked to stop that are not
        # running (a job sent ahead and canceled before it starts never starts).
        self._cancel_lock = threading.Lock()
        self._running: tuple[str, threading.Event] | None = None
        self._canceled: dict[str, None] = {}
        self._served = False
        self._store: Any = None
        #: Handlers resolved by this child (its allowlist is fixed for its life);
        #: a failed resolution is tried again at the next run.
        self._handlers: dict[str, Callable[..., Any]] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            send_message(self.conn, message)

    def cancel(self, job_id: str) -> None:
        """Ask ``job_id`` to stop: the running handler sees it at its next
        ``ctx.raise_if_canceled()`` or ``ctx.progress()``; a job not started yet
        is reported canceled when its turn comes."""
        with self._cancel_lock:
            running = self._running
            if running is not None and running[0] == job_id:
                running[1].set()
                return
            self._canceled[job_id] = None
            while len(self._canceled) > CANCELS_KEPT:
                del self._canceled[next(iter(self._canceled))]

    def _watch(self) -> None:
        """The control pipe (cancels) and the supervisor's life."""
        assert self.control is not None
        waitables: list[Any] = [self.control]
        if self.parent_sentinel is not None:
            waitables.append(self.parent_sentinel)
        while True:
            ready = wait(waitables)
            if self.parent_sentinel is not None and self.parent_sentinel in ready:
                os._exit(0)  # the supervisor is gone: nobody may write this outcome
            try:
                message = self.control.recv()
            except (EOFError, OSError):
                if self._served:
                    return  # told to stop, and stopped: the pipe closed after that
                os._exit(0)
            if message[0] == "cancel":
                self.cancel(message[1])

    def _next_task(self) -> dict[str, Any] | None:
        """The next job to run, read from the supervisor's pipe when none is
        waiting here; None when told to stop."""
        while not self._pending:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the supervisor is gone
            if message[0] == "run":
                self._pending.extend(message[1:])
            elif message[0] == "stop":
                return None
        return self._pending.popleft()

    def serve(self) -> None:
        if self.control is not None:
            threading.Thread(target=self._watch, name="supervisor-watch", daemon=True).start()
        self.send(("ready", os.getpid()))
        while True:
            spec = self._next_task()
            if spec is None:
                self._served = True
                return
            started = time.time()
            t0 = time.perf_counter()
            event = threading.Event()
            with self._cancel_lock:
                canceled = spec["job_id"] in self._canceled
                self._canceled.pop(spec["job_id"], None)
                self._running = (spec["job_id"], event)
            outcome: tuple[OutcomeKind, Any, dict[str, Any] | None]
            if canceled:  # canceled while it waited behind another job
                outcome = (OutcomeKind.CANCELED, None,
                           _error("canceled", "canceled before it started", None))
            else:
                outcome = self._run(spec, event)
            with self._cancel_lock:
                self._running = None
            kind, result, error = outcome
            # Reported before the next job starts: the supervisor always knows
            # which job a dying child was running.
            self.send((
                "done",
                spec["job_id"],
                spec["attempt"],
                kind.value,
                result,
                error,
                started,
                (time.perf_counter() - t0) * 1000.0,
                self.worker_label,
            ))

    def _run(
        self, spec: dict[str, Any], cancel_event: threading.Event
    ) -> tuple[OutcomeKind, Any, dict[str, Any] | None]:
        handler = self._handlers.get(spec["handler"])
        if handler is None:
            try:
                handler = resolve_handler(spec["handler"], self.prefixes)
            except DartwingError as exc:
                return OutcomeKind.PERMANENT, None, _error("invalid_handler", exc.message, None)
            self._handlers[spec["handler"]] = handler
        job_id, attempt = spec["job_id"], spec["attempt"]
        ctx = JobContext(
            job_id=job_id,
            organization=spec["organization"],
            job_type=spec["job_type"],
            attempt=attempt,
            parameters=spec["parameters"],
            last_checkpoint=spec["checkpoint"],
            send_progress=lambda pct, msg: self.send((
                "progress", job_id, attempt, pct,
                None if msg is None else storable_text(str(msg), 1000))),
            save_checkpoint=lambda state: self._checkpoint(job_id, attempt, state),
            cancel_event=cancel_event,
        )
        try:
            if inspect.iscoroutinefunction(handler):
                value = asyncio.run(handler(ctx))
            else:
                value = handler(ctx)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
            return OutcomeKind.COMPLETED, validate_json_result(value), None
        except JobCanceled as exc:
            return OutcomeKind.CANCELED, None, _error("canceled", str(exc), None)
        except PermanentFailure as exc:
            return OutcomeKind.PERMANENT, None, _error(
                type(exc).__name__, str(exc), traceback.format_exc()
            )
        except DartwingError as exc:
            return OutcomeKind.FAILED, None, _error(exc.code, exc.message, traceback.format_exc())
        except BaseException as exc:  # a handler may raise anything, SystemExit included
            return OutcomeKind.FAILED, None, _error(
                type(exc).__name__, str(exc), traceback.format_exc()
            )

    def _checkpoint(self, job_id: str, attempt: int, state: Any) -> None:
        """Durable at once: written by this process on its own connection, fenced by
        the attempt like every other write."""
        from ..store import open_store

        state = validate_json_result(state)
        if self._store is None:
            self._store = open_store(self.database_url, pool_size=1)
        with self._store.transaction() as conn:
            if not self._store.write_checkpoint(conn, job_id, attempt, state):
                raise _LeaseLost(f"attempt {attempt} of job {job_id} no longer holds the job")


async def _await(value: Any) -> Any:
    return await value


def _error(kind: str, message: str, trace: str | None) -> dict[str, Any]:
    # Exception texts are the handler's: make them storable before they travel.
    return {
        "type": storable_text(kind, 64),
        "message": storable_text(message, 2000),
        "traceback": None if trace is None else storable_text(trace, -MAX_TRACEBACK),
    }
