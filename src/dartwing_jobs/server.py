"""``dartwing-jobs serve``: the API in uvicorn, plus whatever long-running services
(worker supervisor, scheduler, realtime reader) are plugged in through
``extra_services``.

Services are started before the server accepts requests and stopped after it
has drained them, in reverse order, so Ctrl-C (uvicorn turns SIGINT/SIGTERM into
a graceful shutdown) never leaves a worker running behind a closed API.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Protocol

import uvicorn

from .api import create_app
from .engine import Engine
from .realtime.server import mount as mount_realtime

log = logging.getLogger("dartwing_jobs.server")


class Service(Protocol):
    """Anything with a blocking-free ``start()`` and a ``stop()`` that returns once
    the service has wound down."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _interrupt_on_sigterm() -> None:
    """uvicorn drains on SIGTERM, then re-raises the signal with the previous
    handler in place; with the default handler that would kill the process before
    the services below are stopped. Turning SIGTERM into ``KeyboardInterrupt``
    routes it through the same clean path as Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 0,
    *,
    extra_services: Sequence[Service] = (),
    log_level: str = "info",
) -> None:
    """Run until interrupted.

    ``workers`` is the number of embedded worker processes the caller asked for.
    The worker supervisor is not part of this module: whoever builds it passes it
    (and the scheduler) in ``extra_services``; ``workers`` is accepted here so the
    command line is stable, and a request for workers with no service to run them
    is said out loud rather than silently ignored.
    """
    if workers < 0:
        raise ValueError("workers must be 0 or more")
    if workers and not extra_services:
        log.warning("%d worker(s) requested but no worker service is plugged in; "
                    "serving the API only", workers)
    app = create_app(engine)
    asgi_app, realtime = mount_realtime(app, engine)
    config = uvicorn.Config(asgi_app, host=host, port=port, log_level=log_level,
                            lifespan="on", proxy_headers=False)
    server = uvicorn.Server(config)
    started: list[Service] = []
    try:
        for service in [*realtime, *extra_services]:
            service.start()
            started.append(service)
        # Binding here (not inside uvicorn) lets port 0 pick a free port and the
        # printed URL still name the real one.
        sock = _bind(host, port)
        bound_port = sock.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{bound_port}"
        print(f"Dartwing Jobs serving on {url}/ (API {url}/api/v1, docs {url}/docs); "
              "Ctrl-C to stop", flush=True)
        _interrupt_on_sigterm()
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # a second Ctrl-C during shutdown: still stop the services below
    finally:
        for service in reversed(started):
            try:
                service.stop()
            except Exception:
                log.exception("error while stopping %r", service)


__all__ = ["Service", "serve"]
