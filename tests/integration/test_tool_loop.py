"""The agent loop against a real OpenAI-compatible server that calls tools: streamed and
whole answers, several calls in one turn (run side by side), unknown tools, arguments that are
not JSON, tools that raise, a model that never stops calling; each gives its documented
outcome while healthy runs beside it complete. Usage is recorded on the run and counted."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers

from src.agents.loop import MAX_STEPS
from src.agents.tool import Tool, ToolError
from src.agents.tools import CalculatorInput
from src.container import AppContainer
from src.settings import Settings
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send, wait_for_run
from tests.llm_server import COMPLETION_TOKENS, PROMPT_TOKENS, TEXTS, FakeModelServer, served_model

WITHIN_S = 60.0  # a liveness guard only: a deadlock fails here instead of hanging the suite


class StuckCalculator(Tool[CalculatorInput]):
    """A calculator that never answers; ``entered`` once called, ``cancelled`` once its call
    was cancelled. Class attributes: one test at a time uses it, and sets them."""

    name = "calculator"
    description = "a calculator that never answers"
    entered: asyncio.Event
    cancelled: asyncio.Event

    async def run(self, params: CalculatorInput) -> str:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise ToolError("unreachable")


def install_stuck_calculator(container: AppContainer) -> type[StuckCalculator]:
    StuckCalculator.entered, StuckCalculator.cancelled = asyncio.Event(), asyncio.Event()
    container.request.calculator.override(providers.Factory(StuckCalculator))
    return StuckCalculator


@pytest.fixture
async def model_server() -> AsyncIterator[FakeModelServer]:
    async with served_model() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, model_server: FakeModelServer) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        llm_provider="openai",
        llm_base_url=model_server.base_url,
        llm_timeout_s=30,
        run_timeout_s=600,
        _env_file=None,
    )


async def events_of(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/api/runs/{run_id}/events", headers=headers)
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == type_]


async def chat(container: AppContainer, client: httpx.AsyncClient, user: str, content: str) -> Any:
    headers = auth(container, user)
    body = await asyncio.wait_for(
        send(client, headers, await new_thread(client, headers), content), WITHIN_S
    )
    return body, await events_of(client, headers, body["run"]["id"])


@pytest.mark.parametrize("mode", ["", "[answer:nostream]"], ids=["streamed", "whole"])
async def test_the_model_calls_a_tool_and_answers_with_its_result(
    container: AppContainer,
    client: httpx.AsyncClient,
    model_server: FakeModelServer,
    mode: str,
) -> None:
    """The tool's schema goes to the model; its call (assembled from streamed deltas, or
    whole) runs the real calculator; the result goes back as a `tool` message answering that
    call; the model's answer is the run's answer."""
    content = f'[route:math] [calls:calculator={{"expression": "(12 + 3) * 4"}}] {mode} go'
    body, events = await chat(container, client, "alice", content)

    assert body["run"]["status"] == "completed", body
    assert body["run"]["route"] == "math"
    assert body["message"]["content"] == "Model says: 60"
    [executing] = of_type(events, "tool_executing")
    [completed] = of_type(events, "tool_completed")
    assert executing["tool"] == "calculator"
    assert json.loads(executing["input"]) == {"expression": "(12 + 3) * 4"}
    assert completed == {"tool": "calculator", "output": "60", "call_id": "call_0", "ok": True}

    first, second = model_server.answer_requests()
    assert [t["function"]["name"] for t in first["tools"]] == ["calculator"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["expression"]
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "calculator"
    assert tool == {"role": "tool", "content": "60", "tool_call_id": "call_0"}


async def test_several_calls_in_one_turn_run_side_by_side(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Two calls in one turn (their deltas interleaved in the stream) both run, at the same
    time: each waits until the other has started. Both are reported, and both results go
    back to the model, in the order of the calls."""
    both_started = asyncio.Event()
    started: list[str] = []

    class MeetingCalculator(Tool[CalculatorInput]):
        name = "calculator"
        description = "a calculator whose calls wait for each other"

        async def run(self, params: CalculatorInput) -> str:
            started.append(params.expression)
            if len(started) == 2:
                both_started.set()
            await both_started.wait()  # a second call that ran only after this one: a hang
            return {"2+2": "4", "3*3": "9"}[params.expression]

    container.request.calculator.override(providers.Factory(MeetingCalculator))
    calls = '[calls:calculator={"expression":"2+2"};calculator={"expression":"3*3"}]'
    body, events = await chat(container, client, "alice", f"[route:math] {calls}")

    assert body["message"]["content"] == "Model says: 4 | 9"
    assert sorted(started) == ["2+2", "3*3"]
    types = [e["type"] for e in events if e["type"].startswith("tool_")]
    assert types == ["tool_executing", "tool_executing", "tool_completed", "tool_completed"]
    ids = {d["call_id"] for d in of_type(events, "tool_completed")}
    assert ids == {"call_0", "call_1"}


@pytest.mark.parametrize(
    ("calls", "told"),
    [
        ("nonesuch={}", "there is no tool named 'nonesuch' (tools: calculator)"),
        ("calculator={not json", "the arguments do not fit the calculator tool"),
        ('calculator={"expr": "1"}', "expression: Field required"),
        ('calculator={"expression": "1/0"}', "division by zero"),
    ],
    ids=["unknown-tool", "bad-json", "wrong-fields", "tool-error"],
)
async def test_a_failed_call_is_told_to_the_model_which_gets_past_it(
    container: AppContainer, client: httpx.AsyncClient, calls: str, told: str
) -> None:
    """An unknown tool, arguments that are not JSON or do not fit, a tool that refuses: the
    model gets an error result saying why, reported as a failed call, and the model's answer
    after it completes the run."""
    body, events = await chat(container, client, "alice", f"[route:math] [calls:{calls}]")

    assert body["run"]["status"] == "completed", body
    [completed] = of_type(events, "tool_completed")
    assert completed["ok"] is False
    assert completed["output"].startswith("error: ") and told in completed["output"]
    assert told in body["message"]["content"]  # the fake model repeats what it was told


async def test_a_tool_that_raises_gives_the_model_an_error_and_the_log_the_details(
    container: AppContainer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a tool: the model is told only that the tool failed; the traceback is in the
    log; the run goes on to the model's answer."""

    class BrokenCalculator(Tool[CalculatorInput]):
        name = "calculator"
        description = "a calculator with a bug"

        async def run(self, params: CalculatorInput) -> str:
            raise KeyError("secret internals")

    container.request.calculator.override(providers.Factory(BrokenCalculator))
    caplog.set_level(logging.ERROR, logger="src.agents.loop")
    body, events = await chat(
        container, client, "alice", '[route:math] [calls:calculator={"expression": "1"}]'
    )

    assert body["run"]["status"] == "completed"
    [completed] = of_type(events, "tool_completed")
    assert completed["output"] == "error: the calculator tool failed"
    assert "secret internals" not in json.dumps(events)
    assert "secret internals" in caplog.text


async def test_a_tool_error_the_model_cannot_get_past_fails_the_run(
    container: AppContainer, client: httpx.AsyncClient, model_server: FakeModelServer
) -> None:
    """The model repeats the very call that failed: `tool_error` with the tool's reason, at
    the second attempt."""
    body, _ = await chat(
        container, client, "alice", '[route:math] [calls-forever:calculator={"expression": "1/0"}]'
    )

    assert body["run"]["status"] == "failed"
    assert body["run"]["error"] == {"code": "tool_error", "message": "division by zero"}
    assert len(model_server.answer_requests()) == 2


async def test_a_model_that_never_stops_calling_ends_at_the_step_limit(
    container: AppContainer, client: httpx.AsyncClient, model_server: FakeModelServer
) -> None:
    """Calls that succeed, forever: the run fails `step_limit` after MAX_STEPS model calls,
    and its usage counts every one of them."""
    body, events = await chat(
        container, client, "alice", '[route:math] [calls-forever:calculator={"expression": "1+1"}]'
    )

    assert body["run"]["status"] == "failed"
    assert body["run"]["error"]["code"] == "step_limit"
    assert f"after {MAX_STEPS} model calls" in body["run"]["error"]["message"]
    assert len(model_server.answer_requests()) == MAX_STEPS
    assert len(of_type(events, "tool_completed")) == MAX_STEPS
    calls = MAX_STEPS + 1  # and triage's
    assert body["run"]["usage"] == {
        "prompt_tokens": PROMPT_TOKENS * calls,
        "completion_tokens": COMPLETION_TOKENS * calls,
    }


async def test_healthy_runs_complete_beside_every_failing_loop(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Unknown tools, bad arguments, failing and endless loops, 20 of them, beside 20 healthy
    tool-calling runs: every healthy run completes with its own result, nothing leaks."""
    faulty = [
        "[calls:nonesuch={}]",
        "[calls:calculator={not json]",
        '[calls-forever:calculator={"expression": "1/0"}]',
        '[calls-forever:calculator={"expression": "1+1"}]',
    ]

    async def one(i: int) -> tuple[int, Any]:
        if i % 2:
            content = f"[route:math] {faulty[i // 2 % len(faulty)]}"
        else:
            content = f'[route:math] [calls:calculator={{"expression": "{i} * 1000"}}]'
        return i, await chat(container, client, f"user{i}", content)

    results = await asyncio.gather(*(one(i) for i in range(40)))

    for i, (body, _) in results:
        if i % 2 == 0:
            assert body["run"]["status"] == "completed", body
            assert body["message"]["content"] == f"Model says: {i * 1000}"
    assert leaks(container) == NO_LEAKS


async def test_usage_is_recorded_on_the_run_and_counted(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Triage's call and the specialist's two: their usage summed on the Run and in
    `run_completed`, and added to `isochat_llm_tokens_total{kind}`."""
    metrics = container.metrics()
    before = {
        k: metrics.value("isochat_llm_tokens_total", {"kind": k}) for k in ("prompt", "completion")
    }
    body, events = await chat(
        container, client, "alice", '[route:math] [calls:calculator={"expression": "2"}]'
    )

    usage = {"prompt_tokens": 3 * PROMPT_TOKENS, "completion_tokens": 3 * COMPLETION_TOKENS}
    assert body["run"]["usage"] == usage
    assert events[-1]["type"] == "run_completed" and events[-1]["data"]["usage"] == usage
    headers = auth(container, "alice")
    stored = (await client.get(f"/api/runs/{body['run']['id']}", headers=headers)).json()
    assert stored["usage"] == usage
    for kind in ("prompt", "completion"):
        moved = metrics.value("isochat_llm_tokens_total", {"kind": kind}) - before[kind]
        assert moved == usage[f"{kind}_tokens"]


@pytest.mark.parametrize(
    ("marker", "why"),
    [
        ("[route:prose]", "the model did not call choose_route"),
        ("[route:bananas]", "the model named no known route ('bananas')"),
    ],
)
async def test_triage_that_names_no_known_route_falls_back_and_says_so(
    container: AppContainer, client: httpx.AsyncClient, marker: str, why: str
) -> None:
    """Prose about a route, or an unknown route: `general` answers, and triage's
    `agent_completed` says why it fell back."""
    body, events = await chat(container, client, "alice", f"hello {marker}")

    assert body["run"]["route"] == "general"
    assert body["run"]["status"] == "completed"
    triage = [
        e["data"] for e in events if e["type"] == "agent_completed" and e["agent"] == "triage"
    ]
    assert triage == [{"result": "general", "fallback": why}]


@pytest.mark.parametrize("key", sorted(TEXTS))
async def test_the_live_stream_is_the_answer_white_space_and_code_included(
    container: AppContainer, client: httpx.AsyncClient, key: str
) -> None:
    """Leading and trailing spaces, blank lines, indentation, a fenced code block, a tab:
    the `agent_thinking` texts joined are exactly the stored answer."""
    body, events = await chat(container, client, "alice", f"[text:{key}]")

    answer = body["message"]["content"]
    assert answer == TEXTS[key]
    assert "".join(d["text"] for d in of_type(events, "agent_thinking")) == answer


async def test_a_cancel_reaches_a_tool_in_flight(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A tool still running when its run is cancelled is cancelled with it: the run ends
    `cancelled`, the tool saw the cancel, nothing leaks."""
    stuck = install_stuck_calculator(container)
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    content = '[route:math] [calls:calculator={"expression": "1"}]'
    sending = asyncio.create_task(send(client, headers, thread_id, content))
    run_id = await wait_for_run(client, headers, thread_id)
    await asyncio.wait_for(stuck.entered.wait(), WITHIN_S)

    cancel = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)

    assert cancel.json()["run"]["status"] == "cancelled"
    assert stuck.cancelled.is_set()
    assert (await asyncio.wait_for(sending, WITHIN_S))["run"]["status"] == "cancelled"
    assert leaks(container) == NO_LEAKS


async def test_the_run_deadline_reaches_a_tool_in_flight(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A tool that never returns: the run's deadline cuts it off (`timeout`) and the tool is
    cancelled with the run."""
    stuck = install_stuck_calculator(container)
    settings = container.settings().model_copy(update={"run_timeout_s": 1.0})
    container.settings.override(providers.Object(settings))
    body, _ = await chat(
        container, client, "alice", '[route:math] [calls:calculator={"expression": "1"}]'
    )

    assert body["run"]["error"]["code"] == "timeout"
    assert stuck.cancelled.is_set()
    assert leaks(container) == NO_LEAKS
