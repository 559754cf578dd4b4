"""Runs one workload of one peer in this process and prints a JSON object:

    python -m bench.peers.run PEER {enqueue,process} --jobs N --seconds S

PEER is one of celery, rq, dramatiq, huey-redis, huey-sqlite, procrastinate,
pgqueuer. Run it with the peers' virtualenv (``.bench-venv``); ``bench/run_all.py``
does."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

from bench.peers.common import Peer, main

PEERS = {
    "celery": ("peer_celery", "CeleryPeer"),
    "rq": ("peer_rq", "RQPeer"),
    "dramatiq": ("peer_dramatiq", "DramatiqPeer"),
    "huey-redis": ("peer_huey", "HueyPeer"),
    "huey-sqlite": ("peer_huey", "SqliteHueyPeer"),
    "procrastinate": ("peer_procrastinate", "ProcrastinatePeer"),
    "pgqueuer": ("peer_pgqueuer", "PgQueuerPeer"),
}


def load(name: str) -> Peer:
    module, cls = PEERS[name]
    peer: Peer = getattr(importlib.import_module(f"bench.peers.{module}"), cls)()
    return peer


if __name__ == "__main__":
    name = sys.argv.pop(1)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "huey-sqlite":  # read when peer_huey is imported
            os.environ["BENCH_HUEY_SQLITE"] = str(Path(tmp) / "huey.db")
        code = main(load(name))
    raise SystemExit(code)
