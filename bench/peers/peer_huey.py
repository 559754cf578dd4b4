"""Huey on Redis (database 12, ``RedisHuey``) and on SQLite (``SqliteHuey`` on the
temporary file named by ``$BENCH_HUEY_SQLITE``; stamps still go to Redis database
13): ``huey_consumer -w 2 -k process`` with the consumer's default polling (delay
0.1 s, backoff 1.15, at most 10 s; RedisHuey blocks on the list instead). Huey has
no bulk enqueue."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from bench.peers.common import BIN, Peer, fresh_redis, redis_url, stamp
from huey import Huey, RedisHuey, SqliteHuey

DB = 12
SQLITE_ENV = "BENCH_HUEY_SQLITE"


def make_huey() -> Huey:
    path = os.environ.get(SQLITE_ENV)
    if path:
        return SqliteHuey("bench", filename=path, results=False)
    return RedisHuey("bench", url=redis_url(DB), results=False)


huey = make_huey()


@huey.task()
def noop(submitted: float) -> None:
    stamp(submitted)


class HueyPeer(Peer):
    name = "huey-redis"
    stamp_db = DB
    workers_note = "`huey_consumer -w 2 -k process`"

    @contextmanager
    def session(self) -> Iterator[None]:
        with fresh_redis(DB):
            yield

    def submit(self, submitted: float) -> None:
        noop(submitted)

    def worker_commands(self) -> list[list[str]]:
        return [[str(BIN / "huey_consumer"), "bench.peers.peer_huey.huey", "-w", "2",
                 "-k", "process", "-q"]]


class SqliteHueyPeer(HueyPeer):
    name = "huey-sqlite"
    stamp_db = 13

    @contextmanager
    def session(self) -> Iterator[None]:
        huey.flush()
        yield
        huey.flush()

    def worker_env(self) -> dict[str, str]:
        return {SQLITE_ENV: os.environ[SQLITE_ENV]}
