"""MCP tools against real MCP servers, each its own process: one made with the SDK's 2.x line
(stateless, the 2026-07-28 revision) and one with its 1.x FastMCP (sessions). The model is
the fake OpenAI-compatible server, told which tools to call (``[calls:tools__whoami={}]``).

What is checked is what the servers saw (their records: every HTTP request, every tool call,
every cancel) and what the users got: each run its own session with its own user's identity,
every session ended when its run ends (the 1.x server gets its ``DELETE``), on every way out;
the tool lists cached; results and errors given to the model; and ``isochat_mcp_sessions_open``
back to 0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers

from src.agents.approval import ApprovalPolicy
from src.agents.tool import MAX_TOOL_OUTPUT_CHARS, TRUNCATED
from src.container import AppContainer
from src.services.mcp.config import McpServer
from src.settings import Settings
from tests.helpers import NO_LEAKS, auth, leaks
from tests.llm_server import FakeModelServer, served_model
from tests.mcp_runs import (
    ask,
    completed_calls,
    ended,
    events_of,
    run_of,
    start,
    until,
    with_settings,
)
from tests.mcp_servers.fixtures import (
    McpServerProcess,
    established_sessions,
    terminated_sessions,
    tool_records,
)

# How soon after its run's end a session must be over (the server's clock and isochat's are
# this machine's).
CLOSED_WITHIN_S = 1.0


@pytest.fixture
async def model_server() -> AsyncIterator[FakeModelServer]:
    async with served_model() as server:
        yield server


@pytest.fixture(params=["2.x", "1.x"])
def tools_server(request: pytest.FixtureRequest) -> McpServerProcess:
    """The server whose tools the runs call (``tools__*``): each test runs against both."""
    server: McpServerProcess = request.getfixturevalue("mcp2" if request.param == "2.x" else "mcp1")
    return server


@pytest.fixture
def mcp_servers(tools_server: McpServerProcess) -> dict[str, McpServer]:
    return {"tools": McpServer(url=tools_server.url)}


@pytest.fixture
def settings(
    tmp_path: Path, model_server: FakeModelServer, mcp_servers: dict[str, McpServer]
) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        llm_provider="openai",
        llm_base_url=model_server.base_url,
        run_timeout_s=600,
        mcp_servers=mcp_servers,
        _env_file=None,
    )


def at(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


async def sessions_closed(
    server: McpServerProcess, container: AppContainer, runs: list[dict[str, Any]]
) -> None:
    """Every session the runs opened is over within ``CLOSED_WITHIN_S`` of their ends (a
    paused run's: its pause): the 1.x server saw one session per run established and ended
    (``DELETE``); the gauge is 0."""
    records = await server.aseen()
    if established_sessions(records):  # a server that keeps sessions
        records = await until(
            lambda: _with_deletes(server, len(established_sessions(records))),
            "every session ended",
        )
        ends = [r for r in records if r["kind"] == "http" and r["method"] == "DELETE"]
        assert sorted(terminated_sessions(records)) == sorted(established_sessions(records))
        last_end = max(at(run["finished_at"] or run["paused_at"]) for run in runs)
        assert max(r["time"] for r in ends) - last_end < CLOSED_WITHIN_S
    await until(
        lambda: container.metrics().value("isochat_mcp_sessions_open") == 0, "the gauge at 0"
    )


async def _with_deletes(server: McpServerProcess, count: int) -> list[dict[str, Any]] | None:
    records = await server.aseen()
    return records if len(terminated_sessions(records)) >= count else None


async def test_two_users_at_once_each_run_its_own_session_and_identity(
    container: AppContainer, client: httpx.AsyncClient, tools_server: McpServerProcess
) -> None:
    """Two users' runs call ``whoami`` at the same time: each call carries its own user and
    run, each run has a session of its own (the 1.x server: two sessions, each ended), and
    nothing is left open."""
    alice, bob = await asyncio.gather(
        ask(container, client, "alice", "[calls:tools__whoami={}] who am I?"),
        ask(container, client, "bob", "[calls:tools__whoami={}] who am I?"),
    )
    for user, body in (("alice", alice), ("bob", bob)):
        assert body["run"]["status"] == "completed", body
        answer = json.loads(body["message"]["content"].removeprefix("Model says: "))
        assert (answer["user"], answer["run"]) == (user, body["run"]["id"])
    records = await tools_server.aseen()
    calls = tool_records(records, tool="whoami", event="called")
    assert sorted((c["user"], c["run"]) for c in calls) == sorted(
        [("alice", alice["run"]["id"]), ("bob", bob["run"]["id"])]
    )
    # Every request said whose run it was.
    for request in (r for r in records if r["kind"] == "http" and r["rpc"] != "server/discover"):
        assert request["user"] in ("alice", "bob"), request
    sessions = established_sessions(records)
    if sessions:
        assert len(sessions) == 2
        per_run = {r["run"]: r["session"] for r in records if r.get("rpc") == "tools/call"}
        assert len(set(per_run.values())) == 2
    await sessions_closed(tools_server, container, [alice["run"], bob["run"]])
    assert leaks(container) == NO_LEAKS


@pytest.mark.parametrize("way_out", ["completed", "failed", "cancelled", "timeout", "paused"])
async def test_the_session_ends_with_its_run_on_every_way_out(
    container: AppContainer,
    client: httpx.AsyncClient,
    tools_server: McpServerProcess,
    way_out: str,
) -> None:
    """Completed, failed (the model never stops calling), cancelled and timed out (each in the
    middle of a call that hangs: the server sees the call cancelled), paused for approval (and
    its resumed run, on a session of its own): each run's session is over within a second of
    its end."""
    if way_out == "paused":
        container.approvals.override(providers.Object(ApprovalPolicy(["tools__add"])))
        content = '[calls:tools__whoami={};tools__add={"a": 1, "b": 2}] add'
        run_id = await start(container, client, "alice", content)
        paused = await until(
            lambda: _status(container, client, run_id, "awaiting_approval"), "the pause"
        )
        events = await events_of(container, client, "alice", run_id)
        paused["paused_at"] = next(e["ts"] for e in events if e["type"] == "approval_requested")
        records = await tools_server.aseen()
        assert [c["tool"] for c in tool_records(records, event="called")] == ["whoami"]
        await sessions_closed(tools_server, container, [paused])
        decided = await client.post(
            f"/api/runs/{run_id}/approvals",
            json={"decisions": [{"call_id": "call_1", "decision": "approve"}]},
            headers=auth(container, "alice"),
        )
        assert decided.status_code == 202, decided.text
        run = await ended(container, client, "alice", run_id)
        assert run["status"] == "completed"
        records = await tools_server.aseen()
        assert [c["tool"] for c in tool_records(records, event="called")] == ["whoami", "add"]
        if established_sessions(records):
            assert len(established_sessions(records)) == 2  # the pause's, the resumed run's
        await sessions_closed(tools_server, container, [run])
        return

    if way_out == "timeout":
        with_settings(container, run_timeout_s=1.0)
    content = {
        "completed": "[calls:tools__whoami={}] go",
        "failed": "[calls-forever:tools__whoami={}] go",
        "cancelled": "[calls:tools__hang={}] go",
        "timeout": "[calls:tools__hang={}] go",
    }[way_out]
    run_id = await start(container, client, "alice", content)
    if way_out == "cancelled":
        await until(
            lambda: _tool_event(tools_server, "hang", "started"), "the hang call on the server"
        )
        response = await client.post(f"/api/runs/{run_id}/cancel", headers=auth(container, "alice"))
        assert response.json()["run"]["status"] == "cancelled", response.text
    run = await ended(container, client, "alice", run_id)
    expected = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}
    assert run["status"] == expected.get(way_out, "failed"), run
    if way_out == "timeout":
        assert run["error"]["code"] == "timeout"
    if way_out in ("cancelled", "timeout"):
        await until(
            lambda: _tool_event(tools_server, "hang", "cancelled"), "the server's tool cancelled"
        )
    await sessions_closed(tools_server, container, [run])
    assert leaks(container) == NO_LEAKS


async def _status(
    container: AppContainer, client: httpx.AsyncClient, run_id: str, status: str
) -> dict[str, Any] | None:
    run = await run_of(container, client, "alice", run_id)
    return run if run["status"] == status else None


async def _tool_event(server: McpServerProcess, tool: str, event: str) -> bool:
    return bool(tool_records(await server.aseen(), tool=tool, event=event))


async def test_the_model_is_offered_the_servers_tools_beside_the_routes_own(
    container: AppContainer,
    client: httpx.AsyncClient,
    model_server: FakeModelServer,
    tools_server: McpServerProcess,
) -> None:
    """The math specialist's model sees its calculator and the server's tools, named
    ``tools__<tool>``, with the server's descriptions and input schemas."""
    body = await ask(container, client, "alice", "[route:math] hello")
    assert body["run"]["status"] == "completed"
    [request] = model_server.answer_requests()
    tools = {t["function"]["name"]: t["function"] for t in request["tools"]}
    assert set(tools) == {
        "calculator",
        *(f"tools__{n}" for n in ("add", "whoami", "hang", "boom", "big", "weather")),
    }
    add = tools["tools__add"]
    assert add["description"] == "Add two integers."
    assert add["parameters"]["properties"]["a"]["type"] == "integer"
    assert sorted(add["parameters"]["required"]) == ["a", "b"]


async def test_results_reach_the_model_within_the_caps(
    container: AppContainer, client: httpx.AsyncClient, tools_server: McpServerProcess
) -> None:
    """Structured content, a text past the output cap, a tool that raises, arguments that do
    not fit the schema: each call's result or error is what the model gets, and each is
    reported like any tool's."""
    calls = (
        '[calls:tools__weather={"city": "Paris"};tools__big={};tools__boom={};'
        'tools__add={"a": "two"}]'
    )
    body = await ask(container, client, "alice", f"{calls} go")
    assert body["run"]["status"] == "completed", body
    events = await events_of(container, client, "alice", body["run"]["id"])
    weather, big, boom, add = sorted(completed_calls(events), key=lambda c: c["call_id"])
    assert weather["ok"] and json.loads(weather["output"]) == {
        "city": "Paris",
        "sky": "sunny",
        "celsius": 21,
    }
    assert big["ok"] and len(big["output"]) == MAX_TOOL_OUTPUT_CHARS
    assert big["output"].endswith(TRUNCATED)
    assert not boom["ok"] and "boom" in boom["output"]
    assert not add["ok"] and "a: 'two' is not of type 'integer'" in add["output"]
    # The server was never sent the call whose arguments did not fit.
    records = await tools_server.aseen()
    assert not tool_records(records, tool="add")


async def test_tool_lists_are_cached_for_the_ttl(
    container: AppContainer, client: httpx.AsyncClient, tools_server: McpServerProcess
) -> None:
    """Three runs, each calling a tool, ask the server for its tools once (a run's new session
    is told the list, and does not ask again before its call); with a TTL of 0, every run
    asks once."""
    for _ in range(3):
        body = await ask(container, client, "alice", '[calls:tools__add={"a": 1, "b": 1}] add')
        assert body["message"]["content"] == "Model says: 2"
    listed = [r for r in await tools_server.aseen() if r.get("rpc") == "tools/list"]
    assert len(listed) == 1

    with_settings(container, mcp_tools_ttl_s=0)
    container.mcp_tool_lists.reset()
    await tools_server.areset()
    for _ in range(2):
        await ask(container, client, "alice", '[calls:tools__add={"a": 1, "b": 1}] add')
    listed = [r for r in await tools_server.aseen() if r.get("rpc") == "tools/list"]
    assert len(listed) == 2
