"""The Agent Protocol as LangGraph's server speaks it, driven by the real ``langgraph_sdk``
client against a real server: the assistant, threads and their state, runs to their end and
streamed in each mode (what the client is shown is what isochat stores), a stream resumed
after an event id, and the README's example as printed."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from src.container import AppContainer, build_container, shutdown
from src.services.database.migrations import upgrade_to_head
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import hold_triage
from tests.helpers import auth, serving
from tests.integration.test_readme import blocks, section

WITHIN_S = 30.0  # only guards against a hang
QUESTION: dict[str, Any] = {"messages": [{"role": "user", "content": "what is 2+3"}]}


@pytest.fixture
async def lg(container: AppContainer, live_server: str) -> AsyncIterator[LangGraphClient]:
    """alice's LangGraph client."""
    token = container.tokens().issue("alice")
    async with get_client(url=f"http://{live_server}", api_key=token) as client:
        yield client


async def stored_messages(
    container: AppContainer, live_server: str, thread_id: str
) -> list[tuple[str, str]]:
    """The thread's messages as isochat's own API gives them: (role, content)."""
    async with httpx.AsyncClient(base_url=f"http://{live_server}") as api:
        response = await api.get(
            f"/api/threads/{thread_id}/messages", headers=auth(container, "alice")
        )
    return [(m["role"], m["content"]) for m in response.json()["messages"]]


async def stored_events(
    container: AppContainer, live_server: str, run_id: str
) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"http://{live_server}") as api:
        response = await api.get(f"/api/runs/{run_id}/events", headers=auth(container, "alice"))
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def said(values: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["type"], m["content"]) for m in values["messages"]]


async def test_the_one_assistant_is_isochat(lg: LangGraphClient) -> None:
    """Search finds one assistant, graph ``isochat``; it is found by its id and by the
    graph's; any other is 404."""
    [found] = await lg.assistants.search()
    assert found["graph_id"] == "isochat"
    assert await lg.assistants.get("isochat") == found
    assert await lg.assistants.get(found["assistant_id"]) == found
    assert await lg.assistants.search(graph_id="another") == []
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await lg.assistants.get("another")
    assert refused.value.response.status_code == 404


async def test_threads_are_made_found_and_deleted(lg: LangGraphClient) -> None:
    """A thread made with the client's id and metadata is read back idle and empty, found by
    its metadata (and the graph's id, as agent-chat-ui searches), and gone once deleted."""
    thread_id = "0f8d6a3e-2b7c-4f3e-9a51-6c1d2e3f4a5b"
    made = await lg.threads.create(thread_id=thread_id, metadata={"project": "apollo"})
    assert made["thread_id"] == thread_id and made["status"] == "idle"
    assert made["metadata"] is not None and made["metadata"]["project"] == "apollo"
    assert made["values"] == {"messages": []}
    other = await lg.threads.create()
    again = await lg.threads.create(thread_id=thread_id, if_exists="do_nothing")
    assert again["thread_id"] == thread_id
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await lg.threads.create(thread_id=thread_id)
    assert refused.value.response.status_code == 409

    assert (await lg.threads.get(thread_id))["metadata"] == made["metadata"]
    found = await lg.threads.search(metadata={"project": "apollo"})
    assert [t["thread_id"] for t in found] == [thread_id]
    every = await lg.threads.search(metadata={"graph_id": "isochat"}, limit=100)
    assert [t["thread_id"] for t in every] == [other["thread_id"], thread_id]
    assert await lg.threads.search(status="busy") == []
    assert len(await lg.threads.search(limit=1, offset=1)) == 1
    state = await lg.threads.get_state(thread_id)
    assert state["values"] == {"messages": []} and state["next"] == []

    await lg.threads.delete(thread_id)
    with pytest.raises(httpx.HTTPStatusError) as gone:
        await lg.threads.get(thread_id)
    assert gone.value.response.status_code == 404


async def test_a_run_to_its_end_answers_what_isochat_stores(
    lg: LangGraphClient, container: AppContainer, live_server: str
) -> None:
    """``runs.wait``: the thread's values, the question and the math specialist's answer,
    as isochat's own API stores them, and as the thread's state shows them."""
    thread = await lg.threads.create()
    values = await lg.runs.wait(thread["thread_id"], "isochat", input=QUESTION)
    assert isinstance(values, dict)
    assert said(values) == [("human", "what is 2+3"), ("ai", "2 + 3 = 5")]
    stored = await stored_messages(container, live_server, thread["thread_id"])
    assert stored == [("user", "what is 2+3"), ("assistant", "2 + 3 = 5")]
    state = await lg.threads.get_state(thread["thread_id"])
    assert state["values"] == values
    assert (await lg.threads.get(thread["thread_id"]))["status"] == "idle"


async def test_earlier_messages_of_the_input_are_stored_before_the_question(
    lg: LangGraphClient, container: AppContainer, live_server: str
) -> None:
    """An input of several messages: the earlier ones are stored first, the last (human)
    one starts the run."""
    thread = await lg.threads.create()
    conversation: dict[str, Any] = {
        "messages": [
            {"type": "human", "content": "hello"},
            {"type": "ai", "content": "hi, ask me"},
            {"type": "human", "content": [{"type": "text", "text": "what is 2+3"}]},
        ]
    }
    await lg.runs.wait(thread["thread_id"], "isochat", input=conversation)
    assert await stored_messages(container, live_server, thread["thread_id"]) == [
        ("user", "hello"),
        ("assistant", "hi, ask me"),
        ("user", "what is 2+3"),
        ("assistant", "2 + 3 = 5"),
    ]


async def test_a_stream_shows_the_run_in_each_mode(
    lg: LangGraphClient, container: AppContainer, live_server: str
) -> None:
    """``runs.stream`` in values, updates and messages-tuple: first ``metadata`` with the
    run's id; the values end with the stored answer; the updates show the calculator's call
    and result; the message chunks add up to the answer; every event of the run has an id
    ``seq-k`` of one of its stored events."""
    thread = await lg.threads.create()
    parts = [
        part
        async for part in lg.runs.stream(
            thread["thread_id"],
            "isochat",
            input=QUESTION,
            stream_mode=["values", "updates", "messages-tuple"],
        )
    ]
    assert parts[0].event == "metadata"
    run_id = parts[0].data["run_id"]
    values = [p.data for p in parts if p.event == "values"]
    assert said(values[0]) == [("human", "what is 2+3")]
    assert said(values[-1]) == [("human", "what is 2+3"), ("ai", "2 + 3 = 5")]
    assert values[-1] == (await lg.threads.get_state(thread["thread_id"]))["values"]

    updates = [p.data for p in parts if p.event == "updates"]
    by_math = [u["math"]["messages"][0] for u in updates if "math" in u]
    assert [m["content"] for m in by_math] == ["", "2 + 3 = 5"]
    [call] = by_math[0]["tool_calls"]
    assert call["name"] == "calculator" and call["args"] == {"expression": "2 + 3"}
    results = [u["tools"]["messages"][0] for u in updates if "tools" in u]
    assert [(r["name"], r["content"]) for r in results] == [("calculator", "5")]

    chunks = [p.data for p in parts if p.event == "messages"]
    answer = "".join(c["content"] for c, _ in chunks if c["type"] == "AIMessageChunk")
    assert answer == "2 + 3 = 5"
    assert {meta["run_id"] for _, meta in chunks} == {run_id}

    events = await stored_events(container, live_server, run_id)
    seqs = {e["seq"] for e in events}
    ids = [p.id for p in parts[1:]]
    assert all(i is not None and int(i.split("-")[0]) in seqs for i in ids)
    assert len(set(ids)) == len(ids)
    assert (await lg.runs.get(thread["thread_id"], run_id))["status"] == "success"


async def test_a_joined_stream_resumes_after_an_event_id(lg: LangGraphClient) -> None:
    """``join_stream`` with ``last_event_id``: everything after that event, once, and
    nothing before it."""
    thread = await lg.threads.create()
    run = await lg.runs.create(thread["thread_id"], "isochat", input=QUESTION)
    await lg.runs.join(thread["thread_id"], run["run_id"])
    modes: Any = ["values", "updates", "messages-tuple", "custom"]
    whole = [
        (p.id, p.event, p.data)
        async for p in lg.runs.join_stream(thread["thread_id"], run["run_id"], stream_mode=modes)
    ]
    assert len(whole) > 6
    for cut in (1, len(whole) // 2, len(whole) - 1):
        after = whole[cut - 1][0]
        assert after is not None
        rest = [
            (p.id, p.event, p.data)
            async for p in lg.runs.join_stream(
                thread["thread_id"], run["run_id"], stream_mode=modes, last_event_id=after
            )
        ]
        assert rest == whole[cut:]
    assert [event for _, event, _ in whole[-2:]] == ["custom", "end"]  # the SDK's end
    assert whole[-2][2]["type"] == "run_completed"


async def test_a_background_run_is_read_joined_and_cancelled(
    lg: LangGraphClient, container: AppContainer, live_server: str
) -> None:
    """A run held in triage is ``running`` and its thread ``busy``; ``join`` waits for it
    once it goes on; a second held run cancelled is ``interrupted`` (isochat: cancelled)."""
    gate = hold_triage(container, only="hold")
    thread = await lg.threads.create()
    held: dict[str, Any] = {"messages": [{"role": "user", "content": "hold: what is 2+3"}]}
    run = await lg.runs.create(thread["thread_id"], "isochat", input=held)
    await asyncio.wait_for(gate.reached.wait(), WITHIN_S)
    assert (await lg.runs.get(thread["thread_id"], run["run_id"]))["status"] == "running"
    assert (await lg.threads.get(thread["thread_id"]))["status"] == "busy"
    joined = asyncio.create_task(lg.runs.join(thread["thread_id"], run["run_id"]))
    gate.opened.set()
    values = await joined
    assert said(values)[-1] == ("ai", "2 + 3 = 5")

    gate.reached.clear()
    gate.opened.clear()
    second = await lg.runs.create(thread["thread_id"], "isochat", input=held)
    await asyncio.wait_for(gate.reached.wait(), WITHIN_S)
    await lg.runs.cancel(thread["thread_id"], second["run_id"])
    assert (await lg.runs.get(thread["thread_id"], second["run_id"]))["status"] == "interrupted"
    events = await stored_events(container, live_server, second["run_id"])
    assert events[-1]["type"] == "run_cancelled"
    gate.opened.set()


async def test_multitask_strategy_rejects_or_enqueues(
    lg: LangGraphClient, container: AppContainer
) -> None:
    """While a run is held: ``reject`` is 409, ``enqueue`` makes a ``pending`` run that
    answers once the held one has ended."""
    gate = hold_triage(container, only="hold")
    thread = await lg.threads.create()
    held: dict[str, Any] = {"messages": [{"role": "user", "content": "hold: tell me a story"}]}
    first = await lg.runs.create(thread["thread_id"], "isochat", input=held)
    await asyncio.wait_for(gate.reached.wait(), WITHIN_S)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await lg.runs.create(
            thread["thread_id"], "isochat", input=QUESTION, multitask_strategy="reject"
        )
    assert refused.value.response.status_code == 409
    queued = await lg.runs.create(
        thread["thread_id"], "isochat", input=QUESTION, multitask_strategy="enqueue"
    )
    assert queued["status"] == "pending"
    gate.opened.set()
    values = await lg.runs.join(thread["thread_id"], queued["run_id"])
    assert said(values)[-1] == ("ai", "2 + 3 = 5")
    assert (await lg.runs.get(thread["thread_id"], first["run_id"]))["status"] == "success"


async def test_another_users_thread_and_runs_are_not_found(
    lg: LangGraphClient, container: AppContainer, live_server: str
) -> None:
    """bob's client gets 404 for alice's thread, its state, its runs, and a run on it."""
    thread = await lg.threads.create()
    run = await lg.runs.create(thread["thread_id"], "isochat", input=QUESTION)
    await lg.runs.join(thread["thread_id"], run["run_id"])
    bob_token = container.tokens().issue("bob")
    async with get_client(url=f"http://{live_server}", api_key=bob_token) as bob:
        attempts = [
            bob.threads.get(thread["thread_id"]),
            bob.threads.get_state(thread["thread_id"]),
            bob.runs.get(thread["thread_id"], run["run_id"]),
            bob.runs.join(thread["thread_id"], run["run_id"]),
            bob.runs.create(thread["thread_id"], "isochat", input=QUESTION),
        ]
        for attempt in attempts:
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await attempt
            assert refused.value.response.status_code == 404
        assert await bob.threads.search() == []


async def test_what_isochat_cannot_do_is_refused(lg: LangGraphClient) -> None:
    """A checkpoint to start from, a breakpoint, a system message: 422, nothing started."""
    thread = await lg.threads.create()
    asks: list[dict[str, Any]] = [
        {"input": QUESTION, "checkpoint_id": "1ef0"},
        {"input": QUESTION, "interrupt_before": ["math"]},
        {"input": {"messages": [{"role": "system", "content": "be rude"}]}},
    ]
    for ask in asks:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await lg.runs.create(thread["thread_id"], "isochat", **ask)
        assert refused.value.response.status_code == 422
    assert (await lg.threads.get_state(thread["thread_id"]))["values"] == {"messages": []}


async def test_the_readme_example_runs_as_printed(
    container: AppContainer, live_server: str, tmp_path: Path
) -> None:
    """README "From the LangGraph SDK": its Python example prints the answer."""
    [example] = blocks(section("From the LangGraph SDK"), "python")
    script = tmp_path / "example.py"
    script.write_text(example)
    env = {
        **os.environ,
        "ISOCHAT_URL": f"http://{live_server}",
        "ISOCHAT_TOKEN": container.tokens().issue("alice"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert out.decode() == "2 + 3 = 5\n"


async def test_a_paused_run_is_an_interrupt_resumed_by_a_command(tmp_path: Path) -> None:
    """With every calculator call waiting for approval: the stream ends at the pause, the
    thread is ``interrupted`` with the call as its interrupt, and a run with
    ``command.resume`` (isochat's decisions) goes on to the answer."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        approval_tools="calculator",
        _env_file=None,
    )
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    try:
        async with serving(create_app(container)) as address:
            token = container.tokens().issue("alice")
            async with get_client(url=f"http://{address}", api_key=token) as lg:
                thread = await lg.threads.create()
                parts = [
                    p
                    async for p in lg.runs.stream(
                        thread["thread_id"], "isochat", input=QUESTION, stream_mode="updates"
                    )
                ]
                updates = [p.data for p in parts if p.event == "updates"]
                [asked] = [u["__interrupt__"][0] for u in updates if "__interrupt__" in u]
                assert asked["value"]["tool"] == "calculator"
                paused = await lg.threads.get(thread["thread_id"])
                assert paused["status"] == "interrupted"
                [[interrupt]] = paused["interrupts"].values()
                assert interrupt["id"] == asked["id"]
                decision = {"call_id": asked["id"], "decision": "approve"}
                values = await lg.runs.wait(
                    thread["thread_id"],
                    "isochat",
                    command={"resume": {"decisions": [decision]}},
                )
                assert isinstance(values, dict)
                assert said(values)[-1] == ("ai", "2 + 3 = 5")
                assert (await lg.threads.get(thread["thread_id"]))["status"] == "idle"
    finally:
        await shutdown(container)
