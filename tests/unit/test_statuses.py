"""The lifecycle of SPEC section 3 against the domain's transition table.

The expected table below is copied by hand from the SPEC, not derived from
``TRANSITIONS``, so that a change to either one shows up here."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dartwing_jobs.domain.errors import InvalidState
from dartwing_jobs.domain.statuses import (
    ACTIVE,
    CANCELABLE_AT_ONCE,
    CLAIMABLE,
    RETRYABLE_BY_HAND,
    TERMINAL,
    TRANSITIONS,
    Status,
    can_transition,
    check_transition,
    is_terminal,
    sources_of,
)

P, Q, RN, RT, C, D, X = (
    Status.PENDING,
    Status.QUEUED,
    Status.RUNNING,
    Status.RETRYING,
    Status.COMPLETED,
    Status.DEAD_LETTER,
    Status.CANCELED,
)

# SPEC 3, row by row ("(new) -> pending/queued" is submission, not a transition).
SPEC_ALLOWED: frozenset[tuple[Status, Status]] = frozenset(
    {
        (P, Q),  # every dependency completed
        (P, X),  # a dependency failed (dependency_failed)
        (Q, RN),  # a worker claims it
        (RT, RN),
        (RN, C),  # handler returned
        (RN, RT),  # failed, retries left
        (RN, D),  # retries exhausted or permanent error
        (Q, X),  # cancel, atomically (pending is covered above)
        (RT, X),
        (RN, X),  # cancel requested, handler stops or is killed
        (D, Q),  # manual retry
        (X, Q),
    }
)
ALL_PAIRS = list(itertools.product(Status, Status))
FORBIDDEN = sorted((a, b) for a, b in ALL_PAIRS if (a, b) not in SPEC_ALLOWED)


def test_statuses_are_the_api_values() -> None:
    assert [s.value for s in Status] == [
        "pending", "queued", "running", "retrying", "completed", "dead_letter", "canceled",
    ]


def test_terminal_and_active_sets() -> None:
    assert {C, D, X} == TERMINAL
    assert {P, Q, RN, RT} == ACTIVE
    assert {Q, RT} == CLAIMABLE
    assert {P, Q, RT} == CANCELABLE_AT_ONCE
    assert {D, X} == RETRYABLE_BY_HAND
    for status in Status:
        assert is_terminal(status) is (status in TERMINAL)
        assert is_terminal(status.value) is (status in TERMINAL)


def test_table_is_exactly_the_spec() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == SPEC_ALLOWED
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize(("current", "target"), sorted(SPEC_ALLOWED),
                         ids=lambda s: s.value)
def test_allowed_transition(current: Status, target: Status) -> None:
    assert can_transition(current, target)
    check_transition(current, target)  # no error
    assert current in sources_of(target)


@pytest.mark.parametrize(("current", "target"), FORBIDDEN, ids=lambda s: s.value)
def test_forbidden_transition(current: Status, target: Status) -> None:
    assert not can_transition(current, target)
    with pytest.raises(InvalidState) as info:
        check_transition(current, target)
    assert info.value.code == "invalid_state"
    assert info.value.status == current.value
    assert info.value.to_dict()["status"] == current.value
    assert current not in sources_of(target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (C, Q),  # a completed job is never run again, not even by hand
        (C, RN),
        (C, X),
        (D, RN),  # a manual retry queues; it never jumps to running
        (X, RN),
        (P, RN),  # a pending job waits for its dependencies first
        (Q, C),  # nothing completes without running
        (Q, RT),
        (RN, Q),  # a failed attempt goes through retrying, not straight to queued
        (RN, P),
        (X, X),  # no self-loops: cancel twice is invalid_state, not a silent write
        (RN, RN),
    ],
    ids=lambda s: s.value,
)
def test_notable_forbidden_transitions(current: Status, target: Status) -> None:
    with pytest.raises(InvalidState):
        check_transition(current, target)


def test_guards_derived_from_the_table() -> None:
    assert sources_of(RN) == CLAIMABLE
    assert sources_of(X) == {P, Q, RT, RN}
    assert sources_of(Q) == {P, D, X}
    assert sources_of(C) == {RN}
    assert sources_of(P) == frozenset()  # only submission creates a pending job


class JobLifecycle(RuleBasedStateMachine):
    """A model job driven by arbitrary attempted transitions. The model answers
    from SPEC_ALLOWED; the domain must agree on every attempt, and refuse with
    ``InvalidState`` carrying the current status without changing anything."""

    def __init__(self) -> None:
        super().__init__()
        self.status = Q
        self.history: list[Status] = []
        self.manual_retries = 0

    @initialize(start=st.sampled_from([P, Q]))
    def submit(self, start: Status) -> None:
        self.status = start
        self.history = [start]

    def _attempt(self, target: Status) -> bool:
        expected = (self.status, target) in SPEC_ALLOWED
        if expected:
            check_transition(self.status, target)
            if self.status in RETRYABLE_BY_HAND and target is Q:
                self.manual_retries += 1
            self.status = target
            self.history.append(target)
            return True
        before = self.status
        try:
            check_transition(self.status, target)
        except InvalidState as exc:
            assert exc.status == before.value
        else:
            raise AssertionError(f"{before.value} -> {target.value} was allowed")
        assert self.status is before
        return False

    @rule(to=st.sampled_from(list(Status)))
    def any_transition(self, to: Status) -> None:
        self._attempt(to)

    @precondition(lambda self: self.status in CLAIMABLE)
    @rule()
    def claim(self) -> None:
        assert self._attempt(RN)

    @precondition(lambda self: self.status is RN)
    @rule(outcome=st.sampled_from([C, RT, D, X]))
    def finish_attempt(self, outcome: Status) -> None:
        assert self._attempt(outcome)

    @precondition(lambda self: self.status in CANCELABLE_AT_ONCE)
    @rule()
    def cancel(self) -> None:
        assert self._attempt(X)

    @precondition(lambda self: self.status is P)
    @rule()
    def dependencies_done(self) -> None:
        assert self._attempt(Q)

    @precondition(lambda self: self.status in RETRYABLE_BY_HAND)
    @rule()
    def manual_retry(self) -> None:
        assert self._attempt(Q)

    @invariant()
    def completed_is_forever(self) -> None:
        if C in self.history:
            assert self.history.index(C) == len(self.history) - 1
            assert self.status is C

    @invariant()
    def terminal_leaves_only_by_manual_retry(self) -> None:
        for before, after in itertools.pairwise(self.history):
            if before in TERMINAL:
                assert before in RETRYABLE_BY_HAND and after is Q

    @invariant()
    def running_only_after_claim(self) -> None:
        for before, after in itertools.pairwise(self.history):
            if after is RN:
                assert before in CLAIMABLE

    @invariant()
    def pending_only_at_submission(self) -> None:
        assert P not in self.history[1:]

    @invariant()
    def terminal_states_refuse_everything_else(self) -> None:
        if self.status in TERMINAL:
            allowed = {t for t in Status if can_transition(self.status, t)}
            assert allowed == ({Q} if self.status in RETRYABLE_BY_HAND else set())


JobLifecycle.TestCase.settings = settings(max_examples=200, stateful_step_count=30,
                                          deadline=None)
TestJobLifecycle = JobLifecycle.TestCase
