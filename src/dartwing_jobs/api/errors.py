"""One error shape for every answer the API refuses: ``{"error": {"code",
"message", ...}}``, whoever raised it (the engine, FastAPI's validation, Starlette's
routing, or a bug).

Request bodies are screened here before FastAPI sees them, because FastAPI's own
parsing answers a non-UTF-8 or non-JSON body with a 422 and lets a 10,000-deep
document reach ``json.loads``'s recursion limit (a 500). The screen caps the size
before reading it all, checks UTF-8, bounds the nesting with a scan that does not
recurse, and only then parses.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..domain.errors import DartwingError, RateLimited, Unauthorized

log = logging.getLogger("dartwing_jobs.api")

REQUEST_ID_HEADER = "X-Request-ID"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A JSON string token, written as an unrolled loop so the regex engine never
# backtracks on long strings.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **details}}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None, **details: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **details), status_code=status,
                        headers=headers)


def nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether a JSON text nests arrays/objects deeper than ``limit``.

    Brackets inside strings do not count, so strings are cut out first; what is
    left is walked without recursion. Malformed input may be misjudged, which is
    harmless: the parser that runs afterwards refuses it anyway.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    skeleton = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in skeleton:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def screen_json(body: bytes, max_depth: int) -> JSONResponse | None:
    """The refusal for a body that is not acceptable JSON, or ``None`` if it is."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return error_response(400, "bad_request", "the request body is not valid UTF-8")
    if nesting_exceeds(body, max_depth):
        return error_response(
            422, "validation_error",
            f"the request body is nested deeper than {max_depth} levels",
        )
    try:
        document = json.loads(text)
    except ValueError:
        return error_response(400, "bad_request", "the request body is not valid JSON")
    except RecursionError:  # pragma: no cover - the nesting scan comes first
        return error_response(422, "validation_error", "the request body is nested too deeply")
    try:
        # JSON may spell lone UTF-16 surrogates (\ud800) that no database can
        # store as text; refusing them here keeps them from becoming a 500 later.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return error_response(422, "validation_error",
                              "the request body contains an unpaired UTF-16 surrogate")
    except ValueError:
        pass  # NaN and Infinity: left for the field validation to name precisely
    return None


class GuardMiddleware:
    """Outermost layer of the app: tags each request with an id, screens bodies,
    and turns any unexpected exception into an opaque 500 that names the id.

    A raw ASGI middleware rather than ``BaseHTTPMiddleware`` so that the body can be
    refused while still streaming in, and handed on unchanged once accepted.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]
            await send(message)

        try:
            if scope["method"] in _BODY_METHODS:
                refusal, receive = await self._screen_body(scope, receive)
                if refusal is not None:
                    await refusal(scope, receive, send_with_id)
                    return
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s (request id %s)",
                          scope.get("method"), scope.get("path"), request_id)
            if started:
                raise
            response = error_response(
                500, "internal", "an unexpected error occurred; quote the request id",
                request_id=request_id,
            )
            await response(scope, receive, send_with_id)

    async def _screen_body(
        self, scope: Scope, receive: Receive
    ) -> tuple[JSONResponse | None, Receive]:
        too_large = error_response(
            413, "payload_too_large",
            f"the request body exceeds {self.max_body_bytes} bytes",
            max_bytes=self.max_body_bytes,
        )
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_body_bytes:
                    return too_large, receive
            except ValueError:
                return error_response(400, "bad_request", "invalid Content-Length"), receive
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return too_large, receive
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if body.strip():
            refusal = screen_json(body, self.max_depth)
            if refusal is not None:
                return refusal, replay
            # Every body this API takes is JSON and has just been proven to be, so
            # a missing or form Content-Type (``curl -d``'s default) must not turn
            # it into an opaque "not an object" error further in.
            scope["headers"] = [
                *((k, v) for k, v in scope.get("headers", []) if k != b"content-type"),
                (b"content-type", b"application/json"),
            ]
        return None, replay


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only location, message and type: echoing the input could reflect a huge or
    # hostile document, and NaN in it would not even serialize.
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
         "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]


async def _dartwing_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DartwingError)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, int(-(-exc.retry_after // 1))))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status,
                        headers=headers or None)


async def _request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p not in ("body", "query", "path"))
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return error_response(422, "validation_error", message, errors=errors)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "validation_error", 429: "rate_limited"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404:
        message = "no such route"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, message, headers=headers)


def install_error_handlers(app: FastAPI, *, max_body_bytes: int, max_depth: int) -> None:
    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
        DartwingError: _dartwing_error,
        RequestValidationError: _request_validation_error,
        StarletteHTTPException: _http_error,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    app.add_middleware(GuardMiddleware, max_body_bytes=max_body_bytes, max_depth=max_depth)


__all__ = ["GuardMiddleware", "error_body", "install_error_handlers", "nesting_exceeds"]
