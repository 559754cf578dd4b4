"""An attempt's result as a value. Each kind maps to exactly one storage call
(``Store.record_outcomes``), whoever produced it: the handler, the timeout
watchdog, the cancel killer or the lease rescuer."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class OutcomeKind(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"  # retry if the budget allows, else dead letter
    PERMANENT = "permanent"  # straight to dead letter
    CANCELED = "canceled"


@dataclass(frozen=True)
class Outcome:
    job_id: str
    attempt: int
    kind: OutcomeKind
    worker_id: str
    started_at: float  # epoch seconds, as the worker saw it (log only)
    duration_ms: float
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None

    @property
    def error(self) -> dict[str, Any] | None:
        if self.error_type is None:
            return None
        return {"type": self.error_type, "message": self.error_message}
