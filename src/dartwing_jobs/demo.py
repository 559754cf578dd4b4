"""Demo handlers (the default allowed handler module)."""

from __future__ import annotations

from typing import Any


def noop(ctx: Any) -> dict[str, Any]:
    return {"ok": True}
