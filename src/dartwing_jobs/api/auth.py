"""Bearer-token authentication. Tokens travel only in the ``Authorization``
header, never in cookies: a browser does not attach the header to cross-site
requests by itself, so no other site can act for a signed-in user (no CSRF)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..domain.errors import Unauthorized
from ..engine import Engine

# auto_error=False: a missing header must give our 401 body, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, description="an API token from `dartwing-jobs token create`")


def current_user_dependency(engine: Engine) -> Callable[..., str]:
    """A dependency yielding the caller's user id; the engine decides everything
    about tokens (hash lookup, expiry, revocation, constant-time compare)."""

    def current_user(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> str:
        if credentials is None:
            raise Unauthorized("missing or invalid API token")
        return engine.authenticate(credentials.credentials)

    return current_user


__all__ = ["bearer", "current_user_dependency"]
