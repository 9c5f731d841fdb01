"""The product's core promise: one run's failure never reaches another run."""

from __future__ import annotations

import asyncio
import gc
import random
import weakref
from typing import Any

import httpx
from dependency_injector import providers
from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.base import Agent, AgentTracker, RunEvents
from src.agents.specialists import MathAgent
from src.agents.tool import Tool
from src.container import AppContainer
from src.runs.usage import RunUsage
from src.services.llm import LLM
from src.services.metrics import Metrics
from src.settings import Settings
from tests.fakes import install_chaos
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send, wait_for_run


class RememberingMetrics(Metrics):
    """The real metrics, plus a weak reference to every agent they were told about."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[weakref.ref[Agent]] = []

    def track_agent(self, agent: object) -> None:
        assert isinstance(agent, Agent)
        self.created.append(weakref.ref(agent))
        super().track_agent(agent)


def sum_question(i: int) -> tuple[str, str]:
    """A question only request ``i`` asks, and the answer only it may get."""
    a, b = 1000 + i, 7 * i
    return f"what is {a} + {b}?", f"{a} + {b} = {a + b}"


class RecordingMath(MathAgent):
    """The math agent, noting which session and emitter its request gave it."""

    def __init__(
        self,
        *,
        events: RunEvents,
        tracker: AgentTracker,
        llm: LLM,
        usage: RunUsage,
        tools: list[Tool[Any]],
        session: AsyncSession,
        seen: list[dict[str, Any]],
    ) -> None:
        super().__init__(events=events, tracker=tracker, llm=llm, usage=usage, tools=tools)
        seen.append({"agent": self, "session": session, "emitter": events})


async def test_agent_instance_isolation(container: AppContainer, client: httpx.AsyncClient) -> None:
    """Concurrent requests never share an agent, a session or an emitter."""
    seen: list[dict[str, Any]] = []
    request = container.request
    request.math_agent.override(
        providers.Factory(
            RecordingMath,
            events=request.emitter,
            tracker=request.metrics,
            llm=request.llm,
            usage=request.usage,
            tools=providers.List(request.calculator),
            session=request.session,
            seen=seen,
        )
    )
    users = [f"user{i}" for i in range(12)]
    threads = {u: await new_thread(client, auth(container, u)) for u in users}

    results = await asyncio.gather(
        *(
            send(client, auth(container, u), threads[u], sum_question(i)[0])
            for i, u in enumerate(users)
        )
    )

    for i, body in enumerate(results):
        assert body["message"]["content"] == sum_question(i)[1]
    assert len(seen) == len(users)
    for kind in ("agent", "session", "emitter"):
        objects = [s[kind] for s in seen]
        assert len({id(o) for o in objects}) == len(users), f"a {kind} was shared"


async def test_failure_isolation(container: AppContainer, client: httpx.AsyncClient) -> None:
    """Among concurrent requests, those forced to fail in triage fail alone: every other one
    completes with its own correct answer."""
    install_chaos(container)
    users = [f"user{i}" for i in range(30)]
    threads = {u: await new_thread(client, auth(container, u)) for u in users}
    failing = set(range(0, 30, 3))

    def content(i: int) -> str:
        question = sum_question(i)[0]
        return f"[drill:agent] {question}" if i in failing else question

    results = await asyncio.gather(
        *(send(client, auth(container, u), threads[u], content(i)) for i, u in enumerate(users))
    )

    for i, body in enumerate(results):
        if i in failing:
            assert body["run"]["status"] == "failed"
            assert body["run"]["error"]["code"] == "agent_error"
            assert body["message"] is None
        else:
            assert body["run"]["status"] == "completed", body
            assert body["message"]["content"] == sum_question(i)[1]
    assert leaks(container) == NO_LEAKS


async def test_agent_restart_after_failure(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """After a run fails on a database error, another user's request succeeds, and so does the
    failing user's next request on the same thread: nothing was left broken or locked."""
    install_chaos(container)
    alice, bob = auth(container, "alice"), auth(container, "bob")
    alice_thread = await new_thread(client, alice)
    bob_thread = await new_thread(client, bob)

    failed = await send(client, alice, alice_thread, "[drill:db] what is 2 + 2?")
    assert failed["run"]["status"] == "failed"
    assert failed["run"]["error"]["code"] == "database_error"

    bobs = await send(client, bob, bob_thread, "what is 3 * 4?")
    assert bobs["run"]["status"] == "completed"
    assert bobs["message"]["content"] == "3 * 4 = 12"

    again = await send(client, alice, alice_thread, "what is 2 + 2?")
    assert again["run"]["status"] == "completed"
    assert again["message"]["content"] == "2 + 2 = 4"

    messages = (await client.get(f"/api/threads/{alice_thread}/messages", headers=alice)).json()
    assert [(m["role"], m["content"]) for m in messages["messages"]] == [
        ("user", "[drill:db] what is 2 + 2?"),  # stored before the run, kept after its failure
        ("user", "what is 2 + 2?"),
        ("assistant", "2 + 2 = 4"),
    ]


async def test_context_cleanup_after_request(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """After runs that complete, fail, time out and are cancelled, nothing is left: no open
    scope, no live agent, no open session, no connection checked out of the pool."""
    install_chaos(container)
    container.settings.override(
        providers.Object(container.settings().model_copy(update={"run_timeout_s": 1.0}))
    )
    metrics = RememberingMetrics()
    container.metrics.override(providers.Object(metrics))
    created = metrics.created
    headers = auth(container, "carol")
    threads = [await new_thread(client, headers) for _ in range(5)]

    completed = await send(client, headers, threads[0], "what is 6 * 7?")
    failed = await send(client, headers, threads[1], "what is 1/0?")
    timed_out = await send(client, headers, threads[2], "[drill:hang] what is 1 + 1?")
    hanging = asyncio.create_task(send(client, headers, threads[3], "[drill:hang] forever"))
    run_id = await wait_for_run(client, headers, threads[3])
    cancel = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    cancelled = await hanging

    assert completed["run"]["status"] == "completed"
    assert failed["run"]["error"]["code"] == "tool_error"
    assert timed_out["run"]["error"]["code"] == "timeout"
    assert cancel.status_code == 202
    assert cancel.json()["run"]["status"] == "cancelled"
    assert cancelled["run"]["status"] == "cancelled"
    gc.collect()
    assert created, "the runs built no agents"
    assert [ref for ref in created if ref() is not None] == []
    assert leaks(container) == NO_LEAKS


async def test_concurrent_load_with_failures(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """200 concurrent requests, 20% forced to fail in mixed ways (agent, database, model and
    tool errors, and hanging runs that are cancelled once everything else is done): every other
    one completes with its own correct answer, and nothing leaks."""
    install_chaos(container)
    total = 200
    kinds = ["[drill:agent]", "[drill:db]", "[drill:llm]", "[drill:hang]", "tool"]
    expected_code = {
        "[drill:agent]": "agent_error",
        "[drill:db]": "database_error",
        "[drill:llm]": "llm_error",
        "tool": "tool_error",
    }
    rng = random.Random(20)
    failing = {i: kinds[n % len(kinds)] for n, i in enumerate(rng.sample(range(total), 40))}
    users = [f"load{i % 50}" for i in range(total)]  # 50 users, 4 threads each
    threads = [await new_thread(client, auth(container, users[i])) for i in range(total)]

    def content(i: int) -> str:
        kind = failing.get(i)
        if kind is None:
            return sum_question(i)[0]
        if kind == "tool":
            return f"what is {i} / 0?"
        if kind == "[drill:llm]":
            return f"{kind} tell me a story {i}"  # the general agent asks the model
        return f"{kind} {sum_question(i)[0]}"

    requests = {
        i: asyncio.create_task(send(client, auth(container, users[i]), threads[i], content(i)))
        for i in range(total)
    }
    hanging = [i for i in range(total) if failing.get(i) == "[drill:hang]"]
    others = [i for i in range(total) if i not in hanging]
    results = dict(zip(others, await asyncio.gather(*(requests[i] for i in others)), strict=True))
    # Everything else has finished while these hung; now they are cancelled.
    for i in hanging:
        headers = auth(container, users[i])
        run_id = await wait_for_run(client, headers, threads[i])
        assert (await client.post(f"/api/runs/{run_id}/cancel", headers=headers)).status_code == 202
        results[i] = await requests[i]

    for i, body in results.items():
        kind = failing.get(i)
        if kind is None:
            assert body["run"]["status"] == "completed", body
            assert body["message"]["content"] == sum_question(i)[1]
        elif kind == "[drill:hang]":
            assert body["run"]["status"] == "cancelled", body
        else:
            assert body["run"]["status"] == "failed", body
            assert body["run"]["error"]["code"] == expected_code[kind], body
    assert leaks(container) == NO_LEAKS


async def test_hanging_agent_is_cut_off_at_run_timeout_while_others_finish(
    settings: Settings, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Hanging runs end `timeout` at the run timeout; the healthy runs beside them complete
    without waiting for them."""
    install_chaos(container)
    timeout_s = 3.0
    container.settings.override(
        providers.Object(settings.model_copy(update={"run_timeout_s": timeout_s}))
    )
    users = [f"u{i}" for i in range(20)]
    threads = {u: await new_thread(client, auth(container, u)) for u in users}
    hanging = {u for i, u in enumerate(users) if i % 4 == 0}
    loop = asyncio.get_running_loop()
    finished_at: dict[str, float] = {}

    async def one(i: int, user: str) -> dict[str, Any]:
        content = f"[drill:hang] {i}" if user in hanging else sum_question(i)[0]
        body = await send(client, auth(container, user), threads[user], content)
        finished_at[user] = loop.time()
        return body

    started = loop.time()
    results = await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))

    for i, (user, body) in enumerate(zip(users, results, strict=True)):
        if user in hanging:
            assert body["run"]["error"]["code"] == "timeout"
            assert finished_at[user] - started >= timeout_s
        else:
            assert body["message"]["content"] == sum_question(i)[1]
            # Order, not speed: every healthy run was done before any hanging run was cut off.
            assert finished_at[user] < min(finished_at[h] for h in hanging)
    assert leaks(container) == NO_LEAKS


async def triage_started(client: httpx.AsyncClient, headers: dict[str, str], run_id: str) -> None:
    """Once the run's triage agent has started (a stored event): polled, bounded."""
    for _ in range(3000):
        events = (await client.get(f"/api/runs/{run_id}/events", headers=headers)).json()
        if any(e["type"] == "agent_started" for e in events["events"]):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the triage of run {run_id} never started")


async def test_waiting_runs_hold_no_database_connection(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """30 runs waiting on their agents at once hold no connection: the 15-connection pool is
    untouched and another user's run completes meanwhile."""
    install_chaos(container)
    settings = container.settings()
    assert settings.db_pool_size + settings.db_max_overflow < 30
    users = [auth(container, f"waiter{i}") for i in range(30)]
    threads = [await new_thread(client, headers) for headers in users]
    waiting = [
        asyncio.create_task(send(client, headers, thread_id, "[drill:hang] wait"))
        for headers, thread_id in zip(users, threads, strict=True)
    ]
    run_ids = [
        await wait_for_run(client, headers, thread_id)
        for headers, thread_id in zip(users, threads, strict=True)
    ]
    for headers, run_id in zip(users, run_ids, strict=True):
        await triage_started(client, headers, run_id)  # now it waits on its agent

    assert container.database().checked_out_connections() == 0
    other = auth(container, "other")
    body = await send(client, other, await new_thread(client, other), "what is 5 * 5?")
    assert body["message"]["content"] == "5 * 5 = 25"

    for headers, run_id in zip(users, run_ids, strict=True):
        await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    assert {(await task)["run"]["status"] for task in waiting} == {"cancelled"}
    assert leaks(container) == NO_LEAKS
