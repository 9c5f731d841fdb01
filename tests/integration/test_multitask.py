"""Messages while a run is busy: rejected (the default), enqueued (one run at a time, in the
order stored, started by whoever ends the run ahead), interrupting (the busy run's answer so
far kept) or rolling back (the busy run gone without a trace); a run paused for approval
counts as busy; a queued run can be cancelled, and outlives the process that took it."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from src.runs.domain import FINAL_EVENT_TYPES
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import Gate, hold_triage
from tests.helpers import NO_LEAKS, leaks_once_settled, new_thread, stored_events
from tests.integration.test_approvals import WITHIN_S, Host, serve
from tests.llm_server import served_model
from tests.ws import AsgiSocket


def settings_at(tmp_path: Path, **more: Any) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        run_timeout_s=600.0,
        _env_file=None,
        **more,
    )


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    async for served in serve(settings_at(tmp_path, max_queued_runs=3)):
        yield served


async def post_run(host: Host, thread_id: str, content: str, multitask: str | None) -> Any:
    """A background run (202): the Run as stored."""
    body: dict[str, Any] = {"content": content}
    if multitask is not None:
        body["multitask"] = multitask
    response = await host.post(f"/api/threads/{thread_id}/runs", body)
    assert response.status_code == 202, response.text
    return response.json()["run"]


async def held_run(host: Host, thread_id: str) -> tuple[dict[str, Any], Gate]:
    """A run held in triage (its message says ``hold``) until the gate opens."""
    gate = hold_triage(host.container, only="hold")
    run = await post_run(host, thread_id, "hold: tell me a story", None)
    await asyncio.wait_for(gate.reached.wait(), WITHIN_S)
    return run, gate


async def thread_of(host: Host, thread_id: str) -> dict[str, Any]:
    response = await host.client.get(f"/api/threads/{thread_id}", headers=host.headers)
    body: dict[str, Any] = response.json()
    return body


async def messages_of(host: Host, thread_id: str) -> list[dict[str, Any]]:
    response = await host.client.get(f"/api/threads/{thread_id}/messages", headers=host.headers)
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def queued_on(host: Host, thread_id: str) -> None:
    """Once the thread lists a queued run (stored by a request still going)."""
    async with asyncio.timeout(WITHIN_S):
        while True:
            if (await thread_of(host, thread_id))["queued_run_ids"]:
                return
            await asyncio.sleep(0.02)


def first_ts(events: list[dict[str, Any]]) -> str:
    return str(events[0]["ts"])


async def test_a_message_to_a_busy_thread_is_refused_by_default(host: Host) -> None:
    """With no ``multitask``, the server's default (``reject``): 409 naming the busy run, and
    nothing stored."""
    thread_id = await new_thread(host.client, host.headers)
    busy, gate = await held_run(host, thread_id)
    refused = await host.post(f"/api/threads/{thread_id}/messages", {"content": "and?"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "run_in_progress"
    assert refused.json()["error"]["run_id"] == busy["id"]
    assert [m["content"] for m in await messages_of(host, thread_id)] == ["hold: tell me a story"]
    gate.opened.set()
    assert (await host.ended(busy["id"]))["status"] == "completed"


async def test_enqueued_messages_run_one_at_a_time_in_the_order_stored(host: Host) -> None:
    """Three messages enqueued behind a held run are stored at once as queued runs, listed on
    the thread in order; each starts only when the one before it has ended, and the
    conversation reads question, answer, question, answer."""
    thread_id = await new_thread(host.client, host.headers)
    busy, gate = await held_run(host, thread_id)
    queued = [await post_run(host, thread_id, f"what is {n} + {n}?", "enqueue") for n in (1, 2, 3)]
    assert [run["status"] for run in queued] == ["queued"] * 3
    thread = await thread_of(host, thread_id)
    assert thread["active_run_id"] == busy["id"]
    assert thread["queued_run_ids"] == [run["id"] for run in queued]

    gate.opened.set()
    runs = [busy, *queued]
    ended = [await host.ended(run["id"]) for run in runs]
    assert [run["status"] for run in ended] == ["completed"] * 4
    for before, after in itertools.pairwise(ended):
        events = await host.events(after["id"])
        assert events[0]["type"] == "run_started"
        assert before["finished_at"] <= first_ts(events)  # it started after the one before ended
    messages = await messages_of(host, thread_id)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4
    assert [m["run_id"] for m in messages] == [run["id"] for run in runs for _ in (1, 2)]
    assert [m["content"] for m in messages[3::2]] == ["1 + 1 = 2", "2 + 2 = 4", "3 + 3 = 6"]
    assert (await thread_of(host, thread_id))["queued_run_ids"] == []
    assert await leaks_once_settled(host.container) == NO_LEAKS | {"ws_connections": 0}


async def test_a_message_that_waits_its_turn_answers_when_its_run_ends(host: Host) -> None:
    """``POST .../messages`` with ``enqueue`` answers like any message, once its run (started
    behind the busy one) has ended: the run completed, and its answer."""
    thread_id = await new_thread(host.client, host.headers)
    _, gate = await held_run(host, thread_id)
    waiting = asyncio.create_task(
        host.post(
            f"/api/threads/{thread_id}/messages",
            {"content": "what is 6 * 7?", "multitask": "enqueue"},
        )
    )
    await queued_on(host, thread_id)
    assert not waiting.done()
    gate.opened.set()
    answered = await asyncio.wait_for(waiting, WITHIN_S)
    assert answered.status_code == 200, answered.text
    assert answered.json()["run"]["status"] == "completed"
    assert answered.json()["message"]["content"] == "6 * 7 = 42"


async def test_a_cancelled_queued_run_never_starts(host: Host) -> None:
    """Cancelling a queued run ends it at once (its one event is ``run_cancelled``); the runs
    behind it move up and it never starts."""
    thread_id = await new_thread(host.client, host.headers)
    _, gate = await held_run(host, thread_id)
    first = await post_run(host, thread_id, "what is 1 + 1?", "enqueue")
    second = await post_run(host, thread_id, "what is 2 + 2?", "enqueue")
    cancelled = await host.post(f"/api/runs/{first['id']}/cancel", {})
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["run"]["status"] == "cancelled"
    assert [e["type"] for e in await host.events(first["id"])] == ["run_cancelled"]
    assert (await thread_of(host, thread_id))["queued_run_ids"] == [second["id"]]

    gate.opened.set()
    assert (await host.ended(second["id"]))["status"] == "completed"
    assert [e["type"] for e in await host.events(first["id"])] == ["run_cancelled"]
    assert (await host.run(first["id"]))["status"] == "cancelled"


async def test_a_full_queue_refuses_more(host: Host) -> None:
    """``MAX_QUEUED_RUNS`` (3 here) wait at most: the fourth is 429 and nothing of it is
    stored."""
    thread_id = await new_thread(host.client, host.headers)
    _, gate = await held_run(host, thread_id)
    for n in range(3):
        await post_run(host, thread_id, f"what is {n} + 1?", "enqueue")
    refused = await host.post(
        f"/api/threads/{thread_id}/runs", {"content": "one more", "multitask": "enqueue"}
    )
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert len(await messages_of(host, thread_id)) == 4
    gate.opened.set()


async def test_an_unknown_strategy_is_a_validation_error(host: Host) -> None:
    thread_id = await new_thread(host.client, host.headers)
    refused = await host.post(
        f"/api/threads/{thread_id}/messages", {"content": "hi", "multitask": "later"}
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["message"].startswith("multitask")


async def test_rollback_removes_the_busy_run_without_a_trace(host: Host) -> None:
    """``rollback``: the busy run goes with its message and events (404 from then on), and the
    new run starts at once, in a conversation where the old one never was."""
    thread_id = await new_thread(host.client, host.headers)
    busy, gate = await held_run(host, thread_id)
    answered = await host.post(
        f"/api/threads/{thread_id}/messages",
        {"content": "what is 2 + 3?", "multitask": "rollback"},
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["run"]["status"] == "completed"
    gone = await host.client.get(f"/api/runs/{busy['id']}", headers=host.headers)
    assert gone.status_code == 404
    events = await host.client.get(f"/api/runs/{busy['id']}/events", headers=host.headers)
    assert events.status_code == 404
    messages = await messages_of(host, thread_id)
    assert [m["content"] for m in messages] == ["what is 2 + 3?", "2 + 3 = 5"]
    gate.opened.set()  # its agents, if anything of them waits, find nothing to write to
    assert (await thread_of(host, thread_id))["active_run_id"] is None
    assert await leaks_once_settled(host.container) == NO_LEAKS | {"ws_connections": 0}


async def test_a_paused_run_counts_as_busy(tmp_path: Path) -> None:
    """A run that waits for approval holds its thread: reject is 409, enqueue waits, and the
    queued run starts once the paused one is cancelled."""
    async for host in serve(settings_at(tmp_path, approval_tools="calculator")):
        thread_id = await new_thread(host.client, host.headers)
        paused = await host.post(f"/api/threads/{thread_id}/messages", {"content": "what is 1+1?"})
        run = paused.json()["run"]
        assert run["status"] == "awaiting_approval"
        refused = await host.post(f"/api/threads/{thread_id}/messages", {"content": "hello"})
        assert refused.status_code == 409
        assert refused.json()["error"]["run_id"] == run["id"]
        queued = await post_run(host, thread_id, "hello there", "enqueue")
        assert queued["status"] == "queued"
        assert (await host.post(f"/api/runs/{run['id']}/cancel", {})).status_code == 202
        assert (await host.ended(queued["id"]))["status"] == "completed"


async def test_the_server_default_can_be_enqueue(tmp_path: Path) -> None:
    """``MULTITASK_DEFAULT=enqueue``: a message that says nothing waits its turn."""
    async for host in serve(settings_at(tmp_path, multitask_default="enqueue")):
        thread_id = await new_thread(host.client, host.headers)
        _, gate = await held_run(host, thread_id)
        queued = await post_run(host, thread_id, "what is 4 + 4?", None)
        assert queued["status"] == "queued"
        gate.opened.set()
        assert (await host.ended(queued["id"]))["status"] == "completed"


async def test_a_chat_frame_enqueues_and_the_socket_sees_its_run_start(host: Host) -> None:
    """A ``chat`` frame with ``enqueue`` while the thread is busy: the socket gets the queued
    run's events from its ``run_started``, after the run ahead ended."""
    thread_id = await new_thread(host.client, host.headers)
    busy, gate = await held_run(host, thread_id)
    token = host.container.tokens().issue("alice")
    async with AsgiSocket(create_app(host.container), token=token) as socket:
        frame = {
            "type": "chat",
            "thread_id": thread_id,
            "content": "what is 5 + 5?",
            "multitask": "enqueue",
            "request_id": "queued-1",
        }
        await socket.send(json.dumps(frame))
        await queued_on(host, thread_id)
        gate.opened.set()
        [queued] = (await thread_of(host, thread_id))["queued_run_ids"]
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(WITHIN_S):
            while not frames or frames[-1]["type"] not in FINAL_EVENT_TYPES:
                frame = await socket.recv()
                if frame.get("run_id") == queued:  # the socket gets the busy run's too
                    frames.append(frame)
    assert frames[0]["type"] == "run_started"
    assert frames[0]["data"] == {"request_id": "queued-1"}
    assert frames[-1]["type"] == "run_completed"
    assert frames[-1]["data"]["message"]["content"] == "5 + 5 = 10"
    assert (await host.run(busy["id"]))["status"] == "completed"


async def test_interrupt_keeps_the_answer_so_far_and_the_new_run_sees_it(tmp_path: Path) -> None:
    """``interrupt``: the busy run (streaming, then stalled) is cancelled, what it had answered
    is kept as an assistant message marked interrupted, and the new run's model gets it in the
    conversation, in its place before the new question."""
    async with served_model() as model:
        settings = settings_at(tmp_path, llm_provider="openai", llm_base_url=model.base_url)
        async for host in serve(settings):
            thread_id = await new_thread(host.client, host.headers)
            busy = await post_run(host, thread_id, "[text:story][answer:stall] a story", None)
            async with asyncio.timeout(WITHIN_S):
                while True:  # polled: the model's first piece is stored as the run goes on
                    stored = stored_events(tmp_path / "isochat.db", busy["id"])
                    if "agent_thinking" in [kind for _, kind in stored]:
                        break
                    await asyncio.sleep(0.02)
            answered = await host.post(
                f"/api/threads/{thread_id}/messages",
                {"content": "stop, tell me less", "multitask": "interrupt"},
            )
            assert answered.status_code == 200, answered.text
            assert answered.json()["run"]["status"] == "completed"

            cancelled = await host.run(busy["id"])
            assert cancelled["status"] == "cancelled"
            messages = await messages_of(host, thread_id)
            assert [(m["role"], m.get("interrupted", False)) for m in messages] == [
                ("user", False),
                ("assistant", True),
                ("user", False),
                ("assistant", False),
            ]
            partial = messages[1]["content"]
            assert partial == "Once. " and messages[1]["run_id"] == busy["id"]
            [final] = [e for e in await host.events(busy["id"]) if e["type"] == "run_cancelled"]
            assert final["data"]["message"]["content"] == partial
            last_request = model.answer_requests()[-1]["messages"]
            said = [(m["role"], m["content"]) for m in last_request if m["role"] != "system"]
            assert ("assistant", partial) in said
            assert said.index(("assistant", partial)) < said.index(("user", "stop, tell me less"))


async def test_a_queued_run_outlives_a_restart(tmp_path: Path) -> None:
    """A process shuts down with a run going and one queued behind it: the running one ends
    cancelled and starts nothing; the queued one stays queued, and the next process's first
    beat (its start-up sweep) starts it."""
    settings = settings_at(tmp_path)
    async for first in serve(settings):
        thread_id = await new_thread(first.client, first.headers)
        busy, _ = await held_run(first, thread_id)
        queued = await post_run(first, thread_id, "what is 9 + 9?", "enqueue")
    # ``first`` has shut down.
    async for second in serve(settings):
        assert (await second.run(busy["id"]))["status"] == "cancelled"
        assert (await second.run(queued["id"]))["status"] == "queued"
        assert (await thread_of(second, thread_id))["queued_run_ids"] == [queued["id"]]
        await second.container.lease_keeper().beat()  # what the app's start-up does
        assert (await second.ended(queued["id"]))["status"] == "completed"
