"""Routing is a structured choice: the model calls ``choose_route`` with one of the known
routes; anything else goes to the fallback, saying why. The offline model chooses the same
way, deterministically."""

from __future__ import annotations

import json

import pytest

from src.agents.triage import (
    FALLBACK_ROUTE,
    ROUTE_PROMPT,
    ROUTE_TOOL,
    Route,
    chosen_route,
    route_tool,
)
from src.services.llm import ChatMessage, Reply, ToolCall
from src.services.llm.offline import OfflineLLM

ROUTES = {
    name: Route(description=what, agent=lambda: None)  # type: ignore[arg-type, return-value]
    for name, what in [("math", "sums"), ("history", "the conversation"), ("general", "else")]
}


def called(arguments: str, name: str = ROUTE_TOOL) -> Reply:
    return Reply(text="", tool_calls=(ToolCall(id="c1", name=name, arguments=arguments),))


@pytest.mark.parametrize(
    ("reply", "route", "why"),
    [
        (called('{"route": "math"}'), "math", None),
        (called('{"route": "history"}'), "history", None),
        (called('{"route": "bananas"}'), FALLBACK_ROUTE, "no known route ('bananas')"),
        (called('{"route": 3}'), FALLBACK_ROUTE, "no known route (3)"),
        (called("{not json"), FALLBACK_ROUTE, "not JSON"),
        (called('{"route": "math"}', name="other"), FALLBACK_ROUTE, "did not call"),
        (Reply(text="math, clearly"), FALLBACK_ROUTE, "did not call choose_route"),
    ],
)
def test_only_a_call_naming_a_known_route_routes(reply: Reply, route: str, why: str | None) -> None:
    """Prose that mentions a route is not a choice; a choice of an unknown route falls back."""
    chosen, fallback = chosen_route(reply, known=ROUTES)
    assert chosen == route
    if why is None:
        assert fallback is None
    else:
        assert fallback is not None and why in fallback


def test_the_route_tool_offers_exactly_the_known_routes() -> None:
    """An enum of the routes, each described for the model."""
    spec = route_tool(ROUTES)
    assert spec.parameters["properties"]["route"]["enum"] == ["math", "history", "general"]
    assert "history: the conversation" in spec.description


@pytest.mark.parametrize(
    ("message", "route"),
    [
        ("what is 17 * 3?", "math"),
        ("compute 2+2", "math"),
        ("what is the square root of 144?", "math"),
        ("sqrt(16)", "math"),
        ("What did I ask before?", "history"),
        ("remind me what I said earlier", "history"),
        ("summarise our conversation", "history"),
        ("Tell me a joke about cats", "general"),
        ("I have 2 cats", "general"),
    ],
)
async def test_offline_model_routes_by_a_real_tool_call(message: str, route: str) -> None:
    """The offline model answers the route choice with a choose_route call, the same every
    time."""
    prompt = [ChatMessage("system", ROUTE_PROMPT), ChatMessage("user", message)]
    replies = [
        await OfflineLLM().reply(prompt, tools=[route_tool(ROUTES)], require_tool=ROUTE_TOOL)
        for _ in range(3)
    ]
    assert {r.tool_calls[0].name for r in replies} == {ROUTE_TOOL}
    assert {json.loads(r.tool_calls[0].arguments)["route"] for r in replies} == {route}


async def test_offline_model_streams_the_same_answer_it_completes() -> None:
    """Streaming and not streaming give the same text, white space included."""
    prompt = [ChatMessage("system", "You are isochat."), ChatMessage("user", "hello  there")]
    pieces: list[str] = []

    async def take(piece: str) -> None:
        pieces.append(piece)

    streamed = await OfflineLLM().reply(prompt, on_text=take)
    whole = await OfflineLLM().reply(prompt)
    assert "".join(pieces) == streamed.text == whole.text
    assert "hello there" in whole.text and len(pieces) > 1
