"""The offline model, through the same agent loop as a remote model: messages people send get
the right answer or an honest "I can't", never a wrong number; routed elsewhere (as a remote
model routed them), the same holds; and the live stream is the answer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from dependency_injector import providers

from src.agents.base import Agent, AgentTracker, RunEvents
from src.container import AppContainer
from src.services.llm.offline import NO_CALCULATION
from tests.helpers import auth, new_thread, send

TRAIN = "If a train travels 60 km in 1.5 hours, what is its speed?"
OFFLINE_GENERAL = "I am isochat's offline model, so I can only answer simply"


class FixedTriage(Agent):
    """Triage that always picks ``route``: where a remote model sent these messages."""

    name = "triage"

    def __init__(self, *, events: RunEvents, tracker: AgentTracker, route: str) -> None:
        super().__init__(events=events, tracker=tracker)
        self._route = route

    async def answer(self, content: str) -> str:
        return self._route


def route_everything_to(container: AppContainer, route: str) -> None:
    request = container.request
    request.triage.override(
        providers.Factory(FixedTriage, events=request.emitter, tracker=request.metrics, route=route)
    )


async def ask(
    container: AppContainer, client: httpx.AsyncClient, content: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    headers = auth(container, "alice")
    body = await send(client, headers, await new_thread(client, headers), content)
    events = (await client.get(f"/api/runs/{body['run']['id']}/events", headers=headers)).json()[
        "events"
    ]
    thinking = "".join(e["data"]["text"] for e in events if e["type"] == "agent_thinking")
    assert body["run"]["status"] == "completed", body
    assert thinking == body["message"]["content"]  # the live stream is the answer
    return body, events


@pytest.mark.parametrize(
    ("message", "route", "answer"),
    [
        ("sqrt(16)", "math", "sqrt(16) = 4"),
        ("what is 1.5e3 + 1", "math", "1.5e3 + 1 = 1501"),
        ("what is the square root of 144?", "math", "sqrt(144) = 12"),
        ("what is 15% of 80?", "math", "15% * 80 = 12"),
        ("round 3.14159 to 2 decimal places", "math", "round(3.14159, 2) = 3.14"),
        ("what is (12 + 3) * 4?", "math", "(12 + 3) * 4 = 60"),
        ("summarise our conversation", "history", None),
        (TRAIN, "general", None),
    ],
)
async def test_what_people_ask_gets_the_right_answer_or_an_honest_refusal(
    container: AppContainer,
    client: httpx.AsyncClient,
    message: str,
    route: str,
    answer: str | None,
) -> None:
    """Routed by the offline model itself: calculations are right, the rest say what the
    offline model can do."""
    body, events = await ask(container, client, message)

    assert body["run"]["route"] == route
    content = body["message"]["content"]
    if answer is not None:
        assert content == answer
        assert [e["data"]["tool"] for e in events if e["type"] == "tool_completed"] == [
            "calculator"
        ]
    elif route == "history":
        assert content == "This is the first thing you have asked in this conversation."
    else:
        assert OFFLINE_GENERAL in content


@pytest.mark.parametrize(
    "message",
    [TRAIN, "summarise our conversation", "I have 2 cats", "what is 2 + 2 and 3 + 3?"],
)
async def test_sent_to_math_what_has_no_one_calculation_is_refused(
    container: AppContainer, client: httpx.AsyncClient, message: str
) -> None:
    """Where a remote model routed these to math: the math agent says it cannot tell what to
    calculate, and computes nothing (no tool call, no number of its own)."""
    route_everything_to(container, "math")
    body, events = await ask(container, client, message)

    assert body["run"]["route"] == "math"
    assert body["message"]["content"] == NO_CALCULATION
    assert not [e for e in events if e["type"].startswith("tool_")]


async def test_sent_to_history_the_conversation_is_listed_not_made_up(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """ "summarise our conversation" with earlier messages: the history tool's list of the
    conversation (questions and answers), said to be a list (the offline model cannot
    summarise)."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    await send(client, headers, thread_id, "what is 2 + 2?")
    await send(client, headers, thread_id, "tell me about the sea")
    route_everything_to(container, "history")
    body = await send(client, headers, thread_id, "summarise our conversation")

    content = body["message"]["content"]
    assert content.startswith("Here is this conversation so far")
    assert "I can list it, not summarise it" in content
    assert "1. user: what is 2 + 2?\n2. assistant: 2 + 2 = 4\n3. user: tell me about the sea" in (
        content
    )


async def test_a_tool_error_offline_fails_the_run_with_the_tools_reason(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """The offline model does not try to get past a tool's error: `tool_error`, the reason."""
    headers = auth(container, "alice")
    body = await send(client, headers, await new_thread(client, headers), "what is 1/0?")

    assert body["run"]["status"] == "failed"
    assert body["run"]["error"] == {"code": "tool_error", "message": "division by zero"}
    assert body["message"] is None
