"""Handler resolution (plan P3-001): a handler is ``package.module:function`` inside
one of the allowed module prefixes, importable and callable. Checked when a job type
is registered and again before every run, so a changed allowlist takes effect."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from .domain.errors import ValidationError
from .domain.validation import validate_handler_path


def is_allowed(module: str, prefixes: Sequence[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def resolve_handler(path: str, prefixes: Sequence[str]) -> Callable[..., Any]:
    validate_handler_path(path)
    module_name, _, attribute = path.partition(":")
    if not is_allowed(module_name, prefixes):
        raise ValidationError(
            f"handler module {module_name!r} is outside the allowed handler modules "
            "(DARTWING_JOBS_HANDLER_MODULES)",
            field="handler",
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import can fail in any way the module likes
        raise ValidationError(
            f"handler module {module_name!r} cannot be imported: {type(exc).__name__}: {exc}",
            field="handler",
        ) from exc
    target = getattr(module, attribute, None)
    if target is None or not callable(target):
        raise ValidationError(
            f"{path!r} is not a callable in {module_name!r}", field="handler"
        )
    return target  # type: ignore[no-any-return]
