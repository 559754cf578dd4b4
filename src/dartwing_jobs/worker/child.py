"""The worker child process: runs one attempt at a time for its supervisor.

Started with the ``spawn`` method (no fork-only tricks, no ``SIGALRM``), so the same
design runs on every OS. A child is disposable: the supervisor kills it to enforce
a timeout or a cancel and starts another.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
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


def child_main(conn: Connection, database_url: str, handler_prefixes: tuple[str, ...]) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the supervisor decides
    # what happens to running attempts, not the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ChildRunner(conn, database_url, handler_prefixes).serve()


class ChildRunner:
    def __init__(
        self, conn: Connection, database_url: str, handler_prefixes: tuple[str, ...]
    ) -> None:
        self.conn = conn
        self.database_url = database_url
        self.prefixes = handler_prefixes
        self.worker_label = f"{socket.gethostname()}:{os.getpid()}"
        self._send_lock = threading.Lock()
        self._tasks: queue.Queue[tuple[dict[str, Any], threading.Event] | None] = queue.Queue()
        # One cancel flag per job received and not finished: the running one and
        # those queued behind it (the supervisor sends short jobs ahead).
        self._cancels: dict[str, threading.Event] = {}
        self._store: Any = None
        #: Handlers resolved by this child (its allowlist is fixed for its life);
        #: a failed resolution is tried again at the next run.
        self._handlers: dict[str, Callable[..., Any]] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            send_message(self.conn, message)

    def _read(self) -> None:
        """Reads the supervisor's messages while the main thread runs handlers, so
        a cancel reaches a busy handler."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                # The supervisor is gone: nobody may write this attempt's outcome.
                os._exit(0)
            if message[0] == "run":
                for spec in message[1:]:
                    event = threading.Event()
                    self._cancels[spec["job_id"]] = event
                    self._tasks.put((spec, event))
            elif message[0] == "cancel":
                flag = self._cancels.get(message[1])
                if flag is not None:
                    flag.set()
            elif message[0] == "stop":
                self._tasks.put(None)
                return

    def serve(self) -> None:
        threading.Thread(target=self._read, name="supervisor-reader", daemon=True).start()
        self.send(("ready", os.getpid()))
        while True:
            task = self._tasks.get()
            if task is None:
                return
            spec, event = task
            started = time.time()
            t0 = time.perf_counter()
            outcome: tuple[OutcomeKind, Any, dict[str, Any] | None]
            if event.is_set():  # canceled while it waited behind another job
                outcome = (OutcomeKind.CANCELED, None,
                           _error("canceled", "canceled before it started", None))
            else:
                outcome = self._run(spec, event)
            kind, result, error = outcome
            self._cancels.pop(spec["job_id"], None)
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
