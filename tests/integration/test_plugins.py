"""Teams plug in their own agents and tools through a container of their own, without editing
``src/``: the support example (``examples/support``) served and chatted with, a team's
override of a stock route, and ``ISOCHAT_CONTAINER`` naming what cannot serve."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import containers, providers

from examples.support import fake_weather
from src.agents.base import Agent
from src.agents.loop import ToolAgent
from src.agents.tool import function_tool
from src.container import AppContainer, build_container, shutdown
from src.plugins import BadPlugin, plug_in, plugin_class
from src.services.database.migrations import upgrade_to_head
from src.settings import Settings
from src.web.app import create_app
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send, serving
from tests.llm_server import FakeModelServer, served_model

SUPPORT = "examples.support.container:SupportPlugin"


@pytest.fixture
async def weather_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The team's weather service (the example's local fake), where the team's setting says."""
    async with serving(fake_weather.app) as address:
        monkeypatch.setenv("SUPPORT_WEATHER_URL", f"http://{address}")
        yield f"http://{address}"


@pytest.fixture
async def model_server() -> AsyncIterator[FakeModelServer]:
    async with served_model() as server:
        yield server


async def serve(settings: Settings) -> AsyncIterator[tuple[AppContainer, httpx.AsyncClient]]:
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    transport = httpx.ASGITransport(app=create_app(container))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://isochat.test") as c:
            yield container, c
    finally:
        await shutdown(container)


@pytest.fixture
async def support(
    tmp_path: Path, weather_url: str, model_server: FakeModelServer
) -> AsyncIterator[tuple[AppContainer, httpx.AsyncClient]]:
    """The support example, named by ISOCHAT_PLUGINS, on a model that calls tools."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        plugins=SUPPORT,
        llm_provider="openai",
        llm_base_url=model_server.base_url,
        _env_file=None,
    )
    async for served in serve(settings):
        yield served


async def events_of(client: httpx.AsyncClient, headers: dict[str, str], run: Any) -> Any:
    return (await client.get(f"/api/runs/{run['id']}/events", headers=headers)).json()["events"]


async def test_the_support_example_answers_with_the_teams_own_tools(
    support: tuple[AppContainer, httpx.AsyncClient], model_server: FakeModelServer
) -> None:
    """Triage is offered the team's `support` route beside isochat's; its agent calls the
    team's weather tool (a real HTTP call to the weather service) and its order lookup (a
    plain function) in one turn, and answers from both."""
    container, client = support
    headers = auth(container, "alice")
    calls = 'get_weather={"city": "Paris"};order_status={"order_id": "a-1001"}'
    body = await send(
        client, headers, await new_thread(client, headers), f"[route:support] [calls:{calls}] hi"
    )

    assert body["run"]["status"] == "completed", body
    assert body["run"]["route"] == "support"
    assert body["message"]["content"] == (
        "Model says: Paris: 18 °C, light rain | "
        "Order A-1001: shipped on 2 December, arriving 4 December"
    )
    route_call = model_server.requests[0]
    enum = route_call["tools"][0]["function"]["parameters"]["properties"]["route"]["enum"]
    assert enum == ["math", "history", "general", "support"]
    answer_call = model_server.answer_requests()[0]
    assert [t["function"]["name"] for t in answer_call["tools"]] == ["get_weather", "order_status"]
    city = answer_call["tools"][0]["function"]["parameters"]["properties"]["city"]
    assert city["description"] == "a city name, e.g. Paris"
    events = await events_of(client, headers, body["run"])
    # Run side by side: reported in the order they ended.
    assert sorted(e["data"]["tool"] for e in events if e["type"] == "tool_completed") == [
        "get_weather",
        "order_status",
    ]


async def test_the_support_example_keeps_isochats_routes_and_refuses_honestly(
    support: tuple[AppContainer, httpx.AsyncClient],
) -> None:
    """isochat's own routes work as before in the team's container; a city the weather
    service does not know is an error result, told to the model; nothing leaks."""
    container, client = support
    headers = auth(container, "bob")
    thread_id = await new_thread(client, headers)
    math = await send(
        client, headers, thread_id, '[route:math] [calls:calculator={"expression": "6*7"}]'
    )
    unknown = await send(
        client, headers, thread_id, '[route:support] [calls:get_weather={"city": "Atlantis"}]'
    )

    assert math["message"]["content"] == "Model says: 42"
    assert unknown["run"]["status"] == "completed"
    assert "no weather known for 'Atlantis'" in unknown["message"]["content"]
    assert leaks(container) == NO_LEAKS


async def test_the_offline_model_says_it_cannot_use_a_teams_tools(
    tmp_path: Path, weather_url: str
) -> None:
    """Offline, a message that names the team's route goes there, and the offline model says
    plainly that it cannot use the team's tools rather than make an answer up."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db", plugins=SUPPORT, _env_file=None
    )
    async for container, client in serve(settings):
        headers = auth(container, "carol")
        body = await send(
            client, headers, await new_thread(client, headers), "support: is it raining in Paris?"
        )
        assert body["run"]["route"] == "support"
        assert body["run"]["status"] == "completed"
        assert (
            "cannot use the tools this question needs (get_weather, order_status)"
            in (body["message"]["content"])
        )


@function_tool
async def abacus(expression: str) -> str:
    """Counts beads: the team's own calculator."""
    return f"beads say {eval_sum(expression)}"


def eval_sum(expression: str) -> int:
    return sum(int(term) for term in expression.split("+"))


class AbacusPlugin(containers.DeclarativeContainer):
    """A team's container that answers the stock `math` route with its own agent and tool."""

    isochat = providers.DependenciesContainer()
    abacus = providers.Object(abacus)
    math_agent = providers.Factory(
        ToolAgent,
        name="abacus",
        instructions="Count with the abacus.",
        tools=providers.List(abacus),
        events=isochat.emitter,
        tracker=isochat.metrics,
        llm=isochat.run_llm,
        usage=isochat.usage,
    )


async def test_a_teams_container_changes_a_route_without_touching_src(
    tmp_path: Path, model_server: FakeModelServer
) -> None:
    """The team's math agent answers the `math` route in the team's container, while a stock
    container beside it, on the same model, still answers with isochat's calculator."""
    answers = {}
    for name in ("team", "stock"):
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/{name}.db",
            llm_provider="openai",
            llm_base_url=model_server.base_url,
            _env_file=None,
        )
        await asyncio.to_thread(upgrade_to_head, settings.database_url)
        container = AppContainer(settings=providers.Object(settings))
        if name == "team":
            plug_in(container, AbacusPlugin)
        transport = httpx.ASGITransport(app=create_app(container))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                headers = auth(container, "dave")
                tool = "abacus" if name == "team" else "calculator"
                body = await send(
                    client,
                    headers,
                    await new_thread(client, headers),
                    f'[route:math] [calls:{tool}={{"expression": "2+2"}}]',
                )
                events = await events_of(client, headers, body["run"])
                answers[name] = (
                    body["message"]["content"],
                    [e["agent"] for e in events if e["type"] == "tool_completed"],
                )
        finally:
            await shutdown(container)

    assert answers["team"] == ("Model says: beads say 4", ["abacus"])
    assert answers["stock"] == ("Model says: 4", ["math"])


class ImpatientAgent(Agent):
    """A team's agent with a deadline of its own on something of its own that never answers."""

    name = "impatient"

    async def answer(self, content: str) -> str:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()
        return "never"


class ImpatientPlugin(containers.DeclarativeContainer):
    isochat = providers.DependenciesContainer()
    math_agent = providers.Factory(ImpatientAgent, events=isochat.emitter, tracker=isochat.metrics)


async def test_a_teams_agent_that_times_out_on_its_own_fails_with_agent_error(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A plug-in agent's own `asyncio.timeout` is the agent's failure (`agent_error`, counted
    against it), not the database's, and not the run's deadline."""
    plug_in(container, ImpatientPlugin)
    headers = auth(container, "erin")
    body = await send(client, headers, await new_thread(client, headers), "what is 2 + 2?")

    assert body["run"]["status"] == "failed", body
    assert body["run"]["error"] == {"code": "agent_error", "message": "the impatient agent failed"}
    failures = {"agent": "impatient", "code": "agent_error"}
    assert container.metrics().value("isochat_agent_failures_total", failures) == 1
    assert leaks(container) == NO_LEAKS


class NotAPlugin(containers.DeclarativeContainer):
    calculator: providers.Object[None] = providers.Object(None)


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("examples.nowhere:Plugin", "cannot import 'examples.nowhere:Plugin'"),
        ("examples.support.container:Missing", "cannot import"),
        ("json:loads", "is not a declarative container"),
        (f"{__name__}:NotAPlugin", "does not declare isochat = providers.DependenciesContainer()"),
    ],
)
def test_a_plugin_setting_that_cannot_plug_in_says_why(path: str, says: str) -> None:
    """A module that is not there, a name it lacks, something that is not a container, a
    container that cannot reach isochat's providers: refused with the reason."""
    with pytest.raises(BadPlugin, match=says):
        plugin_class(path)
    assert plugin_class(SUPPORT).__name__ == "SupportPlugin"
