"""Realtime job progress over Socket.IO (SPEC 5.4, the plan's P2-008).

A python-socketio ``AsyncServer`` mounted next to the HTTP API at ``/socket.io``.
Clients connect with ``auth={"token": ...}`` (refused without a live token),
``subscribe`` to ``{"organization": ..., "since": <event id>?}`` and receive
``job_status`` and ``job_progress`` events of that organization only, through
the room ``job_progress:<organization>``.

Events come from the ``job_events`` outbox (written in the same transactions as
the state changes, by any process on any machine). Each server process runs its
own reader thread (``OutboxReader``), so several server processes each deliver
every event to their own clients with no shared state. The reader hands each
batch to the event loop and waits for it to be emitted; a ``subscribe`` with
``since`` replays, under the same lock, what the reader has already delivered,
then joins the room: no event twice, none missed.

Every ``recheck_interval`` seconds the reader thread also re-checks every
connection: a token that was revoked or expired (or whose user was disabled) is
disconnected, and a subscription its user may no longer read (membership made
inactive or removed) is left, with an ``unsubscribed`` event to the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import socketio
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ..access import Principal, authenticate, resolve_principal
from ..domain.errors import Unauthorized
from ..engine import Engine
from ..store.schema import job_events
from .outbox import (
    Batch,
    OutboxEvent,
    OutboxReader,
    ProgressGuard,
    Waker,
    default_channels,
    room_of,
)

log = logging.getLogger("dartwing_jobs.realtime")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[MutableMapping[str, Any]]],
     Callable[[MutableMapping[str, Any]], Awaitable[None]]],
    Awaitable[None],
]
MAX_ORGANIZATION_LENGTH = 140
FORBIDDEN_MESSAGE = "you are not an active member of that organization"
UNAUTHORIZED_MESSAGE = "missing or invalid API token"


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


@dataclass
class _Client:
    token: str
    user_id: str
    organizations: set[str] = field(default_factory=set)


class RealtimeHub:
    """The Socket.IO server and the outbox reader of one process.

    ``start()``/``stop()`` run the reader thread (a ``serve(extra_services=...)``
    service); ``asgi_app(other)`` is the ASGI app to serve, with ``other`` (the
    FastAPI app) receiving everything outside ``/socket.io``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        poll_interval: float | None = None,
        recheck_interval: float = 2.0,
        cors_allowed_origins: str | list[str] | None = None,
        replay_limit: int = 50_000,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        postgres = self.store.engine.dialect.name == "postgresql"
        # PostgreSQL: NOTIFY wakes the reader, polling is the fallback.
        self.poll_interval = poll_interval if poll_interval is not None else (
            0.5 if postgres else 0.1)
        self.recheck_interval = recheck_interval
        self.replay_limit = replay_limit
        self.reader = OutboxReader(self.store)
        self.waker = Waker(self.store, default_channels())
        self.guard = ProgressGuard()
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            cors_allowed_origins=cors_allowed_origins,
            logger=False,
            engineio_logger=False,
        )
        self._clients: dict[str, _Client] = {}
        self._tlock = threading.Lock()  # _clients, _loop
        self._alock: asyncio.Lock | None = None  # delivery vs. replay, in the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recheck = 0.0
        self._streams: dict[str, set[EventStream]] = {}  # organization -> open SSE streams
        self.delivered_batches = 0
        self._register_handlers()

    # -- service -----------------------------------------------------------

    def start(self) -> None:
        """Fix the start position (events committed from now on are delivered)
        and start the reader thread. Safe to call from any thread, before the
        event loop exists."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.reader.start_at_end()
        self.waker.start()
        self._thread = threading.Thread(target=self._run, name="realtime-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.waker.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wake(self) -> None:
        """Read the outbox now (e.g. after a commit in this process)."""
        self.waker.wake()

    # -- ASGI --------------------------------------------------------------

    def asgi_app(self, other_asgi_app: Any = None) -> ASGIApp:
        """``/socket.io`` to Socket.IO, the rest (and lifespan) to ``other_asgi_app``."""
        inner = socketio.ASGIApp(self.sio, other_asgi_app=other_asgi_app,
                                 socketio_path="socket.io")

        async def app(scope: MutableMapping[str, Any],
                      receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
                      send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
            if self._loop is None:
                self._attach_loop()
            await inner(scope, receive, send)

        return app

    def _attach_loop(self) -> None:
        loop = asyncio.get_running_loop()
        with self._tlock:
            if self._loop is None or self._loop.is_closed():
                self._loop = loop
                self._alock = asyncio.Lock()

    def _lock(self) -> asyncio.Lock:
        if self._alock is None:
            self._attach_loop()
        assert self._alock is not None
        return self._alock

    # -- Socket.IO handlers ------------------------------------------------

    def _register_handlers(self) -> None:
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("subscribe", self._on_subscribe)
        self.sio.on("unsubscribe", self._on_unsubscribe)

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        self._attach_loop()
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str):
            raise socketio.exceptions.ConnectionRefusedError(
                {"code": "unauthorized", "message": UNAUTHORIZED_MESSAGE})
        try:
            user_id = await asyncio.to_thread(self.engine.authenticate, token)
        except Unauthorized:
            raise socketio.exceptions.ConnectionRefusedError(
                {"code": "unauthorized", "message": UNAUTHORIZED_MESSAGE}) from None
        with self._tlock:
            self._clients[sid] = _Client(token=token, user_id=user_id)

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        with self._tlock:
            self._clients.pop(sid, None)

    def _may_read(self, conn: Connection, principal: Principal, organization: str) -> bool:
        if not principal.can_read(organization):
            return False
        # A System Manager reads every organization, but only existing ones.
        return not principal.sees_everything or self.store.organization_exists(conn, organization)

    def _check_subscription(self, token: str, organization: str) -> str | None:
        """None if allowed, else the error code."""
        with self.store.read() as conn:
            try:
                user_id = authenticate(self.store, conn, token)
                principal = resolve_principal(self.store, conn, user_id)
            except Unauthorized:
                return "unauthorized"
            return None if self._may_read(conn, principal, organization) else "forbidden"

    async def _on_subscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("organization"), str):
            return _error("validation_error", "subscribe needs {\"organization\": \"<name>\"}")
        organization: str = data["organization"]
        since = data.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                                  or since < 0):
            return _error("validation_error", "since must be a non-negative event id")
        with self._tlock:
            client = self._clients.get(sid)
        if client is None:
            return _error("unauthorized", UNAUTHORIZED_MESSAGE)
        if not organization or len(organization) > MAX_ORGANIZATION_LENGTH:
            return _error("forbidden", FORBIDDEN_MESSAGE)
        problem = await asyncio.to_thread(self._check_subscription, client.token, organization)
        if problem == "unauthorized":
            return _error("unauthorized", UNAUTHORIZED_MESSAGE)
        if problem is not None:
            return _error("forbidden", FORBIDDEN_MESSAGE)
        room = room_of(organization)
        replayed = 0
        if since is not None and since > self.reader.max_seen:
            await self._catch_up(since)
        async with self._lock():
            with self._tlock:
                already = organization in client.organizations
            if not already:
                if since is not None:
                    # Delivery is held off by the lock: what the reader has
                    # delivered so far is replayed, what it delivers next is live.
                    events = await asyncio.to_thread(
                        self.reader.replay, organization, since, limit=self.replay_limit)
                    for event in ProgressGuard().filter(events):
                        name, payload = event.socket_event()
                        await self.sio.emit(name, payload, to=sid)
                    replayed = len(events)
                await self.sio.enter_room(sid, room)
                with self._tlock:
                    client.organizations.add(organization)
        answer: dict[str, Any] = {"ok": True, "room": room}
        if since is not None:
            answer["replayed"] = replayed
        return answer

    async def _catch_up(self, since: int, timeout: float = 5.0) -> None:
        """A client that saw events up to ``since`` through another server process
        may be ahead of this process's reader: let the reader reach ``since``
        first, so those events are not delivered to it again as live ones."""
        top = await asyncio.to_thread(self._max_event_id)
        target = min(since, top)
        deadline = time.monotonic() + timeout
        while self.reader.max_seen < target and time.monotonic() < deadline:
            self.wake()
            await asyncio.sleep(0.01)

    def _max_event_id(self) -> int:
        with self.store.read() as conn:
            top = conn.execute(select(func.max(job_events.c.id))).scalar()
        return int(top) if top is not None else 0

    async def _on_unsubscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("organization"), str):
            return _error("validation_error", "unsubscribe needs {\"organization\": \"<name>\"}")
        organization: str = data["organization"]
        await self.sio.leave_room(sid, room_of(organization))
        with self._tlock:
            client = self._clients.get(sid)
            if client is not None:
                client.organizations.discard(organization)
        return {"ok": True, "room": room_of(organization)}

    # -- Server-Sent Events ------------------------------------------------

    async def open_stream(self, token: str | None, organization: str,
                          since: int | None = None) -> EventStream:
        """The same events for an SSE endpoint (``GET /api/v1/events``). Raises
        ``Unauthorized`` or ``Forbidden`` (before any byte is sent) exactly as
        ``subscribe`` refuses; ``since`` is the ``Last-Event-ID``."""
        from ..domain.errors import Forbidden

        if not isinstance(token, str):
            raise Unauthorized(UNAUTHORIZED_MESSAGE)
        if not isinstance(organization, str) or not organization \
                or len(organization) > MAX_ORGANIZATION_LENGTH:
            problem: str | None = "forbidden"
        else:
            problem = await asyncio.to_thread(self._check_subscription, token, organization)
        if problem == "unauthorized":
            raise Unauthorized(UNAUTHORIZED_MESSAGE)
        if problem is not None:
            raise Forbidden(FORBIDDEN_MESSAGE)
        if since is not None and since > self.reader.max_seen:
            await self._catch_up(since)
        stream = EventStream(self, token, organization)
        async with self._lock():
            if since is not None:
                events = await asyncio.to_thread(
                    self.reader.replay, organization, since, limit=self.replay_limit)
                for event in ProgressGuard().filter(events):
                    stream.push(event)
            self._streams.setdefault(organization, set()).add(stream)
        return stream

    def _close_stream(self, stream: EventStream) -> None:
        streams = self._streams.get(stream.organization)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[stream.organization]

    # -- delivery ----------------------------------------------------------

    async def _deliver(self, batch: Batch) -> None:
        async with self._lock():
            self.reader.commit(batch)
            self.delivered_batches += 1
            for event in batch.events:
                if not self.guard.admit(event):
                    continue
                name, payload = event.socket_event()
                await self.sio.emit(name, payload, room=event.room)
                for stream in list(self._streams.get(event.organization, ())):
                    stream.push(event)

    def _hand_over(self, batch: Batch) -> None:
        """Emit a batch in the event loop and wait until it is out; with no loop
        yet (nobody ever connected) just advance the position."""
        while not self._stop.is_set():
            with self._tlock:
                loop = self._loop
                if loop is None or loop.is_closed() or not loop.is_running():
                    self.reader.commit(batch)
                    for event in batch.events:
                        self.guard.admit(event)
                    return
            future = asyncio.run_coroutine_threadsafe(self._deliver(batch), loop)
            while True:
                try:
                    future.result(timeout=1.0)
                    return
                except concurrent.futures.TimeoutError:
                    if loop.is_running() and not loop.is_closed():
                        continue  # a slow emit, or a long replay holding the lock
                    if not future.cancel() and future.done():
                        return  # it ran after all
                except concurrent.futures.CancelledError:
                    pass
                break
            if self.reader.max_seen == batch.max_seen and batch.max_seen != 0:
                return  # committed by the coroutine before the loop went away
            with self._tlock:
                if self._loop is loop:
                    self._loop = None  # the loop ended under us; commit directly next

    def _run(self) -> None:
        while not self._stop.is_set():
            more = False
            try:
                batch = self.reader.fetch()
                more = batch.more
                if batch.changed or batch.max_seen != self.reader.max_seen:
                    self._hand_over(batch)
                else:
                    self.reader.commit(batch)
                now = time.monotonic()
                if now - self._last_recheck >= self.recheck_interval:
                    self._last_recheck = now
                    self._recheck()
            except Exception:
                log.exception("realtime outbox reader failed; retrying")
                self._stop.wait(1.0)
            if not more:
                self.waker.wait(self.poll_interval)

    # -- membership and token re-check -------------------------------------

    def _recheck(self) -> None:
        with self._tlock:
            clients = [(sid, c.token, c.user_id, set(c.organizations))
                       for sid, c in self._clients.items()]
            loop = self._loop
        if not clients or loop is None:
            return
        principals: dict[str, Principal | None] = {}
        disconnect: list[str] = []
        leave: list[tuple[str, str]] = []
        with self.store.read() as conn:
            for sid, token, user_id, organizations in clients:
                if token not in principals:
                    try:
                        uid = authenticate(self.store, conn, token)
                        principals[token] = resolve_principal(self.store, conn, uid)
                    except Unauthorized:
                        principals[token] = None
                principal = principals[token]
                if principal is None or principal.user_id != user_id:
                    disconnect.append(sid)
                    continue
                leave.extend((sid, org) for org in organizations
                             if not self._may_read(conn, principal, org))
        if disconnect or leave:
            future = asyncio.run_coroutine_threadsafe(self._enforce(disconnect, leave), loop)
            try:
                future.result(timeout=5.0)
            except Exception:
                log.exception("could not apply the membership re-check")

    async def _enforce(self, disconnect: list[str], leave: list[tuple[str, str]]) -> None:
        for sid, organization in leave:
            await self.sio.leave_room(sid, room_of(organization))
            with self._tlock:
                client = self._clients.get(sid)
                if client is not None:
                    client.organizations.discard(organization)
            await self.sio.emit("unsubscribed", {
                "organization": organization, "room": room_of(organization),
                "error": {"code": "forbidden", "message": FORBIDDEN_MESSAGE}}, to=sid)
        for sid in disconnect:
            await self.sio.emit("unauthorized", {
                "error": {"code": "unauthorized", "message": UNAUTHORIZED_MESSAGE}}, to=sid)
            with self._tlock:
                self._clients.pop(sid, None)
            await self.sio.disconnect(sid)

    # -- introspection (tests, metrics) ------------------------------------

    def subscriptions(self) -> dict[str, set[str]]:
        """sid -> organizations subscribed."""
        with self._tlock:
            return {sid: set(c.organizations) for sid, c in self._clients.items()}


class EventStream:
    """One SSE consumer: events of one organization, in delivery order. ``sse()``
    yields the text of the ``text/event-stream`` body; it ends when the token
    or the membership stops allowing it (re-checked every ``recheck_interval``)
    or when the consumer falls more than ``max_queue`` events behind (the client
    reconnects with ``Last-Event-ID`` and loses nothing)."""

    def __init__(self, hub: RealtimeHub, token: str, organization: str,
                 max_queue: int = 10_000) -> None:
        self.hub = hub
        self.token = token
        self.organization = organization
        self.max_queue = max_queue
        self.queue: asyncio.Queue[OutboxEvent | None] = asyncio.Queue()
        self.closed = False

    def push(self, event: OutboxEvent) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= self.max_queue:
            self.close()
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(event)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub._close_stream(self)

    async def _allowed(self) -> bool:
        problem = await asyncio.to_thread(self.hub._check_subscription, self.token,
                                          self.organization)
        return problem is None

    async def sse(self) -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            interval = self.hub.recheck_interval
            next_check = time.monotonic() + interval
            while True:
                now = time.monotonic()
                if now >= next_check:
                    if not await self._allowed():
                        body = json.dumps({"organization": self.organization, "error": {
                            "code": "forbidden", "message": FORBIDDEN_MESSAGE}})
                        yield f"event: unsubscribed\ndata: {body}\n\n"
                        return
                    next_check = now + interval
                try:
                    event = await asyncio.wait_for(self.queue.get(),
                                                   timeout=max(0.0, next_check - now))
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event is None:
                    return
                name, payload = event.socket_event()
                yield f"id: {event.id}\nevent: {name}\ndata: {json.dumps(payload)}\n\n"
        finally:
            self.close()


def create_realtime(engine: Engine, **options: Any) -> RealtimeHub:
    return RealtimeHub(engine, **options)


def mount(app: Any, engine: Engine, **options: Any) -> tuple[ASGIApp, list[RealtimeHub]]:
    """Wrap the FastAPI ``app``: returns the ASGI app to serve (Socket.IO at
    ``/socket.io``, everything else to ``app``) and the services to start before
    serving and stop after (``serve(..., extra_services=services)``). The hub is
    also left on ``app.state.realtime`` for an SSE route (``open_stream``)."""
    hub = create_realtime(engine, **options)
    state = getattr(app, "state", None)
    if state is not None:
        state.realtime = hub
    return hub.asgi_app(app), [hub]


__all__ = ["EventStream", "OutboxEvent", "RealtimeHub", "create_realtime", "mount"]
