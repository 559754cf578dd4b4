"""Typed errors. Every refusal the engine makes carries a stable ``code`` that the
HTTP API, the CLI and Python callers all see the same way."""

from __future__ import annotations

from typing import Any


class DartwingError(Exception):
    """Base of every error the engine raises on purpose."""

    code: str = "error"
    http_status: int = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class BadRequest(DartwingError):
    code = "bad_request"
    http_status = 400


class Unauthorized(DartwingError):
    code = "unauthorized"
    http_status = 401


class Forbidden(DartwingError):
    code = "forbidden"
    http_status = 403


class NotFound(DartwingError):
    code = "not_found"
    http_status = 404


class ValidationError(DartwingError):
    code = "validation_error"
    http_status = 422


class PayloadTooLarge(DartwingError):
    code = "payload_too_large"
    http_status = 413


class DuplicateJob(DartwingError):
    code = "duplicate_job"
    http_status = 409

    def __init__(self, existing_job_id: str) -> None:
        super().__init__(
            "an identical job is already pending, queued, running or retrying",
            existing_job_id=existing_job_id,
        )
        self.existing_job_id = existing_job_id


class InvalidState(DartwingError):
    code = "invalid_state"
    http_status = 409

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message, status=status)
        self.status = status


class Conflict(DartwingError):
    """A name that must be unique is already taken (organization, user, job type)."""

    code = "conflict"
    http_status = 409


class RateLimited(DartwingError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class QuotaExceeded(DartwingError):
    code = "quota_exceeded"
    http_status = 429


class PermanentFailure(Exception):
    """Raised by a handler to say that retrying cannot help: the job goes straight
    to ``dead_letter``."""
