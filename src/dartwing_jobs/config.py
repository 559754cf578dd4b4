"""Settings from ``DARTWING_JOBS_*`` environment variables, each with a sane default."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HANDLER_MODULES = "dartwing_jobs.demo"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DARTWING_JOBS_", extra="ignore")

    database_url: str = "sqlite:///./var/dartwing_jobs.db"
    handler_modules: str = DEFAULT_HANDLER_MODULES
    lease_seconds: float = Field(default=30.0, gt=0)
    cancel_grace_seconds: float = Field(default=10.0, ge=0)
    retention_days: float = Field(default=30.0, ge=0)
    cleanup_batch_size: int = Field(default=100, gt=0)
    rate_limit_org_per_minute: int = Field(default=600, ge=0)
    rate_limit_user_per_minute: int = Field(default=300, ge=0)
    max_parameters_bytes: int = Field(default=65536, gt=0)
    max_parameters_depth: int = Field(default=20, gt=0)
    sqlite_synchronous: str = "FULL"
    pool_size: int = Field(default=10, gt=0)
    # Prometheus labels per organization: off by default (label cardinality).
    metrics_per_organization: bool = False
    # Fair claiming between organizations inside a priority (issue 10); off gives
    # the plain priority-then-age order (kept for comparison).
    fair_claiming: bool = True
    # Default limits per organization (None = none); per-organization overrides
    # live in the database (``dartwing-jobs limits set``). 0 running pauses.
    max_running_per_organization: int | None = Field(default=None, ge=0)
    max_queued_per_organization: int | None = Field(default=None, ge=0)

    @property
    def handler_prefixes(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.handler_modules.split(",") if p.strip())
