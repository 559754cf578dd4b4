"""Long-running services that ``serve`` embeds next to the API: the worker
supervisor and the scheduler, each behind ``start()``/``stop()``."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .engine import Engine
from .worker.supervisor import Supervisor, WorkerOptions

log = logging.getLogger("dartwing_jobs.services")


class ThreadService:
    """Runs a blocking ``run()`` loop on a thread; ``stop()`` asks it to finish
    and waits for it."""

    def __init__(self, name: str, runner: Any, stop_timeout: float = 60.0) -> None:
        self.name = name
        self.runner = runner
        self.stop_timeout = stop_timeout
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.runner.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.runner.request_stop()
        if self._thread is not None:
            self._thread.join(self.stop_timeout)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.0f s", self.name, self.stop_timeout)


def worker_service(engine: Engine, concurrency: int, shutdown_grace: float = 10.0) -> ThreadService:
    supervisor = Supervisor(engine, WorkerOptions(concurrency=concurrency,
                                                  shutdown_grace=shutdown_grace))
    return ThreadService("worker-supervisor", supervisor, stop_timeout=shutdown_grace + 15)


def embedded_services(engine: Engine, workers: int) -> list[ThreadService]:
    from .scheduler import Scheduler

    services: list[ThreadService] = [ThreadService("scheduler", Scheduler(engine))]
    if workers:
        services.append(worker_service(engine, workers))
    return services


def serve_all(engine: Engine, host: str = "127.0.0.1", port: int = 8000, workers: int = 2) -> None:
    from .server import serve

    serve(engine, host=host, port=port, workers=workers,
          extra_services=embedded_services(engine, workers))
