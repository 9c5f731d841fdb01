"""What agents and tools produce is bounded, and a cut says so: answers (``MAX_ANSWER_CHARS``),
tool outputs (``MAX_TOOL_OUTPUT_CHARS``), each text an event carries (``MAX_EVENT_TEXT_CHARS``),
and the history agent's summary of long earlier messages. Checked on what a client sees: the
answer, the stored messages and ``GET /api/runs/{id}/events``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from dependency_injector import providers

from src.agents.base import MAX_ANSWER_CHARS, MAX_EVENT_TEXT_CHARS, TRUNCATED
from src.agents.thinking import THINKING_MAX_CHARS
from src.agents.tool import Tool
from src.agents.tools import (
    HISTORY_MESSAGES_SHOWN,
    MAX_TOOL_OUTPUT_CHARS,
    NO_EARLIER_MESSAGES,
    CalculatorInput,
    summarise_messages,
)
from src.container import AppContainer
from src.services.llm import ChatMessage, Reply, TextSink, ToolSpec
from src.services.llm.offline import OfflineLLM
from tests.helpers import auth, new_thread, send

LONG_MESSAGE_CHARS = 8_000


class ScriptedLLM:
    """The offline model, except that the general answer (no tools offered) is ``pieces``;
    counts how many the agent took before it stopped the stream."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self._routes = OfflineLLM()
        self._pieces = pieces
        self.pieces_taken = 0
        self.closed_early = False

    async def aclose(self) -> None:
        return None

    async def is_available(self) -> bool:
        return True

    async def reply(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        require_tool: str | None = None,
        on_text: TextSink | None = None,
    ) -> Reply:
        if tools or on_text is None:
            return await self._routes.reply(
                messages, tools=tools, require_tool=require_tool, on_text=on_text
            )
        try:
            for piece in self._pieces:
                self.pieces_taken += 1
                await on_text(piece)
        except BaseException:
            self.closed_early = True
            raise
        return Reply(text="".join(self._pieces))


class VerboseCalculator(Tool[CalculatorInput]):
    """A team's tool that says far too much, and remembers the input it was given."""

    name = "calculator"
    description = "a calculator that says too much"

    def __init__(self) -> None:
        self.inputs: list[str] = []

    async def run(self, params: CalculatorInput) -> str:
        self.inputs.append(params.expression)
        return "7" * 10_000


def long_message(topic: str) -> str:
    """8,000 characters of prose that triage sends to `general` (no digits, no question about
    the conversation)."""
    text = f"{topic} " + "lorem ipsum dolor sit amet " * (LONG_MESSAGE_CHARS // 27 + 1)
    return text[:LONG_MESSAGE_CHARS]


async def run_events(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/api/runs/{run_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def event_texts(events: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """Every text payload the event cap covers, with its event type."""
    fields = {
        "agent_thinking": "text",
        "tool_executing": "input",
        "tool_completed": "output",
        "agent_completed": "result",
    }
    for event in events:
        if event["type"] in fields:
            yield event["type"], event["data"][fields[event["type"]]]


def assert_event_texts_capped(events: list[dict[str, Any]]) -> None:
    too_long = [(kind, len(text)) for kind, text in event_texts(events)]
    assert [t for t in too_long if t[1] > MAX_EVENT_TEXT_CHARS] == []


async def test_history_of_long_messages_is_a_summary_that_says_what_it_left_out(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """After six 8,000-character messages, "what did I ask before?" answers with an excerpt of
    each (saying how long it was) within the tool cap, not 48,000 characters replayed; the
    run's stored events stay small (146 KB before the caps)."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    topics = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    for topic in topics:
        general = await send(client, headers, thread_id, long_message(topic))
        assert general["run"]["route"] == "general"
        # The offline model quotes the start of the message, not all of it.
        assert len(general["message"]["content"]) < 400

    body = await send(client, headers, thread_id, "what did I ask before?")

    assert body["run"]["route"] == "history"
    answer = body["message"]["content"]
    assert len(answer) < MAX_TOOL_OUTPUT_CHARS + 100
    # Six questions and six answers: the newest 10 messages, the first exchange left out.
    assert "12 earlier message(s):\n... (2 earlier messages not shown)" in answer
    for number, topic in enumerate(topics[1:], start=3):
        assert f"\n{2 * number - 3}. user: {topic} lorem ipsum" in answer
        assert f"\n{2 * number - 2}. assistant: You wrote" in answer
    assert answer.count("\u2026 [truncated: 8,000 characters]") == len(topics) - 1

    events = await run_events(client, headers, body["run"]["id"])
    assert_event_texts_capped(events)
    (output,) = [e["data"]["output"] for e in events if e["type"] == "tool_completed"]
    assert len(output) <= MAX_TOOL_OUTPUT_CHARS
    assert not output.endswith(TRUNCATED)  # the summary fits: the tool cap never cut it
    # The ~3.5 KB summary four times (the tool's output, the live answer, the agent's result,
    # the final message), not 48 KB several times over.
    assert len(json.dumps(events)) < 24_000


def test_a_long_history_notes_the_messages_it_does_not_show() -> None:
    """Past the newest ``HISTORY_MESSAGES_SHOWN`` messages, the summary says how many earlier
    ones it left out and keeps the numbering of the ones it shows."""
    shown = HISTORY_MESSAGES_SHOWN
    summary = summarise_messages([("user", f"question {n}") for n in range(1, shown + 3)])

    assert summary.splitlines() == [
        f"{shown + 2} earlier message(s):",
        "... (2 earlier messages not shown)",
        *[f"{n}. user: question {n}" for n in range(3, shown + 3)],
    ]
    one_more = summarise_messages([("user", f"question {n}") for n in range(1, shown + 2)])
    assert one_more.splitlines()[1] == "... (1 earlier message not shown)"
    assert summarise_messages([]) == NO_EARLIER_MESSAGES
    assert summarise_messages([("assistant", "a\n  b\tc")]) == (
        "1 earlier message(s):\n1. assistant: a b c"
    )


async def test_a_long_answer_is_cut_at_the_answer_cap_and_the_model_is_stopped(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A model that would go on for 100,000 characters: the answer keeps its first
    ``MAX_ANSWER_CHARS`` (the cut said at its end), the thinking events add up to exactly that
    answer, and the model's stream is closed once the cap is reached."""
    # One huge piece first (more than an event holds), then small ones.
    pieces = ["a" * 10_000] + ["b" * 100] * 900
    model = ScriptedLLM(pieces)
    container.llm.override(providers.Object(model))
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)

    body = await send(client, headers, thread_id, "Tell me a very long story")

    assert body["run"]["status"] == "completed"
    assert body["run"]["route"] == "general"
    answer = body["message"]["content"]
    assert len(answer) == MAX_ANSWER_CHARS
    assert answer.endswith(TRUNCATED)
    assert answer == ("a" * 10_000 + "b" * 90_000)[: MAX_ANSWER_CHARS - len(TRUNCATED)] + TRUNCATED
    messages = (await client.get(f"/api/threads/{thread_id}/messages", headers=headers)).json()
    assert messages["messages"][-1]["content"] == answer
    assert model.closed_early
    assert model.pieces_taken < len(pieces)

    events = await run_events(client, headers, body["run"]["id"])
    assert_event_texts_capped(events)
    thinking = [e["data"]["text"] for e in events if e["type"] == "agent_thinking"]
    assert "".join(thinking) == answer
    assert events[-1]["type"] == "run_completed"
    assert events[-1]["data"]["message"]["content"] == answer


async def test_a_tool_output_is_cut_at_the_tool_cap(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A tool that returns 10,000 characters: the agent gets, and the event shows, its first
    ``MAX_TOOL_OUTPUT_CHARS`` with the cut said; the tool itself got its whole input."""
    tool = VerboseCalculator()
    container.request.calculator.override(providers.Object(tool))
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)

    body = await send(client, headers, thread_id, "what is 6 * 7?")

    assert body["run"]["route"] == "math"
    assert tool.inputs == ["6 * 7"]
    events = await run_events(client, headers, body["run"]["id"])
    (output,) = [e["data"]["output"] for e in events if e["type"] == "tool_completed"]
    assert output == "7" * (MAX_TOOL_OUTPUT_CHARS - len(TRUNCATED)) + TRUNCATED
    assert body["message"]["content"] == f"6 * 7 = {output}"


async def test_every_event_text_stays_within_the_event_cap(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Event by event (``GET /api/runs/{id}/events``): a tool's long input, a long agent
    result and one huge piece of thinking are each cut to ``MAX_EVENT_TEXT_CHARS`` or split
    over several events; the answer itself keeps everything up to its own cap."""
    tool = VerboseCalculator()
    container.request.calculator.override(providers.Object(tool))
    model = ScriptedLLM(["z" * 12_000])
    container.llm.override(providers.Object(model))
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)

    expression = "+".join(["1"] * 3_000)
    math = await send(client, headers, thread_id, f"what is {expression}?")
    general = await send(client, headers, thread_id, "Tell me a story")

    assert math["run"]["route"] == "math"
    spaced = " + ".join(["1"] * 3_000)  # as the offline model writes it
    assert tool.inputs == [spaced]  # the tool got the whole input
    math_events = await run_events(client, headers, math["run"]["id"])
    assert_event_texts_capped(math_events)
    texts = dict(event_texts(math_events))
    arguments = json.dumps({"expression": spaced})
    assert texts["tool_executing"] == arguments[: MAX_EVENT_TEXT_CHARS - len(TRUNCATED)] + (
        TRUNCATED
    )
    math_answer = math["message"]["content"]
    assert len(math_answer) > MAX_EVENT_TEXT_CHARS  # the answer is not cut to the event cap
    assert texts["agent_completed"] == math_answer[: MAX_EVENT_TEXT_CHARS - len(TRUNCATED)] + (
        TRUNCATED
    )

    assert general["message"]["content"] == "z" * 12_000
    general_events = await run_events(client, headers, general["run"]["id"])
    assert_event_texts_capped(general_events)
    thinking = [e["data"]["text"] for e in general_events if e["type"] == "agent_thinking"]
    assert len(thinking) > 1  # split, not cut
    assert max(len(t) for t in thinking) <= min(THINKING_MAX_CHARS, MAX_EVENT_TEXT_CHARS)
    assert "".join(thinking) == "z" * 12_000
