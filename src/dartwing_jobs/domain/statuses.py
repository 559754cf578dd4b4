"""The job lifecycle: one canonical list of statuses and one transition table.

Storage writes guard every change in SQL (``WHERE status IN (...)``); this table is
the single source those guards are derived from, and ``docs/lifecycle.md`` draws it.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import InvalidState


class Status(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    DEAD_LETTER = "dead_letter"
    CANCELED = "canceled"


TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.DEAD_LETTER, Status.CANCELED})
ACTIVE: frozenset[Status] = frozenset(Status) - TERMINAL
CLAIMABLE: frozenset[Status] = frozenset({Status.QUEUED, Status.RETRYING})
CANCELABLE_AT_ONCE: frozenset[Status] = frozenset({Status.PENDING, Status.QUEUED, Status.RETRYING})
RETRYABLE_BY_HAND: frozenset[Status] = frozenset({Status.DEAD_LETTER, Status.CANCELED})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.QUEUED, Status.CANCELED}),
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELED}),
    Status.RETRYING: frozenset({Status.RUNNING, Status.CANCELED}),
    Status.RUNNING: frozenset(
        {Status.COMPLETED, Status.RETRYING, Status.DEAD_LETTER, Status.CANCELED}
    ),
    Status.COMPLETED: frozenset(),
    Status.DEAD_LETTER: frozenset({Status.QUEUED}),
    Status.CANCELED: frozenset({Status.QUEUED}),
}


def can_transition(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]


def sources_of(target: Status) -> frozenset[Status]:
    """Statuses from which ``target`` may be reached: the ``WHERE status IN`` guard."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def check_transition(current: Status, target: Status) -> None:
    if not can_transition(current, target):
        raise InvalidState(
            f"a {current.value} job cannot become {target.value}", status=current.value
        )


def is_terminal(status: Status | str) -> bool:
    return Status(status) in TERMINAL
