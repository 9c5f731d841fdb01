"""The test MCP servers and their fixtures (tests.mcp_servers), driven by the MCP SDK's own
client: the 2.x and 1.x servers offer the same tools, which behave alike and see isochat's
headers; the 1.x one opens and ends one session a client; a cancelled call is cancelled on the
server; the non-MCP servers answer as their mode says; a server restarts on its port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from tests.mcp_servers.fixtures import (
    McpServerProcess,
    Record,
    established_sessions,
    http_records,
    terminated_sessions,
    tool_records,
)

TOOLS = {
    "add": "Add two integers.",
    "whoami": "Who is calling: the user, run, authorization and session headers of the request.",
    "hang": "Wait forever, until the call is cancelled.",
    "boom": "Fail, always.",
    "big": "A result of 100,000 characters.",
    "weather": "The current weather in a city.",
}
# Both SDKs' servers, by fixture: the 1.x one is skipped where its virtualenv cannot be made.
SERVERS = pytest.mark.parametrize("server_fixture", ["mcp2", "mcp1"])
BOUND_S = 10.0  # only guards against a hang


@asynccontextmanager
async def connected(url: str, user: str, run: str) -> AsyncIterator[Client]:
    headers = {"X-Isochat-User": user, "X-Isochat-Run": run, "Authorization": f"Bearer {user}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def text(result: CallToolResult) -> str:
    [content] = result.content
    assert isinstance(content, TextContent)
    return content.text


async def until(
    server: McpServerProcess, found: Callable[[list[Record]], bool], what: str
) -> list[Record]:
    """The server's records once ``found`` says they hold what the test waits for."""
    deadline = asyncio.get_running_loop().time() + BOUND_S
    while not found(records := await server.aseen()):
        assert asyncio.get_running_loop().time() < deadline, f"never saw {what}: {records}"
        await asyncio.sleep(0.02)
    return records


def all_sessions_ended(records: list[Record]) -> bool:
    events = [r["event"] for r in records if r["kind"] == "session"]
    return events.count("session_started") == events.count("session_ended")


@SERVERS
async def test_the_tools_behave_alike_and_see_the_callers_headers(
    server_fixture: str, request: pytest.FixtureRequest
) -> None:
    server: McpServerProcess = request.getfixturevalue(server_fixture)
    whoami: list[dict[str, Any]] = []
    for user, run in (("u1", "r1"), ("u2", "r2")):
        async with connected(server.url, user, run) as client:
            tools = (await client.list_tools()).tools
            assert {t.name: t.description for t in tools} == TOOLS

            added = await client.call_tool("add", {"a": 2, "b": 3})
            assert (added.is_error, text(added)) == (False, "5")
            assert added.structured_content == {"result": 5}

            who = await client.call_tool("whoami", {})
            assert who.structured_content is not None
            whoami.append(who.structured_content)

            failed = await client.call_tool("boom", {})
            # The 1.x SDK adds the exception's message ("...: kaboom"), the 2.x one does not.
            assert failed.is_error
            assert text(failed).startswith("Error executing tool boom")

            big = await client.call_tool("big", {})
            assert text(big) == "x" * 100_000

            weather = await client.call_tool("weather", {"city": "Oslo"})
            assert weather.structured_content == {"city": "Oslo", "sky": "sunny", "celsius": 21}

    records = server.seen()
    sessions = established_sessions(records)
    if server_fixture == "mcp1":
        # One session a client, ended by it, and the one its calls carried.
        assert len(sessions) == 2
        assert terminated_sessions(records) == sessions
        assert [w["session"] for w in whoami] == sessions
        # None left open on the server (it ends one just after answering its DELETE).
        await until(server, all_sessions_ended, "every session started ended")
    else:
        assert (sessions, terminated_sessions(records)) == ([], [])
        assert [w["session"] for w in whoami] == [None, None]
    assert [{k: v for k, v in w.items() if k != "session"} for w in whoami] == [
        {"user": "u1", "run": "r1", "authorization": "Bearer u1"},
        {"user": "u2", "run": "r2", "authorization": "Bearer u2"},
    ]
    called = [(r["tool"], r["user"], r["run"]) for r in tool_records(records, event="called")]
    tools_called = ["add", "whoami", "boom", "big", "weather"]
    assert called == [(t, "u1", "r1") for t in tools_called] + [
        (t, "u2", "r2") for t in tools_called
    ]
    calls = http_records(records, rpc="tools/call")
    assert [(r["tool"], r["status"]) for r in calls][:2] == [("add", 200), ("whoami", 200)]
    assert calls[0]["arguments"] == {"a": 2, "b": 3}


async def test_both_servers_offer_the_same_tools(
    mcp1: McpServerProcess, mcp2: McpServerProcess
) -> None:
    offered = []
    for server in (mcp1, mcp2):
        async with connected(server.url, "u1", "r1") as client:
            tools = (await client.list_tools()).tools
        offered.append({t.name: (t.description, t.input_schema, t.output_schema) for t in tools})
    assert offered[0] == offered[1]


@SERVERS
async def test_a_call_the_client_cancels_is_cancelled_on_the_server(
    server_fixture: str, request: pytest.FixtureRequest
) -> None:
    server: McpServerProcess = request.getfixturevalue(server_fixture)
    async with connected(server.url, "u1", "r7") as client:
        call = asyncio.create_task(client.call_tool("hang", {}))
        await until(server, lambda r: bool(tool_records(r, event="started")), "hang start")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        records = await until(
            server, lambda r: bool(tool_records(r, event="cancelled")), "hang cancelled"
        )
    assert [(r["event"], r["run"]) for r in tool_records(records, tool="hang")] == [
        ("called", "r7"),
        ("started", "r7"),
        ("cancelled", "r7"),
    ]


def test_a_server_restarts_on_its_port_and_its_records_reset(mcp2: McpServerProcess) -> None:
    url = mcp2.url
    httpx.post(mcp2.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert len(mcp2.seen()) == 1
    mcp2.reset()
    assert mcp2.seen() == []

    httpx.post(mcp2.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    mcp2.kill()
    assert not mcp2.running
    with pytest.raises(httpx.TransportError):
        mcp2.seen()
    mcp2.start()
    assert (mcp2.url, mcp2.seen()) == (url, [])  # a new process: nothing recorded yet
    mcp2.stop()
    assert not mcp2.running


@pytest.mark.parametrize(
    ("mode", "status", "content_type", "body"),
    [
        ("json-garbage", 200, "application/json", "not json at all"),
        ("html", 200, "text/html", "<!doctype html>"),
        ("500", 500, "text/plain", "Internal Server Error"),
    ],
)
def test_a_garbage_server_answers_as_its_mode_says(
    garbage_mcp: Callable[[str], McpServerProcess],
    mode: str,
    status: int,
    content_type: str,
    body: str,
) -> None:
    server = garbage_mcp(mode)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    answer = httpx.post(server.url, json=initialize, headers={"X-Isochat-Run": "r1"})
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith(content_type)
    assert answer.text.startswith(body)
    [seen] = server.seen()
    assert (seen["rpc"], seen["run"], seen["status"]) == ("initialize", "r1", status)
