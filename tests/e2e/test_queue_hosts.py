"""Queued runs across two real `isochat serve` hosts on one PostgreSQL database and one Redis:
messages enqueued at once through both hosts run one at a time in the order they were stored,
and a queue outlives the host that held its running run.

Needs PostgreSQL and Redis, as tests/e2e/test_hosts.py; skipped, saying why, without them."""

from __future__ import annotations

import asyncio
import itertools
import signal
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.processes import (
    BOUND_S,
    POLL_S,
    Processes,
    exit_code,
    hosts_env,
    login,
    start_both,
    until,
    until_model_holds,
)
from tests.helpers import asyncpg_url, new_thread, reachable_redis
from tests.llm_server import FakeModelServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

LEASE_S = 2
MESSAGES = 20
ACTIVE = "status IN ('running', 'awaiting_approval')"


@pytest.fixture
async def host_env(database: str, model: FakeModelServer) -> dict[str, str]:
    env = hosts_env(model, database=database, broker=await reachable_redis(), lease_s=LEASE_S)
    return env | {"ISOCHAT_MAX_QUEUED_RUNS": str(MESSAGES)}


class ActiveRunsWatch:
    """Reads, from the database, how many runs of a thread are active, over and over, while
    the test goes on: the most it ever saw, and how many reads it made."""

    def __init__(self, database: str, thread_id: str) -> None:
        self._database = database
        self._thread_id = thread_id
        self.most = 0
        self.reads = 0
        self.saw_one = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ActiveRunsWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _watch(self) -> None:
        db = await asyncpg.connect(asyncpg_url(self._database))
        try:
            while not self._stop.is_set():
                active = await db.fetchval(
                    f"SELECT count(*) FROM runs WHERE thread_id = $1 AND {ACTIVE}",
                    self._thread_id,
                )
                self.most = max(self.most, int(active))
                self.saw_one = self.saw_one or active == 1
                self.reads += 1
                await asyncio.sleep(0.005)
        finally:
            await db.close()


async def thread_of(http: httpx.AsyncClient, headers: dict[str, str], thread_id: str) -> Any:
    response = await http.get(f"/api/threads/{thread_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def enqueue(
    http: httpx.AsyncClient, headers: dict[str, str], thread_id: str, content: str
) -> dict[str, Any]:
    response = await http.post(
        f"/api/threads/{thread_id}/runs",
        json={"content": content, "multitask": "enqueue"},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()["run"]
    return run


async def ended(http: httpx.AsyncClient, headers: dict[str, str], run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def check() -> bool:
        found.update((await http.get(f"/api/runs/{run_id}", headers=headers)).json())
        return found.get("status") in ("completed", "failed", "cancelled")

    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while not await check():
        assert loop.time() < deadline, f"run {run_id} did not end: {found}"
        await asyncio.sleep(POLL_S)
    return found


async def first_event_ts(http: httpx.AsyncClient, headers: dict[str, str], run_id: str) -> str:
    response = await http.get(f"/api/runs/{run_id}/events", headers=headers)
    events = response.json()["events"]
    assert events[0]["type"] == "run_started", events[:2]
    return str(events[0]["ts"])


async def assert_ran_one_after_another(
    http: httpx.AsyncClient, headers: dict[str, str], runs: list[dict[str, Any]]
) -> None:
    """Each run started (its ``run_started``) after the one before it had ended."""
    for before, after in itertools.pairwise(runs):
        assert before["finished_at"] <= await first_event_ts(http, headers, after["id"])


async def test_messages_enqueued_at_once_through_two_hosts_run_one_at_a_time_in_order(
    database: str, model: FakeModelServer, host_env: dict[str, str], hosts: Processes
) -> None:
    """A run holds the thread on host A; 20 messages are enqueued on it at once, half through
    A, half through B. All 20 are stored queued; once the held run ends, they run one at a time
    (never two active runs of the thread, read from the database all along), in the order they
    were stored, each completed with its own answer."""
    a, b = await start_both(hosts, host_env)
    tag = uuid.uuid4().hex
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=BOUND_S) as on_b,
    ):
        _, headers = await login(on_a, "queue")
        thread_id = await new_thread(on_a, headers)
        async with ActiveRunsWatch(database, thread_id) as watch:
            held = await enqueue(on_a, headers, thread_id, f"held {tag} [answer:hang]")
            assert held["status"] == "running"
            await until_model_holds(model, f"held {tag}")
            sent = await asyncio.gather(
                *(
                    enqueue(on_a if n % 2 else on_b, headers, thread_id, f"message {n} {tag}")
                    for n in range(MESSAGES)
                )
            )
            assert {run["status"] for run in sent} == {"queued"}
            stored_order = (await thread_of(on_b, headers, thread_id))["queued_run_ids"]
            assert sorted(stored_order) == sorted(run["id"] for run in sent)

            model.release()
            runs = [await ended(on_b, headers, run_id) for run_id in stored_order]
        assert watch.most == 1 and watch.saw_one and watch.reads > MESSAGES, vars(watch)

        assert [run["status"] for run in runs] == ["completed"] * MESSAGES
        await assert_ran_one_after_another(on_b, headers, runs)
        contents = {run["id"]: n for n, run in enumerate(sent)}
        messages = (
            await on_a.get(f"/api/threads/{thread_id}/messages?limit=100", headers=headers)
        ).json()["messages"]
        answers = [m for m in messages if m["role"] == "assistant" and m["run_id"] != held["id"]]
        assert [m["run_id"] for m in answers] == stored_order
        for answer in answers:
            assert answer["content"] == f"Model says: message {contents[answer['run_id']]} {tag}"


async def test_a_queue_moves_on_to_the_surviving_host_when_its_host_is_killed(
    model: FakeModelServer, host_env: dict[str, str], hosts: Processes
) -> None:
    """Host A runs a message (held on the model) with three queued behind it; SIGKILL A. Once
    A's lease expires, B's sweep ends the running run `failed` / `interrupted`, and the three
    queued runs then run on B, in order, each completed."""
    a, b = await start_both(hosts, host_env)
    tag = uuid.uuid4().hex
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=BOUND_S) as on_b,
    ):
        _, headers = await login(on_b, "orphans")
        thread_id = await new_thread(on_b, headers)
        held = await enqueue(on_a, headers, thread_id, f"doomed {tag} [answer:hang]")
        await until_model_holds(model, f"doomed {tag}")
        queued = [await enqueue(on_a, headers, thread_id, f"next {n} {tag}") for n in range(3)]
        assert [run["status"] for run in queued] == ["queued"] * 3

        a.process.kill()
        assert await exit_code(a) == -signal.SIGKILL

        interrupted = await ended(on_b, headers, held["id"])
        assert interrupted["status"] == "failed", interrupted
        assert interrupted["error"]["code"] == "interrupted"
        runs = [await ended(on_b, headers, run["id"]) for run in queued]
        assert [run["status"] for run in runs] == ["completed"] * 3
        await assert_ran_one_after_another(on_b, headers, [interrupted, *runs])
        await until(lambda: "ended as interrupted" in b.log.read_text(), "B's log of the sweep")
    assert b.process.poll() is None
