"""Procrastinate on PostgreSQL (a fresh database per session): two ``procrastinate
worker`` processes at the default concurrency (1 each), LISTEN/NOTIFY on. Bulk:
``Task.batch_defer``, 500 a call. Stamps go to Redis database 15."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import procrastinate
from bench.peers.common import BIN, Peer, fresh_pg, stamp

DSN_ENV = "BENCH_PROCRASTINATE_DSN"
app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=os.environ.get(DSN_ENV, "")))


@app.task(name="noop", queue="bench")
async def noop(submitted: float) -> None:
    stamp(submitted)


class ProcrastinatePeer(Peer):
    name = "procrastinate"
    stamp_db = 15
    workers_note = "2 `procrastinate worker` processes (concurrency 1 each)"
    has_bulk = True

    @contextmanager
    def session(self) -> Iterator[None]:
        with fresh_pg("bench_procrastinate") as dsn:
            self.dsn = dsn
            self.app = procrastinate.App(
                connector=procrastinate.SyncPsycopgConnector(conninfo=dsn))
            with self.app.open():
                self.app.schema_manager.apply_schema()
                self.task = self.app.configure_task("noop", queue="bench")
                yield

    def submit(self, submitted: float) -> None:
        self.task.defer(submitted=submitted)

    def submit_bulk(self, count: int) -> None:
        for start in range(0, count, 500):
            size = min(500, count - start)
            self.task.batch_defer(*[{"submitted": 0.0}] * size)

    def worker_env(self) -> dict[str, str]:
        return {DSN_ENV: self.dsn}

    def worker_commands(self) -> list[list[str]]:
        cmd = [str(BIN / "procrastinate"), "--app", "bench.peers.peer_procrastinate.app",
               "worker", "--queues", "bench"]
        return [cmd, cmd]
