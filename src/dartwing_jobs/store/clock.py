"""The database's clock as a SQL expression.

Every due-time, lease and retry comparison is written against ``db_now()`` so that
one clock (the database server's) orders everything, whatever the clocks of the
machines running workers say. PostgreSQL uses ``clock_timestamp()`` (the real time
of the statement, not the transaction's start as ``now()`` would give).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import Double


class db_now(FunctionElement[float]):
    type = Double()
    inherit_cache = True
    name = "db_now"


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler: Any, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler: Any, **kw: Any) -> str:
    # julianday('now') has millisecond resolution; 2440587.5 is the Unix epoch.
    return "((julianday('now') - 2440587.5) * 86400.0)"
