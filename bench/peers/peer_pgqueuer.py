"""PgQueuer on PostgreSQL (a fresh database per session): two worker processes
running ``PgQueuer.run()`` (asyncpg, uvloop, the default batch size of 10).
Bulk: ``enqueue`` with lists, 500 a call. Stamps go to Redis database 14."""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import psycopg
from bench.peers.common import Peer, fresh_pg, stamp
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver, SyncPsycopgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries, SyncQueries

DSN_ENV = "BENCH_PGQUEUER_DSN"


def pack(submitted: float) -> bytes:
    return struct.pack("!d", submitted)


async def create_pgqueuer() -> PgQueuer:
    """The factory ``pgq run`` calls in each worker process."""
    conn = await asyncpg.connect(os.environ[DSN_ENV])
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        stamp(struct.unpack("!d", job.payload or pack(0.0))[0])

    return pgq


class PgQueuerPeer(Peer):
    name = "pgqueuer"
    stamp_db = 14
    workers_note = "2 processes running `PgQueuer.run()` (batch size 10)"
    has_bulk = True

    @contextmanager
    def session(self) -> Iterator[None]:
        with fresh_pg("bench_pgqueuer") as dsn:
            self.dsn = dsn
            asyncio.run(self._install())
            with psycopg.connect(dsn, autocommit=True) as conn:
                self.queries = SyncQueries(SyncPsycopgDriver(conn))
                yield

    async def _install(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    def submit(self, submitted: float) -> None:
        self.queries.enqueue("noop", pack(submitted))

    def submit_bulk(self, count: int) -> None:
        for start in range(0, count, 500):
            size = min(500, count - start)
            self.queries.enqueue(["noop"] * size, [pack(0.0)] * size, [0] * size)

    def worker_env(self) -> dict[str, str]:
        return {DSN_ENV: self.dsn}

    def worker_commands(self) -> list[list[str]]:
        # `pgq run` of this release fails on typer's log-level option, so each worker
        # runs the same PgQueuer.run() from `python -m bench.peers.peer_pgqueuer`.
        cmd = [sys.executable, "-m", "bench.peers.peer_pgqueuer"]
        return [cmd, cmd]


async def run_worker() -> None:
    pgq = await create_pgqueuer()
    await pgq.run(batch_size=10)


if __name__ == "__main__":
    import uvloop  # what `pgq run` uses

    uvloop.run(run_worker())
