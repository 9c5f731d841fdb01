"""SIGTERM and Ctrl-C to a real `isochat serve` while runs hang on the model: runs in flight
end `cancelled` (never left `running`), and a second Ctrl-C does not wait."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.processes import (
    BOUND_S,
    Processes,
    assert_one_final_event,
    exit_code,
    login,
    model_env,
    processes,
    until,
    until_model_holds,
    wait_until_ready,
)
from tests.helpers import new_thread, wait_for_run
from tests.llm_server import FakeModelServer
from tests.ws import open_socket

pytestmark = pytest.mark.e2e


@pytest.fixture
async def servers(tmp_path: Path, model: FakeModelServer) -> AsyncIterator[Processes]:
    """Stopped (killed if need be) before the model server stops."""
    async with processes(tmp_path) as started:
        yield started


def stored_run(database: Path, run_id: str) -> tuple[str, list[tuple[int, str]]]:
    """The run's status and its events' (seq, type), read from the SQLite file directly."""
    with closing(sqlite3.connect(database)) as db:
        (status,) = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        events = db.execute(
            "SELECT seq, type FROM run_events WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
    return status, [(seq, type_) for seq, type_ in events]


async def test_sigterm_cancels_http_and_websocket_runs_in_flight_and_exits(
    tmp_path: Path, model: FakeModelServer, servers: Processes
) -> None:
    """SIGTERM while an HTTP run and a WebSocket run hang on the model: the socket is closed at
    once (1012), the HTTP request gets ISOCHAT_SHUTDOWN_TIMEOUT_S; the process exits 0 and both
    runs are stored `cancelled`, each with one final `run_cancelled` event and gap-free seq."""
    server = servers.start("server", **model_env(model), ISOCHAT_SHUTDOWN_TIMEOUT_S="1")
    await wait_until_ready(server)
    tag = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=server.url, timeout=BOUND_S) as http:
        token, headers = await login(http, "shutdown")
        http_thread = await new_thread(http, headers)
        ws_thread = await new_thread(http, headers)
        posting = asyncio.create_task(
            http.post(
                f"/api/threads/{http_thread}/messages",
                json={"content": f"http {tag} [answer:hang]"},
                headers=headers,
            )
        )
        async with open_socket(server.url.removeprefix("http://"), token=token) as ws:
            await ws.send(
                {"type": "chat", "thread_id": ws_thread, "content": f"ws {tag} [answer:hang]"}
            )
            started = await ws.until(lambda f: f.get("type") == "run_started", within_s=BOUND_S)
            ws_run: str = started["run_id"]
            await until_model_holds(model, f"http {tag}")
            await until_model_holds(model, f"ws {tag}")
            http_run = await wait_for_run(http, headers, http_thread)

            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.until(lambda _: False, within_s=BOUND_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012

        code = await exit_code(server)
        (answered,) = await asyncio.gather(posting, return_exceptions=True)
    log = server.log.read_text()
    # uvicorn shuts down gracefully, then re-raises the signal it caught (as test_server.py).
    assert code in (0, -signal.SIGTERM), f"exit code {code}; HTTP got {answered!r}:\n{log}"

    # The request cut off by the shutdown is told so in the API's error shape.
    assert isinstance(answered, httpx.Response), answered
    assert answered.status_code == 503, answered.text
    assert answered.json()["error"]["code"] == "unavailable"

    for run_id in (http_run, ws_run):
        status, events = stored_run(tmp_path / "var" / "isochat.db", run_id)
        assert status == "cancelled", (run_id, status, log)
        assert_one_final_event([{"seq": s, "type": t} for s, t in events], "run_cancelled")


async def test_a_second_ctrl_c_while_the_server_waits_exits_at_once(
    model: FakeModelServer, servers: Processes
) -> None:
    """Ctrl-C while a request hangs: the server waits for it (up to the shutdown timeout, here
    far beyond the test's bound); a second Ctrl-C makes the process exit without waiting."""
    server = servers.start(
        "server", **model_env(model), ISOCHAT_SHUTDOWN_TIMEOUT_S="600", ISOCHAT_LOG_LEVEL="info"
    )
    await wait_until_ready(server)
    tag = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=server.url, timeout=BOUND_S) as http:
        _, headers = await login(http, "ctrl-c")
        thread_id = await new_thread(http, headers)
        posting = asyncio.create_task(
            http.post(
                f"/api/threads/{thread_id}/messages",
                json={"content": f"wait {tag} [answer:hang]"},
                headers=headers,
            )
        )
        await until_model_holds(model, f"wait {tag}")

        server.process.send_signal(signal.SIGINT)
        await until(
            lambda: "Waiting for connections to close" in server.log.read_text(),
            "the server to wait for the request in flight",
        )
        assert server.process.poll() is None
        server.process.send_signal(signal.SIGINT)
        await exit_code(server)  # far within the 600 s the first Ctrl-C granted
        await asyncio.gather(posting, return_exceptions=True)
