"""RQ on Redis (database 10): two ``rq worker`` processes, each forking a work horse
per job (RQ's default worker class). Bulk: ``Queue.enqueue_many`` in a pipeline."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from bench.peers.common import BIN, Peer, fresh_redis, redis_url, stamp
from redis import Redis
from rq import Queue

DB = 10


def noop(submitted: float) -> None:
    # The work horse exits right after the job: push at once, and name the worker
    # process (the horse's parent), not the horse.
    stamp(submitted, sync=True, worker=os.getppid())


class RQPeer(Peer):
    name = "rq"
    stamp_db = DB
    workers_note = "2 `rq worker` processes (fork per job, job module preloaded with -c)"
    has_bulk = True

    @contextmanager
    def session(self) -> Iterator[None]:
        with fresh_redis(DB):
            self.conn = Redis.from_url(redis_url(DB))
            self.queue = Queue("bench", connection=self.conn)
            yield
            self.conn.close()

    def submit(self, submitted: float) -> None:
        self.queue.enqueue(noop, submitted)

    def submit_bulk(self, count: int) -> None:
        for start in range(0, count, 500):
            size = min(500, count - start)
            with self.conn.pipeline() as pipe:
                self.queue.enqueue_many(
                    [Queue.prepare_data(noop, (0.0,)) for _ in range(size)], pipeline=pipe)
                pipe.execute()

    def worker_commands(self) -> list[list[str]]:
        cmd = [str(BIN / "rq"), "worker", "--url", redis_url(DB), "--quiet",
               "--disable-job-desc-logging", "-c", "bench.peers.peer_rq", "bench"]
        return [cmd, cmd]

