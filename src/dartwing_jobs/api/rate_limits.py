"""Submission rate limits for HTTP callers (plan P3-003).

The check runs inside the submission's own transaction and after the engine has
accepted it, for two reasons: a refusal rolls back the job and the spent tokens
together, so a 429 writes nothing; and the caller has already passed the
engine's access check, so a 429 can never reveal that a foreign organization
is busy (a non-member gets the same 403 either way).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from ..config import Settings
from ..domain.errors import RateLimited
from ..store.rate_limits import Bucket, take


class SubmissionLimiter:
    def __init__(self, settings: Settings) -> None:
        self.org_per_minute = settings.rate_limit_org_per_minute
        self.user_per_minute = settings.rate_limit_user_per_minute

    def buckets(self, organization: str, user_id: str) -> list[Bucket]:
        """The buckets one submission draws from; a limit of 0 means unlimited."""
        found: list[Bucket] = []
        if self.org_per_minute > 0:
            found.append(Bucket.per_minute(f"submit:org:{organization}", self.org_per_minute))
        if self.user_per_minute > 0:
            found.append(Bucket.per_minute(f"submit:user:{user_id}", self.user_per_minute))
        return found

    def charge(self, conn: Connection, organization: str, user_id: str) -> None:
        """Take a token from each bucket or raise ``RateLimited`` (the caller's
        transaction must then roll back, which the exception does by itself)."""
        buckets = self.buckets(organization, user_id)
        if not buckets:
            return
        wait = take(conn, buckets)
        if wait is not None:
            raise RateLimited(
                "too many submissions; retry after the indicated number of seconds",
                retry_after=wait,
            )


__all__ = ["SubmissionLimiter"]
