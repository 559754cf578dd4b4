"""Validation of everything a caller hands in. Pure functions: they either return
the normalised value or raise ``ValidationError`` (nothing has been written yet)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import PayloadTooLarge, ValidationError
from .hashing import canonical_json

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,139}$")
_HANDLER_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


def validate_parameters(value: Any, *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """Parameters must be a JSON object PostgreSQL's jsonb and SQLite both keep
    exactly: finite numbers, no NUL characters, bounded size and depth."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("parameters must be a JSON object", field="parameters")
    _check_tree(value, max_depth=max_depth)
    try:
        encoded = canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"parameters are not JSON: {exc}", field="parameters") from exc
    if len(encoded.encode("utf-8")) > max_bytes:
        raise PayloadTooLarge(
            f"parameters exceed {max_bytes} bytes when serialized", field="parameters"
        )
    # A round trip gives plain dict/list/str/int/float/bool/None, whatever mapping
    # or tuple types the caller used.
    result: dict[str, Any] = json.loads(encoded)
    return result


def _check_tree(root: Any, *, max_depth: int) -> None:
    # Iterative walk: a 10,000-deep document must give a ValidationError, not a
    # RecursionError.
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list | tuple):
            if depth > max_depth:
                raise ValidationError(
                    f"parameters are nested deeper than {max_depth} levels", field="parameters"
                )
            if isinstance(node, dict):
                for key, child in node.items():
                    if not isinstance(key, str):
                        raise ValidationError("object keys must be strings", field="parameters")
                    _check_string(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str):
            _check_string(node)
        elif isinstance(node, bool) or node is None or isinstance(node, int):
            continue
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValidationError(
                    "parameters may not contain NaN or Infinity", field="parameters"
                )
        else:
            raise ValidationError(
                f"parameters may not contain a {type(node).__name__}", field="parameters"
            )


def _check_string(text: str) -> None:
    if "\x00" in text:
        raise ValidationError(
            "parameters may not contain the NUL character (\\u0000)", field="parameters"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: not representable in UTF-8
        raise ValidationError(
            "parameters may not contain unpaired UTF-16 surrogates", field="parameters"
        ) from exc


def validate_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValidationError(
            f"{field} must be 1-140 characters: letters, digits, '_', '-', '.', "
            "starting with a letter or digit",
            field=field,
        )
    return value


def validate_organization_name(value: Any) -> str:
    """Organization names are data, not identifiers in SQL: anything printable up to
    140 characters is accepted and stored as given."""
    if not isinstance(value, str) or not value.strip() or len(value) > 140:
        raise ValidationError(
            "organization must be a non-empty string of at most 140 characters",
            field="organization",
        )
    _check_string(value)
    return value


def validate_handler_path(value: Any) -> str:
    if not isinstance(value, str) or not _HANDLER_RE.match(value):
        raise ValidationError(
            "handler must look like 'package.module:function'", field="handler"
        )
    return value


def validate_non_negative_int(value: Any, field: str, *, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be an integer", field=field)
    if value < 0:
        raise ValidationError(f"{field} must not be negative", field=field)
    if maximum is not None and value > maximum:
        raise ValidationError(f"{field} must be at most {maximum}", field=field)
    return value


def validate_non_negative_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{field} must be a finite number", field=field)
    if value < 0:
        raise ValidationError(f"{field} must not be negative", field=field)
    return float(value)


def validate_json_result(value: Any) -> Any:
    """A handler's return value (or checkpoint) is stored as JSON; anything else
    fails the attempt. The same character rules as parameters apply: PostgreSQL
    refuses NUL and lone surrogates, and one refused write must not wedge a
    worker's batch of outcomes."""
    if _is_plain_scalar(value) or (type(value) is dict and all(
            type(k) is str and _is_plain_scalar(k) and _is_plain_scalar(v)
            for k, v in value.items())):
        # What most handlers return: already what the round trip below would give
        # back (it costs a no-op job a fifth of its time in the worker child).
        return value
    try:
        result = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"handler result is not JSON-serializable: {exc}") from exc
    try:
        _check_tree(result, max_depth=10_000)
    except ValidationError as exc:
        raise ValidationError(
            "handler result is not storable: " + exc.message.replace("parameters", "it")
        ) from exc
    return result


def _is_plain_scalar(value: Any) -> bool:
    """A JSON scalar stored exactly as it is (exact types: a subclass goes the
    long way, through the JSON round trip)."""
    kind = type(value)
    if value is None or kind is bool or kind is int:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is str:
        return "\x00" not in value and value.isascii()
    return False


def storable_text(text: str, limit: int | None = None) -> str:
    """Text as both databases can store it: NUL and lone surrogates replaced."""
    cleaned = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return cleaned if limit is None else cleaned[-limit:] if limit < 0 else cleaned[:limit]
