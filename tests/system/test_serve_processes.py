"""Real ``dartwing-jobs serve`` processes: two API processes on one PostgreSQL
database enforce one rate-limit budget and each deliver every realtime event to
their own clients; and the newcomer's ``make run`` on a fresh clone works."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import World

from .conftest import REPO, Workers, register, wait_until
from .test_realtime import Client

pytestmark = pytest.mark.system

DARTWING = str(Path(sys.executable).parent / "dartwing-jobs")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """``dartwing-jobs serve --workers 0`` on a free port, killed at the end."""

    def __init__(self, database_url: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ,
                    "DARTWING_JOBS_HANDLER_MODULES": "dartwing_jobs.demo,tests.handlers",
                    "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]),
                    **(env or {})}
        self.log = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                [DARTWING, "serve", "--database-url", database_url, "--port", str(self.port),
                 "--workers", "0"],
                cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_until(self.healthy, 30, f"serve on port {self.port} ({log})")

    def healthy(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"serve exited: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int | None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            return self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            return None


@pytest.fixture
def serve_pair(world: World, backend: str, database_url: str,
               tmp_path: Path) -> Iterator[list[ServeProcess]]:
    if backend != "postgresql":
        pytest.skip("several API processes on one database is the PostgreSQL deployment")
    env = {"DARTWING_JOBS_RATE_LIMIT_ORG_PER_MINUTE": "10",
           "DARTWING_JOBS_RATE_LIMIT_USER_PER_MINUTE": "0"}
    servers: list[ServeProcess] = []
    try:
        for i in range(2):
            servers.append(ServeProcess(database_url, tmp_path / f"serve-{i}.log", env))
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_two_serve_processes_share_one_rate_limit_budget(
        world: World, serve_pair: list[ServeProcess]) -> None:
    tokens = [world.engine.create_token(u)["token"] for u in (World.MEMBER, World.ADMIN)]
    codes: list[int] = []
    lock = threading.Lock()

    def hammer(server: ServeProcess, token: str, start: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(12):
                r = client.post(f"{server.url}/api/v1/jobs",
                                headers={"Authorization": f"Bearer {token}"},
                                json={"job_type": "noop", "organization": "acme",
                                      "parameters": {"n": start + i}})
                with lock:
                    codes.append(r.status_code)
                if r.status_code == 429:
                    assert r.headers["Retry-After"]

    threads = [threading.Thread(target=hammer, args=(server, token, 100 * n))
               for n, (server, token) in enumerate(
                   [(serve_pair[0], tokens[0]), (serve_pair[1], tokens[1])] * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(codes) <= {201, 429}, codes
    accepted = codes.count(201)
    # A burst of 10 for the organization, plus at most one token refilled meanwhile.
    assert 10 <= accepted <= 11, codes
    jobs, _ = world.engine.list_jobs(organization="acme", limit=200)
    assert len(jobs) == accepted


def test_clients_of_two_serve_processes_each_receive_a_worker_s_events(
        world: World, serve_pair: list[ServeProcess], workers: Workers) -> None:
    register(world.engine, "steps", "progress_steps")
    token = world.engine.create_token(World.MEMBER)["token"]
    clients = [Client(server.url, token) for server in serve_pair]
    try:
        for client in clients:
            assert client.subscribe("acme")["ok"] is True
        workers.start(concurrency=1)
        job = world.engine.submit_job("steps", "acme", {"steps": 5, "delay": 0.05})
        for client in clients:
            client.wait(lambda c: any(e["job_id"] == job.id and e["status"] == "completed"
                                      for e in c.received("job_status")),
                        "the completed status on both servers' clients", timeout=30)
            statuses = [e["status"] for e in client.received("job_status")
                        if e["job_id"] == job.id]
            assert statuses[-1] == "completed" and "running" in statuses
            progress = [e["progress"] for e in client.received("job_progress")
                        if e["job_id"] == job.id]
            assert progress == sorted(progress)
    finally:
        for client in clients:
            client.close()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git for a fresh clone")
def test_newcomer_make_run_on_a_fresh_clone(tmp_path: Path) -> None:
    """What the README promises: a fresh clone, ``make run``, a URL and a token
    that lists the demo organization's jobs, then a clean stop."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DARTWING_JOBS_", "VIRTUAL_ENV"))}
    env.update({"PORT": str(port), "PYTHONPATH": ""})
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "run"], cwd=clone, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def token() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"make run exited: {log.read_text()[-3000:]}")
            found = re.search(r"Demo member token \([^)]*\): (dwj_\S+)", log.read_text())
            return found.group(1) if found else None

        # Creating .venv and installing takes a while on a fresh clone.
        member_token = wait_until(token, 600, "make run to print a token", interval=1)
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            token()
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 120, "the demo server to answer /healthz", interval=0.5)
        assert f"http://127.0.0.1:{port}/" in log.read_text()
        r = httpx.get(f"{base}/api/v1/jobs", headers={"Authorization": f"Bearer {member_token}"})
        assert r.status_code == 200
        items: list[dict[str, Any]] = r.json()["items"]
        assert items and {j["organization"] for j in items} == {"demo"}
        assert httpx.get(f"{base}/").status_code == 200  # the dashboard
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert code in (0, 2, -signal.SIGINT, 130), log.read_text()[-3000:]
    assert "stopped" in log.read_text()
