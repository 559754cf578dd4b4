"""Realtime progress over Socket.IO (SPEC 5.4, issue 6, plan P2-008), on SQLite and
PostgreSQL: a real uvicorn server (in a thread) serving the FastAPI app with the
Socket.IO hub mounted, real python-socketio clients, and a real worker process.

Waits are condition-based with deadlines; nothing sleeps for correctness."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import socketio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import insert, select

from dartwing_jobs import Engine
from dartwing_jobs.api import create_app
from dartwing_jobs.realtime.outbox import (
    OutboxEvent,
    OutboxReader,
    ProgressGuard,
    notify_events,
)
from dartwing_jobs.realtime.server import RealtimeHub, create_realtime
from dartwing_jobs.store.schema import job_events
from tests.conftest import World

from .conftest import Workers, register, wait_until

pytestmark = pytest.mark.system

TIMEOUT = 20.0


# -- a real server and real clients ---------------------------------------------


class Server:
    """uvicorn serving ``create_app(engine)`` with the hub mounted, in a thread."""

    def __init__(self, engine: Engine, *, sse: bool = False, **options: Any) -> None:
        options.setdefault("recheck_interval", 0.5)
        self.hub: RealtimeHub = create_realtime(engine, **options)
        api = create_app(engine)
        if sse:
            add_sse_route(api, self.hub)
        app = self.hub.asgi_app(api)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.hub.start()
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "uvicorn to start")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.hub.stop()


def add_sse_route(api: FastAPI, hub: RealtimeHub) -> None:
    """What ``GET /api/v1/events`` is expected to look like (the API module owns
    the real route); here under a test path."""

    @api.get("/test/events")
    async def events(request: Request, organization: str) -> StreamingResponse:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        last = request.headers.get("last-event-id")
        since = int(last) if last and last.isdigit() else None
        stream = await hub.open_stream(token, organization, since)
        return StreamingResponse(stream.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


class SSEReader:
    """Reads an SSE response in a thread; ``events`` are (id, name, data)."""

    def __init__(self, url: str, token: str, last_event_id: int | None = None) -> None:
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.ended = threading.Event()
        headers = {"Authorization": f"Bearer {token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=30))
        self._response = self._client.send(
            self._client.build_request("GET", url, headers=headers), stream=True)
        self.status = self._response.status_code
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for line in self._response.iter_lines():
                if line == "":
                    if "data" in fields:
                        self.events.append((int(fields.get("id", "0")), fields.get("event", ""),
                                            json.loads(fields["data"])))
                    fields = {}
                elif not line.startswith(":") and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key] = value.lstrip(" ")
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        self._response.close()
        self._client.close()


class Client:
    """A python-socketio client that records every event it receives."""

    def __init__(self, url: str, token: str | None, auth: Any = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.sio = socketio.Client(reconnection=False)
        for name in ("job_status", "job_progress", "unsubscribed", "unauthorized"):
            self.sio.on(name, self._recorder(name))
        self.sio.connect(url, auth=auth if auth is not None else {"token": token},
                         transports=["websocket"], wait_timeout=10)

    def _recorder(self, name: str) -> Callable[[dict[str, Any]], None]:
        def record(data: dict[str, Any]) -> None:
            with self._lock:
                self.events.append((name, data))
        return record

    def subscribe(self, organization: Any, since: int | None = None) -> dict[str, Any]:
        payload: Any = {"organization": organization} if since is None else {
            "organization": organization, "since": since}
        if not isinstance(organization, str):
            payload = organization
        answer: dict[str, Any] = self.sio.call("subscribe", payload, timeout=10)
        return answer

    def received(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [d for k, d in self.events if kind is None or k == kind]

    def job_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d for k, d in self.events if k in ("job_status", "job_progress")]

    def wait(self, predicate: Callable[[Client], Any], what: str,
             timeout: float = TIMEOUT) -> Any:
        return wait_until(lambda: predicate(self), timeout, what, interval=0.02)

    def close(self) -> None:
        if self.sio.connected:
            self.sio.disconnect()


@pytest.fixture
def server(world: World) -> Iterator[Server]:
    srv = Server(world.engine)
    yield srv
    srv.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def token_for(engine: Engine, email: str) -> dict[str, Any]:
    return engine.create_token(email)


def connect(clients: list[Client], url: str, token: str | None, auth: Any = None) -> Client:
    client = Client(url, token, auth)
    clients.append(client)
    return client


def status_of_job(client: Client, job_id: str, status: str) -> bool:
    return any(e["job_id"] == job_id and e["status"] == status
               for e in client.received("job_status"))


def db_event_ids(engine: Engine, organization: str, after: int = 0) -> list[int]:
    with engine.store.read() as conn:
        return list(conn.execute(
            select(job_events.c.id).where(job_events.c.organization == organization,
                                          job_events.c.id > after).order_by(job_events.c.id)
        ).scalars())


def submit(world: World, organization: str = "acme", job_type: str = "noop",
           **params: Any) -> str:
    params.setdefault("n", uuid.uuid4().hex)
    return str(world.engine.submit_job(job_type, organization, parameters=params).id)


# -- connect and subscribe --------------------------------------------------------


def test_invalid_and_missing_tokens_are_refused_at_connect(
        world: World, server: Server, clients: list[Client]) -> None:
    engine = world.engine
    revoked = token_for(engine, World.MEMBER)
    engine.revoke_token(revoked["id"])
    for auth in ({}, {"token": None}, {"token": ""}, {"token": "dwj_nope_nope"},
                 {"token": "Bearer x"}, {"token": revoked["token"]}, {"token": 42}):
        with pytest.raises(socketio.exceptions.ConnectionError):
            connect(clients, server.url, None, auth=auth)
    with pytest.raises(socketio.exceptions.ConnectionError):
        # no auth object at all
        sio = socketio.Client(reconnection=False)
        try:
            sio.connect(server.url, transports=["websocket"], wait_timeout=10)
        finally:
            sio.disconnect()
    ok = connect(clients, server.url, token_for(engine, World.MEMBER)["token"])
    assert ok.sio.connected


def test_subscribe_acks_follow_membership(world: World, server: Server,
                                          clients: list[Client]) -> None:
    engine = world.engine
    member = connect(clients, server.url, token_for(engine, World.MEMBER)["token"])
    assert member.subscribe("acme") == {"ok": True, "room": "job_progress:acme"}
    forbidden = ["globex", "made-up-org", "acme' OR '1'='1", "../acme", "ac me", "acmé",
                 "ACME", "job_progress:acme", "a" * 500, ""]
    for org in forbidden:
        answer = member.subscribe(org)
        assert answer["ok"] is False and answer["error"]["code"] == "forbidden", (org, answer)
        assert "globex" not in answer["error"]["message"]
    for bad in ([], "acme", {"organization": 5}, {"organization": "acme", "since": -1},
                {"organization": "acme", "since": "7"}, {"organization": "acme", "since": True}):
        answer = member.sio.call("subscribe", bad, timeout=10)
        assert answer["ok"] is False and answer["error"]["code"] == "validation_error", bad
    inactive = connect(clients, server.url, token_for(engine, World.INACTIVE)["token"])
    assert inactive.subscribe("acme")["error"]["code"] == "forbidden"
    nobody = connect(clients, server.url, token_for(engine, World.NOBODY)["token"])
    assert nobody.subscribe("acme")["error"]["code"] == "forbidden"
    sm = connect(clients, server.url, token_for(engine, World.SM)["token"])
    assert sm.subscribe("globex") == {"ok": True, "room": "job_progress:globex"}
    assert sm.subscribe("made-up-org")["error"]["code"] == "forbidden"
    assert member.sio.call("unsubscribe", {"organization": "acme"}, timeout=10)["ok"] is True


# -- events from a worker in another process ---------------------------------------


def test_two_organizations_each_see_only_their_events_from_a_worker_process(
        world: World, server: Server, clients: list[Client], workers: Workers) -> None:
    """P2-008: a member of acme and a member of globex, jobs run by a separate
    worker process: each client gets every event of its organization's job, in
    lifecycle order, ending completed, progress never backwards; nothing else."""
    engine = world.engine
    register(engine, "steps", "progress_steps")
    alice = connect(clients, server.url, token_for(engine, World.MEMBER)["token"])
    olga = connect(clients, server.url, token_for(engine, World.OTHER)["token"])
    assert alice.subscribe("acme")["ok"] and olga.subscribe("globex")["ok"]
    assert olga.subscribe("acme")["error"]["code"] == "forbidden"
    acme_job = submit(world, "acme", "steps", steps=6, delay=0.15)
    globex_job = submit(world, "globex", "steps", steps=3, delay=0.1)
    workers.start(concurrency=1)

    alice.wait(lambda c: status_of_job(c, acme_job, "completed"), "acme job completed")
    olga.wait(lambda c: status_of_job(c, globex_job, "completed"), "globex job completed")
    # Everything the outbox holds for each organization, each exactly once.
    alice.wait(lambda c: [e["event_id"] for e in c.job_events()] == db_event_ids(engine, "acme"),
               "every acme event")
    olga.wait(lambda c: [e["event_id"] for e in c.job_events()]
              == db_event_ids(engine, "globex"), "every globex event")

    for client, org, job in ((alice, "acme", acme_job), (olga, "globex", globex_job)):
        events = client.job_events()
        assert {e["organization"] for e in events} == {org}
        assert {e["job_id"] for e in events} == {job}
        statuses = [e["status"] for e in client.received("job_status")]
        assert statuses == ["queued", "running", "completed"], statuses
        progress = [e["progress"] for e in client.received("job_progress")]
        assert progress, "no progress events"
        assert progress == sorted(progress), progress
        assert all(e["at"].endswith("Z") for e in events)
        status = client.received("job_status")[-1]
        assert set(status) == {"event_id", "job_id", "organization", "job_type", "status",
                               "attempt", "error", "at"}
        assert status["attempt"] == 1 and status["error"] is None
        first = client.received("job_progress")[0]
        assert {"event_id", "job_id", "organization", "job_type", "status", "progress",
                "message", "at"} <= set(first)
        assert first["status"] == "running" and first["message"].startswith("step ")
    # The last event of each job is its final status.
    assert alice.job_events()[-1]["status"] == "completed"


def test_reconnect_with_since_gets_exactly_the_missed_events(
        world: World, server: Server, clients: list[Client]) -> None:
    engine = world.engine
    token = token_for(engine, World.MEMBER)["token"]
    alice = connect(clients, server.url, token)
    assert alice.subscribe("acme")["ok"]
    first = submit(world)
    alice.wait(lambda c: status_of_job(c, first, "queued"), "first job queued")
    last_seen = alice.job_events()[-1]["event_id"]
    alice.close()

    missed = [submit(world) for _ in range(3)]
    engine.cancel_job(missed[0])
    submit(world, "globex")  # not alice's
    expected = db_event_ids(engine, "acme", after=last_seen)
    assert len(expected) == 4

    again = connect(clients, server.url, token)
    answer = again.subscribe("acme", since=last_seen)
    # Whatever this server's reader had delivered before is replayed; the rest
    # arrives live. Together: exactly the missed events.
    assert answer["ok"] is True and 0 <= answer["replayed"] <= 4
    again.wait(lambda c: len(c.job_events()) >= 4, "the replayed events")
    live = submit(world)
    again.wait(lambda c: status_of_job(c, live, "queued"), "a live event after the replay")
    ids = [e["event_id"] for e in again.job_events()]
    assert ids == db_event_ids(engine, "acme", after=last_seen)
    assert len(ids) == len(set(ids)) == 5
    assert [e["status"] for e in again.job_events()] == [
        "queued", "queued", "queued", "canceled", "queued"]


def test_since_while_events_keep_coming_has_no_gap_and_no_duplicate(
        world: World, server: Server, clients: list[Client]) -> None:
    """Subscribing with ``since`` while another thread keeps committing events:
    replay and live delivery meet without a gap or an overlap."""
    engine = world.engine
    before = [submit(world) for _ in range(5)]
    since = db_event_ids(engine, "acme")[1]
    stop = threading.Event()
    made: list[str] = []

    def keep_submitting() -> None:
        while not stop.is_set() and len(made) < 200:
            made.append(submit(world))

    feeder = threading.Thread(target=keep_submitting)
    feeder.start()
    try:
        wait_until(lambda: len(made) >= 3, 10, "the feeder to start")
        alice = connect(clients, server.url, token_for(engine, World.MEMBER)["token"])
        assert alice.subscribe("acme", since=since)["ok"]
        wait_until(lambda: len(made) >= 15 or len(made) >= 200, 20, "more submissions")
    finally:
        stop.set()
        feeder.join()
    expected = db_event_ids(engine, "acme", after=since)
    alice.wait(lambda c: len(c.job_events()) >= len(expected), "every event after since")
    ids = [e["event_id"] for e in alice.job_events()]
    assert ids == expected, (before, ids[:10], expected[:10])


def test_deactivated_member_and_revoked_token_stop_receiving(
        world: World, server: Server, clients: list[Client]) -> None:
    engine = world.engine
    alice = connect(clients, server.url, token_for(engine, World.MEMBER)["token"])
    adam_token = token_for(engine, World.ADMIN)
    adam = connect(clients, server.url, adam_token["token"])
    root = connect(clients, server.url, token_for(engine, World.SM)["token"])
    for c in (alice, adam, root):
        assert c.subscribe("acme")["ok"]
    job = submit(world)
    for c in (alice, adam, root):
        c.wait(lambda c: status_of_job(c, job, "queued"), "the first event")

    engine.set_member("acme", World.MEMBER, status="Inactive", create=False)
    engine.revoke_token(adam_token["id"])
    started = time.monotonic()
    alice.wait(lambda c: c.received("unsubscribed"), "alice to be unsubscribed", timeout=5)
    adam.wait(lambda c: not c.sio.connected, "adam to be disconnected", timeout=5)
    assert time.monotonic() - started < 5
    assert alice.received("unsubscribed")[0]["organization"] == "acme"
    assert alice.sio.connected  # the connection stays; the subscription goes

    after = submit(world)
    root.wait(lambda c: status_of_job(c, after, "queued"), "the control client's event")
    assert not any(e["job_id"] == after for e in alice.job_events())
    assert not any(e["job_id"] == after for e in adam.job_events())
    assert alice.subscribe("acme")["error"]["code"] == "forbidden"


def test_two_servers_each_deliver_every_event(world: World, clients: list[Client]) -> None:
    """Two hubs (as two server processes would) on one database, no shared state."""
    engine = world.engine
    one, two = Server(engine), Server(engine)
    try:
        a = connect(clients, one.url, token_for(engine, World.MEMBER)["token"])
        b = connect(clients, two.url, token_for(engine, World.ADMIN)["token"])
        assert a.subscribe("acme")["ok"] and b.subscribe("acme")["ok"]
        jobs = [submit(world) for _ in range(5)]
        for c in (a, b):
            c.wait(lambda c: all(status_of_job(c, j, "queued") for j in jobs), "all five")
        assert [e["event_id"] for e in a.job_events()] == [
            e["event_id"] for e in b.job_events()]
    finally:
        one.close()
        two.close()


def test_notify_wakes_the_reader_on_postgres(world: World, backend: str,
                                            clients: list[Client]) -> None:
    """With polling made useless (30 s), an event inserted together with
    ``notify_events`` in one transaction still arrives at once: LISTEN works."""
    if backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    engine = world.engine
    srv = Server(engine, poll_interval=30.0)
    try:
        wait_until(srv.hub.waker.listening.is_set, 10, "the LISTEN connection")
        alice = connect(clients, srv.url, token_for(engine, World.MEMBER)["token"])
        assert alice.subscribe("acme")["ok"]
        with engine.store.transaction() as conn:
            event_id = conn.execute(insert(job_events).values(**_event_row("woken"))
                                    .returning(job_events.c.id)).scalar_one()
            notify_events(conn)
        alice.wait(lambda c: [e["event_id"] for e in c.job_events()] == [event_id],
                   "the notified event", timeout=5)
    finally:
        srv.close()


def test_server_sent_events_same_payloads_last_event_id_and_access(world: World) -> None:
    engine = world.engine
    srv = Server(engine, sse=True)
    readers: list[SSEReader] = []
    try:
        url = f"{srv.url}/test/events?organization=acme"
        member = token_for(engine, World.MEMBER)["token"]
        for token in (token_for(engine, World.OTHER)["token"],
                      token_for(engine, World.INACTIVE)["token"]):
            refused = SSEReader(url, token)
            readers.append(refused)
            assert refused.status == 403
        bogus = SSEReader(url, "dwj_nope_nope")
        readers.append(bogus)
        assert bogus.status == 401
        made_up = SSEReader(f"{srv.url}/test/events?organization=made-up",
                            token_for(engine, World.SM)["token"])
        readers.append(made_up)
        assert made_up.status == 403

        first = SSEReader(url, member)
        readers.append(first)
        assert first.status == 200
        job = submit(world)
        wait_until(lambda: first.events, 10, "the first SSE event")
        event_id, name, data = first.events[0]
        assert name == "job_status" and data["job_id"] == job and data["event_id"] == event_id
        first.close()
        missed = [submit(world) for _ in range(2)]
        submit(world, "globex")
        again = SSEReader(url, member, last_event_id=event_id)
        readers.append(again)
        wait_until(lambda: len(again.events) >= 2, 10, "the missed events")
        assert [e[0] for e in again.events] == db_event_ids(engine, "acme", after=event_id)
        assert [e[2]["job_id"] for e in again.events] == missed

        engine.set_member("acme", World.MEMBER, status="Inactive", create=False)
        wait_until(again.ended.is_set, 5, "the stream of a deactivated member to end")
        assert again.events[-1][1] == "unsubscribed"
    finally:
        for r in readers:
            r.close()
        srv.close()


# -- the outbox reader ------------------------------------------------------------


def _event_row(job_id: str, **kw: Any) -> dict[str, Any]:
    row = {"job_id": job_id, "organization": "acme", "job_type": "noop", "kind": "status",
           "status": "queued", "attempt": 0, "progress": None, "message": None,
           "error": None, "created_at": time.time()}
    row.update(kw)
    return row


def test_reader_delivers_events_committed_out_of_id_order(engine: Engine, backend: str) -> None:
    """PostgreSQL: the transaction holding the lower id commits after the one
    holding the higher id; the reader delivers both, and gives up on an id only
    once its transaction rolled back. Newer events are not held up meanwhile."""
    if backend != "postgresql":
        pytest.skip("SQLite serialises writers: ids cannot commit out of order")
    reader = OutboxReader(engine.store)
    reader.start_at_end()
    sa = engine.store.engine
    with sa.connect() as low, sa.connect() as high:
        t_low = low.begin()
        low_id = low.execute(insert(job_events).values(**_event_row("low"))
                             .returning(job_events.c.id)).scalar_one()
        t_high = high.begin()
        high_id = high.execute(insert(job_events).values(**_event_row("high"))
                               .returning(job_events.c.id)).scalar_one()
        assert low_id < high_id
        t_high.commit()
        assert [e.id for e in reader.poll()] == [high_id]
        assert low_id in reader.pending_gaps
        assert not reader.delivered(low_id) and reader.delivered(high_id)
        # The open transaction keeps the gap open however often we read.
        for _ in range(3):
            assert reader.poll() == []
        assert low_id in reader.pending_gaps
        t_low.commit()
    assert [e.id for e in reader.poll()] == [low_id]
    assert reader.pending_gaps == []

    # A rolled-back id is given up once no transaction that could hold it is open;
    # a newer event commits and is delivered while the old one is still open.
    with sa.connect() as doomed, sa.connect() as other:
        t_doomed = doomed.begin()
        doomed_id = doomed.execute(insert(job_events).values(**_event_row("doomed"))
                                   .returning(job_events.c.id)).scalar_one()
        with other.begin():
            other_id = other.execute(insert(job_events).values(**_event_row("other"))
                                     .returning(job_events.c.id)).scalar_one()
        assert [e.id for e in reader.poll()] == [other_id]
        t_doomed.rollback()
    delivered: list[int] = []
    wait_until(lambda: delivered.extend(e.id for e in reader.poll()) or not reader.pending_gaps,
               # xmin is cluster-wide: other sessions' transactions may hold it back.
               30, "the rolled-back id to be given up")
    assert doomed_id not in delivered and delivered == []


def test_reader_reads_in_order_and_resolves_deleted_ids(engine: Engine) -> None:
    """Both backends: id order, batches, a deleted id below the position is not
    waited for, and ``replay`` returns only what was delivered."""
    reader = OutboxReader(engine.store, batch_size=3)
    reader.start_at_end()
    with engine.store.transaction() as conn:
        ids = [conn.execute(insert(job_events).values(**_event_row(f"j{i}"))
                            .returning(job_events.c.id)).scalar_one() for i in range(7)]
    got: list[int] = []
    while True:
        batch = reader.fetch()
        reader.commit(batch)
        got.extend(e.id for e in batch.events)
        if not batch.more:
            break
    assert got == ids
    assert [e.id for e in reader.replay("acme", ids[2])] == ids[3:]
    assert reader.replay("globex", 0) == []


def test_progress_guard_drops_stale_progress() -> None:
    def ev(i: int, kind: str, status: str, attempt: int, progress: float | None) -> OutboxEvent:
        return OutboxEvent(id=i, job_id="j", organization="acme", job_type="t", kind=kind,
                           status=status, attempt=attempt, progress=progress, message=None,
                           error=None, created_at=0.0)

    guard = ProgressGuard()
    seq = [ev(1, "status", "running", 1, 0), ev(2, "progress", "running", 1, 40),
           ev(3, "progress", "running", 1, 30), ev(4, "progress", "running", 1, 50),
           ev(5, "status", "retrying", 1, 50), ev(6, "status", "running", 2, 50),
           ev(7, "progress", "running", 1, 90), ev(8, "progress", "running", 2, 10),
           ev(9, "status", "completed", 2, 100), ev(10, "progress", "running", 2, 99)]
    assert [e.id for e in guard.filter(seq)] == [1, 2, 4, 5, 6, 8, 9]
