"""The service layer: every edge (Python callers, HTTP, CLI) goes through here, and
access is decided here, once."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection, RowMapping

from .access import (
    FORBIDDEN_ORG,
    JOB_NOT_FOUND,
    Principal,
    authenticate,
    hash_token,
    new_token,
    resolve_principal,
)
from .config import Settings
from .domain.errors import (
    Forbidden,
    InvalidState,
    NotFound,
    QuotaExceeded,
    ValidationError,
)
from .domain.hashing import job_hash
from .domain.ids import new_id
from .domain.outcomes import Outcome, OutcomeKind
from .domain.priorities import Priority, parse_priority
from .domain.statuses import Status
from .domain.validation import (
    validate_non_negative_int,
    validate_organization_name,
    validate_parameters,
)
from .job_types import JobTypes
from .schedules import Schedules
from .store import Store, controls, open_store
from .store.controls import ClaimPolicy
from .store.schema import ALL_JOB_TYPES
from .views import Job, iso, log_entry, organization_dict, parse_time

if TYPE_CHECKING:
    from .scheduler.retention_cleaner import CleanupProgress, CleanupResult

MAX_PAGE = 200
#: ``set_limits``: leave this field as it is.
UNCHANGED: Any = object()
MEMBER_STATUSES = ("Active", "Inactive")
MEMBER_ROLES = ("member", "admin")


class Engine:
    """``Engine(url)`` is cheap to hold and safe to share between threads; make one
    per process."""

    def __init__(self, database_url: str | None = None, *, settings: Settings | None = None,
                 **overrides: Any) -> None:
        """``overrides`` are ``Settings`` fields (``handler_modules=...``), taking
        precedence over ``settings`` and the environment."""
        given = settings.model_dump() if settings is not None else {}
        if database_url is not None:
            overrides["database_url"] = database_url
        self.settings = Settings(**{**given, **overrides})
        self.store: Store = open_store(
            self.settings.database_url,
            pool_size=self.settings.pool_size,
            synchronous=self.settings.sqlite_synchronous,
        )
        self.store.claim_policy = ClaimPolicy(
            fair=self.settings.fair_claiming,
            default_max_running=self.settings.max_running_per_organization,
            default_max_queued=self.settings.max_queued_per_organization,
        )
        self.schedules = Schedules(self)
        self.job_types = JobTypes(
            self.store,
            lambda: self.settings.handler_prefixes,
            self._principal,
            self.store.transaction,
        )

    # -- plumbing ----------------------------------------------------------

    def migrate(self) -> None:
        self.store.migrate()

    def close(self) -> None:
        self.store.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction to share with ``submit_job(..., tx=tx)``: the caller's
        writes and the jobs commit together, or not at all."""
        with self.store.transaction() as conn:
            yield conn

    @contextmanager
    def _write(self, tx: Connection | None) -> Iterator[Connection]:
        if tx is not None:
            yield tx
        else:
            with self.store.transaction() as conn:
                yield conn

    def _principal(self, conn: Connection, actor: str | None) -> Principal:
        return resolve_principal(self.store, conn, actor)

    def _job(self, conn: Connection, row: RowMapping) -> Job:
        deps = self.store.dependencies_of(conn, [row["id"]]).get(row["id"], [])
        return Job.from_row(row, deps)

    def _visible_job(self, conn: Connection, principal: Principal, job_id: str) -> RowMapping:
        if not isinstance(job_id, str) or len(job_id) > 64:
            raise NotFound(JOB_NOT_FOUND)
        row = self.store.get_job(conn, job_id)
        if row is None:
            raise NotFound(JOB_NOT_FOUND)
        principal.require_job_visible(row["organization"])
        return row

    # -- submission --------------------------------------------------------

    def submit_job(
        self,
        job_type: str,
        organization: str,
        parameters: dict[str, Any] | None = None,
        *,
        actor: str | None = None,
        depends_on: Sequence[str] | None = None,
        run_at: Any = None,
        priority: str | None = None,
        tx: Connection | None = None,
    ) -> Job:
        organization, params, chosen_priority = self._validate_submission(
            job_type, organization, parameters, priority)
        deps = self._validate_depends_on(depends_on)
        due = parse_time(run_at, "run_at")
        if tx is None and not deps:
            # The common case writes one statement (the insert, its event and its
            # notifications): no transaction around it, so no BEGIN and COMMIT
            # round trips; where the backend can, the insert reads the job type
            # itself. With a quota to hold, the transaction below does it all.
            with self.store.single_statement() as conn:
                principal = self._principal(conn, actor)
                if (principal.can_submit(organization)
                        and self.store.claim_policy.default_max_queued is None):
                    row = self.store.insert_typed_job(
                        conn, self._typed_values(job_type, organization, params, principal),
                        None if chosen_priority is None else int(chosen_priority), due,
                        check_organization=principal.sees_everything)
                    if row is not None:
                        return Job.from_row(row, [])
                principal, jt, quota = self._authorize_submission(
                    conn, actor, job_type, organization, principal)
                if quota is None:
                    values = self._job_values(jt, organization, params, chosen_priority,
                                              Status.QUEUED, principal)
                    return Job.from_row(self.store.insert_job(conn, values, [], due), [])
        with self._write(tx) as conn:
            principal, jt, quota = self._authorize_submission(
                conn, actor, job_type, organization)
            self._check_quota(conn, organization, quota, 1)
            status = self._initial_status(conn, organization, deps)
            values = self._job_values(jt, organization, params, chosen_priority, status,
                                      principal)
            row = self.store.insert_job(conn, values, deps, due)  # wakes workers too
            return Job.from_row(row, deps)

    def submit_jobs(
        self,
        job_type: str,
        organization: str,
        parameters_list: Sequence[dict[str, Any] | None],
        *,
        actor: str | None = None,
        priority: str | None = None,
        tx: Connection | None = None,
    ) -> list[Job]:
        """Submit many jobs of one type in one transaction and one statement: all are
        accepted, or none (a duplicate among them raises ``DuplicateJob``)."""
        prepared = [self._validate_submission(job_type, organization, p, priority)
                    for p in parameters_list]
        if not prepared:
            return []
        organization = prepared[0][0]
        with self._write(tx) as conn:
            principal, jt, quota = self._authorize_submission(
                conn, actor, job_type, organization)
            self._check_quota(conn, organization, quota, len(prepared))
            rows = self.store.insert_jobs(conn, [
                self._job_values(jt, organization, params, chosen, Status.QUEUED, principal)
                for _, params, chosen in prepared
            ])
            self.store.notify_jobs_available(conn)
            return [Job.from_row(r, []) for r in rows]

    def _validate_submission(
        self, job_type: Any, organization: Any, parameters: Any, priority: Any,
    ) -> tuple[str, dict[str, Any], Priority | None]:
        """Everything that needs no database: refused before anything is written."""
        if not isinstance(job_type, str):
            raise ValidationError("job_type must be a string", field="job_type")
        organization = validate_organization_name(organization)
        params = validate_parameters(
            parameters,
            max_bytes=self.settings.max_parameters_bytes,
            max_depth=self.settings.max_parameters_depth,
        )
        return organization, params, None if priority is None else parse_priority(priority)

    def _authorize_submission(
        self, conn: Connection, actor: str | None, job_type: str, organization: str,
        principal: Principal | None = None,
    ) -> tuple[Principal, Mapping[str, Any], int | None]:
        """The principal (unless known), the job type's row and the queued-job
        quota that applies (None: no quota); the database is asked once for the
        last two."""
        if principal is None:
            principal = self._principal(conn, actor)
        if not principal.can_submit(organization):
            raise Forbidden(FORBIDDEN_ORG)
        context = self.store.submission_context(conn, organization, job_type)
        if principal.sees_everything and not context.organization_exists:
            raise ValidationError(
                f"organization {organization!r} does not exist", field="organization"
            )
        jt = context.job_type
        if jt is None:
            raise ValidationError(f"unknown job type {job_type!r}", field="job_type")
        if not jt["enabled"]:
            raise ValidationError(f"job type {job_type!r} is disabled", field="job_type")
        quota = context.max_queued
        return principal, jt, (quota if quota is not None
                               else self.store.claim_policy.default_max_queued)

    def _check_quota(self, conn: Connection, organization: str, quota: int | None,
                     adding: int) -> None:
        """The queued-job quota (jobs accepted and not started yet). Off unless a
        default or an override is set. The organization's row is locked first, so
        concurrent submissions to one organization cannot both squeeze under it."""
        if quota is None:
            return
        controls.lock_organization(conn, organization)
        waiting = controls.count_waiting(conn, organization, quota + 1)
        if waiting + adding > quota:
            raise QuotaExceeded(
                f"organization {organization!r} is over its queued-job quota of {quota} "
                f"({waiting} waiting, {adding} submitted)", quota=quota)

    @staticmethod
    def _typed_values(job_type: str, organization: str, params: dict[str, Any],
                      principal: Principal) -> dict[str, Any]:
        """The values of ``_job_values`` that need no job type row."""
        return {
            "id": new_id(),
            "job_type": job_type,
            "organization": organization,
            "parameters": params,
            "job_hash": job_hash(job_type, organization, params),
            "submitted_by": principal.user_id,
        }

    @staticmethod
    def _job_values(
        jt: Mapping[str, Any], organization: str, params: dict[str, Any],
        chosen_priority: Priority | None, status: Status, principal: Principal,
    ) -> dict[str, Any]:
        priority = chosen_priority if chosen_priority is not None else Priority(
            jt["default_priority"])
        return {
            **Engine._typed_values(jt["name"], organization, params, principal),
            "priority": int(priority),
            "status": status.value,
            "deduplicate": bool(jt["deduplicate"]),
            "max_retries": jt["max_retries"],
            "timeout_seconds": jt["default_timeout"],
            "retry_backoff": jt["retry_backoff"],
            "retry_backoff_max": jt["retry_backoff_max"],
        }

    @staticmethod
    def _validate_depends_on(depends_on: Sequence[str] | None) -> list[str]:
        if depends_on is None:
            return []
        if isinstance(depends_on, str) or not all(isinstance(d, str) for d in depends_on):
            raise ValidationError("depends_on must be a list of job ids", field="depends_on")
        unique = sorted(set(depends_on))
        if len(unique) > 1000:
            raise ValidationError("at most 1000 dependencies", field="depends_on")
        return unique

    def _initial_status(self, conn: Connection, organization: str, deps: list[str]) -> Status:
        if not deps:
            return Status.QUEUED
        rows = {r["id"]: r for r in self.store.lock_dependencies(conn, deps)}
        for dep in deps:
            row = rows.get(dep)
            # Missing and foreign look the same: nothing about other organizations leaks.
            if row is None or row["organization"] != organization:
                raise ValidationError(
                    f"dependency {dep!r} does not exist in this organization",
                    field="depends_on",
                )
            if row["status"] in (Status.DEAD_LETTER.value, Status.CANCELED.value):
                raise ValidationError(
                    f"dependency {dep!r} already ended {row['status']}", field="depends_on"
                )
        if all(rows[d]["status"] == Status.COMPLETED.value for d in deps):
            return Status.QUEUED
        return Status.PENDING

    # -- reads -------------------------------------------------------------

    def get_job(self, job_id: str, *, actor: str | None = None) -> Job:
        with self.store.read() as conn:
            principal = self._principal(conn, actor)
            return self._job(conn, self._visible_job(conn, principal, job_id))

    def list_jobs(
        self,
        *,
        actor: str | None = None,
        organization: str | None = None,
        status: Sequence[str] | str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """Visible jobs, newest first; returns the page and the cursor of the next."""
        limit = validate_non_negative_int(limit, "limit", maximum=MAX_PAGE)
        if limit < 1:
            raise ValidationError("limit must be at least 1", field="limit")
        statuses = [status] if isinstance(status, str) else list(status or [])
        for s in statuses:
            if s not in {x.value for x in Status}:
                raise ValidationError(f"unknown status {s!r}", field="status")
        after = _decode_cursor(cursor) if cursor else None
        with self.store.read() as conn:
            principal = self._principal(conn, actor)
            if organization is not None:
                principal.require_read(organization)
                orgs: list[str] | None = [organization]
            else:
                orgs = principal.visible_organizations()
            rows = self.store.list_jobs(
                conn, organizations_in=orgs, statuses=statuses, job_type=job_type,
                after=after, limit=limit + 1,
            )
            page = rows[:limit]
            deps = self.store.dependencies_of(conn, [r["id"] for r in page])
        next_cursor = (
            _encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
        )
        return [Job.from_row(r, deps.get(r["id"], [])) for r in page], next_cursor

    def get_metrics(self, organization: str, *, window_hours: float = 24,
                    actor: str | None = None) -> dict[str, Any]:
        from . import metrics

        return metrics.get_metrics(self, organization, window_hours, actor)

    def get_operator_metrics(self, *, actor: str | None = None) -> dict[str, Any]:
        """Operators only (System Manager): running jobs per organization, with the
        limits and pauses in force (``list_limits``)."""
        with self.store.read() as conn:
            self._principal(conn, actor).require_system_manager()
            return {
                "running_by_organization": controls.running_by_organization(conn),
                **self._limits_view(conn),
            }

    # -- claim controls (System Manager, or trusted code) ----------------------

    def pause(self, *, organization: str | None = None, job_type: str | None = None,
              actor: str | None = None) -> dict[str, Any]:
        """Pause an organization, a job type, or one job type of one organization:
        its jobs stay queued and no claim takes them until ``resume``."""
        return self._set_paused(organization, job_type, True, actor)

    def resume(self, *, organization: str | None = None, job_type: str | None = None,
               actor: str | None = None) -> dict[str, Any]:
        """Undo ``pause``; the waiting jobs run in their order (priority, due time)."""
        return self._set_paused(organization, job_type, False, actor)

    def _set_paused(self, organization: str | None, job_type: str | None, paused: bool,
                    actor: str | None) -> dict[str, Any]:
        if organization is None and job_type is None:
            raise ValidationError("name an organization, a job type, or both")
        with self.store.transaction() as conn:
            self._principal(conn, actor).require_system_manager()
            self._check_control_target(conn, organization, job_type)
            if organization is None:
                assert job_type is not None
                if paused:
                    controls.pause_job_type(conn, job_type)
                else:
                    controls.resume_job_type(conn, job_type)
            else:
                controls.set_limit(conn, organization, job_type or ALL_JOB_TYPES,
                                   {"paused": paused})
            if not paused:
                self.store.notify_jobs_available(conn)
        return {"organization": organization, "job_type": job_type, "paused": paused}

    def set_limits(
        self, organization: str, *, job_type: str | None = None,
        max_running: int | None = UNCHANGED, max_queued: int | None = UNCHANGED,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Per-organization overrides (per job type for ``max_running``). ``None``
        returns a field to the default; 0 running pauses; fields not given stay."""
        values: dict[str, Any] = {}
        for name, value in (("max_running", max_running), ("max_queued", max_queued)):
            if value is UNCHANGED:
                continue
            if value is not None:
                value = validate_non_negative_int(value, name, maximum=10_000_000)
            values[name] = value
        if job_type is not None and values.get("max_queued") is not None:
            raise ValidationError("the queued-job quota is per organization, not per job type",
                                  field="max_queued")
        with self.store.transaction() as conn:
            self._principal(conn, actor).require_system_manager()
            self._check_control_target(conn, organization, job_type)
            if values:
                controls.set_limit(conn, organization, job_type or ALL_JOB_TYPES, values)
                self.store.notify_jobs_available(conn)
            row = controls.get_limit(conn, organization, job_type or ALL_JOB_TYPES)
        return _limit_dict(row, organization, job_type)

    def list_limits(self, *, actor: str | None = None) -> dict[str, Any]:
        """The defaults, every override and pause, and the paused job types."""
        with self.store.read() as conn:
            self._principal(conn, actor).require_system_manager()
            return self._limits_view(conn)

    def _limits_view(self, conn: Connection) -> dict[str, Any]:
        policy = self.store.claim_policy
        return {
            "defaults": {"fair_claiming": policy.fair,
                         "max_running_per_organization": policy.default_max_running,
                         "max_queued_per_organization": policy.default_max_queued},
            "organizations": [_limit_dict(r, r["organization"], r["job_type"] or None)
                              for r in controls.list_limits(conn)],
            "paused_job_types": controls.paused_types(conn),
        }

    def _check_control_target(self, conn: Connection, organization: str | None,
                              job_type: str | None) -> None:
        if organization is not None and (
                not isinstance(organization, str)
                or not self.store.organization_exists(conn, organization)):
            raise NotFound(f"organization {organization!r} does not exist")
        if job_type is not None and (
                not isinstance(job_type, str) or self.store.get_job_type(conn, job_type) is None):
            raise NotFound(f"job type {job_type!r} does not exist")

    def job_logs(self, job_id: str, *, actor: str | None = None) -> list[dict[str, Any]]:
        with self.store.read() as conn:
            principal = self._principal(conn, actor)
            self._visible_job(conn, principal, job_id)
            return [log_entry(r) for r in self.store.execution_log(conn, job_id)]

    # -- state changes -----------------------------------------------------

    def cancel_job(self, job_id: str, *, actor: str | None = None) -> Job:
        with self.store.transaction() as conn:
            principal = self._principal(conn, actor)
            row = self._visible_job(conn, principal, job_id)
            if not principal.can_manage_job(row["organization"], row["submitted_by"]):
                raise Forbidden("only the submitter, an organization admin or a System "
                                "Manager may cancel this job")
            row = self.store.cancel_job(conn, job_id)
            if row["status"] == Status.CANCELED.value:
                self.store.cancel_dependents(conn, job_id, Status.CANCELED.value)
            return self._job(conn, row)

    def retry_job(self, job_id: str, *, actor: str | None = None) -> Job:
        with self.store.transaction() as conn:
            principal = self._principal(conn, actor)
            row = self._visible_job(conn, principal, job_id)
            if not principal.can_manage_job(row["organization"], row["submitted_by"]):
                raise Forbidden("only the submitter, an organization admin or a System "
                                "Manager may retry this job")
            self._require_dependencies_completed(conn, row)
            return self._job(conn, self.store.retry_job(conn, job_id))

    def _require_dependencies_completed(self, conn: Connection, row: RowMapping) -> None:
        """A retried job runs at once, so its dependencies must have completed;
        until then a retry is refused and changes nothing."""
        deps = self.store.dependencies_of(conn, [row["id"]]).get(row["id"], [])
        if not deps:
            return
        for dep in self.store.lock_dependencies(conn, deps):
            if dep["status"] != Status.COMPLETED.value:
                raise InvalidState(
                    f"dependency {dep['id']} is {dep['status']}: retry it first, then "
                    "this job once it has completed", status=row["status"])

    # -- maintenance (trusted code: workers and the scheduler) ----------------

    def rescue_expired_leases(self, *, conn: Connection | None = None, limit: int = 100) -> int:
        """Take back jobs whose worker stopped renewing its lease (SIGKILL, a lost
        machine, a frozen process): the attempt counts as failed (``worker_lost``).
        Any number of workers and schedulers may run this at once."""
        with self._write(conn) as tx:
            rows = self.store.expired_leases(tx, limit)
            if not rows:
                return 0
            now = self.store.now(tx)
            outcomes = [
                Outcome(
                    job_id=r["id"], attempt=r["attempts"], kind=OutcomeKind.FAILED,
                    worker_id=r["worker_id"], started_at=r["started_at"] or now,
                    duration_ms=max(0.0, now - (r["started_at"] or now)) * 1000.0,
                    error_type="worker_lost",
                    error_message=f"lease expired: worker {r['worker_id']} stopped renewing it",
                )
                for r in rows
            ]
            return len(self.store.record_outcomes(tx, outcomes))

    def cleanup(
        self,
        *,
        retention_days: float | None = None,
        batch_size: int | None = None,
        dry_run: bool = False,
        progress: Callable[[CleanupProgress], None] | None = None,
    ) -> CleanupResult:
        """Retention cleanup on demand: terminal jobs older than the retention, with
        their logs, events and dependency rows, one transaction per batch."""
        from .scheduler.retention_cleaner import RetentionCleaner

        return RetentionCleaner(self).cleanup(
            retention_days=retention_days, batch_size=batch_size, dry_run=dry_run,
            progress=progress,
        )

    # -- identity (System Manager, or trusted code) ---------------------------

    def whoami(self, actor: str) -> dict[str, Any]:
        with self.store.read() as conn:
            principal = self._principal(conn, actor)
            user = self.store.get_user(conn, actor)
            assert user is not None
            return {
                "id": actor,
                "full_name": user["full_name"],
                "roles": principal.roles,
                "organizations": [
                    {"name": org, "role": role}
                    for org, role in sorted(principal.memberships.items())
                ],
            }

    def list_organizations(self, *, actor: str | None = None) -> list[dict[str, Any]]:
        with self.store.read() as conn:
            principal = self._principal(conn, actor)
            return [organization_dict(r) for r in self.store.get_organizations(
                conn, principal.visible_organizations())]

    def create_organization(self, name: str, *, title: str | None = None,
                            actor: str | None = None) -> dict[str, Any]:
        validate_organization_name(name)
        with self.store.transaction() as conn:
            self._principal(conn, actor).require_system_manager()
            self.store.create_organization(conn, name, title or name)
            return organization_dict(self.store.get_organizations(conn, [name])[0])

    def create_user(self, email: str, *, full_name: str = "", system_manager: bool = False,
                    actor: str | None = None) -> dict[str, Any]:
        if not isinstance(email, str) or "@" not in email or len(email) > 255:
            raise ValidationError("a user is named by an e-mail address", field="email")
        with self.store.transaction() as conn:
            self._principal(conn, actor).require_system_manager()
            self.store.create_user(conn, email, full_name or email, system_manager)
            person_id = self.store.create_person(conn, full_name or email, email)
        return {"id": email, "person_id": person_id, "system_manager": system_manager}

    def create_person(self, name: str, *, actor: str | None = None) -> dict[str, Any]:
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise ValidationError("a person needs a name", field="name")
        with self.store.transaction() as conn:
            self._principal(conn, actor).require_system_manager()
            person_id = self.store.create_person(conn, name, None)
        return {"id": person_id, "name": name, "user_id": None}

    def set_member(
        self, organization: str, person: str, *, role: str | None = None,
        status: str | None = None, create: bool, actor: str | None = None,
    ) -> dict[str, Any]:
        """Add (``create=True``) or change a membership. ``person`` is a person id,
        a linked user's e-mail, or a person's name."""
        if role is not None and role not in MEMBER_ROLES:
            raise ValidationError(f"role must be one of {', '.join(MEMBER_ROLES)}", field="role")
        if status is not None and status not in MEMBER_STATUSES:
            raise ValidationError(f"status must be one of {', '.join(MEMBER_STATUSES)}",
                                  field="status")
        with self.store.transaction() as conn:
            self._principal(conn, actor).require_system_manager()
            if not self.store.organization_exists(conn, organization):
                raise NotFound(f"organization {organization!r} does not exist")
            matches = self.store.find_persons(conn, person)
            if not matches:
                raise NotFound(f"no person or user {person!r}")
            if len(matches) > 1:
                raise ValidationError(f"{person!r} names several persons; use the person id")
            row = self.store.upsert_member(conn, organization, matches[0]["id"], status, role,
                                           create)
            return {"organization": organization, "person_id": row["person_id"],
                    "status": row["status"], "role": row["role"], "id": row["id"]}

    def create_token(self, email: str, *, expires_in_days: float | None = None,
                     actor: str | None = None) -> dict[str, Any]:
        if expires_in_days is not None and not expires_in_days > 0:
            raise ValidationError("expires-in-days must be positive", field="expires_in_days")
        token_id, token = new_token()
        with self.store.transaction() as conn:
            self._principal(conn, actor).require_system_manager()
            if self.store.get_user(conn, email) is None:
                raise NotFound(f"user {email!r} does not exist")
            self.store.create_token(
                conn, token_id, email, hash_token(token),
                None if expires_in_days is None else expires_in_days * 86400.0,
            )
        return {"id": token_id, "user_id": email, "token": token}

    def list_tokens(self, email: str, *, actor: str | None = None) -> list[dict[str, Any]]:
        with self.store.read() as conn:
            self._principal(conn, actor).require_system_manager()
            return [
                {"id": r["id"], "user_id": r["user_id"], "created_at": iso(r["created_at"]),
                 "expires_at": iso(r["expires_at"]), "revoked_at": iso(r["revoked_at"])}
                for r in self.store.list_tokens(conn, email)
            ]

    def revoke_token(self, token_id: str, *, actor: str | None = None) -> None:
        with self.store.transaction() as conn:
            self._principal(conn, actor).require_system_manager()
            if not self.store.revoke_token(conn, token_id):
                raise NotFound(f"no live token {token_id!r}")

    def authenticate(self, token: str | None) -> str:
        with self.store.read() as conn:
            return authenticate(self.store, conn, token)


def _limit_dict(row: RowMapping | None, organization: str,
                job_type: str | None) -> dict[str, Any]:
    return {
        "organization": organization,
        "job_type": job_type,
        "max_running": None if row is None else row["max_running"],
        "max_queued": None if row is None else row["max_queued"],
        "paused": False if row is None else bool(row["paused"]),
    }


def _encode_cursor(created_at: float, job_id: str) -> str:
    raw = json.dumps([created_at, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, job_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(job_id, str) or not isinstance(created_at, int | float):
            raise TypeError
        return float(created_at), job_id
    except (ValueError, TypeError) as exc:
        raise ValidationError("invalid cursor", field="cursor") from exc


__all__ = ["UNCHANGED", "Engine"]
