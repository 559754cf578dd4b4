"""Who may do what (SPEC section 2, plan P1-003). The only place access is decided.

A user reaches an organization through User -> Person (linked to the user) ->
Org Member (status Active). ``System Manager`` reaches every organization.
``actor=None`` is trusted in-process code.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from .domain.errors import Forbidden, NotFound, Unauthorized
from .store.base import Store

SYSTEM_MANAGER = "System Manager"
TOKEN_PREFIX = "dwj_"
FORBIDDEN_ORG = "you are not an active member of that organization"
JOB_NOT_FOUND = "job not found"


@dataclass(frozen=True)
class Principal:
    user_id: str | None
    is_system_manager: bool = False
    memberships: Mapping[str, str] = field(default_factory=dict)  # organization -> role

    @property
    def trusted(self) -> bool:
        return self.user_id is None

    @property
    def sees_everything(self) -> bool:
        return self.trusted or self.is_system_manager

    @property
    def roles(self) -> list[str]:
        return [SYSTEM_MANAGER] if self.is_system_manager else []

    def can_read(self, organization: str) -> bool:
        return self.sees_everything or organization in self.memberships

    def can_submit(self, organization: str) -> bool:
        return self.can_read(organization)

    def can_manage_job(self, organization: str, submitted_by: str | None) -> bool:
        """Cancel and retry: the submitter, an active admin, or a System Manager."""
        if self.sees_everything:
            return True
        if organization not in self.memberships:
            return False
        return self.memberships[organization] == "admin" or (
            submitted_by is not None and submitted_by == self.user_id
        )

    def visible_organizations(self) -> list[str] | None:
        """None means all of them."""
        return None if self.sees_everything else sorted(self.memberships)

    def require_read(self, organization: str) -> None:
        if not self.can_read(organization):
            raise Forbidden(FORBIDDEN_ORG)

    def require_system_manager(self) -> None:
        if not self.sees_everything:
            raise Forbidden("this needs the System Manager role")

    def require_job_visible(self, organization: str) -> None:
        # Not visible and not existing must look the same.
        if not self.can_read(organization):
            raise NotFound(JOB_NOT_FOUND)


TRUSTED = Principal(user_id=None)


def resolve_principal(store: Store, conn: Connection, actor: str | None) -> Principal:
    if actor is None:
        return TRUSTED
    user = store.get_user(conn, actor)
    if user is None or not user["enabled"]:
        raise Unauthorized("unknown or disabled user")
    return Principal(
        user_id=actor,
        is_system_manager=bool(user["is_system_manager"]),
        memberships=store.memberships_of_user(conn, actor),
    )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """(token id, secret token). The id is public (for listing and revoking)."""
    token_id = secrets.token_hex(8)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def authenticate(store: Store, conn: Connection, token: str | None) -> str:
    """The user id a bearer token stands for, or ``Unauthorized``."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise Unauthorized("missing or invalid API token")
    expected = hash_token(token)
    row = store.find_live_token(conn, expected)
    # The lookup is by hash; comparing again in constant time keeps timing from
    # telling anything should the lookup ever change.
    if row is None or not hmac.compare_digest(row["token_hash"], expected) or not row["enabled"]:
        raise Unauthorized("missing or invalid API token")
    return str(row["user_id"])
