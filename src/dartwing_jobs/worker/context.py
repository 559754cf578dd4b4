"""What a handler sees: ``JobContext``. Runs inside a worker child process."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any


class JobCanceled(BaseException):
    """Raised inside a handler when its job was canceled. A ``BaseException`` like
    ``asyncio.CancelledError``, so a handler's ``except Exception`` does not
    swallow it."""


class JobContext:
    """Handed to every handler. ``progress`` is cheap to call often: the worker
    throttles the writes and always stores the last value. ``checkpoint`` is
    durable when it returns and comes back as ``last_checkpoint`` on a retry."""

    def __init__(
        self,
        *,
        job_id: str,
        organization: str,
        job_type: str,
        attempt: int,
        parameters: dict[str, Any],
        last_checkpoint: Any,
        send_progress: Callable[[float, str | None], None],
        save_checkpoint: Callable[[Any], None],
        cancel_event: threading.Event,
    ) -> None:
        self.job_id = job_id
        self.organization = organization
        self.job_type = job_type
        self.attempt = attempt
        self.parameters = parameters
        self.last_checkpoint = last_checkpoint
        self._send_progress = send_progress
        self._save_checkpoint = save_checkpoint
        self._cancel_event = cancel_event

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_event.is_set()

    def raise_if_canceled(self) -> None:
        if self._cancel_event.is_set():
            raise JobCanceled(f"job {self.job_id} was canceled")

    def progress(self, percent: float, message: str | None = None) -> None:
        self.raise_if_canceled()
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not math.isfinite(
            percent
        ):
            raise ValueError("progress percent must be a finite number")
        self._send_progress(min(100.0, max(0.0, float(percent))), message)

    def checkpoint(self, state: Any) -> None:
        self._save_checkpoint(state)
        self.last_checkpoint = state
