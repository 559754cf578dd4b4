"""Submission on both backends: typed refusals that write nothing, job type
configuration (P2-003, P2-004, P3-001), priorities, duplicates, transactional
enqueue (P2-002) and dependencies."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from dartwing_jobs import DuplicateJob, Engine, NotFound, ValidationError
from dartwing_jobs.domain.errors import Conflict, DartwingError, PayloadTooLarge
from dartwing_jobs.store.schema import job_dependencies, job_events, job_types, jobs
from tests.conftest import World


def counts(engine: Engine) -> tuple[int, int, int]:
    with engine.store.read() as conn:
        return (
            conn.execute(select(func.count()).select_from(jobs)).scalar_one(),
            conn.execute(select(func.count()).select_from(job_events)).scalar_one(),
            conn.execute(select(func.count()).select_from(job_dependencies)).scalar_one(),
        )


def job_type_names(engine: Engine) -> list[str]:
    with engine.store.read() as conn:
        return list(conn.execute(select(job_types.c.name).order_by(job_types.c.name)).scalars())


def set_status(engine: Engine, job_id: str, status: str, *, expect_from: str) -> None:
    """What a worker would do: a conditional update, asserted to hit the row."""
    with engine.store.transaction() as conn:
        rc = conn.execute(
            update(jobs).where(jobs.c.id == job_id, jobs.c.status == expect_from)
            .values(status=status)
        ).rowcount
    assert rc == 1


def _deep(n: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(n):
        doc = {"k": doc}
    return doc


BAD_SUBMISSIONS: dict[str, tuple[dict[str, Any], type[DartwingError], str]] = {
    "parameters list": ({"parameters": [1, 2]}, ValidationError, "validation_error"),
    "parameters string": ({"parameters": "{}"}, ValidationError, "validation_error"),
    "NaN": ({"parameters": {"x": math.nan}}, ValidationError, "validation_error"),
    "Infinity": ({"parameters": {"x": [math.inf]}}, ValidationError, "validation_error"),
    "NUL in value": ({"parameters": {"x": "a\x00"}}, ValidationError, "validation_error"),
    "NUL in key": ({"parameters": {"\x00": 1}}, ValidationError, "validation_error"),
    "too deep": ({"parameters": _deep(21)}, ValidationError, "validation_error"),
    "10,000 deep": ({"parameters": _deep(10_000)}, ValidationError, "validation_error"),
    "too large": ({"parameters": {"x": "y" * 70_000}}, PayloadTooLarge, "payload_too_large"),
    "unknown job type": ({"job_type": "no_such_type"}, ValidationError, "validation_error"),
    "job type not a string": ({"job_type": 42}, ValidationError, "validation_error"),
    "bad priority": ({"priority": "urgent"}, ValidationError, "validation_error"),
    "numeric priority": ({"priority": 1}, ValidationError, "validation_error"),
    "bad run_at": ({"run_at": "tomorrow"}, ValidationError, "validation_error"),
    "naive run_at": ({"run_at": "2030-01-01T00:00:00"}, ValidationError, "validation_error"),
    "depends_on string": ({"depends_on": "abc"}, ValidationError, "validation_error"),
    "missing dependency": ({"depends_on": [str(uuid.uuid4())]}, ValidationError,
                           "validation_error"),
    "empty organization": ({"organization": ""}, ValidationError, "validation_error"),
    "organization too long": ({"organization": "o" * 141}, ValidationError, "validation_error"),
    "unknown organization": ({"organization": "initech"}, ValidationError, "validation_error"),
}


@pytest.mark.parametrize("case", sorted(BAD_SUBMISSIONS))
def test_bad_submission_is_typed_and_writes_nothing(world: World, case: str) -> None:
    kwargs, error, code = BAD_SUBMISSIONS[case]
    world.submit(parameters={"unrelated": True})  # something already there
    before = counts(world.engine)
    with pytest.raises(error) as info:
        world.submit(**kwargs)
    assert info.value.code == code
    assert info.value.message
    assert counts(world.engine) == before


@pytest.mark.parametrize("case", ["NaN", "too large", "unknown job type", "bad priority"])
def test_bad_submission_as_a_member_writes_nothing(world: World, case: str) -> None:
    kwargs, error, _ = BAD_SUBMISSIONS[case]
    before = counts(world.engine)
    with pytest.raises(error):
        world.submit(actor=World.MEMBER, **kwargs)
    assert counts(world.engine) == before


@pytest.mark.parametrize("job_type", ["noop", "no_such_type"])
def test_an_unknown_organization_is_named_before_the_job_type(world: World,
                                                               job_type: str) -> None:
    """One read answers both questions; the organization is still reported first."""
    with pytest.raises(ValidationError) as info:
        world.submit(organization="initech", job_type=job_type)
    assert info.value.details["field"] == "organization"


def test_disabled_job_type_is_refused(world: World) -> None:
    world.engine.job_types.disable("noop")
    before = counts(world.engine)
    with pytest.raises(ValidationError, match="disabled") as info:
        world.submit()
    assert info.value.details["field"] == "job_type"
    assert counts(world.engine) == before
    world.engine.job_types.update("noop", enabled=True)
    assert world.submit().status == "queued"


def test_valid_submission_is_stored_with_one_event(world: World) -> None:
    before = counts(world.engine)
    job = world.submit(parameters={"b": 2, "a": [1, "é"]}, actor=World.MEMBER)
    assert counts(world.engine) == (before[0] + 1, before[1] + 1, before[2])
    got = world.engine.get_job(job.id)
    assert got == job
    assert got.parameters == {"a": [1, "é"], "b": 2}
    assert got.status == "queued"
    assert got.submitted_by == World.MEMBER
    assert got.attempts == 0
    assert got.cancel_requested is False


def test_parameters_none_is_an_empty_object(world: World) -> None:
    job = world.engine.submit_job("noop", "acme", None)
    assert world.engine.get_job(job.id).parameters == {}


# -- priorities --------------------------------------------------------------------


def test_priority_defaults_from_the_job_type_and_can_be_overridden(world: World) -> None:
    eng = world.engine
    eng.job_types.register("urgent_report", handler="tests.handlers:noop",
                           default_priority="high")
    assert world.submit(job_type="urgent_report").priority == "high"
    assert world.submit(job_type="urgent_report", priority="low").priority == "low"
    assert world.submit(job_type="urgent_report", priority="CRITICAL").priority == "critical"
    assert world.submit().priority == "normal"  # noop: the default default
    job = world.submit(priority="critical")
    with eng.store.read() as conn:
        stored = conn.execute(select(jobs.c.priority).where(jobs.c.id == job.id)).scalar_one()
    assert stored == 0  # critical sorts first on the claim index


def test_changing_the_type_default_affects_new_jobs_only(world: World) -> None:
    old = world.submit()
    world.engine.job_types.update("noop", default_priority="low")
    assert world.submit().priority == "low"
    assert world.engine.get_job(old.id).priority == "normal"


# -- job types: zero is a value (P2-004) ---------------------------------------------


def test_timeout_zero_and_max_retries_zero_are_honoured(world: World) -> None:
    eng = world.engine
    jt = eng.job_types.register("once", handler="tests.handlers:noop",
                                default_timeout=0, max_retries=0, retry_backoff=0,
                                retry_backoff_max=0)
    assert (jt["default_timeout"], jt["max_retries"]) == (0, 0)
    assert (jt["retry_backoff"], jt["retry_backoff_max"]) == (0, 0)
    assert eng.job_types.get("once")["default_timeout"] == 0
    job = world.submit(job_type="once")
    assert (job.timeout_seconds, job.max_retries) == (0, 0)


def test_unset_job_type_fields_get_the_documented_defaults(world: World) -> None:
    jt = world.engine.job_types.register("defaults", handler="tests.handlers:noop")
    assert jt["default_timeout"] == 300
    assert jt["max_retries"] == 5
    assert jt["retry_backoff"] == 10
    assert jt["retry_backoff_max"] == 3600
    assert jt["deduplicate"] is True and jt["enabled"] is True
    assert jt["default_priority"] == "normal"


def test_update_to_zero_is_a_change_not_a_no_op(world: World) -> None:
    world.engine.job_types.update("noop", max_retries=0, default_timeout=0)
    jt = world.engine.job_types.get("noop")
    assert (jt["max_retries"], jt["default_timeout"]) == (0, 0)


@pytest.mark.parametrize(
    "bad",
    [{"default_timeout": -1}, {"max_retries": -1}, {"retry_backoff": -1.0},
     {"default_priority": "urgent"}, {"retry_backoff": 10, "retry_backoff_max": 5},
     {"deduplicate": "yes"}, {"max_retries": 1.5}],
    ids=repr,
)
def test_bad_job_type_fields_are_refused_and_nothing_stored(world: World,
                                                            bad: dict[str, Any]) -> None:
    before = job_type_names(world.engine)
    with pytest.raises(ValidationError) as info:
        world.engine.job_types.register("bad_type", handler="tests.handlers:noop", **bad)
    assert info.value.code == "validation_error"
    assert job_type_names(world.engine) == before


# -- job types: a name twice is an error (P2-003) --------------------------------------


def test_registering_the_same_name_twice_is_a_conflict(world: World) -> None:
    eng = world.engine
    with pytest.raises(Conflict) as info:
        eng.job_types.register("noop", handler="tests.handlers:noop", max_retries=9)
    assert info.value.code == "conflict"
    assert eng.job_types.get("noop")["max_retries"] == 2  # not overwritten


def test_register_all_with_a_duplicate_name_stores_nothing(world: World) -> None:
    eng = world.engine
    before = job_type_names(eng)
    config = [
        {"name": "alpha", "handler": "tests.handlers:noop"},
        {"name": "beta", "handler": "tests.handlers:noop"},
        {"name": "alpha", "handler": "tests.handlers:noop", "max_retries": 0},
    ]
    with pytest.raises(Conflict, match="alpha"):
        eng.job_types.register_all(config)
    assert job_type_names(eng) == before


def test_register_all_registers_everything(world: World) -> None:
    eng = world.engine
    eng.job_types.register_all([
        {"name": "alpha", "handler": "tests.handlers:noop"},
        {"name": "beta", "handler": "tests.handlers:noop", "max_retries": 0},
    ])
    assert {"alpha", "beta"} <= set(job_type_names(eng))
    assert eng.job_types.get("beta")["max_retries"] == 0


def test_register_all_is_all_or_nothing(world: World) -> None:
    eng = world.engine
    before = job_type_names(eng)
    with pytest.raises(Conflict):
        eng.job_types.register_all([
            {"name": "alpha", "handler": "tests.handlers:noop"},
            {"name": "noop", "handler": "tests.handlers:noop"},  # exists already
        ])
    assert job_type_names(eng) == before


# -- handler validation (P3-001) -----------------------------------------------------


@pytest.mark.parametrize(
    "handler",
    [
        "os:getcwd",  # outside the allowlist, though importable and callable
        "subprocess:run",
        "tests.handlers_evil:noop",  # a prefix of the name is not a module prefix
        "tests.handlers.missing:noop",  # inside the allowlist, not importable
        "tests.handlers:no_such_function",  # importable, no such attribute
        "tests.handlers:NOT_CALLABLE",  # importable, not callable
        "tests.handlers.noop",  # not module:function
        "",
    ],
)
def test_bad_handler_is_a_validation_error_and_nothing_is_stored(world: World,
                                                                 handler: str) -> None:
    eng = world.engine
    before = job_type_names(eng)
    with pytest.raises(ValidationError) as info:
        eng.job_types.register("evil", handler=handler)
    assert info.value.code == "validation_error"
    assert info.value.details["field"] == "handler"
    assert job_type_names(eng) == before
    with pytest.raises(NotFound):
        eng.job_types.get("evil")


def test_changing_to_a_bad_handler_is_refused(world: World) -> None:
    with pytest.raises(ValidationError):
        world.engine.job_types.update("noop", handler="os:system")
    assert world.engine.job_types.get("noop")["handler"] == "tests.handlers:noop"


# -- duplicates --------------------------------------------------------------------


def test_identical_submission_is_a_duplicate_naming_the_first(world: World) -> None:
    first = world.submit(parameters={"a": 1, "b": 2})
    before = counts(world.engine)
    with pytest.raises(DuplicateJob) as info:
        world.submit(parameters={"b": 2, "a": 1})  # same parameters, other key order
    assert info.value.code == "duplicate_job"
    assert info.value.existing_job_id == first.id
    assert info.value.to_dict()["existing_job_id"] == first.id
    assert counts(world.engine) == before


def test_same_parameters_elsewhere_are_not_duplicates(world: World) -> None:
    world.engine.job_types.register("other", handler="tests.handlers:noop")
    params = {"a": 1}
    ids = {
        world.submit(parameters=params).id,
        world.submit(parameters=params, organization="globex").id,
        world.submit(parameters=params, job_type="other").id,
        world.submit(parameters={"a": 2}).id,
    }
    assert len(ids) == 4


def test_deduplicate_false_types_are_never_refused(world: World) -> None:
    params = {"same": "always"}
    ids = [world.submit(job_type="nodedup", parameters=params).id for _ in range(5)]
    assert len(set(ids)) == 5
    assert len({world.engine.get_job(i).job_hash for i in ids}) == 1


def test_duplicate_is_accepted_again_after_the_first_ends(world: World) -> None:
    first = world.submit(parameters={"a": 1})
    world.engine.cancel_job(first.id)
    second = world.submit(parameters={"a": 1})
    assert second.id != first.id


# -- transactional enqueue (P2-002) ------------------------------------------------------


class Boom(Exception):
    pass


def test_rolled_back_submission_leaves_nothing(world: World) -> None:
    eng = world.engine
    before = counts(eng)
    with pytest.raises(Boom), eng.transaction() as tx:
        job = eng.submit_job("noop", "acme", {"tx": 1}, tx=tx)
        inside = tx.execute(select(jobs.c.status).where(jobs.c.id == job.id)).scalar_one()
        assert inside == "queued"  # the caller's own transaction sees it
        raise Boom
    with pytest.raises(NotFound):
        eng.get_job(job.id)
    assert counts(eng) == before
    # Nothing holds the hash either: the same submission is accepted now.
    assert eng.submit_job("noop", "acme", {"tx": 1}).status == "queued"


def test_committed_submission_exists(world: World) -> None:
    eng = world.engine
    with eng.transaction() as tx:
        job = eng.submit_job("noop", "acme", {"tx": 2}, tx=tx, actor=World.MEMBER)
    assert eng.get_job(job.id).status == "queued"
    assert eng.get_job(job.id, actor=World.MEMBER).submitted_by == World.MEMBER


def test_submission_is_invisible_to_other_connections_until_commit(world: World) -> None:
    eng = world.engine
    before = counts(eng)
    with eng.transaction() as tx:
        job = eng.submit_job("noop", "acme", {"tx": 3}, tx=tx)
        # Another connection from the pool: sees the committed state only.
        with pytest.raises(NotFound):
            eng.get_job(job.id)
        assert counts(eng) == before
        with eng.store.read() as other:
            ids = other.execute(select(jobs.c.id).where(jobs.c.id == job.id)).all()
        assert ids == []
    assert eng.get_job(job.id).id == job.id


def test_callers_writes_and_jobs_commit_or_vanish_together(world: World) -> None:
    eng = world.engine
    with pytest.raises(Boom), eng.transaction() as tx:
        eng.store.create_organization(tx, "initech", "Initech")
        eng.submit_job("noop", "initech", {"a": 1}, tx=tx)
        raise Boom
    assert [o["name"] for o in eng.list_organizations()] == ["acme", "globex"]
    with eng.transaction() as tx:
        eng.store.create_organization(tx, "initech", "Initech")
        job = eng.submit_job("noop", "initech", {"a": 1}, tx=tx)
    assert eng.get_job(job.id).organization == "initech"


def test_duplicate_inside_a_transaction_leaves_it_usable(world: World) -> None:
    eng = world.engine
    first = world.submit(parameters={"dup": 1})
    with eng.transaction() as tx:
        with pytest.raises(DuplicateJob) as info:
            eng.submit_job("noop", "acme", {"dup": 1}, tx=tx)
        assert info.value.existing_job_id == first.id
        # On PostgreSQL a failed statement would abort the whole transaction.
        second = eng.submit_job("noop", "acme", {"dup": 2}, tx=tx)
    assert eng.get_job(second.id).status == "queued"


def test_refused_submission_inside_a_transaction_leaves_it_usable(world: World) -> None:
    eng = world.engine
    with eng.transaction() as tx:
        with pytest.raises(ValidationError):
            eng.submit_job("no_such_type", "acme", {}, tx=tx)
        job = eng.submit_job("noop", "acme", {"after": "refusal"}, tx=tx)
    assert eng.get_job(job.id).status == "queued"


# -- dependencies ------------------------------------------------------------------


def test_dependency_on_an_unfinished_job_is_pending(world: World) -> None:
    parent = world.submit()
    child = world.submit(depends_on=[parent.id])
    assert child.status == "pending"
    assert world.engine.get_job(child.id).depends_on == [parent.id]


def test_dependency_on_completed_jobs_is_queued(world: World) -> None:
    a, b = world.submit(), world.submit()
    for job in (a, b):
        set_status(world.engine, job.id, "completed", expect_from="queued")
    child = world.submit(depends_on=[a.id, b.id, a.id])  # repeats collapse
    assert child.status == "queued"
    assert sorted(world.engine.get_job(child.id).depends_on) == sorted([a.id, b.id])


def test_one_unfinished_dependency_keeps_it_pending(world: World) -> None:
    done, running = world.submit(), world.submit()
    set_status(world.engine, done.id, "completed", expect_from="queued")
    set_status(world.engine, running.id, "running", expect_from="queued")
    assert world.submit(depends_on=[done.id, running.id]).status == "pending"


@pytest.mark.parametrize("how", ["canceled", "dead_letter"])
def test_dependency_that_already_failed_is_refused(world: World, how: str) -> None:
    parent = world.submit()
    set_status(world.engine, parent.id, how, expect_from="queued")
    before = counts(world.engine)
    with pytest.raises(ValidationError, match=how):
        world.submit(depends_on=[parent.id])
    assert counts(world.engine) == before


@pytest.mark.parametrize("actor", [None, World.MEMBER, World.SM])
def test_foreign_and_missing_dependencies_look_the_same(world: World,
                                                        actor: str | None) -> None:
    foreign = world.submit(organization="globex")
    missing = str(uuid.uuid4())
    before = counts(world.engine)
    errors: dict[str, ValidationError] = {}
    for name, dep in (("foreign", foreign.id), ("missing", missing)):
        with pytest.raises(ValidationError) as info:
            world.submit(depends_on=[dep], actor=actor)
        errors[name] = info.value
    assert counts(world.engine) == before

    def blank(err: ValidationError, dep: str) -> tuple[str, str, Any]:
        return err.code, err.message.replace(dep, "<id>"), err.details

    assert blank(errors["foreign"], foreign.id) == blank(errors["missing"], missing)
    assert "globex" not in errors["foreign"].message


def test_mixed_good_and_foreign_dependencies_are_refused(world: World) -> None:
    good = world.submit()
    foreign = world.submit(organization="globex")
    with pytest.raises(ValidationError):
        world.submit(depends_on=[good.id, foreign.id])



SAME_FIELDS = ("job_type", "organization", "parameters", "priority", "status", "deduplicate",
               "max_retries", "timeout_seconds", "retry_backoff", "retry_backoff_max",
               "submitted_by", "run_at", "attempts", "progress")


@pytest.mark.parametrize("how", [{}, {"priority": "critical"},
                                 {"run_at": "2030-01-01T00:00:00+00:00"},
                                 {"actor": World.MEMBER}])
def test_the_one_statement_submission_stores_what_the_general_path_does(
        world: World, how: dict[str, Any]) -> None:
    """On PostgreSQL a plain submission reads its job type inside the insert; the
    job must come out as a submission inside a transaction (the general path)
    makes it, the job type's settings included."""
    engine = world.engine
    engine.job_types.update("nodedup", default_priority="low", default_timeout=77,
                            max_retries=5, retry_backoff=3.0, retry_backoff_max=9.0)
    kwargs = {k: v for k, v in how.items() if k != "actor"}
    one = engine.submit_job("nodedup", "acme", {"x": 1}, actor=how.get("actor"), **kwargs)
    with engine.store.transaction() as tx:
        general = engine.submit_job("nodedup", "acme", {"x": 1}, actor=how.get("actor"),
                                    tx=tx, **kwargs)
    rows = {}
    with engine.store.read() as conn:
        for job_id in (one.id, general.id):
            rows[job_id] = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one()
    assert {f: rows[one.id][f] for f in SAME_FIELDS} == {
        f: rows[general.id][f] for f in SAME_FIELDS}
    assert rows[one.id]["job_hash"] == rows[general.id]["job_hash"]
    assert one.priority == general.priority
    assert rows[one.id]["due_at"] == pytest.approx(rows[general.id]["due_at"], abs=60)


def test_a_plain_submission_is_one_statement_on_postgresql(world: World) -> None:
    """The ping, then the insert that reads the job type itself (no separate
    read of the job type, the organization and its quota)."""
    engine = world.engine
    if engine.store.backend != "postgresql":
        pytest.skip("the one-statement submission is PostgreSQL's")
    world.submit()  # warm: the pool holds a connection
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(engine.store.engine, "before_cursor_execute", record)
    try:
        job = world.submit(parameters={"n": 1})
    finally:
        event.remove(engine.store.engine, "before_cursor_execute", record)
    assert job.status == "queued"
    writes = [s for s in sent if "INSERT" in s]
    assert len(writes) == 1, sent
    assert all("job_types" in s or s.strip().lower() == "select 1" for s in sent), sent
