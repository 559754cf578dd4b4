"""Tenant isolation over HTTP (SPEC guarantee 7, issue 5): every world user against
every route, with the exact status code each must get, and a check that nothing
of an organization the user cannot see ever appears in a body.

Users: System Manager (SM), active acme member (MEMBER), active acme admin
(ADMIN), inactive acme member (INACTIVE), globex admin (OTHER), a user with no
person (NOBODY).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dartwing_jobs import Engine
from tests.conftest import World

from .api_support import Api, add_log, assert_error, count_jobs, set_job

SM, MEMBER, ADMIN, INACTIVE, OTHER, NOBODY = (
    World.SM, World.MEMBER, World.ADMIN, World.INACTIVE, World.OTHER, World.NOBODY)
ALL = (SM, MEMBER, ADMIN, INACTIVE, OTHER, NOBODY)

VISIBLE = {SM: {"acme", "globex"}, MEMBER: {"acme"}, ADMIN: {"acme"}, INACTIVE: set(),
           OTHER: {"globex"}, NOBODY: set()}


def hidden_markers(user: str) -> list[str]:
    """Strings that would betray an organization the user cannot see: its name and
    the e-mail domains of its members."""
    markers = []
    if "acme" not in VISIBLE[user]:
        markers += ["acme"]
    if "globex" not in VISIBLE[user]:
        markers += ["globex"]
    return markers


class Scene:
    """One queued and one dead-lettered job per organization, each with a log."""

    def __init__(self, world: World) -> None:
        self.api = Api(world.engine)
        engine = world.engine
        self.jobs: dict[tuple[str, str], str] = {}
        for org, submitter in (("acme", MEMBER), ("globex", OTHER)):
            for state in ("queued", "dead_letter"):
                response = self.api.post("/jobs", submitter, json={
                    "job_type": "noop", "organization": org, "parameters": {"s": state}})
                assert response.status_code == 201, response.text
                job_id = response.json()["id"]
                self.jobs[(org, state)] = job_id
                add_log(engine, job_id, org)
                if state == "dead_letter":
                    set_job(engine, job_id, status="dead_letter", attempts=1,
                            error_type="RuntimeError", error_message=f"{org} failed",
                            completed_at=1_700_000_000.0)


@pytest.fixture
def scene(world: World) -> Scene:
    return Scene(world)


def check_no_leak(user: str, response: Any, scene: Scene) -> None:
    text = response.text.lower().replace(user.lower(), "")  # its own e-mail is no leak
    for marker in hidden_markers(user):
        assert marker not in text, (user, response.request.url, response.text)
    for (org, _state), job_id in scene.jobs.items():
        if org not in VISIBLE[user]:
            assert job_id not in text, (user, response.request.url)


# -- routes taking a job id: 404 for another organization, never 403 ---------------

JOB_ROUTES = [
    ("GET", "/jobs/{id}", "queued"),
    ("GET", "/jobs/{id}/logs", "queued"),
    ("POST", "/jobs/{id}/cancel", "queued"),
    ("POST", "/jobs/{id}/retry", "dead_letter"),
]


@pytest.mark.parametrize("user", ALL)
@pytest.mark.parametrize(("method", "path", "state"), JOB_ROUTES)
@pytest.mark.parametrize("org", ["acme", "globex"])
def test_job_routes(scene: Scene, user: str, method: str, path: str, state: str,
                    org: str) -> None:
    job_id = scene.jobs[(org, state)]
    response = scene.api.call(method, path.format(id=job_id), user)
    # The queued/dead-letter jobs were submitted by MEMBER (acme) and OTHER
    # (globex), so submitter, admin and System Manager may all cancel and retry.
    expected = 200 if org in VISIBLE[user] else 404
    assert response.status_code == expected, (user, method, path, response.text)
    if expected == 404:
        error = assert_error(response, 404, "not_found")
        # Identical to a job that does not exist.
        missing = scene.api.call(method, path.format(id=str(uuid.uuid4())), user)
        assert error == missing.json()["error"]
    check_no_leak(user, response, scene)


@pytest.mark.parametrize(("method", "path", "state"), JOB_ROUTES[2:])
def test_manage_needs_submitter_admin_or_system_manager(
        scene: Scene, world: World, method: str, path: str, state: str) -> None:
    # A job ADMIN submitted: MEMBER sees it but may not manage it.
    job = world.submit(actor=ADMIN)
    if state == "dead_letter":
        set_job(world.engine, job.id, status="dead_letter", completed_at=1_700_000_000.0)
    assert_error(scene.api.call(method, path.format(id=job.id), MEMBER), 403, "forbidden")
    assert scene.api.call(method, path.format(id=job.id), ADMIN).status_code == 200


# -- lists -------------------------------------------------------------------------


@pytest.mark.parametrize("user", ALL)
def test_list_jobs_shows_only_visible_organizations(scene: Scene, user: str) -> None:
    response = scene.api.get("/jobs", user)
    assert response.status_code == 200
    orgs = {j["organization"] for j in response.json()["items"]}
    assert orgs == VISIBLE[user]
    expected_ids = {i for (o, _), i in scene.jobs.items() if o in VISIBLE[user]}
    assert {j["id"] for j in response.json()["items"]} == expected_ids
    check_no_leak(user, response, scene)


@pytest.mark.parametrize("user", ALL)
@pytest.mark.parametrize("org", ["acme", "globex", "initech-does-not-exist"])
def test_list_jobs_organization_filter(scene: Scene, user: str, org: str) -> None:
    response = scene.api.get("/jobs", user, params={"organization": org})
    if org in VISIBLE[user]:
        assert response.status_code == 200
        assert {j["organization"] for j in response.json()["items"]} == {org}
    elif user == SM:
        assert response.json() == {"items": [], "next_cursor": None}
    else:
        error = assert_error(response, 403, "forbidden")
        other = scene.api.get("/jobs", user, params={"organization": "zz-none"})
        assert error == other.json()["error"], "existing and missing orgs must look alike"
    check_no_leak(user, response, scene)


@pytest.mark.parametrize("user", ALL)
def test_organizations_and_me(scene: Scene, user: str) -> None:
    orgs = scene.api.get("/organizations", user)
    assert orgs.status_code == 200
    assert {o["name"] for o in orgs.json()["items"]} == VISIBLE[user]
    check_no_leak(user, orgs, scene)
    me = scene.api.get("/me", user)
    assert me.status_code == 200
    memberships = {o["name"] for o in me.json()["organizations"]}
    assert memberships == (VISIBLE[user] if user != SM else set())
    check_no_leak(user, me, scene)


@pytest.mark.parametrize("user", ALL)
def test_job_types(scene: Scene, user: str) -> None:
    listed = scene.api.get("/job-types", user)
    assert listed.status_code == 200
    assert "noop" in {t["name"] for t in listed.json()["items"]}
    created = scene.api.post("/job-types", user, json={
        "name": f"t{abs(hash(user)) % 10**6}", "handler": "tests.handlers:noop"})
    changed = scene.api.patch("/job-types/noop", user, json={"max_retries": 4})
    if user == SM:
        assert created.status_code == 201 and changed.status_code == 200
    else:
        assert_error(created, 403, "forbidden")
        assert_error(changed, 403, "forbidden")
    for response in (listed, created, changed):
        check_no_leak(user, response, scene)


# -- submission ---------------------------------------------------------------------


@pytest.mark.parametrize("user", ALL)
@pytest.mark.parametrize("org", ["acme", "globex"])
def test_submit(scene: Scene, engine: Engine, user: str, org: str) -> None:
    before = count_jobs(engine)
    response = scene.api.post("/jobs", user, json={
        "job_type": "noop", "organization": org, "parameters": {"fresh": True}})
    if org in VISIBLE[user]:
        assert response.status_code == 201, response.text
        assert count_jobs(engine) == before + 1
    else:
        assert_error(response, 403, "forbidden")
        assert count_jobs(engine) == before
    check_no_leak(user, response, scene)


@pytest.mark.parametrize("user", [MEMBER, ADMIN, INACTIVE, OTHER, NOBODY])
def test_unreachable_org_gives_one_403_whether_it_exists_or_not(scene: Scene, user: str) -> None:
    foreign = "globex" if user != OTHER else "acme"
    bodies = [
        scene.api.post("/jobs", user, json={"job_type": "noop", "organization": org}).json()
        for org in (foreign, "no-such-organization")
    ]
    assert bodies[0] == bodies[1]
    assert bodies[0]["error"]["code"] == "forbidden"
    if user in (INACTIVE, NOBODY):
        own = scene.api.post("/jobs", user, json={"job_type": "noop", "organization": "acme"})
        assert own.json() == bodies[0]


def test_system_manager_submitting_to_a_missing_org_is_422(scene: Scene) -> None:
    response = scene.api.post("/jobs", SM, json={"job_type": "noop",
                                                 "organization": "no-such-organization"})
    assert_error(response, 422, "validation_error")


def test_dependency_on_a_foreign_job_looks_like_a_missing_one(scene: Scene) -> None:
    foreign = scene.jobs[("globex", "queued")]
    answers = [
        scene.api.post("/jobs", MEMBER, json={"job_type": "noop", "organization": "acme",
                                              "depends_on": [dep]}).json()
        for dep in (foreign, "00000000-0000-0000-0000-000000000000")
    ]
    assert answers[0]["error"]["code"] == answers[1]["error"]["code"] == "validation_error"
    assert answers[0]["error"]["message"].replace(foreign, "X") == \
        answers[1]["error"]["message"].replace("00000000-0000-0000-0000-000000000000", "X")
    assert "globex" not in str(answers[0])


def test_duplicate_of_a_foreign_job_is_not_reported(scene: Scene, world: World) -> None:
    # Hashes include the organization, so identical parameters elsewhere are no
    # duplicate and no foreign job id can come back in ``existing_job_id``.
    response = scene.api.post("/jobs", MEMBER, json={
        "job_type": "noop", "organization": "acme", "parameters": {"s": "queued"}})
    error = assert_error(response, 409, "duplicate_job")
    assert error["existing_job_id"] == scene.jobs[("acme", "queued")]
    assert world.engine.get_job(error["existing_job_id"]).organization == "acme"
