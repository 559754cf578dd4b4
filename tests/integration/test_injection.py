"""Hostile text is data (plan P1-001, SPEC 4.9): organization names, parameters,
ids, actors and filters carrying SQL, quotes, unicode and maximum lengths are
stored and read back exactly, on both backends, and the schema is untouched."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, inspect, select

from dartwing_jobs import DuplicateJob, Engine, NotFound, Unauthorized, ValidationError
from dartwing_jobs.store.schema import jobs, metadata, organizations
from tests.conftest import World

PAYLOADS = [
    "x' OR '1'='1",
    "'; DELETE FROM background_jobs; --",
    '"; DROP TABLE background_jobs; --',
    "Robert'); DROP TABLE organizations;--",
    "acme' --",
    "acme\\",
    "%_%",
    "$1 $$ ?",
    ":name %(name)s {name}",
    "🚀 Ünïcødé 日本語",
    "שלום עולם مرحبا",  # right-to-left
    "a\u202ebc\u200b\u200d",  # bidi override, zero-width characters
    "  padded  ",
    "tab\there\nnewline",
    "x" * 140,
    "🚀" * 140,  # 140 characters, 560 UTF-8 bytes
]


def _ids(value: str) -> str:
    return repr(value[:24]) + (f"..{len(value)}" if len(value) > 24 else "")


def _assert_schema_intact(engine: Engine) -> None:
    names = set(inspect(engine.store.engine).get_table_names())
    assert set(metadata.tables) <= names
    with engine.store.read() as conn:
        conn.execute(select(func.count()).select_from(jobs)).scalar_one()


@pytest.mark.parametrize("name", PAYLOADS, ids=_ids)
def test_hostile_organization_name_is_data(world: World, name: str) -> None:
    eng = world.engine
    org = eng.create_organization(name, title=name)
    assert (org["name"], org["title"]) == (name, name)
    eng.set_member(name, World.MEMBER, create=True)
    params = {"org": name, name: [name, {"k": name}]}
    job = eng.submit_job("noop", name, params, actor=World.MEMBER)

    got = eng.get_job(job.id, actor=World.MEMBER)
    assert got.organization == name
    assert got.parameters == params
    items, _ = eng.list_jobs(actor=World.MEMBER, organization=name)
    assert [j.id for j in items] == [job.id]
    assert {o["name"] for o in eng.list_organizations(actor=World.MEMBER)} == {"acme", name}

    with eng.store.read() as conn:
        stored = conn.execute(
            select(organizations.c.name, organizations.c.title)
            .where(organizations.c.name == name)
        ).one()
        assert tuple(stored) == (name, name)
        assert conn.execute(select(func.count()).select_from(organizations)).scalar_one() == 3
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 1
    # Nothing leaked into or out of the other organizations.
    assert eng.list_jobs(actor=World.OTHER) == ([], None)
    assert eng.list_jobs(actor=World.MEMBER, organization="acme") == ([], None)
    _assert_schema_intact(eng)


@pytest.mark.parametrize("payload", PAYLOADS, ids=_ids)
def test_hostile_parameters_are_data(world: World, payload: str) -> None:
    eng = world.engine
    params: dict[str, Any] = {
        payload: payload,
        "list": [payload, 1, None, True],
        "nested": {payload: {"deeper": payload}},
    }
    job = world.submit(parameters=params)
    assert eng.get_job(job.id).parameters == params
    # The same hostile parameters again are a duplicate, found by their hash.
    with pytest.raises(DuplicateJob) as info:
        world.submit(parameters=dict(reversed(params.items())))
    assert info.value.existing_job_id == job.id
    _assert_schema_intact(eng)


def test_too_long_organization_name_is_refused(world: World) -> None:
    with pytest.raises(ValidationError):
        world.engine.create_organization("x" * 141)
    with pytest.raises(ValidationError):
        world.submit(organization="x" * 141)
    assert len(world.engine.list_organizations()) == 2


@pytest.mark.parametrize("payload", PAYLOADS[:6], ids=_ids)
def test_hostile_lookups_find_nothing(world: World, payload: str) -> None:
    eng = world.engine
    job = world.submit(actor=World.MEMBER)
    with pytest.raises(NotFound):
        eng.get_job(payload)
    with pytest.raises(NotFound):
        eng.cancel_job(payload)
    with pytest.raises(Unauthorized):
        eng.get_job(job.id, actor=payload)
    with pytest.raises(ValidationError):
        eng.list_jobs(status=[payload])
    with pytest.raises(ValidationError):
        world.submit(job_type=payload)
    with pytest.raises(ValidationError):
        world.submit(organization=payload)  # not an existing organization
    assert eng.list_jobs(job_type=payload) == ([], None)
    assert eng.list_jobs(organization=payload) == ([], None)
    assert eng.get_job(job.id).status == "queued"
    assert [j.id for j in eng.list_jobs()[0]] == [job.id]
    _assert_schema_intact(eng)


def test_hostile_person_and_title_are_data(world: World) -> None:
    eng = world.engine
    name = "x' OR '1'='1"
    person = eng.create_person(name)
    eng.set_member("acme", person["id"], create=True)
    eng.create_organization("plain", title='"; DROP TABLE organizations; --')
    assert [o["title"] for o in eng.list_organizations() if o["name"] == "plain"] == [
        '"; DROP TABLE organizations; --'
    ]
    _assert_schema_intact(eng)
