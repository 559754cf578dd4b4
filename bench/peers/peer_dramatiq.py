"""Dramatiq on Redis (database 11): ``dramatiq --processes 2 --threads 8`` (its
default thread count; ``$BENCH_DRAMATIQ_THREADS`` changes it).
Dramatiq has no bulk enqueue (a group sends its messages one by one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
from bench.peers.common import BIN, Peer, fresh_redis, redis_url, stamp
from dramatiq.brokers.redis import RedisBroker

DB = 11
THREADS = os.environ.get("BENCH_DRAMATIQ_THREADS", "8")  # dramatiq's default
broker = RedisBroker(url=redis_url(DB))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(submitted: float) -> None:
    stamp(submitted)


class DramatiqPeer(Peer):
    name = "dramatiq"
    stamp_db = DB
    workers_note = f"`dramatiq --processes 2 --threads {THREADS}`"

    @contextmanager
    def session(self) -> Iterator[None]:
        with fresh_redis(DB):
            yield

    def submit(self, submitted: float) -> None:
        noop.send(submitted)

    def worker_commands(self) -> list[list[str]]:
        return [[str(BIN / "dramatiq"), "bench.peers.peer_dramatiq", "--processes", "2",
                 "--threads", THREADS, "--queues", "bench"]]

