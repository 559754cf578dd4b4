"""The web dashboard (issue 8): static files served at ``/`` and ``/static/...``.

The page is plain HTML, CSS and JavaScript modules shipped inside the package
(``api/static``), with the Socket.IO browser client vendored from the npm registry
under ``static/vendor``: nothing is fetched from the internet at run time and
there is no build step. It talks to the same app's ``/api/v1`` with the token the
user typed (kept in ``sessionStorage``) and to ``/socket.io`` for live updates,
falling back to polling every few seconds when the realtime endpoint is absent.

Every response carries a strict Content-Security-Policy: scripts, styles and
connections from this origin only, no inline script, and no framing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX = STATIC_DIR / "index.html"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class _DashboardFiles(StaticFiles):
    """``StaticFiles`` that adds the security headers and asks browsers to
    revalidate (the files change with each release and carry no hash)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` (``index.html``) and its assets under ``/static``.
    Neither route appears in ``/openapi.json``."""
    if not INDEX.is_file():  # pragma: no cover - a broken install
        raise RuntimeError(f"dashboard files are missing from {STATIC_DIR}")

    app.mount("/static", _DashboardFiles(directory=STATIC_DIR), name="dashboard-static")

    @app.get("/", include_in_schema=False)
    def dashboard_index() -> Any:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return FileResponse(INDEX, media_type="text/html; charset=utf-8", headers=headers)


__all__ = ["STATIC_DIR", "mount_dashboard"]
