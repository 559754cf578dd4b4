"""Token buckets kept in the database (plan P3-003).

The state lives in ``rate_limit_buckets`` so that every API process, on every
machine, draws from one budget. Refill and take happen in a single conditional
``UPDATE`` inside the caller's transaction, timed by the database's clock, so two
processes can neither both spend the last token nor disagree about elapsed time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from .clock import db_now
from .schema import rate_limit_buckets as buckets


@dataclass(frozen=True)
class Bucket:
    """``capacity`` tokens, refilled continuously at ``per_second``."""

    key: str
    capacity: float
    per_second: float

    @classmethod
    def per_minute(cls, key: str, limit: int) -> Bucket:
        return cls(key=key, capacity=float(limit), per_second=limit / 60.0)


def _ensure(conn: Connection, bucket: Bucket, now: float) -> None:
    # A new bucket starts full. ON CONFLICT DO NOTHING keeps concurrent first
    # submissions from failing on the primary key; the loser just uses the row.
    values = {"key": bucket.key, "tokens": bucket.capacity, "updated_at": now}
    if conn.dialect.name == "postgresql":
        conn.execute(pg_insert(buckets).values(**values).on_conflict_do_nothing(
            index_elements=[buckets.c.key]))
    else:
        conn.execute(sqlite_insert(buckets).values(**values).on_conflict_do_nothing(
            index_elements=[buckets.c.key]))


def _available(bucket: Bucket, now: float) -> ColumnElement[float]:
    """Tokens in the row after refilling up to ``now``, capped at the capacity.

    ``now`` may be older than the row's ``updated_at`` when another transaction
    took the row lock first; elapsed time is then zero rather than negative.
    """
    elapsed = case((buckets.c.updated_at < now, now - buckets.c.updated_at), else_=0.0)
    refilled = buckets.c.tokens + elapsed * bucket.per_second
    return case((refilled > bucket.capacity, bucket.capacity), else_=refilled)


def take(conn: Connection, bucket_list: list[Bucket]) -> float | None:
    """Take one token from every bucket, or none at all.

    Returns ``None`` on success, or the seconds until the emptiest refusing bucket
    holds a token again. On refusal the caller must roll back its transaction:
    buckets already debited in this call are restored by that rollback, which is
    what makes a refused request write nothing. Buckets are locked in key order so
    that concurrent transactions cannot deadlock.
    """
    now = float(conn.execute(select(db_now())).scalar_one())
    refusal: float | None = None
    for bucket in sorted(bucket_list, key=lambda b: b.key):
        _ensure(conn, bucket, now)
        available = _available(bucket, now)
        newer = case((buckets.c.updated_at < now, now), else_=buckets.c.updated_at)
        taken = conn.execute(
            update(buckets)
            .where(buckets.c.key == bucket.key, available >= 1.0)
            .values(tokens=available - 1.0, updated_at=newer)
            .returning(buckets.c.tokens)
        ).first()
        if taken is not None:
            continue
        left = conn.execute(
            select(_available(bucket, now)).where(buckets.c.key == bucket.key)
        ).scalar_one()
        wait = (1.0 - float(left)) / bucket.per_second
        refusal = max(refusal or 0.0, wait)
    if refusal is None:
        return None
    # Whole milliseconds: a readable figure and never zero.
    return max(math.ceil(refusal * 1000) / 1000, 0.001)


__all__ = ["Bucket", "take"]
