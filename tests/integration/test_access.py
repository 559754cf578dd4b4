"""Access control (SPEC 2, plan P1-003) on both backends: every user of the World
against every job operation on an acme job, with the exact outcome.

A job you may not see is ``NotFound`` with the very same error as a job that does
not exist; submitting to an organization you cannot reach is ``Forbidden`` with the
same message whether the organization exists or not."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from dartwing_jobs import Engine, Forbidden, Job, NotFound, Unauthorized
from dartwing_jobs.domain.errors import DartwingError, ValidationError
from tests.conftest import World

BOB = "bob@acme.test"  # a second plain acme member

INSIDERS = (World.SM, World.MEMBER, World.ADMIN)
OUTSIDERS = (World.INACTIVE, World.OTHER, World.NOBODY)
USERS = INSIDERS + OUTSIDERS
ACTIONS = ("get", "list", "submit", "cancel", "retry", "job_logs")


class AcmeWorld(World):
    """The World plus: a second plain member, NOBODY's (unlinked) person made an
    active acme member - which must give the user nothing - and a person with no
    user at all, also an active member."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        engine.create_user(BOB)
        engine.set_member("acme", BOB, create=True)
        # NOBODY's person kept its name (the e-mail) but lost its user link.
        engine.set_member("acme", World.NOBODY, create=True)
        pat = engine.create_person("Pat Userless")
        engine.set_member("acme", pat["id"], create=True)
        self.job = self.submit(actor=World.MEMBER, parameters={"owner": "member"})
        self.globex_job = self.submit(organization="globex", parameters={"g": 1})


@pytest.fixture
def acme(engine: Engine) -> AcmeWorld:
    return AcmeWorld(engine)


def error_of(fn: Callable[[], Any]) -> DartwingError:
    with pytest.raises(DartwingError) as info:
        fn()
    return info.value


def shape(err: DartwingError) -> tuple[type, str, str, dict[str, Any]]:
    return type(err), err.code, err.message, err.details


def _do(w: AcmeWorld, action: str, actor: str) -> Any:
    eng, job_id = w.engine, w.job.id
    if action == "get":
        return eng.get_job(job_id, actor=actor)
    if action == "list":
        return eng.list_jobs(actor=actor)
    if action == "submit":
        return w.submit(actor=actor)
    if action == "cancel":
        return eng.cancel_job(job_id, actor=actor)
    if action == "retry":
        eng.cancel_job(job_id)  # trusted code cancels it first
        return eng.retry_job(job_id, actor=actor)
    if action == "job_logs":
        return eng.job_logs(job_id, actor=actor)
    raise AssertionError(action)


def _on_missing(w: AcmeWorld, action: str, actor: str) -> Any:
    """The same action on a job id that does not exist."""
    eng, missing = w.engine, str(uuid.uuid4())
    return {
        "get": lambda: eng.get_job(missing, actor=actor),
        "cancel": lambda: eng.cancel_job(missing, actor=actor),
        "retry": lambda: eng.retry_job(missing, actor=actor),
        "job_logs": lambda: eng.job_logs(missing, actor=actor),
    }[action]()


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("user", USERS)
def test_access_matrix(acme: AcmeWorld, user: str, action: str) -> None:
    eng = acme.engine
    if user in INSIDERS:
        result = _do(acme, action, user)
        if action == "get":
            assert isinstance(result, Job) and result.id == acme.job.id
        elif action == "list":
            items, _ = result
            ids = {j.id for j in items}
            assert acme.job.id in ids
            assert (acme.globex_job.id in ids) is (user == World.SM)
            assert {j.organization for j in items} <= (
                {"acme", "globex"} if user == World.SM else {"acme"})
        elif action == "submit":
            assert result.status == "queued"
            assert result.submitted_by == user
        elif action == "cancel":
            assert result.status == "canceled"
            assert eng.get_job(acme.job.id).status == "canceled"
        elif action == "retry":
            assert result.status == "queued"
            assert eng.get_job(acme.job.id).status == "queued"
        elif action == "job_logs":
            assert result == []
        return

    # Outsiders: nothing about acme, and refusals that reveal nothing.
    if action == "list":
        items, cursor = _do(acme, action, user)
        assert all(j.organization != "acme" for j in items)
        assert cursor is None
        if user == World.OTHER:
            assert [j.id for j in items] == [acme.globex_job.id]
        else:
            assert items == []
        return
    if action == "submit":
        refused = error_of(lambda: _do(acme, action, user))
        assert isinstance(refused, Forbidden)
        nowhere = error_of(lambda: acme.submit(organization="no-such-org", actor=user))
        assert shape(refused) == shape(nowhere)
        assert "acme" not in refused.message
        return
    refused = error_of(lambda: _do(acme, action, user))
    assert isinstance(refused, NotFound)
    assert shape(refused) == shape(error_of(lambda: _on_missing(acme, action, user)))
    # ... and changed nothing.
    expected = "canceled" if action == "retry" else "queued"
    assert eng.get_job(acme.job.id).status == expected


@pytest.mark.parametrize("user", OUTSIDERS)
def test_outsiders_cannot_list_acme_by_name(acme: AcmeWorld, user: str) -> None:
    eng = acme.engine
    refused = error_of(lambda: eng.list_jobs(actor=user, organization="acme"))
    nowhere = error_of(lambda: eng.list_jobs(actor=user, organization="no-such-org"))
    assert isinstance(refused, Forbidden)
    assert shape(refused) == shape(nowhere)
    assert "acme" not in [o["name"] for o in eng.list_organizations(actor=user)]


def test_organizations_each_user_sees(acme: AcmeWorld) -> None:
    eng = acme.engine

    def names(user: str) -> list[str]:
        return [o["name"] for o in eng.list_organizations(actor=user)]

    assert names(World.SM) == ["acme", "globex"]
    assert names(World.MEMBER) == ["acme"]
    assert names(World.ADMIN) == ["acme"]
    assert names(World.OTHER) == ["globex"]
    assert names(World.INACTIVE) == []
    assert names(World.NOBODY) == []


# -- cancel and retry: submitter, admin, System Manager -------------------------------


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_member_may_not_manage_another_members_job(acme: AcmeWorld, action: str) -> None:
    eng = acme.engine
    admins_job = acme.submit(actor=World.ADMIN)
    if action == "retry":
        eng.cancel_job(admins_job.id)
        eng.cancel_job(acme.job.id)
    fn = eng.cancel_job if action == "cancel" else eng.retry_job
    for who, job in ((World.MEMBER, admins_job), (BOB, acme.job)):
        err = error_of(lambda who=who, job=job: fn(job.id, actor=who))
        assert isinstance(err, Forbidden), (who, err)
        assert err.code == "forbidden"
        # A member may still see the job.
        assert eng.get_job(job.id, actor=who).id == job.id
    expected = "queued" if action == "cancel" else "canceled"
    assert eng.get_job(admins_job.id).status == expected
    assert eng.get_job(acme.job.id).status == expected


def test_member_may_manage_own_job_and_admin_any(acme: AcmeWorld) -> None:
    eng = acme.engine
    own = acme.submit(actor=BOB)
    assert eng.cancel_job(own.id, actor=BOB).status == "canceled"
    assert eng.retry_job(own.id, actor=BOB).status == "queued"
    bobs = acme.submit(actor=BOB)
    assert eng.cancel_job(bobs.id, actor=World.ADMIN).status == "canceled"
    assert eng.retry_job(bobs.id, actor=World.ADMIN).status == "queued"
    trusted = acme.submit()  # submitted by trusted code: no submitter
    assert trusted.submitted_by is None
    assert isinstance(error_of(lambda: eng.cancel_job(trusted.id, actor=BOB)), Forbidden)
    assert eng.cancel_job(trusted.id, actor=World.SM).status == "canceled"


def test_globex_admin_is_not_an_acme_admin(acme: AcmeWorld) -> None:
    eng = acme.engine
    assert eng.cancel_job(acme.globex_job.id, actor=World.OTHER).status == "canceled"
    assert isinstance(error_of(lambda: eng.cancel_job(acme.job.id, actor=World.OTHER)),
                      NotFound)


# -- changes take effect at once -------------------------------------------------------


def test_deactivated_membership_takes_effect_immediately(acme: AcmeWorld) -> None:
    eng = acme.engine
    assert eng.get_job(acme.job.id, actor=World.MEMBER).id == acme.job.id
    eng.set_member("acme", World.MEMBER, status="Inactive", create=False)
    # Its own job, submitted while active, is gone from view at once.
    assert isinstance(error_of(lambda: eng.get_job(acme.job.id, actor=World.MEMBER)), NotFound)
    assert isinstance(error_of(lambda: eng.cancel_job(acme.job.id, actor=World.MEMBER)),
                      NotFound)
    assert eng.list_jobs(actor=World.MEMBER) == ([], None)
    assert isinstance(error_of(lambda: acme.submit(actor=World.MEMBER)), Forbidden)
    assert eng.get_job(acme.job.id).status == "queued"
    eng.set_member("acme", World.MEMBER, status="Active", create=False)
    assert eng.get_job(acme.job.id, actor=World.MEMBER).id == acme.job.id


def test_demoted_admin_loses_admin_rights_immediately(acme: AcmeWorld) -> None:
    eng = acme.engine
    eng.set_member("acme", World.ADMIN, role="member", create=False)
    assert isinstance(error_of(lambda: eng.cancel_job(acme.job.id, actor=World.ADMIN)),
                      Forbidden)
    eng.set_member("acme", World.ADMIN, role="admin", create=False)
    assert eng.cancel_job(acme.job.id, actor=World.ADMIN).status == "canceled"


def test_new_membership_takes_effect_immediately(acme: AcmeWorld) -> None:
    eng = acme.engine
    assert isinstance(error_of(lambda: eng.get_job(acme.job.id, actor=World.OTHER)), NotFound)
    eng.set_member("acme", World.OTHER, create=True)
    assert eng.get_job(acme.job.id, actor=World.OTHER).id == acme.job.id


# -- identities that are not users ------------------------------------------------------


@pytest.mark.parametrize("actor", ["Pat Userless", "stranger@example.com", "", "acme"])
def test_unknown_actor_is_unauthorized(acme: AcmeWorld, actor: str) -> None:
    eng = acme.engine
    for fn in (lambda: eng.get_job(acme.job.id, actor=actor),
               lambda: eng.list_jobs(actor=actor),
               lambda: acme.submit(actor=actor),
               lambda: eng.cancel_job(acme.job.id, actor=actor)):
        assert isinstance(error_of(fn), Unauthorized)
    assert eng.get_job(acme.job.id).status == "queued"


def test_outsider_cannot_manage_job_types_or_people(acme: AcmeWorld) -> None:
    eng = acme.engine
    for user in (World.ADMIN, World.MEMBER, World.OTHER):
        for fn in (
            lambda u=user: eng.job_types.register("x", handler="tests.handlers:noop", actor=u),
            lambda u=user: eng.create_organization("initech", actor=u),
            lambda u=user: eng.set_member("acme", World.OTHER, create=True, actor=u),
            lambda u=user: eng.create_token(World.SM, actor=u),
        ):
            assert isinstance(error_of(fn), Forbidden)
    assert eng.job_types.register("x", handler="tests.handlers:noop", actor=World.SM)


def test_system_manager_submitting_to_a_missing_organization_gets_a_typed_error(
        acme: AcmeWorld) -> None:
    with pytest.raises(ValidationError):
        acme.submit(organization="no-such-org", actor=World.SM)
