"""Request and response models. They exist so that ``/openapi.json`` tells clients
(and the schemathesis fuzzer) the truth; the engine still validates every value
itself, so these only describe shapes, never access or business rules."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

PriorityName = Literal["critical", "high", "normal", "low"]
StatusName = Literal[
    "pending", "queued", "running", "retrying", "completed", "dead_letter", "canceled"
]


class SubmitJob(BaseModel):
    """A submission. ``extra="forbid"``: a client that sends ``status``,
    ``attempts``, ``job_hash`` or ``submitted_by`` (or a misspelt field) is told so
    instead of having it silently ignored."""

    model_config = ConfigDict(extra="forbid")

    job_type: str = Field(max_length=140)
    organization: str = Field(max_length=140)
    parameters: dict[str, Any] | None = None
    priority: PriorityName | None = None
    depends_on: list[str] | None = Field(default=None, max_length=1000)
    run_at: AwareDatetime | None = None


class RegisterJobType(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=140)
    handler: str = Field(max_length=255)
    default_priority: PriorityName | None = None
    default_timeout: int | None = Field(default=None, ge=0)
    max_retries: int | None = Field(default=None, ge=0)
    retry_backoff: float | None = Field(default=None, ge=0)
    retry_backoff_max: float | None = Field(default=None, ge=0)
    deduplicate: bool | None = None
    enabled: bool | None = None
    retention_days: float | None = Field(default=None, ge=0)


class UpdateJobType(BaseModel):
    """A partial change: only the fields sent are changed."""

    model_config = ConfigDict(extra="forbid")

    handler: str | None = Field(default=None, max_length=255)
    default_priority: PriorityName | None = None
    default_timeout: int | None = Field(default=None, ge=0)
    max_retries: int | None = Field(default=None, ge=0)
    retry_backoff: float | None = Field(default=None, ge=0)
    retry_backoff_max: float | None = Field(default=None, ge=0)
    deduplicate: bool | None = None
    enabled: bool | None = None
    retention_days: float | None = Field(default=None, ge=0)


class JobError(BaseModel):
    """``{type, message}``; a handler's failure may add ``traceback``. Extra keys
    pass through as given so an absent traceback is not invented as ``null``."""

    model_config = ConfigDict(extra="allow")

    type: str
    message: str | None


class JobOut(BaseModel):
    """SPEC 5.3 job JSON. Times are ISO 8601 UTC strings."""

    id: str
    job_type: str
    organization: str
    status: StatusName
    priority: PriorityName
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
    result: Any = None
    error: JobError | None
    submitted_by: str | None
    checkpoint: Any = None


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class LogEntry(BaseModel):
    job_id: str
    organization: str
    job_type: str
    attempt: int
    worker_id: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: float | None
    outcome: str | None
    error: JobError | None


class LogPage(BaseModel):
    items: list[LogEntry]


class JobTypeOut(BaseModel):
    name: str
    handler: str
    default_priority: PriorityName
    default_timeout: int
    max_retries: int
    retry_backoff: float
    retry_backoff_max: float
    deduplicate: bool
    enabled: bool
    retention_days: float | None


class JobTypeList(BaseModel):
    items: list[JobTypeOut]


class OrganizationOut(BaseModel):
    name: str
    title: str
    created_at: str | None


class OrganizationList(BaseModel):
    items: list[OrganizationOut]


class Membership(BaseModel):
    name: str
    role: Literal["member", "admin"]


class Me(BaseModel):
    id: str
    full_name: str
    roles: list[str]
    organizations: list[Membership]


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


class ErrorDetail(BaseModel):
    """``code`` is stable and machine-readable; other keys depend on it
    (``existing_job_id``, ``status``, ``retry_after``, ``field``, ``request_id``)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


__all__ = [
    "ErrorResponse", "Health", "JobOut", "JobPage", "JobTypeList", "JobTypeOut", "LogPage",
    "Me", "OrganizationList", "RegisterJobType", "SubmitJob", "UpdateJobType",
]


# -- claim controls (issue 10; System Manager) -----------------------------------


class PauseTarget(BaseModel):
    """An organization, a job type, or one job type of one organization."""

    model_config = ConfigDict(extra="forbid")

    organization: str | None = Field(default=None, max_length=140)
    job_type: str | None = Field(default=None, max_length=140)


class PauseState(BaseModel):
    organization: str | None
    job_type: str | None
    paused: bool


class LimitsUpdate(BaseModel):
    """Only the fields sent change; ``null`` returns a field to the default.
    ``max_running`` 0 pauses; ``max_queued`` is per organization only."""

    model_config = ConfigDict(extra="forbid")

    job_type: str | None = Field(default=None, max_length=140)
    max_running: int | None = Field(default=None, ge=0, le=10_000_000)
    max_queued: int | None = Field(default=None, ge=0, le=10_000_000)


class LimitOut(BaseModel):
    organization: str
    job_type: str | None
    max_running: int | None
    max_queued: int | None
    paused: bool


class LimitDefaults(BaseModel):
    fair_claiming: bool
    max_running_per_organization: int | None
    max_queued_per_organization: int | None


class LimitsOut(BaseModel):
    defaults: LimitDefaults
    organizations: list[LimitOut]
    paused_job_types: list[str]


class OperatorMetrics(LimitsOut):
    running_by_organization: dict[str, int]
