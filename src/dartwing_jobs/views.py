"""The public shapes of jobs, logs and job types: one definition used by the Python
API, the HTTP API and the CLI's ``--json``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from .domain.priorities import Priority


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any, field: str) -> float | None:
    """Accept an aware datetime, an ISO 8601 string or epoch seconds."""
    from .domain.errors import ValidationError

    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError(f"{field} is not an ISO 8601 time", field=field) from exc
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    else:
        raise ValidationError(f"{field} must be an ISO 8601 time", field=field)
    if moment.tzinfo is None:
        raise ValidationError(f"{field} must carry a time zone (e.g. 'Z')", field=field)
    return moment.timestamp()


@dataclass(frozen=True)
class Job:
    id: str
    job_type: str
    organization: str
    status: str
    priority: str
    parameters: dict[str, Any]
    job_hash: str
    attempts: int
    max_retries: int
    timeout_seconds: int
    progress: float
    progress_message: str | None
    cancel_requested: bool
    depends_on: list[str]
    run_at: str | None
    next_retry_at: str | None
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    result: Any
    error: dict[str, Any] | None
    submitted_by: str | None
    checkpoint: Any = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], depends_on: list[str] | None = None) -> Job:
        error = None
        if row["error_type"] is not None:
            error = {"type": row["error_type"], "message": row["error_message"]}
            if row["error_traceback"]:
                error["traceback"] = row["error_traceback"]
        return cls(
            id=row["id"],
            job_type=row["job_type"],
            organization=row["organization"],
            status=row["status"],
            priority=Priority(row["priority"]).label,
            parameters=row["parameters"],
            job_hash=row["job_hash"],
            attempts=row["attempts"],
            max_retries=row["max_retries"],
            timeout_seconds=row["timeout_seconds"],
            progress=row["progress"],
            progress_message=row["progress_message"],
            cancel_requested=bool(row["cancel_requested"]),
            depends_on=depends_on or [],
            run_at=iso(row["run_at"]),
            next_retry_at=iso(row["next_retry_at"]),
            created_at=iso(row["created_at"]),
            started_at=iso(row["started_at"]),
            completed_at=iso(row["completed_at"]),
            result=row["result"],
            error=error,
            submitted_by=row["submitted_by"],
            checkpoint=row["checkpoint"],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_entry(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "job_id": row["job_id"],
        "organization": row["organization"],
        "job_type": row["job_type"],
        "attempt": row["attempt"],
        "worker_id": row["worker_id"],
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "duration_ms": row["duration_ms"],
        "outcome": row["outcome"],
        "error": None
        if row["error_type"] is None
        else {"type": row["error_type"], "message": row["error_message"]},
    }


def job_type_dict(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "handler": row["handler"],
        "default_priority": Priority(row["default_priority"]).label,
        "default_timeout": row["default_timeout"],
        "max_retries": row["max_retries"],
        "retry_backoff": row["retry_backoff"],
        "retry_backoff_max": row["retry_backoff_max"],
        "deduplicate": bool(row["deduplicate"]),
        "enabled": bool(row["enabled"]),
        "retention_days": row["retention_days"],
    }


def organization_dict(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {"name": row["name"], "title": row["title"], "created_at": iso(row["created_at"])}
