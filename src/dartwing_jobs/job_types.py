"""Job type configuration: register, change, list, disable.

Defaults are applied with explicit ``is None`` checks (plan P2-004): a timeout of 0
means "no timeout" and ``max_retries=0`` means "the first failure is final", not
"unset". A name registered twice is refused, never silently overwritten (P2-003).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy.engine import Connection

from .access import Principal
from .domain.errors import Conflict, NotFound, ValidationError
from .domain.priorities import parse_priority
from .domain.validation import (
    validate_handler_path,
    validate_name,
    validate_non_negative_int,
    validate_non_negative_number,
)
from .handlers import resolve_handler
from .store.base import Store
from .views import job_type_dict

DEFAULT_TIMEOUT = 300
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF = 10.0
DEFAULT_BACKOFF_MAX = 3600.0
MAX_TIMEOUT = 7 * 24 * 3600
MAX_RETRIES_LIMIT = 1000

_CHANGEABLE = (
    "handler", "default_priority", "default_timeout", "max_retries", "retry_backoff",
    "retry_backoff_max", "deduplicate", "enabled", "retention_days",
)


def _or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


class JobTypes:
    """``engine.job_types``: registered job types live in the database so that every
    process (API, workers, scheduler) sees the same configuration."""

    def __init__(
        self,
        store: Store,
        handler_prefixes: Callable[[], tuple[str, ...]],
        principal_for: Callable[[Connection, str | None], Principal],
        transaction: Callable[[], AbstractContextManager[Connection]],
    ) -> None:
        self._store = store
        self._prefixes = handler_prefixes
        self._principal_for = principal_for
        self._transaction = transaction

    def _normalise(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if value is None and key != "retention_days":
                continue
            if key == "handler":
                validate_handler_path(value)
                resolve_handler(value, self._prefixes())
                values[key] = value
            elif key == "default_priority":
                values[key] = int(parse_priority(value))
            elif key == "default_timeout":
                values[key] = validate_non_negative_int(value, key, maximum=MAX_TIMEOUT)
            elif key == "max_retries":
                values[key] = validate_non_negative_int(value, key, maximum=MAX_RETRIES_LIMIT)
            elif key in ("retry_backoff", "retry_backoff_max"):
                values[key] = validate_non_negative_number(value, key)
            elif key == "retention_days":
                values[key] = None if value is None else validate_non_negative_number(value, key)
            elif key in ("deduplicate", "enabled"):
                if not isinstance(value, bool):
                    raise ValidationError(f"{key} must be true or false", field=key)
                values[key] = value
            else:
                raise ValidationError(f"unknown job type field {key!r}", field=key)
        return values

    def _prepare(
        self,
        name: str,
        *,
        handler: str,
        default_priority: str | None = None,
        default_timeout: int | None = None,
        max_retries: int | None = None,
        retry_backoff: float | None = None,
        retry_backoff_max: float | None = None,
        deduplicate: bool | None = None,
        enabled: bool | None = None,
        retention_days: float | None = None,
    ) -> dict[str, Any]:
        validate_name(name, "name")
        values = self._normalise(
            {
                "handler": handler,
                "default_priority": _or_default(default_priority, "normal"),
                "default_timeout": _or_default(default_timeout, DEFAULT_TIMEOUT),
                "max_retries": _or_default(max_retries, DEFAULT_MAX_RETRIES),
                "retry_backoff": _or_default(retry_backoff, DEFAULT_BACKOFF),
                "retry_backoff_max": _or_default(retry_backoff_max, DEFAULT_BACKOFF_MAX),
                "deduplicate": _or_default(deduplicate, True),
                "enabled": _or_default(enabled, True),
                "retention_days": retention_days,
            }
        )
        self._check_backoff(values)
        return {"name": name, **values}

    def register(self, name: str, *, actor: str | None = None, **config: Any) -> dict[str, Any]:
        """Register one job type (see ``_prepare`` for the fields). A name that
        exists already is a ``Conflict``: changing a type is ``update``."""
        return self.register_all([{"name": name, **config}], actor=actor)[0]

    def register_all(
        self, configs: Iterable[Mapping[str, Any]], actor: str | None = None
    ) -> list[dict[str, Any]]:
        """Register a whole configuration in one transaction: a name given twice,
        or any refused entry, stores nothing of it."""
        self._require_system_manager(actor)
        seen: set[str] = set()
        prepared = []
        for config in configs:
            name = config.get("name")
            if name in seen:
                raise Conflict(f"job type {name!r} is configured twice")
            seen.add(str(name))
            fields = dict(config)
            fields.pop("name", None)
            prepared.append(self._prepare(str(name), **fields))
        with self._transaction() as conn:
            self._principal_for(conn, actor).require_system_manager()
            rows = []
            for values in prepared:
                self._store.insert_job_type(conn, values)
                row = self._store.get_job_type(conn, values["name"])
                assert row is not None
                rows.append(job_type_dict(row))
        return rows

    def update(self, name: str, *, actor: str | None = None, **changes: Any) -> dict[str, Any]:
        self._require_system_manager(actor)
        unknown = set(changes) - set(_CHANGEABLE)
        if unknown:
            raise ValidationError(f"unknown job type field(s): {', '.join(sorted(unknown))}")
        values = self._normalise(changes)
        with self._transaction() as conn:
            self._principal_for(conn, actor).require_system_manager()
            current = self._store.get_job_type(conn, name)
            if current is None:
                raise NotFound(f"job type {name!r} does not exist")
            self._check_backoff({**dict(current), **values})
            if values:
                self._store.update_job_type(conn, name, values)
            row = self._store.get_job_type(conn, name)
        assert row is not None
        return job_type_dict(row)

    def disable(self, name: str, *, actor: str | None = None) -> dict[str, Any]:
        return self.update(name, enabled=False, actor=actor)

    def get(self, name: str) -> dict[str, Any]:
        with self._store.read() as conn:
            row = self._store.get_job_type(conn, name)
        if row is None:
            raise NotFound(f"job type {name!r} does not exist")
        return job_type_dict(row)

    def list(self) -> list[dict[str, Any]]:
        with self._store.read() as conn:
            return [job_type_dict(r) for r in self._store.list_job_types(conn)]

    def _require_system_manager(self, actor: str | None) -> None:
        """Checked before validation: a caller without the right learns nothing from
        validation errors and cannot make the server import handler modules."""
        if actor is None:
            return
        with self._store.read() as conn:
            self._principal_for(conn, actor).require_system_manager()

    @staticmethod
    def _check_backoff(values: Mapping[str, Any]) -> None:
        if values["retry_backoff_max"] < values["retry_backoff"]:
            raise ValidationError(
                "retry_backoff_max must not be smaller than retry_backoff",
                field="retry_backoff_max",
            )
