"""Input limits and submission rate limits over HTTP (issue 5, items 4 and 5):
oversized, non-UTF-8, non-JSON and absurdly nested bodies, server-owned fields,
hostile strings kept as data, and token buckets shared through the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from dartwing_jobs import Engine
from dartwing_jobs.api.app import body_limit
from dartwing_jobs.api.errors import nesting_exceeds
from dartwing_jobs.store.schema import rate_limit_buckets
from tests.conftest import TEST_HANDLER_MODULES, World

from .api_support import Api, assert_error, count_jobs

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def api(world: World) -> Api:
    return Api(world.engine)


def post_raw(api: Api, content: Any, headers: dict[str, str] | None = None) -> Any:
    return api.post("/jobs", World.MEMBER, content=content, headers=headers or JSON)


# -- body size -------------------------------------------------------------------


def test_body_over_the_cap_is_413_by_content_length(api: Api, engine: Engine) -> None:
    cap = body_limit(engine)
    body = b'{"job_type": "noop", "organization": "acme", "parameters": {"x": "'
    body += b"a" * cap + b'"}}'
    error = assert_error(post_raw(api, body), 413, "payload_too_large")
    assert error["max_bytes"] == cap
    assert count_jobs(engine) == 0


def test_streamed_body_over_the_cap_is_413(api: Api, engine: Engine) -> None:
    cap = body_limit(engine)
    sent = []

    def chunks() -> Iterator[bytes]:
        # No Content-Length: the cap must hold while the body streams in.
        yield b'{"job_type": "noop", "organization": "acme", "parameters": {"x": "'
        for _ in range(cap // 8192 + 4):
            sent.append(1)
            yield b"a" * 8192
        yield b'"}}'

    assert_error(post_raw(api, chunks()), 413, "payload_too_large")
    assert count_jobs(engine) == 0


def test_a_lying_content_length_is_not_trusted(api: Api, engine: Engine) -> None:
    cap = body_limit(engine)

    def chunks() -> Iterator[bytes]:
        yield b"x" * (cap + 10)

    response = api.post("/jobs", World.MEMBER, content=chunks(),
                        headers={**JSON, "Content-Length": "10"})
    assert response.status_code in (400, 413)
    assert count_jobs(engine) == 0


def test_body_just_under_the_cap_is_parsed(api: Api) -> None:
    # Large but acceptable parameters (the engine's own limit is 64 KiB).
    response = api.post("/jobs", World.MEMBER, json={
        "job_type": "noop", "organization": "acme", "parameters": {"x": "é" * 30000}})
    assert response.status_code == 201, response.text


# -- encoding and syntax ---------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b'{"job_type": "noop", "organization": "acme", "parameters": {"x": "\xff\xfe"}}',
    b"\xc3\x28",
    '{"job_type": "noop", "organization": "acme"}'.encode("utf-16"),
])
def test_non_utf8_body_is_400(api: Api, engine: Engine, content: bytes) -> None:
    error = assert_error(post_raw(api, content), 400, "bad_request")
    assert "UTF-8" in error["message"]
    assert count_jobs(engine) == 0


@pytest.mark.parametrize("content", [
    b"{", b"not json", b'{"job_type": "noop",}', b"{'job_type': 'noop'}", b"[1, 2",
    b'{"a": 1} trailing',
])
def test_non_json_body_is_400(api: Api, engine: Engine, content: bytes) -> None:
    assert_error(post_raw(api, content), 400, "bad_request")
    assert count_jobs(engine) == 0


def test_non_json_body_is_400_on_every_route_with_a_body(api: Api) -> None:
    assert_error(api.post("/job-types", World.SM, content=b"{", headers=JSON), 400,
                 "bad_request")
    assert_error(api.patch("/job-types/noop", World.SM, content=b"{", headers=JSON), 400,
                 "bad_request")


def test_json_sent_without_a_json_content_type_is_still_json(api: Api) -> None:
    body = b'{"job_type": "noop", "organization": "acme", "parameters": {"curl": 1}}'
    response = api.post("/jobs", World.MEMBER, content=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 201, response.text


# -- nesting ------------------------------------------------------------------------------


@pytest.mark.parametrize("opening,closing", [("[", "]"), ('{"a":', "}")])
@pytest.mark.parametrize("where", ["parameters", "top"])
def test_10000_deep_json_is_422(api: Api, engine: Engine, opening: str, closing: str,
                                where: str) -> None:
    deep = opening * 10_000 + "1" + closing * 10_000
    if where == "parameters":
        body = '{"job_type": "noop", "organization": "acme", "parameters": {"d": ' + deep + "}}"
    else:
        body = deep
    assert_error(post_raw(api, body.encode()), 422, "validation_error")
    assert count_jobs(engine) == 0


def test_parameters_just_over_the_depth_limit_are_422(api: Api, engine: Engine) -> None:
    limit = engine.settings.max_parameters_depth
    nested: Any = 1
    for _ in range(limit + 1):
        nested = [nested]
    response = api.post("/jobs", World.MEMBER, json={
        "job_type": "noop", "organization": "acme", "parameters": {"d": nested}})
    assert_error(response, 422, "validation_error")


def test_brackets_inside_strings_do_not_count_as_nesting(api: Api) -> None:
    response = api.post("/jobs", World.MEMBER, json={
        "job_type": "noop", "organization": "acme",
        "parameters": {"text": "[[[[{{{{" * 5000, "quote": 'he said "[[[" \\'}})
    assert response.status_code == 201, response.text
    assert response.json()["parameters"]["text"] == "[[[[{{{{" * 5000


def test_nesting_scan() -> None:
    assert not nesting_exceeds(b'{"a": [1, {"b": 2}]}', 3)
    assert nesting_exceeds(b'{"a": [1, {"b": [2]}]}', 3)
    assert not nesting_exceeds(b'{"a": "[[[[[[[[[[[\\"[[[[[["}', 2)
    assert nesting_exceeds(b"[" * 100_000, 50)


# -- server-owned and unknown fields ------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("status", "completed"), ("attempts", 3), ("job_hash", "0" * 64),
    ("submitted_by", World.SM), ("id", "my-own-id"), ("result", {"ok": True}),
    ("created_at", "2020-01-01T00:00:00Z"), ("progress", 100), ("cancel_requested", True),
    ("parameter", {"typo": 1}),
])
def test_server_owned_and_unknown_fields_are_422(api: Api, engine: Engine, field: str,
                                                 value: Any) -> None:
    response = api.post("/jobs", World.MEMBER, json={
        "job_type": "noop", "organization": "acme", field: value})
    error = assert_error(response, 422, "validation_error")
    assert field in error["message"]
    assert count_jobs(engine) == 0


# -- hostile strings are data ------------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE background_jobs; --",
    "\" OR 1=1 --",
    "Robert'); DELETE FROM users;--",
    "<script>alert(1)</script>",
    "ünïcödé 日本語 עברית 🚀",
    "\u202etxt.exe",
    "a\u2028b\u2029c",
    "\\u0000 (escaped, not a NUL)",
    "%s %d {0} ${jndi:ldap://x}",
]


def test_hostile_and_unicode_strings_are_stored_as_data(api: Api, engine: Engine) -> None:
    params = {f"k{i}": s for i, s in enumerate(HOSTILE)}
    params[HOSTILE[0]] = HOSTILE[1]
    response = api.post("/jobs", World.MEMBER, json={
        "job_type": "noop", "organization": "acme", "parameters": params})
    assert response.status_code == 201, response.text
    job = api.get(f"/jobs/{response.json()['id']}", World.MEMBER).json()
    assert job["parameters"] == params
    assert api.get("/job-types", World.MEMBER).status_code == 200  # tables still there


@pytest.mark.parametrize("name", HOSTILE[:4])
def test_hostile_organization_names_are_just_refused(api: Api, engine: Engine,
                                                     name: str) -> None:
    response = api.post("/jobs", World.MEMBER, json={"job_type": "noop", "organization": name})
    assert response.status_code in (403, 422)
    listed = api.get("/jobs", World.MEMBER, params={"organization": name})
    assert listed.status_code in (403, 422)
    assert api.get(f"/jobs/{name}", World.MEMBER).status_code == 404
    assert count_jobs(engine) == 0


def test_lone_surrogate_is_422(api: Api, engine: Engine) -> None:
    body = b'{"job_type": "noop", "organization": "acme", "parameters": {"s": "\\ud800"}}'
    assert_error(post_raw(api, body), 422, "validation_error")
    pair = b'{"job_type": "noop", "organization": "acme", "parameters": {"s": "\\ud83d\\ude80"}}'
    response = post_raw(api, pair)
    assert response.status_code == 201
    assert response.json()["parameters"] == {"s": "🚀"}


# -- rate limits --------------------------------------------------------------------------


def limited_engine(database_url: str, **limits: int) -> Engine:
    return Engine(database_url, handler_modules=TEST_HANDLER_MODULES, **limits)


def bucket_rows(engine: Engine) -> list[tuple[str, float, float]]:
    with engine.store.read() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(rate_limit_buckets.c.key, rate_limit_buckets.c.tokens,
                   rate_limit_buckets.c.updated_at).order_by(rate_limit_buckets.c.key))]


def submit(api: Api, user: str = World.MEMBER, org: str = "acme") -> Any:
    return api.post("/jobs", user, json={"job_type": "nodedup", "organization": org,
                                         "parameters": {}})


def test_org_limit_gives_429_with_retry_after_and_writes_nothing(
        world: World, database_url: str) -> None:
    engine = limited_engine(database_url, rate_limit_org_per_minute=5,
                            rate_limit_user_per_minute=0)
    try:
        api = Api(engine)
        users = [World.MEMBER, World.ADMIN, World.SM]
        for i in range(5):
            assert submit(api, users[i % 3]).status_code == 201
        jobs_before, buckets_before = count_jobs(engine), bucket_rows(engine)
        response = submit(api, World.ADMIN)
        error = assert_error(response, 429, "rate_limited")
        assert 0 < error["retry_after"] <= 12.5  # one token at 5/min
        assert int(response.headers["Retry-After"]) >= 1
        assert int(response.headers["Retry-After"]) >= error["retry_after"]
        assert count_jobs(engine) == jobs_before
        assert bucket_rows(engine) == buckets_before
        # Another organization has its own budget.
        assert submit(api, World.OTHER, "globex").status_code == 201
    finally:
        engine.close()


def test_user_limit_is_per_user(world: World, database_url: str) -> None:
    engine = limited_engine(database_url, rate_limit_org_per_minute=0,
                            rate_limit_user_per_minute=3)
    try:
        api = Api(engine)
        for _ in range(3):
            assert submit(api, World.MEMBER).status_code == 201
        assert_error(submit(api, World.MEMBER), 429, "rate_limited")
        assert submit(api, World.ADMIN).status_code == 201
        assert count_jobs(engine) == 4
    finally:
        engine.close()


def test_refused_by_the_user_bucket_leaves_the_org_bucket_untouched(
        world: World, database_url: str) -> None:
    engine = limited_engine(database_url, rate_limit_org_per_minute=100,
                            rate_limit_user_per_minute=1)
    try:
        api = Api(engine)
        assert submit(api).status_code == 201
        before = dict((k, t) for k, t, _ in bucket_rows(engine))
        assert_error(submit(api), 429, "rate_limited")
        after = dict((k, t) for k, t, _ in bucket_rows(engine))
        assert after == before
    finally:
        engine.close()


def test_zero_means_unlimited(world: World, database_url: str) -> None:
    engine = limited_engine(database_url, rate_limit_org_per_minute=0,
                            rate_limit_user_per_minute=0)
    try:
        api = Api(engine)
        for _ in range(30):
            assert submit(api).status_code == 201
        assert bucket_rows(engine) == []
    finally:
        engine.close()


def test_refused_submissions_cost_no_tokens(world: World, database_url: str) -> None:
    engine = limited_engine(database_url, rate_limit_org_per_minute=2,
                            rate_limit_user_per_minute=2)
    try:
        api = Api(engine)
        for _ in range(5):
            assert submit(api, World.MEMBER, "globex").status_code == 403
            bad = api.post("/jobs", World.MEMBER, json={"job_type": "nope",
                                                        "organization": "acme"})
            assert bad.status_code == 422
        assert submit(api).status_code == 201
        assert submit(api).status_code == 201
        assert submit(api).status_code == 429
    finally:
        engine.close()


def test_a_non_member_never_learns_a_foreign_org_is_busy(world: World,
                                                         database_url: str) -> None:
    engine = limited_engine(database_url, rate_limit_org_per_minute=1,
                            rate_limit_user_per_minute=0)
    try:
        api = Api(engine)
        assert submit(api, World.OTHER, "globex").status_code == 201
        assert submit(api, World.OTHER, "globex").status_code == 429
        assert_error(submit(api, World.MEMBER, "globex"), 403, "forbidden")
    finally:
        engine.close()


def test_bucket_refills_with_time(world: World, database_url: str) -> None:
    engine = limited_engine(database_url, rate_limit_org_per_minute=60,
                            rate_limit_user_per_minute=0)  # a burst of 60, then 1 per second
    try:
        api = Api(engine)
        codes: list[int] = []
        for _ in range(300):  # however slow the machine, the bucket empties eventually
            codes.append(submit(api).status_code)
            if codes[-1] == 429:
                break
        assert codes[-1] == 429 and codes.count(201) >= 60
        time.sleep(1.5)
        assert submit(api).status_code == 201
    finally:
        engine.close()


def test_two_api_processes_share_one_budget(world: World, database_url: str) -> None:
    """Two apps on two engines (two connection pools: what two ``serve`` processes
    are) hammer the same organization concurrently; the database decides."""
    engines = [limited_engine(database_url, rate_limit_org_per_minute=10,
                              rate_limit_user_per_minute=0) for _ in range(2)]
    try:
        apis = [Api(e) for e in engines]
        results: list[int] = []
        lock = threading.Lock()

        def hammer(api: Api, user: str) -> None:
            for _ in range(8):
                code = submit(api, user).status_code
                with lock:
                    results.append(code)

        threads = [threading.Thread(target=hammer, args=(apis[i % 2], user))
                   for i, user in enumerate([World.MEMBER, World.ADMIN, World.SM] * 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = results.count(201)
        assert set(results) <= {201, 429}
        # 10 in the bucket, plus at most one refilled during the run.
        assert 10 <= accepted <= 11, results
        assert count_jobs(engines[0]) == accepted
    finally:
        for e in engines:
            e.close()


def test_trusted_python_submissions_are_not_rate_limited(world: World,
                                                         database_url: str) -> None:
    engine = limited_engine(database_url, rate_limit_org_per_minute=1,
                            rate_limit_user_per_minute=1)
    try:
        for i in range(5):
            engine.submit_job("noop", "acme", {"i": i}, actor=World.MEMBER)
        with engine.store.read() as conn:
            assert conn.execute(select(func.count()).select_from(rate_limit_buckets)
                                ).scalar_one() == 0
    finally:
        engine.close()
