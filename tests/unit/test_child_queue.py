"""A worker child runs the jobs sent ahead to it one after the other, reports each
before starting the next, never starts one canceled while it waited, and hears a
cancel of the running job on its control pipe while the handler runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

import pytest

from dartwing_jobs.worker.child import CANCELS_KEPT, ChildRunner


def spec(job_id: str, handler: str, **parameters: Any) -> dict[str, Any]:
    return {"job_id": job_id, "attempt": 1, "organization": "acme", "job_type": "t",
            "handler": f"tests.handlers:{handler}", "parameters": parameters,
            "checkpoint": None}


def start_child() -> tuple[Connection, Connection, ChildRunner]:
    """A child runner on threads of this process: its job pipe, its control pipe."""
    supervisor, child = Pipe()
    control_child, control = Pipe(duplex=False)
    runner = ChildRunner(child, "sqlite://", ("tests.handlers",), control=control_child)
    thread = threading.Thread(target=runner.serve, daemon=True)
    thread.start()
    RUNNING.append((supervisor, control, thread))
    assert supervisor.recv()[0] == "ready"
    return supervisor, control, runner


RUNNING: list[tuple[Connection, Connection, threading.Thread]] = []


@pytest.fixture(autouse=True)
def stop_children() -> Iterator[None]:
    """Stop each runner before its pipes are dropped: a runner whose supervisor
    pipe closes while it serves ends its process (this one, here)."""
    yield
    while RUNNING:
        supervisor, _control, thread = RUNNING.pop()
        supervisor.send(("stop",))
        thread.join(10)
        assert not thread.is_alive()


def reports(supervisor: Connection, n: int) -> list[tuple[str, str, Any]]:
    done = []
    while len(done) < n:
        assert supervisor.poll(10)
        message = supervisor.recv()
        if message[0] == "done":
            done.append((message[1], message[3], message[5]))
    return done


def test_jobs_sent_ahead_run_in_order_and_a_canceled_one_never_starts() -> None:
    supervisor, control, _ = start_child()
    supervisor.send(("run", spec("slow", "progress_steps", steps=3, delay=0.1),
                     spec("skipped", "noop"), spec("last", "noop")))
    control.send(("cancel", "skipped"))
    done = reports(supervisor, 3)
    assert [d[0] for d in done] == ["slow", "skipped", "last"]
    assert done[0][1] == "completed"
    assert done[1][1] == "canceled"
    assert done[1][2]["message"] == "canceled before it started"
    assert done[2][1] == "completed"


def test_a_cancel_reaches_the_running_handler_through_the_control_pipe() -> None:
    """The main thread is inside the handler and reads no pipe: the watcher thread
    sets the flag the handler's ``ctx.progress`` checks."""
    supervisor, control, _ = start_child()
    supervisor.send(("run", spec("long", "cooperative"), spec("next", "noop")))
    assert supervisor.poll(10) and supervisor.recv()[0] == "progress"  # it is running
    control.send(("cancel", "long"))
    done = reports(supervisor, 2)
    assert [(d[0], d[1]) for d in done] == [("long", "canceled"), ("next", "completed")]


def test_a_cancel_of_a_finished_job_is_forgotten_in_time() -> None:
    """Cancels of jobs this child never runs (finished before the request came)
    are kept only up to a bound, oldest first out."""
    supervisor, _control, runner = start_child()
    for i in range(CANCELS_KEPT + 10):
        runner.cancel(f"gone-{i}")
    assert len(runner._canceled) == CANCELS_KEPT
    assert "gone-0" not in runner._canceled and f"gone-{CANCELS_KEPT + 9}" in runner._canceled
    supervisor.send(("run", spec("fresh", "noop")))
    assert reports(supervisor, 1) == [("fresh", "completed", None)]
