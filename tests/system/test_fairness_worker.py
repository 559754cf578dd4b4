"""Fair claiming and concurrency limits with real ``python -m dartwing_jobs.worker``
processes (issue 10), on SQLite and PostgreSQL: the start order and the overlap
of runs come from the ``ledger`` the handler writes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from .conftest import Workers, check_invariants, register, wait_terminal

pytestmark = pytest.mark.system


def ledger_runs(db: Any) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(text(
            "SELECT l.job_id, l.started, l.ended, j.organization FROM ledger l "
            "JOIN background_jobs j ON j.id = l.job_id ORDER BY l.started, l.id"
        )).mappings())


def test_worker_starts_organizations_round_robin(world: Any, ledger_db: Any,
                                                 workers: Workers) -> None:
    engine = world.engine
    engine.create_organization("initech")
    register(engine, "rec", "record_beat")
    ids: list[str] = []
    for org in ("acme", "globex", "initech"):  # acme's jobs are all submitted first
        ids += [j.id for j in engine.submit_jobs(
            "rec", org, [{"n": uuid.uuid4().hex} for _ in range(5)])]
    workers.start(concurrency=1)
    wait_terminal(ledger_db, ids, 60)
    order = [r["organization"] for r in ledger_runs(ledger_db)]
    assert order == ["acme", "globex", "initech"] * 5, order
    check_invariants(ledger_db, ids)


def test_limit_two_across_four_worker_slots(world: Any, ledger_db: Any,
                                            workers: Workers) -> None:
    """Two worker processes with two children each (four claimers of slots);
    acme limited to 2: never more than 2 of its runs overlap; all 50 complete."""
    engine = world.engine
    register(engine, "rec", "record_beat")
    engine.set_limits("acme", max_running=2)
    ids = [j.id for j in engine.submit_jobs(
        "rec", "acme", [{"n": uuid.uuid4().hex, "sleep": 0.05, "beat": 0.02}
                        for _ in range(50)])]
    workers.start(concurrency=2)
    workers.start(concurrency=2)
    wait_terminal(ledger_db, ids, 120)
    runs = ledger_runs(ledger_db)
    events = sorted([(r["started"], 1) for r in runs] + [(r["ended"], -1) for r in runs],
                    key=lambda t: (t[0], t[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2, peak
    assert peak == 2  # the limit is used, not just respected
    check_invariants(ledger_db, ids)
