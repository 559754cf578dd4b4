"""Periodic job schedules: ``engine.schedules``.

A schedule names a cron expression (croniter syntax, UTC; five fields, or six
with seconds last), a job type, an organization and parameters. The scheduler
fires each tick exactly once across all schedulers (``scheduler/periodic.py``).
Managing schedules needs the System Manager role (``actor=None`` is trusted
in-process code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from croniter import croniter
from sqlalchemy.engine import Connection, RowMapping

from .access import resolve_principal
from .domain.errors import Conflict, NotFound, ValidationError
from .domain.validation import validate_name, validate_organization_name, validate_parameters
from .store import maintenance
from .views import iso

if TYPE_CHECKING:
    from .engine import Engine

MAX_CRON_LENGTH = 120


def validate_cron(expr: Any) -> str:
    if not isinstance(expr, str) or not expr.strip() or len(expr) > MAX_CRON_LENGTH:
        raise ValidationError(f"cron must be a non-empty string of at most {MAX_CRON_LENGTH} "
                              "characters", field="cron")
    normalised: str = " ".join(expr.split())
    if len(normalised.split(" ")) not in (5, 6) or not croniter.is_valid(normalised):
        raise ValidationError(
            f"invalid cron expression {normalised!r}: five fields (minute hour day month "
            "weekday), or six with seconds last", field="cron")
    return normalised


def schedule_dict(row: RowMapping, now: float) -> dict[str, Any]:
    """The public shape; ``now`` (the database clock) dates ``next_fire_at``."""
    from .scheduler.periodic import next_tick

    try:
        upcoming: str | None = iso(next_tick(row["cron"], now))
    except (ValueError, KeyError):
        upcoming = None
    return {
        "name": row["name"],
        "cron": row["cron"],
        "job_type": row["job_type"],
        "organization": row["organization"],
        "parameters": row["parameters"],
        "enabled": bool(row["enabled"]),
        "created_at": iso(row["created_at"]),
        "last_fired_at": iso(row["last_fired_at"]),
        "next_fire_at": upcoming if row["enabled"] else None,
    }


class Schedules:
    """``add``, ``list``, ``get``, ``remove``, ``enable``; every method returns the
    public dict shape (``schedule_dict``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._store = engine.store

    def _require_manager(self, conn: Connection, actor: str | None) -> None:
        resolve_principal(self._store, conn, actor).require_system_manager()

    def _shape(self, conn: Connection, row: RowMapping) -> dict[str, Any]:
        return schedule_dict(row, self._store.now(conn))

    def add(
        self,
        name: str,
        *,
        cron: str,
        job_type: str,
        organization: str,
        parameters: dict[str, Any] | None = None,
        enabled: bool = True,
        actor: str | None = None,
    ) -> dict[str, Any]:
        name = validate_name(name, "name")
        expr = validate_cron(cron)
        organization = validate_organization_name(organization)
        if not isinstance(job_type, str):
            raise ValidationError("job_type must be a string", field="job_type")
        settings = self._engine.settings
        params = validate_parameters(parameters, max_bytes=settings.max_parameters_bytes,
                                     max_depth=settings.max_parameters_depth)
        with self._store.transaction() as conn:
            self._require_manager(conn, actor)
            if self._store.get_job_type(conn, job_type) is None:
                raise ValidationError(f"unknown job type {job_type!r}", field="job_type")
            if not self._store.organization_exists(conn, organization):
                raise ValidationError(f"organization {organization!r} does not exist",
                                      field="organization")
            inserted = maintenance.insert_schedule(conn, {
                "name": name, "cron": expr, "job_type": job_type,
                "organization": organization, "parameters": params,
                "enabled": bool(enabled),
            })
            if not inserted:
                raise Conflict(f"schedule {name!r} already exists")
            row = maintenance.get_schedule(conn, name)
            assert row is not None
            return self._shape(conn, row)

    def list(self, *, actor: str | None = None) -> list[dict[str, Any]]:
        with self._store.read() as conn:
            self._require_manager(conn, actor)
            return [self._shape(conn, r) for r in maintenance.list_schedules(conn)]

    def get(self, name: str, *, actor: str | None = None) -> dict[str, Any]:
        with self._store.read() as conn:
            self._require_manager(conn, actor)
            row = maintenance.get_schedule(conn, name)
            if row is None:
                raise NotFound(f"schedule {name!r} does not exist")
            return self._shape(conn, row)

    def remove(self, name: str, *, actor: str | None = None) -> None:
        with self._store.transaction() as conn:
            self._require_manager(conn, actor)
            if not maintenance.delete_schedule(conn, name):
                raise NotFound(f"schedule {name!r} does not exist")

    def enable(self, name: str, enabled: bool = True, *,
               actor: str | None = None) -> dict[str, Any]:
        with self._store.transaction() as conn:
            self._require_manager(conn, actor)
            if not maintenance.set_schedule_enabled(conn, name, bool(enabled)):
                raise NotFound(f"schedule {name!r} does not exist")
            row = maintenance.get_schedule(conn, name)
            assert row is not None
            return self._shape(conn, row)

    def disable(self, name: str, *, actor: str | None = None) -> dict[str, Any]:
        return self.enable(name, False, actor=actor)


__all__ = ["Schedules", "schedule_dict", "validate_cron"]
