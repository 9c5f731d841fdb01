"""Approvals: a run whose tool calls wait for a person pauses (stored, no task), any request
decides (approve, reject, edit), and the last decision resumes it, seq going on; cancel and
expiry end a paused run through the one ender."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import containers, providers

from src.agents.loop import ToolAgent
from src.agents.tool import FunctionTool
from src.agents.triage import Route, with_routes
from src.container import AppContainer, build_container, shutdown
from src.plugins import plug_in
from src.runs.domain import FINAL_EVENT_TYPES, utcnow
from src.services.database.migrations import upgrade_to_head
from src.settings import Settings
from src.web.app import create_app
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send
from tests.llm_server import served_model
from tests.ws import AsgiSocket

WITHIN_S = 30.0  # only guards against a hang
TWO_CALLS = '[route:math] [calls:calculator={"expression": "1+1"};calculator={"expression": "2+2"}]'


@dataclass
class Host:
    container: AppContainer
    client: httpx.AsyncClient
    headers: dict[str, str]

    async def post(self, path: str, body: Any, user: str | None = None) -> httpx.Response:
        headers = self.headers if user is None else auth(self.container, user)
        return await self.client.post(path, json=body, headers=headers)

    async def run(self, run_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/runs/{run_id}", headers=self.headers)
        body: dict[str, Any] = response.json()
        return body

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/api/runs/{run_id}/events", headers=self.headers)
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    async def ended(self, run_id: str) -> dict[str, Any]:
        """The run once it has ended."""
        return await self.reaches(run_id, "completed", "failed", "cancelled")

    async def reaches(self, run_id: str, *statuses: str) -> dict[str, Any]:
        """The run once it is in one of ``statuses`` (polled: it goes on in the background)."""
        async with asyncio.timeout(WITHIN_S):
            while True:
                run = await self.run(run_id)
                if run["status"] in statuses:
                    return run
                await asyncio.sleep(0.02)

    async def decide(self, run_id: str, *decisions: dict[str, Any]) -> httpx.Response:
        return await self.post(f"/api/runs/{run_id}/approvals", {"decisions": list(decisions)})


async def serve(settings: Settings) -> AsyncIterator[Host]:
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    transport = httpx.ASGITransport(app=create_app(container))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://a.test") as client:
            yield Host(container, client, auth(container, "alice"))
    finally:
        await shutdown(container)


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    """Offline, every calculator call waits for approval (``APPROVAL_TOOLS=calculator``)."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        approval_tools="calculator",
        _env_file=None,
    )
    async for served in serve(settings):
        yield served


@pytest.fixture
async def model_host(tmp_path: Path) -> AsyncIterator[Host]:
    """Every calculator call waits, on a model that can call it twice in one turn."""
    async with served_model() as model:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
            approval_tools="calculator",
            llm_provider="openai",
            llm_base_url=model.base_url,
            _env_file=None,
        )
        async for served in serve(settings):
            yield served


async def paused(host: Host, content: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send ``content`` and see the run pause: the run as the message answered, and its
    ``approval_requested`` events."""
    thread_id = await new_thread(host.client, host.headers)
    body = await send(host.client, host.headers, thread_id, content)
    run = body["run"]
    assert run["status"] == "awaiting_approval", body
    assert body["message"] is None
    requested = [e for e in await host.events(run["id"]) if e["type"] == "approval_requested"]
    return run, requested


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def assert_one_sequence(events: list[dict[str, Any]]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e for e in events if e["type"] in FINAL_EVENT_TYPES] == events[-1:]


async def test_a_call_waits_for_approval_then_the_run_completes(host: Host) -> None:
    """The message answers at the pause (200, `awaiting_approval`): one `approval_requested`
    with the call's tool, input and expiry; the thread stays busy. Approving it resumes the
    run: the calculator runs, the answer comes, seq goes on from the pause, nothing repeated;
    the decision is counted and the paused gauge is back to 0."""
    run, [requested] = await paused(host, "what is 2 + 2?")
    assert requested["data"]["tool"] == "calculator"
    assert requested["data"]["input"] == {"expression": "2 + 2"}
    assert requested["data"]["expires_at"] > run["created_at"]
    thread = await host.client.get(f"/api/threads/{run['thread_id']}", headers=host.headers)
    assert thread.json()["active_run_id"] == run["id"]
    before = await host.events(run["id"])
    assert "tool_executing" not in types(before)
    metrics = (await host.client.get("/metrics")).text
    assert "isochat_runs_awaiting_approval 1.0" in metrics

    decided = await host.decide(
        run["id"], {"call_id": requested["data"]["call_id"], "decision": "approve"}
    )
    assert decided.status_code == 202, decided.text
    assert decided.json()["run"]["status"] == "running"
    ended = await host.ended(run["id"])

    assert ended["status"] == "completed", ended
    events = await host.events(run["id"])
    assert_one_sequence(events)
    assert events[: len(before)] == before
    after = types(events[len(before) :])
    assert after[:3] == ["approval_resolved", "tool_executing", "tool_completed"]
    assert after[-1] == "run_completed"
    assert events[-1]["data"]["message"]["content"] == "2 + 2 = 4"
    assert host.container.metrics().value("isochat_approvals_total", {"decision": "approve"}) == 1
    assert "isochat_runs_awaiting_approval 0.0" in (await host.client.get("/metrics")).text
    assert leaks(host.container) == NO_LEAKS


async def test_a_rejected_call_is_told_to_the_model_and_never_runs(host: Host) -> None:
    """Rejected with a message: the calculator never runs, and the answer says it was
    declined rather than pretending it was calculated."""
    run, [requested] = await paused(host, "what is 6 * 7?")
    refusal = {
        "call_id": requested["data"]["call_id"],
        "decision": "reject",
        "message": "not now, please",
    }
    assert (await host.decide(run["id"], refusal)).status_code == 202
    ended = await host.ended(run["id"])
    [resolved] = [e for e in await host.events(run["id"]) if e["type"] == "approval_resolved"]
    assert resolved["data"] == refusal  # every tab can say why

    assert ended["status"] == "completed"
    events = await host.events(run["id"])
    assert_one_sequence(events)
    assert "tool_executing" not in types(events) and "tool_completed" not in types(events)
    answer = events[-1]["data"]["message"]["content"]
    assert answer == "I did not calculate that: it was declined (not now, please)."
    assert "42" not in answer


async def test_an_edit_runs_other_arguments_and_a_bad_edit_changes_nothing(host: Host) -> None:
    """An edit whose input does not fit the calculator's input model is 422 and stores
    nothing (no event, still paused); a fitting one runs instead of the model's."""
    run, [requested] = await paused(host, "what is 2 + 2?")
    call_id = requested["data"]["call_id"]
    before = await host.events(run["id"])
    for bad in ({"expr": "3 + 3"}, {"expression": 3}, None):
        edit = {"call_id": call_id, "decision": "edit", "input": bad}
        refused = await host.decide(run["id"], edit)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "validation_error"
        assert refused.json()["error"]["message"].startswith("decisions.0.input")
    assert await host.events(run["id"]) == before
    assert (await host.run(run["id"]))["status"] == "awaiting_approval"

    edit = {"call_id": call_id, "decision": "edit", "input": {"expression": "3 + 3"}}
    assert (await host.decide(run["id"], edit)).status_code == 202
    assert (await host.ended(run["id"]))["status"] == "completed"
    events = await host.events(run["id"])
    [resolved] = [e for e in events if e["type"] == "approval_resolved"]
    assert resolved["data"] == edit
    [executing] = [e for e in events if e["type"] == "tool_executing"]
    assert json.loads(executing["data"]["input"]) == {"expression": "3 + 3"}
    assert events[-1]["data"]["message"]["content"] == "3 + 3 = 6"


async def test_decisions_that_cannot_be_taken(host: Host) -> None:
    """Another user's run is 404; a call id that is not pending is 422, and so is input with
    anything but an edit, or a reason with anything but a rejection; a run that is not paused
    is 409 `conflict`; no decision is stored for any of them."""
    run, [requested] = await paused(host, "what is 2 + 2?")
    call_id = requested["data"]["call_id"]
    for mixed, said in (
        ({"decision": "approve", "input": {"expression": "9*9"}}, "input: only an edit"),
        ({"decision": "edit", "input": {"expression": "1"}, "message": "x"}, "message: only"),
    ):
        refused = await host.decide(run["id"], {"call_id": call_id} | mixed)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["message"].startswith(f"decisions.0.{said}")
    path = f"/api/runs/{run['id']}/approvals"
    approve = {"decisions": [{"call_id": call_id, "decision": "approve"}]}
    theirs = await host.post(path, approve, user="mallory")
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    unknown = await host.decide(run["id"], {"call_id": "call_nope", "decision": "approve"})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["message"] == (
        "decisions.0.call_id: not a pending call of this run"
    )
    assert types(await host.events(run["id"]))[-1] == "approval_requested"

    assert (await host.post(path, approve)).status_code == 202
    await host.ended(run["id"])
    late = await host.post(path, approve)
    assert late.status_code == 409 and late.json()["error"]["code"] == "conflict"


async def test_a_turn_with_two_waiting_calls_decided_in_two_requests(model_host: Host) -> None:
    """Both calls of the turn wait; deciding the first stores its decision and the run stays
    paused; deciding it again is 409; the second resumes the run: both ran, one answer."""
    run, requested = await paused(model_host, TWO_CALLS)
    assert [e["data"]["input"] for e in requested] == [
        {"expression": "1+1"},
        {"expression": "2+2"},
    ]
    first, second = (e["data"]["call_id"] for e in requested)
    once = await model_host.decide(run["id"], {"call_id": first, "decision": "approve"})
    assert once.status_code == 202 and once.json()["run"]["status"] == "awaiting_approval"
    again = await model_host.decide(run["id"], {"call_id": first, "decision": "reject"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    last = await model_host.decide(run["id"], {"call_id": second, "decision": "approve"})
    assert last.json()["run"]["status"] == "running"

    ended = await model_host.ended(run["id"])
    assert ended["status"] == "completed", ended
    events = await model_host.events(run["id"])
    assert_one_sequence(events)
    assert types(events).count("approval_resolved") == 2
    assert events[-1]["data"]["message"]["content"] == "Model says: 2 | 4"


async def test_a_paused_run_is_cancelled_like_any_other(host: Host) -> None:
    """Cancel while paused: `cancelled` with one `run_cancelled`, the thread free again."""
    run, _ = await paused(host, "what is 2 + 2?")
    cancelled = await host.post(f"/api/runs/{run['id']}/cancel", None)
    assert cancelled.status_code == 202 and cancelled.json()["run"]["status"] == "cancelled"
    events = await host.events(run["id"])
    assert_one_sequence(events)
    assert events[-1]["type"] == "run_cancelled"
    body = await send(host.client, host.headers, run["thread_id"], "hello")
    assert body["run"]["status"] == "completed"
    assert host.container.metrics().value("isochat_runs_total", {"status": "cancelled"}) == 1


async def test_a_pause_nobody_decides_on_expires_at_the_sweep(host: Host) -> None:
    """The sweep at a time past the pause's expiry ends the run `failed` /
    `approval_expired`, once; a decision after that is 409."""
    run, [requested] = await paused(host, "what is 2 + 2?")
    keeper = host.container.lease_keeper()
    assert await keeper.sweep() == 0  # not expired yet: untouched
    later = utcnow() + timedelta(seconds=host.container.settings().approval_timeout_s + 1)
    assert await keeper.sweep(now=later) == 1
    assert await keeper.sweep(now=later) == 0

    ended = await host.run(run["id"])
    assert ended["status"] == "failed" and ended["error"]["code"] == "approval_expired"
    events = await host.events(run["id"])
    assert_one_sequence(events)
    approve = {"call_id": requested["data"]["call_id"], "decision": "approve"}
    assert (await host.decide(run["id"], approve)).status_code == 409


async def test_a_decision_over_the_websocket(host: Host) -> None:
    """The `approve` frame decides as the HTTP request does; the socket (opened after the
    pause, so the run is new to it) gets the run from its first event, each seq once: the
    pause, the decision, the rest."""
    app = create_app(host.container)
    token = host.container.tokens().issue("alice")
    run, [requested] = await paused(host, "what is 5 * 5?")
    async with AsgiSocket(app, token=token) as socket:
        frame = {
            "type": "approve",
            "run_id": run["id"],
            "decisions": [{"call_id": requested["data"]["call_id"], "decision": "approve"}],
        }
        await socket.send(json.dumps(frame))
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(WITHIN_S):
            while not frames or frames[-1]["type"] not in FINAL_EVENT_TYPES:
                frames.append(await socket.recv())
    assert [f["seq"] for f in frames] == list(range(1, frames[-1]["seq"] + 1))
    assert types(frames)[requested["seq"] - 1 : requested["seq"] + 1] == [
        "approval_requested",
        "approval_resolved",
    ]
    assert frames[-1]["data"]["message"]["content"] == "5 * 5 = 25"


async def refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    return f"refunded {amount} on {order_id}"


class RefundPlugin(containers.DeclarativeContainer):
    """A team's tool that decides from its input: refunds over 100 wait for a person."""

    isochat = providers.DependenciesContainer()
    refunds = providers.Factory(
        FunctionTool, refund, approval=lambda order_id, amount: amount > 100
    )
    support_agent = providers.Factory(
        ToolAgent,
        name="support",
        tools=providers.List(refunds),
        events=isochat.emitter,
        tracker=isochat.metrics,
        llm=isochat.run_llm,
        usage=isochat.usage,
        approvals=isochat.approvals,
    )
    routes = providers.Callable(
        with_routes,
        isochat.stock_routes,
        support=providers.Singleton(Route, description="refunds", agent=support_agent.provider),
    )


async def test_a_teams_tool_decides_from_its_input(tmp_path: Path) -> None:
    """A refund of 20 runs at once; one of 500 waits for a person (no setting needed)."""
    async with served_model() as model:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
            llm_provider="openai",
            llm_base_url=model.base_url,
            _env_file=None,
        )
        await asyncio.to_thread(upgrade_to_head, settings.database_url)
        container = build_container(settings)
        plug_in(container, RefundPlugin)
        transport = httpx.ASGITransport(app=create_app(container))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://a.test") as c:
                host = Host(container, c, auth(container, "alice"))
                thread_id = await new_thread(c, host.headers)
                small = '[route:support] [calls:refund={"order_id": "a-1", "amount": 20}]'
                big = '[route:support] [calls:refund={"order_id": "a-2", "amount": 500}]'
                done = await send(c, host.headers, thread_id, small)
                assert done["run"]["status"] == "completed", done
                assert done["message"]["content"] == "Model says: refunded 20.0 on a-1"
                waiting = await send(c, host.headers, thread_id, big)
                assert waiting["run"]["status"] == "awaiting_approval"
        finally:
            await shutdown(container)


async def test_a_resumed_run_may_pause_again(model_host: Host) -> None:
    """A model that calls the waiting tool at every turn: each turn pauses, each approval
    resumes the run and it pauses again (a model may reuse its call ids: each pause is its
    own), until the run is cancelled; seq goes on through all of it."""
    forever = '[route:math] [calls-forever:calculator={"expression": "1+1"}]'
    run, [first] = await paused(model_host, forever)
    for round_ in range(3):
        call_id = (await model_host.events(run["id"]))[-1]["data"]["call_id"]
        decided = await model_host.decide(run["id"], {"call_id": call_id, "decision": "approve"})
        assert decided.status_code == 202, decided.text
        await model_host.reaches(run["id"], "awaiting_approval")
        events = await model_host.events(run["id"])
        assert types(events).count("approval_requested") == round_ + 2
    cancelled = await model_host.post(f"/api/runs/{run['id']}/cancel", None)
    assert cancelled.json()["run"]["status"] == "cancelled"
    events = await model_host.events(run["id"])
    assert_one_sequence(events)
    assert types(events).count("tool_completed") == 3
    assert first["data"]["call_id"] == events[-2]["data"]["call_id"]  # the same id, each pause
