"""Real `isochat serve` processes for the e2e tests of hosts and shutdown: started on free ports,
waited for without blocking the test's event loop (which also serves the fake model), and
stopped; whatever a test leaves running is killed when it ends, pass or fail.

Every wait is bounded by ``BOUND_S``, which only guards against a hang: each waits for
something to happen, never for time to pass."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from src.runs.domain import FINAL_EVENT_TYPES
from tests.e2e.test_server import ISOCHAT, Server, environment, free_port
from tests.llm_server import FakeModelServer

BOUND_S = 60.0
POLL_S = 0.05


class Processes:
    """The servers one test starts, each logging to ``<name>.log`` in the test's directory."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._started: list[Server] = []

    def start(self, name: str, **env: str) -> Server:
        """Start ``isochat serve`` on a free port with ``env`` on top of the test defaults
        (SQLite under the test's directory); returns at once, without waiting for it."""
        port = free_port()
        log = self._directory / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [ISOCHAT, "serve"],
                env=environment(self._directory, port) | env,
                stdout=out,
                stderr=out,
            )
        server = Server(url=f"http://127.0.0.1:{port}", process=process, log=log)
        self._started.append(server)
        return server

    async def stop_all(self) -> None:
        """SIGTERM what is still running, SIGKILL what has not exited within the bound."""
        running = [s for s in self._started if s.process.poll() is None]
        for server in running:
            server.process.send_signal(signal.SIGTERM)
        for server in running:
            try:
                await exit_code(server, within_s=20)
            except AssertionError:
                server.process.kill()
                server.process.wait()


@asynccontextmanager
async def processes(directory: Path) -> AsyncIterator[Processes]:
    started = Processes(directory)
    try:
        yield started
    finally:
        await started.stop_all()


async def exit_code(server: Server, *, within_s: float = BOUND_S) -> int:
    """The process's exit code once it has exited (negative: the signal that ended it)."""
    await until(lambda: server.process.poll() is not None, f"{server.url} to exit", within_s)
    code = server.process.poll()
    assert code is not None
    return code


async def until(condition: Callable[[], bool], what: str, within_s: float = BOUND_S) -> None:
    """Poll ``condition`` (which must not block) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"waited {within_s:g} s for {what}")
        await asyncio.sleep(POLL_S)


async def wait_until_ready(server: Server) -> dict[str, Any]:
    """``GET /health/ready``'s body once it answers 200; fails (with the server's log) if the
    process exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        while loop.time() < deadline:
            if server.process.poll() is not None:
                raise AssertionError(f"the server exited early:\n{server.log.read_text()}")
            try:
                ready = await http.get("/health/ready")
            except httpx.TransportError:
                pass
            else:
                if ready.status_code == 200:
                    body: dict[str, Any] = ready.json()
                    return body
            await asyncio.sleep(POLL_S)
    raise AssertionError(f"the server did not get ready:\n{server.log.read_text()}")


async def start_both(hosts: Processes, env: dict[str, str]) -> tuple[Server, Server]:
    """Hosts A and B started at the same moment; both ready."""
    a, b = hosts.start("a", **env), hosts.start("b", **env)
    await asyncio.gather(wait_until_ready(a), wait_until_ready(b))
    return a, b


def hosts_env(
    model: FakeModelServer, *, database: str, broker: str, lease_s: float
) -> dict[str, str]:
    """What every host of a test of several hosts shares: the database, the broker's Redis, the
    model, a short lease and shutdown; rate limits out of the way (tests poll many times a
    second)."""
    return model_env(model) | {
        "ISOCHAT_DATABASE_URL": database,
        "ISOCHAT_BROKER_URL": broker,
        "ISOCHAT_RUN_LEASE_S": str(lease_s),
        "ISOCHAT_SHUTDOWN_TIMEOUT_S": "1",
        "ISOCHAT_RATE_LIMIT_PER_MINUTE": "100000",
        "ISOCHAT_RATE_LIMIT_BURST": "10000",
    }


def model_env(model: FakeModelServer) -> dict[str, str]:
    """Runs use ``model``; no model call or run is cut off by a timeout while a test holds it."""
    return {
        "ISOCHAT_LLM_PROVIDER": "openai",
        "ISOCHAT_LLM_BASE_URL": model.base_url,
        "ISOCHAT_LLM_API_KEY": "sk-test",
        "ISOCHAT_LLM_MODEL": "test-model",
        "ISOCHAT_LLM_TIMEOUT_S": "600",
        "ISOCHAT_RUN_TIMEOUT_S": "600",
    }


async def until_model_holds(model: FakeModelServer, text: str) -> None:
    """Wait until the model has been asked for the answer to the message containing ``text``
    (sent with ``[answer:hang]``, that call now hangs until the model is released)."""

    def asked() -> bool:
        return any(text in _last_user_message(r) for r in model.answer_requests())

    await until(asked, f"the model to be asked about {text!r}")


def _last_user_message(body: dict[str, Any]) -> str:
    content: str = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    return content


async def login(http: httpx.AsyncClient, prefix: str) -> tuple[str, dict[str, str]]:
    """A new user (unique to this test run): its token and its request headers."""
    user_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
    response = await http.post("/api/auth/dev-login", json={"user_id": user_id})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token, {"Authorization": f"Bearer {token}"}


def assert_one_final_event(events: list[dict[str, Any]], final_type: str) -> None:
    """Seq 1..n with no gap, and exactly one final event: the last, of ``final_type``."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    finals = [e["type"] for e in events if e["type"] in FINAL_EVENT_TYPES]
    assert finals == [final_type]
    assert events[-1]["type"] == final_type
