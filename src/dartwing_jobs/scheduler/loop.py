"""The scheduler loop: one thread running small services, each on its own
interval. Every service is safe to run on many machines at once (see
``docs/scheduler.md``), so the loop holds no lock and elects no leader."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..store.base import warn_about_configuration
from .dependency_promoter import DependencyPromoter
from .lease_rescuer import LeaseRescuer
from .periodic import PeriodicScheduler
from .retention_cleaner import RetentionCleaner

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("dartwing_jobs.scheduler")


class Service(Protocol):
    name: str
    interval: float

    def run_once(self) -> Any: ...


@dataclass
class SchedulerOptions:
    dependency_interval: float = 0.5
    rescue_interval: float | None = None  # default: lease_seconds / 3, at least 1 s
    periodic_interval: float = 0.25
    cleanup_check_interval: float = 60.0  # how often the daily cleanup guard is looked at
    run_cleanup: bool = True  # False: leave retention to `dartwing-jobs cleanup`
    error_backoff: float = 5.0  # a failing service waits this long before its next run


class Scheduler:
    """``Scheduler(engine).run()`` blocks until ``request_stop()`` (or SIGTERM /
    SIGINT once ``install_signal_handlers()`` was called)."""

    def __init__(self, engine: Engine, options: SchedulerOptions | None = None) -> None:
        self.engine = engine
        self.options = options or SchedulerOptions()
        o = self.options
        self.dependency_promoter = DependencyPromoter(engine, interval=o.dependency_interval)
        self.lease_rescuer = LeaseRescuer(engine, interval=o.rescue_interval)
        self.periodic = PeriodicScheduler(engine, interval=o.periodic_interval)
        self.retention_cleaner = RetentionCleaner(engine, interval=o.cleanup_check_interval)
        self.services: list[Service] = [self.dependency_promoter, self.lease_rescuer,
                                        self.periodic]
        if o.run_cleanup:
            self.services.append(self.retention_cleaner)
        self._stop = threading.Event()
        self._next: dict[str, float] = {}
        self.runs: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """Only from the main thread (Python's rule for signal handlers)."""

        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %s: stopping", signum)
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        log.info("scheduler starting: %s", ", ".join(s.name for s in self.services))
        warn_about_configuration(self.engine.store)
        while not self._stop.is_set():
            wait = self.run_due()
            self._stop.wait(wait)
        log.info("scheduler stopped")

    def run_due(self) -> float:
        """Run every service whose time has come; return seconds until the next."""
        now = time.monotonic()
        for service in self.services:
            if self._stop.is_set():
                break
            if now < self._next.get(service.name, 0.0):
                continue
            delay = service.interval
            try:
                service.run_once()
                self.runs[service.name] = self.runs.get(service.name, 0) + 1
            except Exception:  # one failing service must not stop the others
                self.errors[service.name] = self.errors.get(service.name, 0) + 1
                log.exception("scheduler service %s failed", service.name)
                delay = max(delay, self.options.error_backoff)
            self._next[service.name] = time.monotonic() + delay
        upcoming = min(self._next.get(s.name, 0.0) for s in self.services)
        return max(0.0, upcoming - time.monotonic())
