"""The hot PostgreSQL statements are static text: their status names and clock
must stay those of the domain and of ``clock.db_now``."""

from __future__ import annotations

import re

from sqlalchemy.dialects import postgresql

from dartwing_jobs.domain.statuses import CLAIMABLE, Status
from dartwing_jobs.store import postgres_hot as hot
from dartwing_jobs.store.clock import db_now

STATEMENTS = [hot.CLAIM_IN_ORDER, hot.CLAIM_CHOSEN, hot.COMPLETE_MANY]


def test_claimable_statuses_are_the_domains() -> None:
    text = str(hot.CLAIM_IN_ORDER.text)
    listed = re.search(r"status IN \(([^)]*)\)", text)
    assert listed is not None
    assert {v.strip().strip("'") for v in listed.group(1).split(",")} == {
        s.value for s in CLAIMABLE}


def test_status_literals_are_domain_values() -> None:
    values = {s.value for s in Status}
    for stmt in STATEMENTS:
        for literal in re.findall(r"status = '([a-z_]+)'", str(stmt.text)):
            assert literal in values


def test_clock_is_db_now() -> None:
    clock = str(db_now().compile(dialect=postgresql.dialect()))
    for stmt in STATEMENTS:
        assert clock in str(stmt.text)
        assert "now()" not in str(stmt.text).replace("clock.now", "")
