"""The declared schema. Migrations under ``migrations/`` must produce exactly this
(a test compares them).

Times are stored as UTC epoch seconds (double precision) on every backend: one
representation, compared only against the database's own clock (see ``clock.py``),
so that ordering, due times and leases never depend on a worker's clock.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from ..domain.statuses import ACTIVE, CLAIMABLE, TERMINAL

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Epoch: Double[float] = Double()
# Organization names compare bytewise on PostgreSQL (collation "C", migration
# 0006), as they do on SQLite: the fair claim's walk descends the organization
# index once per organization it visits, and under a libc locale every key
# comparison of a descent (and of each index insert a claim makes) went through
# strcoll on copies of both names. Byte order is also the order Python sorts the
# names in, so the rotation order is the same on both backends and in the code.
OrgName = String(140).with_variant(String(140, collation="C"), "postgresql")


def _status_in(statuses: frozenset[object]) -> str:
    # Static text built from the domain's own enum values, never from input.
    values = ", ".join(sorted(f"'{s}'" for s in statuses))
    return f"status IN ({values})"


ACTIVE_PREDICATE = text(_status_in(frozenset(ACTIVE)))
CLAIMABLE_PREDICATE = text(_status_in(frozenset(CLAIMABLE)))
TERMINAL_PREDICATE = text(_status_in(frozenset(TERMINAL)))
# The duplicate rule: one non-terminal job per hash among deduplicated types. Also
# the conflict target of the insert, which must repeat the index's predicate.
ACTIVE_HASH_PREDICATE = text(f"deduplicate AND {_status_in(frozenset(ACTIVE))}")

organizations = Table(
    "organizations",
    metadata,
    Column("name", OrgName, primary_key=True),
    Column("title", String(255), nullable=False),
    Column("created_at", Epoch, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", String(255), primary_key=True),  # the e-mail address
    Column("full_name", String(255), nullable=False, server_default=""),
    Column("is_system_manager", Boolean, nullable=False, server_default=text("false")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", Epoch, nullable=False),
)

persons = Table(
    "persons",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("user_id", String(255), ForeignKey("users.id", ondelete="SET NULL"), unique=True),
    Column("created_at", Epoch, nullable=False),
)

org_members = Table(
    "org_members",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "organization",
        OrgName,
        ForeignKey("organizations.name", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("person_id", String(36), ForeignKey("persons.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(16), nullable=False),  # Active | Inactive
    Column("role", String(16), nullable=False),  # member | admin
    Column("created_at", Epoch, nullable=False),
    UniqueConstraint("organization", "person_id"),
    Index("ix_org_members_person_status", "person_id", "status"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(255), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Epoch, nullable=False),
    Column("expires_at", Epoch),
    Column("revoked_at", Epoch),
    Column("last_used_at", Epoch),
)

job_types = Table(
    "job_types",
    metadata,
    Column("name", String(140), primary_key=True),
    Column("handler", String(255), nullable=False),
    Column("default_priority", SmallInteger, nullable=False),
    Column("default_timeout", Integer, nullable=False),
    Column("max_retries", Integer, nullable=False),
    Column("retry_backoff", Double, nullable=False),
    Column("retry_backoff_max", Double, nullable=False),
    Column("deduplicate", Boolean, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("retention_days", Double),
    Column("created_at", Epoch, nullable=False),
    Column("modified_at", Epoch, nullable=False),
)

jobs = Table(
    "background_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("job_type", String(140), ForeignKey("job_types.name"), nullable=False),
    Column("organization", OrgName, ForeignKey("organizations.name"), nullable=False),
    Column("parameters", Json, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("job_hash", String(64), nullable=False),
    Column("deduplicate", Boolean, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # attempts only ever grow (they fence writers); a manual retry grants a fresh
    # budget by moving this offset instead of resetting the count.
    Column("attempts_offset", Integer, nullable=False, server_default=text("0")),
    Column("max_retries", Integer, nullable=False),
    Column("timeout_seconds", Integer, nullable=False),
    Column("retry_backoff", Double, nullable=False),
    Column("retry_backoff_max", Double, nullable=False),
    Column("progress", Double, nullable=False, server_default=text("0")),
    Column("progress_message", Text),
    Column("checkpoint", Json),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    # due_at: when a queued/retrying job may be claimed (created, run_at or
    # next_retry_at); the claim path is (priority, due_at) over claimable rows.
    Column("due_at", Epoch, nullable=False),
    Column("run_at", Epoch),
    Column("next_retry_at", Epoch),
    Column("lease_expires_at", Epoch),
    Column("worker_id", String(255)),
    Column("result", Json),
    Column("error_type", String(64)),
    Column("error_message", Text),
    Column("error_traceback", Text),
    Column("submitted_by", String(255)),
    Column("created_at", Epoch, nullable=False),
    Column("modified_at", Epoch, nullable=False),
    Column("started_at", Epoch),
    Column("completed_at", Epoch),
    # At most one non-terminal job per hash: the database refuses the second.
    Index(
        "ux_background_jobs_active_hash",
        "job_hash",
        unique=True,
        postgresql_where=ACTIVE_HASH_PREDICATE,
        sqlite_where=ACTIVE_HASH_PREDICATE,
    ),
    Index(
        "ix_background_jobs_claim",
        "priority",
        "due_at",
        postgresql_where=CLAIMABLE_PREDICATE,
        sqlite_where=CLAIMABLE_PREDICATE,
    ),
    Index(
        "ix_background_jobs_lease",
        "lease_expires_at",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    # Finished jobs by when they last changed: retention and the dependency
    # sweeps look up only terminal jobs by this time. Every index on this table
    # costs each claim and each completion an entry (both change the status, so
    # neither update is HOT): on PostgreSQL it holds only terminal rows, so a
    # claim adds nothing to it (migration 0005). SQLite cannot prove that
    # `status = 'completed'` implies a partial index's `status IN (...)`, so
    # there it holds every job.
    Index("ix_background_jobs_finished", "modified_at",
          postgresql_where=TERMINAL_PREDICATE),
    # Lists by organization and status, and the per-organization jobs-by-status
    # metric (an index-only scan of its (organization, status) prefix).
    Index("ix_background_jobs_org_status_created", "organization", "status", "created_at"),
    Index("ix_background_jobs_org_created", "organization", "created_at", "id"),
    # Per-organization queue depth (migration 0003) reads only the organization's
    # claimable rows, by priority, bounded by due time: an index-only scan.
    Index(
        "ix_background_jobs_org_claimable",
        "organization",
        "priority",
        "due_at",
        postgresql_where=CLAIMABLE_PREDICATE,
        sqlite_where=CLAIMABLE_PREDICATE,
    ),
)

job_dependencies = Table(
    "job_dependencies",
    metadata,
    Column(
        "job_id",
        String(36),
        ForeignKey("background_jobs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "depends_on_id",
        String(36),
        ForeignKey("background_jobs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Index("ix_job_dependencies_depends_on", "depends_on_id"),
)

job_execution_log = Table(
    "job_execution_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job_id", String(36), nullable=False),
    Column("organization", OrgName, nullable=False),
    Column("job_type", String(140), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", String(255)),
    Column("started_at", Epoch, nullable=False),
    Column("finished_at", Epoch),
    Column("duration_ms", Double),
    Column("outcome", String(32)),
    Column("error_type", String(64)),
    Column("error_message", Text),
    Column("error_traceback", Text),
    UniqueConstraint("job_id", "attempt"),
    Index("ix_job_execution_log_org_finished", "organization", "finished_at"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job_id", String(36), nullable=False),
    Column("organization", OrgName, nullable=False),
    Column("job_type", String(140), nullable=False),
    Column("kind", String(16), nullable=False),  # status | progress
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("progress", Double),
    Column("message", Text),
    Column("error", Json),
    Column("created_at", Epoch, nullable=False),
    Index("ix_job_events_job", "job_id"),
    Index("ix_job_events_created", "created_at"),
)

rate_limit_buckets = Table(
    "rate_limit_buckets",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("tokens", Double, nullable=False),
    Column("updated_at", Epoch, nullable=False),
)

schedules = Table(
    "schedules",
    metadata,
    Column("name", String(140), primary_key=True),
    Column("cron", String(120), nullable=False),
    Column("job_type", String(140), ForeignKey("job_types.name"), nullable=False),
    Column("organization", OrgName, ForeignKey("organizations.name"), nullable=False),
    Column("parameters", Json, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", Epoch, nullable=False),
    Column("last_fired_at", Epoch),
)

schedule_fires = Table(
    "schedule_fires",
    metadata,
    Column(
        "schedule_name",
        String(140),
        ForeignKey("schedules.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("tick_at", Epoch, primary_key=True),
    Column("job_id", String(36)),
    Column("fired_at", Epoch, nullable=False),
)

# One row per run of a periodic maintenance task (the daily retention cleanup):
# the primary key (task, run_key) lets exactly one scheduler claim a given day's
# run; ``finished_at`` stays NULL until it ends, so a run abandoned by a crashed
# scheduler can be taken over once it is stale.
maintenance_runs = Table(
    "maintenance_runs",
    metadata,
    Column("task", String(64), primary_key=True),
    Column("run_key", String(32), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("started_at", Epoch, nullable=False),
    Column("finished_at", Epoch),
    Column("rows_deleted", BigInteger),
)

# Claim controls (migration 0004, issue 10), read by every claim so that changes
# take effect without restarting workers. One row per organization and job type;
# ``job_type = ''`` is the organization as a whole. ``max_running`` NULL means the
# global default (``Settings.max_running_per_organization``), 0 pauses; ``max_queued``
# (quota of not-yet-started jobs, organization rows only) NULL means the default.
ALL_JOB_TYPES = ""
organization_limits = Table(
    "organization_limits",
    metadata,
    Column(
        "organization",
        OrgName,
        ForeignKey("organizations.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("job_type", String(140), primary_key=True),
    Column("max_running", Integer),
    Column("max_queued", Integer),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("modified_at", Epoch, nullable=False),
)

# A paused job type: its jobs stay queued and no claim takes them until resumed.
paused_job_types = Table(
    "paused_job_types",
    metadata,
    Column(
        "job_type",
        String(140),
        ForeignKey("job_types.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("paused_at", Epoch, nullable=False),
)
