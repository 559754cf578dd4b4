"""Pure validation: the job hash, parameter limits, priorities, non-negative
numbers and the retry delay. Everything here is refused with a typed error whose
``code`` the HTTP API and the CLI show unchanged."""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dartwing_jobs.config import Settings
from dartwing_jobs.domain.errors import PayloadTooLarge, ValidationError
from dartwing_jobs.domain.hashing import canonical_json, job_hash
from dartwing_jobs.domain.priorities import PRIORITY_NAMES, Priority, parse_priority
from dartwing_jobs.domain.retry import retry_delay
from dartwing_jobs.domain.validation import (
    validate_handler_path,
    validate_json_result,
    validate_name,
    validate_non_negative_int,
    validate_non_negative_number,
    validate_organization_name,
    validate_parameters,
)

MAX_BYTES = 65536
MAX_DEPTH = 20


def validate(value: Any, **kw: Any) -> dict[str, Any]:
    return validate_parameters(
        value, max_bytes=kw.get("max_bytes", MAX_BYTES), max_depth=kw.get("max_depth", MAX_DEPTH)
    )


def nested(depth: int, *, kind: str = "dict") -> Any:
    """A document whose outermost container is level 1 and innermost level ``depth``."""
    value: Any = {} if kind == "dict" else []
    for _ in range(depth - 1):
        value = {"k": value} if kind == "dict" else [value]
    return value


# -- defaults ------------------------------------------------------------------


def test_documented_limits_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DARTWING_JOBS_MAX_PARAMETERS_BYTES", "DARTWING_JOBS_MAX_PARAMETERS_DEPTH"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.max_parameters_bytes == MAX_BYTES
    assert s.max_parameters_depth == MAX_DEPTH


# -- the job hash ----------------------------------------------------------------


def test_hash_is_sha256_hex() -> None:
    h = job_hash("t", "acme", {"a": 1})
    assert len(h) == 64
    int(h, 16)


def test_hash_ignores_key_order_at_every_level() -> None:
    a = {"a": 1, "b": {"x": [1, {"p": 1, "q": 2}], "y": None}, "c": "z"}
    b = OrderedDict([("c", "z"), ("b", {"y": None, "x": [1, {"q": 2, "p": 1}]}), ("a", 1)])
    assert job_hash("t", "acme", a) == job_hash("t", "acme", dict(b))
    assert canonical_json(a) == canonical_json(b)


def test_hash_is_stable_across_runs() -> None:
    # A fixed value: the hash must not depend on the process (no PYTHONHASHSEED,
    # no dict order), or duplicates would slip through after a restart.
    params = {"month": "2026-10", "ids": [3, 1, 2], "name": "Zoë 🚀"}
    first = job_hash("send_report", "acme", params)
    assert first == job_hash("send_report", "acme", json.loads(json.dumps(params)))
    material = json.dumps(["send_report", "acme", params], sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    import hashlib

    assert first == hashlib.sha256(material).hexdigest()


@pytest.mark.parametrize(
    "text",
    ["Zoë", "🚀 launch", "שלום עולם", "مرحبا", "日本語", "a\u202eb", "\u200b", "e\u0301"],
)
def test_hash_of_unicode_is_stable_and_kept_as_is(text: str) -> None:
    params = {text: text, "nested": {"v": [text]}}
    assert job_hash("t", "acme", params) == job_hash("t", "acme", dict(reversed(params.items())))
    # Not escaped: the canonical form carries the characters themselves.
    assert text in canonical_json(params)
    # The escaped and the raw JSON spelling describe the same parameters.
    assert job_hash("t", "acme", json.loads(json.dumps(params, ensure_ascii=True))) == \
        job_hash("t", "acme", params)


def test_hash_distinguishes_type_organization_and_parameters() -> None:
    base = job_hash("t", "acme", {"a": 1})
    assert job_hash("u", "acme", {"a": 1}) != base
    assert job_hash("t", "globex", {"a": 1}) != base
    assert job_hash("t", "acme", {"a": 2}) != base
    assert job_hash("t", "acme", {"a": "1"}) != base
    assert job_hash("t", "acme", {"a": [1]}) != base
    assert job_hash("t", "acme", {}) != base


def test_hash_parts_cannot_run_into_each_other() -> None:
    assert job_hash("a", "bc", {}) != job_hash("ab", "c", {})
    assert job_hash("t", 'a","b', {}) != job_hash('t","a', "b", {})


@given(st.dictionaries(st.text(), st.integers() | st.text() | st.booleans() | st.none(),
                       max_size=8))
@settings(max_examples=100, deadline=None)
def test_hash_key_order_property(params: dict[str, Any]) -> None:
    shuffled = dict(reversed(list(params.items())))
    assert job_hash("t", "o", params) == job_hash("t", "o", shuffled)


# -- parameters: shape -----------------------------------------------------------


def test_none_means_empty_parameters() -> None:
    assert validate(None) == {}


@pytest.mark.parametrize(
    "value",
    [[], [1, 2], "text", "", 0, 1.5, True, False, (1,), {1, 2}, b"bytes"],
    ids=repr,
)
def test_non_object_parameters_are_refused(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        validate(value)
    assert info.value.code == "validation_error"
    assert info.value.details["field"] == "parameters"


@pytest.mark.parametrize(
    "value",
    [{1: "a"}, {None: 1}, {"a": {2.5: 1}}, {"a": {1, 2}}, {"a": b"x"}, {"a": object()},
     {"a": [1, 2j]}],
    ids=["int key", "None key", "nested float key", "set", "bytes", "object", "complex"],
)
def test_non_json_content_is_refused(value: Any) -> None:
    with pytest.raises(ValidationError):
        validate(value)


def test_round_trip_gives_plain_json_types() -> None:
    got = validate(OrderedDict([("o", OrderedDict([("x", [3])])), ("n", 1)]))
    assert got == {"o": {"x": [3]}, "n": 1}
    assert type(got["o"]) is dict


def test_tuples_are_normalised_to_lists() -> None:
    got = validate({"t": (1, 2), "n": {"x": (3,)}})
    assert got == {"t": [1, 2], "n": {"x": [3]}}


# -- parameters: numbers and NUL ---------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["top", "nested", "list"])
def test_nan_and_infinity_are_refused(bad: float, where: str) -> None:
    doc = {"top": {"x": bad}, "nested": {"a": {"b": bad}}, "list": {"l": [1, bad]}}[where]
    with pytest.raises(ValidationError) as info:
        validate(doc)
    assert "NaN" in info.value.message


def test_large_finite_floats_and_big_ints_are_fine() -> None:
    assert validate({"f": 1.7976931348623157e308, "i": 2**70, "neg": -0.0}) == {
        "f": 1.7976931348623157e308, "i": 2**70, "neg": -0.0,
    }


@pytest.mark.parametrize(
    "doc",
    [
        {"a\x00": 1},
        {"a": "b\x00c"},
        {"a": {"b\x00": 1}},
        {"a": ["ok", "\x00"]},
        {"\x00": "\x00"},
    ],
    ids=["key", "value", "nested key", "list value", "both"],
)
def test_nul_character_is_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        validate(doc)
    assert "\\u0000" in info.value.message


def test_other_control_characters_are_data() -> None:
    doc = {"ctl": "\x01\x1f\t\n\r", "\x7f": "del"}
    assert validate(doc) == doc


# -- parameters: size ------------------------------------------------------------


def _sized(n_bytes: int, filler: str = "x") -> dict[str, str]:
    # canonical_json({"a": v}) is '{"a":"' + v + '"}': 8 bytes around the value.
    per = len(filler.encode("utf-8"))
    assert (n_bytes - 8) % per == 0
    return {"a": filler * ((n_bytes - 8) // per)}


def test_size_limit_is_inclusive() -> None:
    doc = _sized(MAX_BYTES)
    assert len(canonical_json(doc).encode()) == MAX_BYTES
    assert validate(doc) == doc


def test_one_byte_over_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        validate(_sized(MAX_BYTES + 1))
    assert info.value.code == "payload_too_large"
    assert info.value.http_status == 413


def test_size_counts_utf8_bytes_not_characters() -> None:
    # 'é' is two bytes: the same number of characters as an accepted ASCII
    # document, but twice the bytes.
    n_chars = (MAX_BYTES - 8) // 2 + 10
    with pytest.raises(PayloadTooLarge):
        validate({"a": "é" * n_chars})
    assert validate({"a": "x" * n_chars})


def test_size_limit_follows_configuration() -> None:
    with pytest.raises(PayloadTooLarge):
        validate(_sized(101), max_bytes=100)
    assert validate(_sized(100), max_bytes=100)


# -- parameters: depth -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_depth_limit_is_inclusive(kind: str) -> None:
    doc = {"root": nested(MAX_DEPTH - 1, kind=kind)}
    assert validate(doc) == doc


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_one_level_too_deep_is_a_validation_error(kind: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate({"root": nested(MAX_DEPTH, kind=kind)})
    assert info.value.code == "validation_error"
    assert "deeper" in info.value.message


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_ten_thousand_levels_give_validation_error_not_recursion_error(kind: str) -> None:
    doc = {"root": nested(10_000, kind=kind)}
    with pytest.raises(ValidationError):
        validate(doc)


def test_scalars_do_not_count_as_levels() -> None:
    # 20 containers deep with a scalar inside: still 20 levels.
    doc: Any = {"leaf": "x"}
    for _ in range(MAX_DEPTH - 1):
        doc = {"k": doc}
    assert validate(doc) == doc


# -- priorities ------------------------------------------------------------------


def test_priority_names_and_order() -> None:
    assert PRIORITY_NAMES == ("critical", "high", "normal", "low")
    assert Priority.CRITICAL < Priority.HIGH < Priority.NORMAL < Priority.LOW


@pytest.mark.parametrize("name", ["critical", "high", "normal", "low", "HIGH", "Low"])
def test_priority_names_are_accepted(name: str) -> None:
    assert parse_priority(name).label == name.lower()


@pytest.mark.parametrize("bad", ["urgent", "", " high", "1", 1, 0, None, 1.0, ["high"], True])
def test_bad_priority_is_a_validation_error(bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_priority(bad)
    assert info.value.details["field"] == "priority"


# -- timeouts, retries, names ------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -300, 1.5, "10", None, True, math.nan])
def test_negative_or_non_integer_timeout_is_refused(bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        validate_non_negative_int(bad, "default_timeout")
    assert info.value.details["field"] == "default_timeout"


def test_zero_is_a_value() -> None:
    assert validate_non_negative_int(0, "max_retries") == 0
    assert validate_non_negative_number(0, "retry_backoff") == 0.0


def test_maximum_is_enforced() -> None:
    assert validate_non_negative_int(5, "max_retries", maximum=5) == 5
    with pytest.raises(ValidationError):
        validate_non_negative_int(6, "max_retries", maximum=5)


@pytest.mark.parametrize("bad", [-0.5, math.inf, math.nan, "1", None, False])
def test_bad_backoff_is_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        validate_non_negative_number(bad, "retry_backoff")


@pytest.mark.parametrize("bad", ["", "has space", "-lead", "x" * 141, "a;b", "a'b", 5, None])
def test_bad_names_are_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        validate_name(bad, "name")


@pytest.mark.parametrize("bad", ["", "   ", "x" * 141, "a\x00b", None, 3])
def test_bad_organization_names_are_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        validate_organization_name(bad)


@pytest.mark.parametrize("name", ["x' OR '1'='1", '"; DROP TABLE x; --', "🚀" * 140, "a b"])
def test_organization_names_are_data(name: str) -> None:
    assert validate_organization_name(name) == name


@pytest.mark.parametrize("bad", ["mod", "mod:", ":f", "mod:f:g", "1mod:f", "mod.:f", "a b:f"])
def test_bad_handler_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_handler_path(bad)
    assert info.value.details["field"] == "handler"


# -- retry delay -----------------------------------------------------------------


def test_retry_delay_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError):
        retry_delay(0, 10, 3600)


def test_retry_delay_doubles_until_the_cap() -> None:
    rng_high = random.Random(0)
    rng_high.uniform = lambda a, b: b  # type: ignore[method-assign]
    assert [retry_delay(a, 10, 100, rng_high) for a in range(1, 6)] == [10, 20, 40, 80, 100]


def test_retry_delay_is_finite_for_absurd_attempts() -> None:
    assert retry_delay(10**9, 10, 3600, random.Random(1)) <= 3600
    assert math.isfinite(retry_delay(10**9, 1e300, 1e308, random.Random(1)))


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    backoff=st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    extra=st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
@settings(max_examples=300, deadline=None)
def test_retry_delay_bounds(attempt: int, backoff: float, extra: float, seed: int) -> None:
    backoff_max = backoff + extra
    delay = retry_delay(attempt, backoff, backoff_max, random.Random(seed))
    capped_base = min(backoff_max, backoff * 2.0 ** min(attempt - 1, 62))
    assert delay <= backoff_max
    assert delay <= capped_base
    assert delay >= capped_base / 2
    assert delay >= 0


# -- handler results -----------------------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.text()
                | st.floats(allow_nan=True, allow_infinity=True))
RESULTS = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _result_or_error(value: Any) -> Any:
    try:
        return ("ok", validate_json_result(value))
    except ValidationError as exc:
        return ("error", exc.code)


def _round_trip_or_error(value: Any) -> Any:
    """What the result validation did before its fast path for flat values."""
    try:
        result = json.loads(json.dumps(value, allow_nan=False))
        validate({"r": result}, max_depth=10_000)
    except (TypeError, ValueError, ValidationError):
        return ("error", "validation_error")
    return ("ok", result)


@settings(max_examples=400, deadline=None)
@given(RESULTS)
def test_result_validation_equals_the_json_round_trip(value: Any) -> None:
    """Flat results skip the JSON round trip: same value, same refusals."""
    assert _result_or_error(value) == _round_trip_or_error(value)


@pytest.mark.parametrize("value", [
    {"n": (1, 2)}, (1, 2), {1: "int key"}, {"s": "nul\x00"}, {"f": math.inf},
    "\ud800", {"k": "\ud800"}, OrderedDict(a=1), {"e": Priority.HIGH}, Priority.HIGH,
    {"o": object()}, float("nan"), {"x": 1.5, "y": None, "z": True, "w": "é"},
])
def test_result_validation_of_values_that_are_not_plain(value: Any) -> None:
    assert _result_or_error(value) == _round_trip_or_error(value)
