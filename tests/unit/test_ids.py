"""Job ids: version 7 UUIDs in the order they were made."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dartwing_jobs.domain.ids import new_id, uuid7_int


def test_an_id_is_a_version_7_rfc_9562_uuid_as_lowercase_text() -> None:
    value = new_id()
    parsed = uuid.UUID(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == value and len(value) == 36


def test_an_id_carries_the_time_it_was_made() -> None:
    before = time.time()
    made = (uuid.UUID(new_id()).int >> 80) / 1000.0  # its first 48 bits: Unix ms
    assert before - 0.002 <= made <= time.time() + 0.002


def test_ids_made_one_after_another_sort_in_that_order_as_text() -> None:
    made = [new_id() for _ in range(20_000)]  # many within one clock tick
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_a_clock_that_steps_back_does_not_reorder_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    first = new_id()
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 5_000_000_000)
    assert new_id() > first


def test_ids_made_on_many_threads_are_distinct() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def make(bucket: list[str]) -> None:
        bucket.extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(b,)) for b in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for b in out for i in b]
    assert len(set(every)) == len(every)
    assert all(b == sorted(b) for b in out)


@given(stamp=st.integers(0, (1 << 60) - 1), later=st.integers(1, 1 << 20),
       bits_a=st.integers(0, (1 << 62) - 1), bits_b=st.integers(0, (1 << 62) - 1))
def test_a_later_timestamp_sorts_after_whatever_the_random_bits(
        stamp: int, later: int, bits_a: int, bits_b: int) -> None:
    if stamp + later >= 1 << 60:
        return
    a = str(uuid.UUID(int=uuid7_int(stamp, bits_a)))
    b = str(uuid.UUID(int=uuid7_int(stamp + later, bits_b)))
    assert a < b
    assert uuid.UUID(a).version == uuid.UUID(b).version == 7
