"""The scheduler: dependency sweeps, lease rescue, periodic (cron) jobs and the
daily retention cleanup, in one loop that is safe to run on many machines."""

from __future__ import annotations

from .dependency_promoter import DependencyPromoter, SweepResult
from .lease_rescuer import LeaseRescuer
from .loop import Scheduler, SchedulerOptions
from .periodic import Fire, PeriodicScheduler, latest_tick, next_tick
from .retention_cleaner import CleanupProgress, CleanupResult, RetentionCleaner

__all__ = [
    "CleanupProgress",
    "CleanupResult",
    "DependencyPromoter",
    "Fire",
    "LeaseRescuer",
    "PeriodicScheduler",
    "RetentionCleaner",
    "Scheduler",
    "SchedulerOptions",
    "SweepResult",
    "latest_tick",
    "next_tick",
]
