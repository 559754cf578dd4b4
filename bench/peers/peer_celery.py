"""Celery on Redis (database 9): ``celery worker --pool prefork --concurrency 2``,
no result backend, gossip, mingle and heartbeat off. Celery has no bulk enqueue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bench.peers.common import BIN, Peer, fresh_redis, redis_url, stamp
from celery import Celery

DB = 9
app = Celery("bench_celery", broker=redis_url(DB))
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True, task_default_queue="bench")


@app.task(name="noop")
def noop(submitted: float) -> None:
    stamp(submitted)


class CeleryPeer(Peer):
    name = "celery"
    stamp_db = DB
    workers_note = "1 worker, prefork pool of 2 processes"

    @contextmanager
    def session(self) -> Iterator[None]:
        with fresh_redis(DB):
            yield

    def submit(self, submitted: float) -> None:
        noop.delay(submitted)

    def worker_commands(self) -> list[list[str]]:
        return [[str(BIN / "celery"), "-A", "bench.peers.peer_celery", "worker",
                 "--pool", "prefork", "--concurrency", "2", "-Q", "bench", "--loglevel",
                 "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]]

