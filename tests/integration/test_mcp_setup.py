"""Which specialists get a server's tools (``routes``), servers and per-user credentials from a
team's container, and the offline model calling an MCP tool that a message names: each against
a real MCP server process (the 2.x SDK's)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import containers, providers

from src.agents.approval import ApprovalPolicy
from src.container import AppContainer
from src.plugins import plug_in
from src.runs.domain import RunContext
from src.services.mcp import McpServer, with_mcp_servers
from src.settings import Settings
from tests.helpers import NO_LEAKS, auth, leaks
from tests.llm_server import FakeModelServer, served_model
from tests.mcp_runs import ask, ended, events_of, start, until, with_settings
from tests.mcp_servers.fixtures import McpServerProcess


@pytest.fixture
async def model_server() -> AsyncIterator[FakeModelServer]:
    async with served_model() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, model_server: FakeModelServer, mcp2: McpServerProcess) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        llm_provider="openai",
        llm_base_url=model_server.base_url,
        run_timeout_s=600,
        mcp_servers={"tools": McpServer(url=mcp2.url, routes=("math",))},
        _env_file=None,
    )


def offered(model_server: FakeModelServer) -> list[set[str]]:
    """The tools offered to the specialists' models, call by call."""
    return [
        {t["function"]["name"] for t in r.get("tools", [])} for r in model_server.answer_requests()
    ]


async def test_only_the_routes_a_server_names_get_its_tools(
    container: AppContainer, client: httpx.AsyncClient, model_server: FakeModelServer
) -> None:
    await ask(container, client, "alice", "[route:math] hello")
    await ask(container, client, "alice", "[route:general] hello")
    math, general = offered(model_server)
    assert "calculator" in math and "tools__add" in math
    assert not any(name.startswith("tools__") for name in general)


class CredentialPlugin(containers.DeclarativeContainer):
    """A team's container: a server of its own beside the configured ones (the same process,
    under another name), and each user's own credential on every request to it."""

    isochat = providers.DependenciesContainer()
    crm_url = providers.Dependency(instance_of=str)
    mcp_servers = providers.Callable(
        with_mcp_servers,
        isochat.configured_mcp_servers,
        crm=providers.Factory(McpServer, url=crm_url, routes=providers.Object(("general",))),
    )
    mcp_user_headers = providers.Object(
        lambda server, run: (
            {"Authorization": f"Bearer token-of-{run.user_id}"} if server == "crm" else {}
        )
    )


async def test_a_teams_container_adds_servers_and_each_users_credential(
    container: AppContainer, client: httpx.AsyncClient, mcp2: McpServerProcess
) -> None:
    plugin = plug_in(container, CredentialPlugin)
    plugin.crm_url.override(mcp2.url)
    assert set(container.request.mcp_servers()) == {"tools", "crm"}
    for user in ("alice", "bob"):
        body = await ask(container, client, user, "[route:general] [calls:crm__whoami={}] who")
        answer = json.loads(body["message"]["content"].removeprefix("Model says: "))
        assert answer["user"] == user
        assert answer["authorization"] == f"Bearer token-of-{user}"
    body = await ask(container, client, "alice", "[route:math] [calls:tools__whoami={}] who")
    assert (
        json.loads(body["message"]["content"].removeprefix("Model says: "))["authorization"] is None
    )
    assert leaks(container) == NO_LEAKS


def test_the_default_adds_no_headers() -> None:
    from src.services.mcp.run import no_user_headers

    assert no_user_headers("crm", RunContext(run_id="r", thread_id="t", user_id="u")) == {}


async def test_the_offline_model_calls_a_tool_the_message_names(
    container: AppContainer, client: httpx.AsyncClient, mcp2: McpServerProcess
) -> None:
    """No model server: the offline model calls ``tools__add`` with the arguments written
    after its name, and answers with the result; a message that names no tool is answered
    as ever, saying which tools it could call."""
    with_settings(container, llm_provider="offline", mcp_servers={"tools": McpServer(url=mcp2.url)})
    container.llm.reset()
    body: dict[str, Any] = await ask(container, client, "alice", "tools__add a=2 b=40")
    assert body["message"]["content"] == "tools__add answered: 42"
    body = await ask(container, client, "alice", 'tools__weather {"city": "Oslo"} please')
    assert json.loads(body["message"]["content"].removeprefix("tools__weather answered: ")) == {
        "city": "Oslo",
        "sky": "sunny",
        "celsius": 21,
    }
    body = await ask(container, client, "alice", "hello there")
    assert "To call a tool, name it: tools__add, tools__whoami" in body["message"]["content"]


async def test_a_server_started_by_command_speaks_stdio_for_its_run(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A server declared with a ``command`` is started for the run's session and told whose
    run it is in each call's ``_meta``; it is ended with the run."""
    stdio = McpServer(command=sys.executable, args=("-m", "tests.mcp_servers.server2", "--stdio"))
    with_settings(container, mcp_servers={"local": stdio})
    body = await ask(container, client, "alice", "[calls:local__whoami={}] who")
    answer = json.loads(body["message"]["content"].removeprefix("Model says: "))
    # (No headers over stdio: the server read who it was from the call's _meta.)
    assert answer == {
        "user": "alice",
        "run": body["run"]["id"],
        "authorization": None,
        "session": None,
    }
    assert leaks(container) == NO_LEAKS


async def test_an_edit_of_a_waiting_mcp_call_is_checked_against_the_servers_schema(
    container: AppContainer, client: httpx.AsyncClient, mcp2: McpServerProcess
) -> None:
    """``ISOCHAT_APPROVAL_TOOLS`` names an MCP tool like any other: its call waits; an edit
    whose arguments do not fit the server's schema is 422 (nothing decided), one that fits
    runs instead of the model's."""
    container.approvals.override(providers.Object(ApprovalPolicy(["tools__add"])))
    run_id = await start(
        container, client, "alice", '[route:math] [calls:tools__add={"a": 1, "b": 2}] add'
    )
    await until(lambda: _status(container, client, run_id), "the pause")
    headers = auth(container, "alice")

    def edit(arguments: dict[str, Any]) -> dict[str, Any]:
        return {"decisions": [{"call_id": "call_0", "decision": "edit", "input": arguments}]}

    refused = await client.post(
        f"/api/runs/{run_id}/approvals", json=edit({"a": "x", "b": 2}), headers=headers
    )
    assert refused.status_code == 422, refused.text
    assert "'x' is not of type 'integer'" in refused.json()["error"]["message"]
    decided = await client.post(
        f"/api/runs/{run_id}/approvals", json=edit({"a": 20, "b": 22}), headers=headers
    )
    assert decided.status_code == 202, decided.text
    run = await ended(container, client, "alice", run_id)
    assert run["status"] == "completed"
    events = await events_of(container, client, "alice", run_id)
    [completed] = [e["data"] for e in events if e["type"] == "tool_completed"]
    assert completed["output"] == "42"
    assert leaks(container) == NO_LEAKS


async def _status(container: AppContainer, client: httpx.AsyncClient, run_id: str) -> bool:
    response = await client.get(f"/api/runs/{run_id}", headers=auth(container, "alice"))
    return bool(response.json()["status"] == "awaiting_approval")
