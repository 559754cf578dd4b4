"""Handlers used by the tests (allowed through DARTWING_JOBS_HANDLER_MODULES)."""

from __future__ import annotations

from typing import Any


def noop(ctx: Any) -> dict[str, Any]:
    return {"ok": True}


NOT_CALLABLE = 42
