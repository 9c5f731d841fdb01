"""Routing: the offline model is deterministic, and any model answer maps to a known route."""

from __future__ import annotations

import pytest

from src.agents.triage import ROUTES, parse_route, route_prompt
from src.services.llm import ChatMessage
from src.services.llm.offline import OfflineLLM


@pytest.mark.parametrize(
    ("reply", "route"),
    [
        ("math", "math"),
        ("Math.", "math"),
        ("The best route is: history", "history"),
        ("I'd say GENERAL!", "general"),
        ("banana", "general"),
        ("", "general"),
    ],
)
def test_any_model_answer_maps_to_a_known_route(reply: str, route: str) -> None:
    """An answer naming no known route goes to general."""
    assert parse_route(reply, known=tuple(ROUTES)) == route


@pytest.mark.parametrize(
    ("message", "route"),
    [
        ("what is 17 * 3?", "math"),
        ("compute 2+2", "math"),
        ("What did I ask before?", "history"),
        ("remind me what I said earlier", "history"),
        ("Tell me a joke about cats", "general"),
        ("I have 2 cats", "general"),
    ],
)
async def test_offline_model_routes_deterministically(message: str, route: str) -> None:
    """The offline model picks the same route for the same message, every time."""
    prompt = [ChatMessage("system", route_prompt(ROUTES)), ChatMessage("user", message)]
    answers = {await OfflineLLM().complete(prompt) for _ in range(3)}
    assert answers == {route}


async def test_offline_model_streams_the_same_answer_it_completes() -> None:
    """Streaming and completing give the same text."""
    prompt = [ChatMessage("system", "You are isochat."), ChatMessage("user", "hello there")]
    streamed = "".join([piece async for piece in OfflineLLM().stream(prompt)])
    assert streamed == await OfflineLLM().complete(prompt)
    assert "hello there" in streamed
