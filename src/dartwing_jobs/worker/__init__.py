"""Workers: a supervisor process (leases, hard timeouts, group commits) and the
child processes that run handlers."""

from __future__ import annotations

from .context import JobCanceled, JobContext
from .supervisor import Supervisor, WorkerOptions

__all__ = ["JobCanceled", "JobContext", "Supervisor", "WorkerOptions"]
