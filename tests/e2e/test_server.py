"""`isochat serve` as a real process on a free port, spoken to over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.helpers import reachable_redis
from tests.ws import open_socket

pytestmark = pytest.mark.e2e

ISOCHAT = str(Path(sys.executable).parent / "isochat")
START_TIMEOUT_S = 60.0

READY = {"database": "ok", "migrations": "ok", "broker": "ok", "model": "ok"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def environment(tmp_path: Path, port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ISOCHAT_") or k == "ISOCHAT_REDIS_PREFIX"  # this test run's
    }
    env |= {
        "ISOCHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/var/isochat.db",
        "ISOCHAT_HOST": "127.0.0.1",
        "ISOCHAT_PORT": str(port),
        "ISOCHAT_LOG_LEVEL": "warning",
    }
    return env


def wait_until_live(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited early:\n{server.log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"the server did not come up:\n{server.log.read_text()}")


@pytest.fixture
def interrupted_run(tmp_path: Path) -> tuple[str, str]:
    """A database a crashed server left behind: a run still `running` with one event."""
    port = free_port()
    subprocess.run([ISOCHAT, "migrate"], env=environment(tmp_path, port), check=True)
    thread_id, run_id, now = str(uuid.uuid4()), str(uuid.uuid4()), "2026-01-01 00:00:00.000000"
    with sqlite3.connect(tmp_path / "var" / "isochat.db") as db:
        db.execute(
            "INSERT INTO threads (id, user_id, title, created_at) VALUES (?, 'dave', 't', ?)",
            (thread_id, now),
        )
        db.execute(
            "INSERT INTO runs (id, thread_id, user_id, status, created_at, last_seq)"
            " VALUES (?, ?, 'dave', 'running', ?, 1)",
            (run_id, thread_id, now),
        )
        db.execute(
            "INSERT INTO run_events (run_id, seq, type, data, ts)"
            " VALUES (?, 1, 'run_started', '{}', ?)",
            (run_id, now),
        )
    return thread_id, run_id


@contextmanager
def running_server(tmp_path: Path, **extra_env: str) -> Iterator[Server]:
    """`isochat serve` in its own process until the block ends (SIGTERM, then kill)."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ISOCHAT, "serve"],
            env=environment(tmp_path, port) | extra_env,
            stdout=out,
            stderr=out,
        )
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        wait_until_live(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def server(tmp_path: Path, interrupted_run: tuple[str, str]) -> Iterator[Server]:
    with running_server(tmp_path) as server:
        yield server


def test_a_real_server_runs_chats_and_closes_interrupted_runs(
    server: Server, interrupted_run: tuple[str, str]
) -> None:
    """Over real HTTP: log in, chat, replay events; a run a dead server left `running` was
    closed as `interrupted` at start-up, so its thread takes messages again; SIGTERM stops the
    server cleanly."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/health/ready").json()["checks"] == READY
        token = http.post("/api/auth/dev-login", json={"user_id": "alice"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "e2e-1"}

        thread = http.post("/api/threads", json={"title": "e2e"}, headers=headers)
        assert thread.status_code == 201
        assert thread.headers["x-request-id"] == "e2e-1"
        thread_id = thread.json()["id"]
        answer = http.post(
            f"/api/threads/{thread_id}/messages",
            json={"content": "what is 21 * 2?"},
            headers=headers,
        )
        assert answer.status_code == 200
        body = answer.json()
        assert body["run"]["status"] == "completed"
        assert body["message"]["content"] == "21 * 2 = 42"
        events = http.get(f"/api/runs/{body['run']['id']}/events", headers=headers).json()
        assert events["events"][0]["data"] == {"request_id": "e2e-1"}
        assert events["events"][-1]["type"] == "run_completed"

        dave_thread, dave_run = interrupted_run
        dave = {
            "Authorization": "Bearer "
            + http.post("/api/auth/dev-login", json={"user_id": "dave"}).json()["token"]
        }
        run = http.get(f"/api/runs/{dave_run}", headers=dave).json()
        assert run["status"] == "failed" and run["error"]["code"] == "interrupted"
        replay = http.get(f"/api/runs/{dave_run}/events?after=1", headers=dave).json()["events"]
        assert [(e["seq"], e["type"]) for e in replay] == [(2, "run_failed")]
        again = http.post(
            f"/api/threads/{dave_thread}/messages", json={"content": "what is 1 + 1?"}, headers=dave
        )
        assert again.json()["run"]["status"] == "completed"

        metrics = http.get("/metrics").text
        assert 'isochat_runs_total{status="completed"} 2.0' in metrics

    server.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert server.process.wait(timeout=20) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log.read_text()


async def test_a_real_server_streams_a_run_over_a_real_websocket(server: Server) -> None:
    """Over a real socket: token in the query, a chat, its events live in seq order up to
    `run_completed`, equal to the stored record; a bad token is closed 4401."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        token = (await http.post("/api/auth/dev-login", json={"user_id": "erin"})).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        thread_id = (await http.post("/api/threads", json={}, headers=headers)).json()["id"]
        address = server.url.removeprefix("http://")

        async with open_socket(address, token=token) as ws:
            await ws.send({"type": "ping"})
            assert await ws.recv() == {"type": "pong"}
            await ws.send(
                {"type": "chat", "thread_id": thread_id, "content": "what is 6 * 7?",
                 "request_id": "e2e-ws"}
            )  # fmt: skip
            frames = await ws.until_runs_end(1)
        run_events = [f for f in frames if "seq" in f]
        assert run_events[0]["data"] == {"request_id": "e2e-ws"}
        assert run_events[-1]["data"]["message"]["content"] == "6 * 7 = 42"
        stored = await http.get(f"/api/runs/{run_events[0]['run_id']}/events", headers=headers)
        assert stored.json()["events"] == run_events

        async with open_socket(address, token="bad") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401


@pytest.mark.parametrize("secret", [None, "too-short"])
def test_production_refuses_to_start_with_the_development_or_a_short_secret(
    tmp_path: Path, secret: str | None
) -> None:
    """`isochat serve` in production exits at once, saying which setting to change."""
    env = environment(tmp_path, free_port()) | {"ISOCHAT_ENV": "production"}
    if secret is not None:
        env["ISOCHAT_AUTH_SECRET"] = secret
    done = subprocess.run(
        [ISOCHAT, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "ISOCHAT_AUTH_SECRET" in done.stderr
    assert not (tmp_path / "var").exists()  # refused before touching the database


def test_several_workers_without_a_shared_broker_are_refused(tmp_path: Path) -> None:
    """WORKERS > 1 with the in-process broker would leave events and cancels on one worker:
    `isochat serve` exits 2 naming both settings, before touching the database."""
    env = environment(tmp_path, free_port()) | {"ISOCHAT_WORKERS": "2"}
    done = subprocess.run(
        [ISOCHAT, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "ISOCHAT_WORKERS=2" in done.stderr and "ISOCHAT_BROKER_URL" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "var").exists()


@pytest.mark.redis
def test_two_workers_add_up_their_metrics_and_log_json_with_ids(tmp_path: Path) -> None:
    """With ISOCHAT_WORKERS=2, /metrics (answered by either worker) counts every run of both;
    gauges are back to 0 after the traffic; with ISOCHAT_LOG_FORMAT=json every line is JSON
    and each request's line carries its request id."""
    runs = 8
    redis_url = asyncio.run(reachable_redis())  # several workers need a shared broker
    with running_server(
        tmp_path,
        ISOCHAT_WORKERS="2",
        ISOCHAT_BROKER_URL=redis_url,
        ISOCHAT_LOG_FORMAT="json",
        ISOCHAT_LOG_LEVEL="info",
    ) as server:
        # A new connection per request, so that both workers take requests.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=server.url, timeout=30, limits=limits) as http:
            token = http.post("/api/auth/dev-login", json={"user_id": "mp"}).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            for i in range(runs):
                thread_id = http.post("/api/threads", json={}, headers=headers).json()["id"]
                body = http.post(
                    f"/api/threads/{thread_id}/messages",
                    json={"content": f"what is {i} + 1?"},
                    headers=headers | {"X-Request-ID": f"mp-{i}"},
                ).json()
                assert body["run"]["status"] == "completed"
            for _ in range(6):
                text = http.get("/metrics").text
                assert f'isochat_runs_total{{status="completed"}} {float(runs)}' in text
                assert "isochat_request_scopes_open 0.0" in text
                assert "isochat_db_sessions_open 0.0" in text

    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
    access = [line for line in lines if line["logger"] == "isochat.access"]
    assert {f"mp-{i}" for i in range(runs)} <= {line.get("request_id") for line in access}
    assert any(line["logger"].startswith("uvicorn") for line in lines)


@pytest.mark.redis
async def test_two_workers_share_events_through_redis(tmp_path: Path) -> None:
    """With ISOCHAT_BROKER_URL=redis://..., a socket on one worker receives every run of its
    user, whichever worker ran it. Skipped when Redis cannot be reached."""
    redis_url = await reachable_redis()
    runs = 8
    with running_server(tmp_path, ISOCHAT_WORKERS="2", ISOCHAT_BROKER_URL=redis_url) as server:
        limits = httpx.Limits(max_keepalive_connections=0)  # both workers take requests
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
            token = (await http.post("/api/auth/dev-login", json={"user_id": "rd"})).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            address = server.url.removeprefix("http://")
            async with open_socket(address, token=token) as ws:
                await ws.send({"type": "ping"})
                assert await ws.recv() == {"type": "pong"}
                for i in range(runs):
                    thread_id = (await http.post("/api/threads", json={}, headers=headers)).json()
                    body = await http.post(
                        f"/api/threads/{thread_id['id']}/messages",
                        json={"content": f"what is {i} * 2?"},
                        headers=headers,
                    )
                    assert body.json()["run"]["status"] == "completed"
                frames = await ws.until_runs_end(runs)
    answers = {f["data"]["message"]["content"] for f in frames if f["type"] == "run_completed"}
    assert answers == {f"{i} * 2 = {2 * i}" for i in range(runs)}
