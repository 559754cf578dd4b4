"""Dartwing Jobs: a durable, multi-tenant background job engine.

The database is both the record and the queue (SQLite embedded, PostgreSQL for
production and many machines).
"""

from __future__ import annotations

from .config import Settings
from .domain.errors import (
    DartwingError,
    DuplicateJob,
    Forbidden,
    InvalidState,
    NotFound,
    PermanentFailure,
    RateLimited,
    Unauthorized,
    ValidationError,
)
from .engine import Engine
from .views import Job
from .worker.context import JobCanceled, JobContext

__all__ = [
    "DartwingError",
    "DuplicateJob",
    "Engine",
    "Forbidden",
    "InvalidState",
    "Job",
    "JobCanceled",
    "JobContext",
    "NotFound",
    "PermanentFailure",
    "RateLimited",
    "Settings",
    "Unauthorized",
    "ValidationError",
]
