"""An MCP server that fails fails that call alone: stopped, hanging past the MCP timeout,
raising, answering garbage (or HTML, or 500), dropping its session in the middle of a call.
Each time the failing run completes (the model is told the call failed, and why) while another
user's run, calling a healthy server at the same time, completes with its answer; nothing is
left open; the log and ``isochat_mcp_failures_total`` name the server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from src.container import AppContainer
from src.services.mcp.config import McpServer
from src.settings import Settings
from tests.helpers import NO_LEAKS, leaks
from tests.llm_server import FakeModelServer, served_model
from tests.mcp_runs import ask, completed_calls, ended, events_of, start, until, with_settings
from tests.mcp_servers.fixtures import McpServerProcess, free_port, mcp2_server, tool_records

HEALTHY = '[calls:tools__add={"a": 2, "b": 3}] add'


@pytest.fixture
async def model_server() -> AsyncIterator[FakeModelServer]:
    async with served_model() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, model_server: FakeModelServer, mcp2: McpServerProcess) -> Settings:
    """``tools``: a healthy server; ``broken``: whatever a test puts there (nothing listens
    on its port until then)."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        llm_provider="openai",
        llm_base_url=model_server.base_url,
        run_timeout_s=600,
        mcp_servers={
            "tools": McpServer(url=mcp2.url),
            "broken": McpServer(url=f"http://127.0.0.1:{free_port()}/mcp"),
        },
        _env_file=None,
    )


def point_broken_at(container: AppContainer, url: str) -> None:
    servers = dict(container.settings().mcp_servers)
    servers["broken"] = McpServer(url=url)
    with_settings(container, mcp_servers=servers)


async def beside_a_healthy_run(
    container: AppContainer, client: httpx.AsyncClient, failing: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The failing run (alice) and a healthy one (bob) at the same time, both to their ends."""
    failing_body, healthy_body = await asyncio.gather(
        ask(container, client, "alice", failing), ask(container, client, "bob", HEALTHY)
    )
    assert healthy_body["run"]["status"] == "completed", healthy_body
    assert healthy_body["message"]["content"] == "Model says: 5"
    return failing_body, healthy_body


async def failed_call(
    container: AppContainer, client: httpx.AsyncClient, body: dict[str, Any]
) -> str:
    """The one call of the run, failed: what the model was told."""
    assert body["run"]["status"] == "completed", body
    [call] = completed_calls(await events_of(container, client, "alice", body["run"]["id"]))
    assert call["ok"] is False, call
    told: str = json.loads(body["message"]["content"].removeprefix("Model says: "))["error"]
    assert call["output"] == f"error: {told}"
    return told


async def test_a_stopped_server_fails_the_call_alone(
    container: AppContainer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="src.services.mcp")
    failing, _ = await beside_a_healthy_run(container, client, "[calls:broken__add={}] add")
    assert await failed_call(container, client, failing) == (
        "there is no tool named 'broken__add' (tools: tools__add, tools__whoami, tools__hang, "
        "tools__boom, tools__big, tools__weather)"
    )
    # It could not list its tools: the log and the metric say which server, and why.
    assert "MCP server broken: list failed (open): ConnectError" in caplog.text
    metrics = container.metrics()
    # (Each of the two runs asked it: neither had a list to go on with meanwhile.)
    assert metrics.value("isochat_mcp_failures_total", {"server": "broken", "kind": "open"}) >= 1
    assert metrics.value("isochat_mcp_failures_total", {"server": "tools", "kind": "open"}) == 0
    ready = await client.get("/health/ready")
    assert ready.status_code == 200, ready.text  # readiness does not depend on MCP servers
    assert leaks(container) == NO_LEAKS


async def test_a_server_that_stops_after_listing_fails_the_call_alone(
    container: AppContainer,
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """Listed while it was up, stopped since: the call is tried and fails, and the model is
    told the server is unavailable."""
    server = mcp2_server(tmp_path / "broken.log")
    await server.astart()
    point_broken_at(container, server.url)
    await ask(container, client, "alice", "hello")  # lists its tools
    await server.astop()
    failing, _ = await beside_a_healthy_run(
        container, client, '[calls:broken__add={"a": 1, "b": 1}] add'
    )
    assert await failed_call(container, client, failing) == "the MCP server broken is unavailable"
    assert leaks(container) == NO_LEAKS


@pytest.mark.parametrize(
    ("mode", "told"),
    [
        ("json-garbage", "answered something that is not MCP"),
        ("html", "answered something that is not MCP"),
        ("500", "answered an error: Server returned an error response"),
    ],
)
async def test_a_server_answering_garbage_fails_the_call_alone(
    container: AppContainer,
    client: httpx.AsyncClient,
    garbage_mcp: Callable[[str], McpServerProcess],
    mcp2: McpServerProcess,
    mode: str,
    told: str,
) -> None:
    """A server that listed its tools, then answers garbage in its place: the call fails, and
    nothing it sent reaches the model or another run (the model is told what kind of answer
    it was; its text is for the log)."""
    point_broken_at(container, mcp2.url)
    await ask(container, client, "alice", "hello")  # lists its tools
    point_broken_at(container, garbage_mcp(mode).url)
    failing, _ = await beside_a_healthy_run(
        container, client, '[calls:broken__add={"a": 1, "b": 1}] add'
    )
    assert await failed_call(container, client, failing) == f"the MCP server broken {told}"
    assert leaks(container) == NO_LEAKS


async def test_a_tool_that_raises_fails_the_call_alone(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    failing, _ = await beside_a_healthy_run(container, client, "[calls:tools__boom={}] go")
    assert "boom" in await failed_call(container, client, failing)


async def test_a_call_past_the_mcp_timeout_is_cancelled_and_fails_alone(
    container: AppContainer, client: httpx.AsyncClient, mcp2: McpServerProcess
) -> None:
    """The hanging call is given up after ``MCP_TIMEOUT_S``: the server's tool is cancelled,
    the model is told, and the run goes on to its answer while another user's run completes."""
    with_settings(container, mcp_timeout_s=1.0)
    failing, _ = await beside_a_healthy_run(container, client, "[calls:tools__hang={}] go")
    assert await failed_call(container, client, failing) == (
        "the MCP server tools did not run hang within 1 s"
    )
    await until(lambda: _hang_cancelled(mcp2, failing["run"]["id"]), "the server's hang cancelled")
    metrics = container.metrics()
    assert metrics.value("isochat_mcp_failures_total", {"server": "tools", "kind": "timeout"}) == 1
    assert leaks(container) == NO_LEAKS


async def _hang_cancelled(server: McpServerProcess, run_id: str) -> bool:
    return await _hang_record(server, run_id, "cancelled")


async def _tool_started(server: McpServerProcess, run_id: str) -> bool:
    return await _hang_record(server, run_id, "started")


async def _hang_record(server: McpServerProcess, run_id: str, event: str) -> bool:
    """Whether the server recorded ``event`` of the ``hang`` call of run ``run_id``."""
    records = tool_records(await server.aseen(), tool="hang", event=event)
    return any(r["run"] == run_id for r in records)


async def test_a_hanging_call_does_not_hold_another_users_run(
    container: AppContainer, client: httpx.AsyncClient, mcp2: McpServerProcess
) -> None:
    """While alice's call hangs on the server, bob's run (the same server) completes; then
    alice's run is cancelled, which cancels the call on the server."""
    run_id = await start(container, client, "alice", "[calls:tools__hang={}] go")
    await until(lambda: _tool_started(mcp2, run_id), "the hang call on the server")
    healthy = await ask(container, client, "bob", HEALTHY)
    assert healthy["message"]["content"] == "Model says: 5"
    assert (await ended_or_running(container, client, run_id))["status"] == "running"
    await client.post(f"/api/runs/{run_id}/cancel", headers=_auth(container))
    run = await ended(container, client, "alice", run_id)
    assert run["status"] == "cancelled"
    await until(lambda: _hang_cancelled(mcp2, run_id), "the server's hang cancelled")
    assert leaks(container) == NO_LEAKS


async def ended_or_running(
    container: AppContainer, client: httpx.AsyncClient, run_id: str
) -> dict[str, Any]:
    response = await client.get(f"/api/runs/{run_id}", headers=_auth(container))
    body: dict[str, Any] = response.json()
    return body


def _auth(container: AppContainer) -> dict[str, str]:
    return {"Authorization": f"Bearer {container.tokens().issue('alice')}"}


async def test_a_session_dropped_mid_call_fails_the_call_alone(
    container: AppContainer,
    client: httpx.AsyncClient,
    mcp1: McpServerProcess,
) -> None:
    """The 1.x server (sessions) is killed while a call of alice's hangs: that call fails,
    the run completes; once the server is back, a new run gets a new session and works."""
    point_broken_at(container, mcp1.url)
    run_id = await start(container, client, "alice", "[calls:broken__hang={}] go")
    await until(lambda: _tool_started(mcp1, run_id), "the hang call on the server")
    await asyncio.to_thread(mcp1.kill)
    run = await ended(container, client, "alice", run_id)
    assert run["status"] == "completed", run
    [call] = completed_calls(await events_of(container, client, "alice", run_id))
    assert not call["ok"]
    assert call["output"] in (
        "error: the MCP server broken closed the session",
        "error: the MCP server broken failed",
    )
    await mcp1.astart()
    body = await ask(container, client, "alice", '[calls:broken__add={"a": 2, "b": 2}] add')
    assert body["message"]["content"] == "Model says: 4"
    assert leaks(container) == NO_LEAKS
