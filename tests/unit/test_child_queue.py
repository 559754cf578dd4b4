"""A worker child runs the jobs sent ahead to it one after the other, reports each
before starting the next, and never starts one canceled while it waited."""

from __future__ import annotations

import threading
from multiprocessing import Pipe
from typing import Any

from dartwing_jobs.worker.child import ChildRunner


def spec(job_id: str, handler: str, **parameters: Any) -> dict[str, Any]:
    return {"job_id": job_id, "attempt": 1, "organization": "acme", "job_type": "t",
            "handler": f"tests.handlers:{handler}", "parameters": parameters,
            "checkpoint": None}


def test_jobs_sent_ahead_run_in_order_and_a_canceled_one_never_starts() -> None:
    supervisor, child = Pipe()
    runner = ChildRunner(child, "sqlite://", ("tests.handlers",))
    threading.Thread(target=runner.serve, daemon=True).start()
    assert supervisor.recv()[0] == "ready"
    supervisor.send(("run", spec("slow", "progress_steps", steps=3, delay=0.1),
                     spec("skipped", "noop"), spec("last", "noop")))
    supervisor.send(("cancel", "skipped"))
    done = []
    while len(done) < 3:
        assert supervisor.poll(10)
        message = supervisor.recv()
        if message[0] == "done":
            done.append((message[1], message[3], message[5]))
    supervisor.send(("stop",))
    assert [d[0] for d in done] == ["slow", "skipped", "last"]
    assert done[0][1] == "completed"
    assert done[1][1] == "canceled"
    assert done[1][2]["message"] == "canceled before it started"
    assert done[2][1] == "completed"
