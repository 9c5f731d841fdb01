"""Events across workers through Redis: a run on one worker streams to its owner's socket on
another, and nobody else's.

Needs Redis: ``ISOCHAT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); each test uses
channels of its own. Skipped, saying why, when Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from dependency_injector import providers

from src.container import AppContainer, build_container, shutdown, startup
from src.services.redis_broker import RedisBroker
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import install_chaos
from tests.helpers import (
    NO_LEAKS,
    REDIS_TIMEOUT_S,
    auth,
    leaks,
    new_thread,
    orphan_run,
    reachable_redis,
    send,
    serving,
    wait_for_run,
)
from tests.ws import open_socket

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_url() -> str:
    return await reachable_redis()


@pytest.fixture
def prefix() -> str:
    return f"isochat-test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def worker_a(container: AppContainer, redis_url: str, prefix: str) -> AppContainer:
    """The `container` fixture, as one worker: its broker is Redis."""
    container.broker.override(
        providers.Singleton(RedisBroker, redis_url, timeout_s=REDIS_TIMEOUT_S, prefix=prefix)
    )
    await startup(container)
    return container


@dataclass
class Worker:
    address: str
    container: AppContainer


@pytest.fixture
async def worker_b(settings: Settings, redis_url: str, prefix: str) -> AsyncIterator[Worker]:
    """A second worker on the same database and Redis, served on a real port."""
    other = build_container(settings)
    other.broker.override(
        providers.Singleton(RedisBroker, redis_url, timeout_s=REDIS_TIMEOUT_S, prefix=prefix)
    )
    install_chaos(other)
    await startup(other)
    async with serving(create_app(other)) as address:
        yield Worker(address, other)
    await shutdown(other)


async def test_a_run_on_one_worker_streams_to_its_owner_on_another(
    worker_a: AppContainer, worker_b: Worker, client: httpx.AsyncClient
) -> None:
    """A message sent over HTTP to worker A: the owner's socket on worker B receives the run's
    events in seq order, equal to the stored ones; another user's socket there gets nothing."""
    headers = auth(worker_a, "alice")
    thread_id = await new_thread(client, headers)
    async with (
        open_socket(worker_b.address, token=worker_a.tokens().issue("alice")) as mine,
        open_socket(worker_b.address, token=worker_a.tokens().issue("bob")) as theirs,
    ):
        for ws in (mine, theirs):
            await ws.send({"type": "ping"})
            assert await ws.recv() == {"type": "pong"}
        body = await send(client, headers, thread_id, "what is 20 + 22?")
        frames = await mine.until_runs_end(1)
        await theirs.send({"type": "ping"})
        assert await theirs.recv() == {"type": "pong"}  # and nothing before it

    live = [f for f in frames if "seq" in f]
    stored = await client.get(f"/api/runs/{body['run']['id']}/events", headers=headers)
    assert live == stored.json()["events"]
    assert live[-1]["data"]["message"]["content"] == "20 + 22 = 42"
    assert leaks(worker_a) == NO_LEAKS


async def test_a_cancel_on_one_worker_stops_a_run_on_another(
    worker_a: AppContainer, worker_b: Worker, client: httpx.AsyncClient
) -> None:
    """POST /api/runs/{id}/cancel on worker A reaches the run's task on worker B: B records the
    one `run_cancelled` (A does not end it behind B's back) and B's request answers it."""
    headers = auth(worker_a, "alice")
    thread_id = await new_thread(client, headers)
    async with httpx.AsyncClient(base_url=f"http://{worker_b.address}", timeout=30) as on_b:
        running = asyncio.create_task(send(on_b, headers, thread_id, "[drill:hang] on B"))
        run_id = await wait_for_run(client, headers, thread_id)
        cancelled = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
        assert cancelled.status_code == 202
        assert cancelled.json()["run"]["status"] == "cancelled"
        assert (await running)["run"]["status"] == "cancelled"

    def cancelled_runs(worker: AppContainer) -> float:
        return worker.metrics().value("isochat_runs_total", {"status": "cancelled"})

    assert cancelled_runs(worker_b.container) == 1  # B's supervisor wrote the end
    assert cancelled_runs(worker_a) == 0
    events = (await client.get(f"/api/runs/{run_id}/events", headers=headers)).json()["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events].count("run_cancelled") == 1


async def test_a_run_nobody_executes_is_still_cancelled(
    worker_a: AppContainer, client: httpx.AsyncClient
) -> None:
    """A run left `running` by a dead worker: no worker answers the cancel, so it is ended in
    the database after the wait."""
    headers = auth(worker_a, "alice")
    thread_id = await new_thread(client, headers)
    run_id = await orphan_run(worker_a, thread_id=thread_id, user_id="alice")
    response = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    assert response.json()["run"]["status"] == "cancelled"
    events = (await client.get(f"/api/runs/{run_id}/events", headers=headers)).json()["events"]
    assert [(e["seq"], e["type"]) for e in events] == [(1, "run_cancelled")]


async def test_without_redis_runs_complete_and_readiness_names_the_broker(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Redis gone: the worker starts, runs still complete and their events are stored
    (replayable), readiness is 503 naming the broker, and cancels still work."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    unreachable = f"redis://127.0.0.1:{closed}/0"
    container.broker.override(
        providers.Singleton(RedisBroker, unreachable, timeout_s=REDIS_TIMEOUT_S)
    )
    await startup(container)  # starts all the same: cancels are heard once Redis is back
    headers = auth(container, "alice")
    body = await send(client, headers, await new_thread(client, headers), "what is 1 + 2?")
    assert body["message"]["content"] == "1 + 2 = 3"
    events = await client.get(f"/api/runs/{body['run']['id']}/events", headers=headers)
    assert events.json()["events"][-1]["type"] == "run_completed"
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["broker"] == "unavailable"
    # A cancel cannot be asked of the other workers: the run is ended in the database.
    thread_id = await new_thread(client, headers)
    run_id = await orphan_run(container, thread_id=thread_id, user_id="alice")
    cancelled = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    assert cancelled.json()["run"]["status"] == "cancelled"
