"""The hot statements of each backend are static text: their status names and
clock must stay those of the domain and of ``clock.db_now``."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from dartwing_jobs.domain.statuses import CLAIMABLE, Status
from dartwing_jobs.store import postgres_hot, sqlite_hot
from dartwing_jobs.store.clock import db_now

CASES = [
    (postgresql.dialect(), [postgres_hot.CLAIM_IN_ORDER, postgres_hot.CLAIM_CHOSEN,
                            postgres_hot.CLAIM_NOTIFIED,
                            postgres_hot.COMPLETE_MANY, postgres_hot.CANCEL_REQUESTS,
                            postgres_hot.WALK_AROUND]),
    (sqlite.dialect(), [sqlite_hot.CLAIM_IN_ORDER, sqlite_hot.CLAIM_IN_ORDER_OF_TYPES,
                        sqlite_hot.CLAIM_CHOSEN, sqlite_hot.COMPLETE_MANY,
                        sqlite_hot.STATUS_EVENTS, sqlite_hot.COMPLETED_LOG,
                        sqlite_hot.CANCEL_REQUESTS]),
]


@pytest.mark.parametrize(("dialect", "statements"), CASES)
def test_claimable_statuses_are_the_domains(dialect: Any, statements: list[Any]) -> None:
    claims = [s for s in statements if "status IN" in str(s.text)]
    assert claims
    for stmt in claims:
        for listed in re.findall(r"status IN \(([^)]*)\)", str(stmt.text)):
            assert {v.strip().strip("'") for v in listed.split(",")} == {
                s.value for s in CLAIMABLE}


@pytest.mark.parametrize(("dialect", "statements"), CASES)
def test_status_literals_are_domain_values(dialect: Any, statements: list[Any]) -> None:
    values = {s.value for s in Status}
    found = set()
    for stmt in statements:
        found |= set(re.findall(r"status = '([a-z_]+)'", str(stmt.text)))
    assert found and found <= values


@pytest.mark.parametrize(("dialect", "statements"), CASES)
def test_clock_is_db_now(dialect: Any, statements: list[Any]) -> None:
    clock = str(db_now().compile(dialect=dialect))
    reading = "julianday(" if dialect.name == "sqlite" else "clock_timestamp()"
    for stmt in statements:
        text = str(stmt.text)
        # Every reading of the clock is the whole db_now expression.
        assert text.count(reading) == text.count(clock)
    assert any(clock in str(stmt.text) for stmt in statements)
