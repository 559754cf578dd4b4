"""Per-organization metrics (SPEC 5.5): the one implementation behind
``Engine.get_metrics``, ``GET /api/v1/metrics`` and ``dartwing-jobs metrics``.

Access is the read rule of SPEC 2: active members of the organization and System
Managers. Everyone else gets the same ``Forbidden`` whether the organization
exists or not (SPEC 4.7), and nothing is queried for them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .domain.errors import NotFound, ValidationError
from .store import metrics as queries

if TYPE_CHECKING:
    from .engine import Engine

MAX_WINDOW_HOURS = 24 * 366
ORGANIZATION_NOT_FOUND = "organization not found"


def validate_window_hours(value: object) -> float:
    """A positive, finite number of hours, at most a (leap) year."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("window_hours must be a number", field="window_hours")
    hours = float(value)
    if not math.isfinite(hours) or hours <= 0 or hours > MAX_WINDOW_HOURS:
        raise ValidationError(
            f"window_hours must be greater than 0 and at most {MAX_WINDOW_HOURS}",
            field="window_hours",
        )
    return hours


def get_metrics(
    engine: Engine, organization: str, window_hours: float = 24, actor: str | None = None
) -> dict[str, Any]:
    """``{organization, window_hours, jobs_by_status, queue_depth_by_priority,
    processing_time, failure_rate}`` for one organization.

    ``jobs_by_status`` and ``queue_depth_by_priority`` are the present state (every
    status and priority present, zeros included; depth counts ``queued`` and
    ``retrying`` jobs that are due now). ``processing_time`` (completed attempts)
    and ``failure_rate`` (all finished attempts) cover the attempts that finished in
    the last ``window_hours`` by the database's clock; every registered job type is
    present, with ``count`` 0 and null figures, or ``rate`` 0, when it had none.
    See ``store/metrics.py`` for the percentile definition.
    """
    hours = validate_window_hours(window_hours)
    if not isinstance(organization, str):
        raise ValidationError("organization must be a string", field="organization")
    with engine.store.read() as conn:
        principal = engine._principal(conn, actor)
        principal.require_read(organization)
        if principal.sees_everything and (
            "\x00" in organization  # no stored name has one; PostgreSQL refuses NUL
            or not engine.store.organization_exists(conn, organization)
        ):
            # Only those who may see every organization learn that one is missing.
            raise NotFound(ORGANIZATION_NOT_FOUND)
        now = queries.database_now(conn)
        since = now - hours * 3600.0
        types = queries.job_type_names(conn)
        return {
            "organization": organization,
            "window_hours": hours,
            "jobs_by_status": queries.jobs_by_status(conn, organization),
            "queue_depth_by_priority": queries.queue_depth_by_priority(conn, organization, now),
            "processing_time": queries.processing_time(conn, organization, since, types),
            "failure_rate": queries.failure_rate(conn, organization, since, types),
        }


__all__ = ["MAX_WINDOW_HOURS", "get_metrics", "validate_window_hours"]
