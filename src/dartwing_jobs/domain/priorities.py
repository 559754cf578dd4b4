"""Priorities are names in every interface and small integers in storage, so that
``ORDER BY priority`` on an index gives critical first."""

from __future__ import annotations

from enum import IntEnum

from .errors import ValidationError


class Priority(IntEnum):
    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @property
    def label(self) -> str:
        return self.name.lower()


PRIORITY_NAMES: tuple[str, ...] = tuple(p.label for p in Priority)


def parse_priority(value: object) -> Priority:
    if isinstance(value, Priority):
        return value
    if isinstance(value, str) and value.lower() in PRIORITY_NAMES:
        return Priority[value.upper()]
    raise ValidationError(
        f"priority must be one of {', '.join(PRIORITY_NAMES)}", field="priority"
    )
