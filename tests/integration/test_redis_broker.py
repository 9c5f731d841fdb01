"""Events across workers through Redis: a run on one worker streams to its owner's socket on
another, and nobody else's.

Needs Redis: ``ISOCHAT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); each test uses
channels of its own. Skipped, saying why, when Redis cannot be reached.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from dependency_injector import providers
from redis.asyncio import Redis
from redis.exceptions import RedisError

from src.container import AppContainer, build_container, shutdown
from src.services.redis_broker import RedisBroker
from src.settings import Settings
from src.web.app import create_app
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send, serving
from tests.ws import open_socket

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("ISOCHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_url() -> str:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
def prefix() -> str:
    return f"isochat-test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def worker_a(container: AppContainer, redis_url: str, prefix: str) -> AppContainer:
    """The `container` fixture, as one worker: its broker is Redis."""
    container.broker.override(providers.Singleton(RedisBroker, redis_url, prefix=prefix))
    return container


@pytest.fixture
async def worker_b(settings: Settings, redis_url: str, prefix: str) -> AsyncIterator[str]:
    """A second worker on the same database and Redis, served on a real port."""
    other = build_container(settings)
    other.broker.override(providers.Singleton(RedisBroker, redis_url, prefix=prefix))
    async with serving(create_app(other)) as address:
        yield address
    await shutdown(other)


async def test_a_run_on_one_worker_streams_to_its_owner_on_another(
    worker_a: AppContainer, worker_b: str, client: httpx.AsyncClient
) -> None:
    """A message sent over HTTP to worker A: the owner's socket on worker B receives the run's
    events in seq order, equal to the stored ones; another user's socket there gets nothing."""
    headers = auth(worker_a, "alice")
    thread_id = await new_thread(client, headers)
    async with (
        open_socket(worker_b, token=worker_a.tokens().issue("alice")) as mine,
        open_socket(worker_b, token=worker_a.tokens().issue("bob")) as theirs,
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


async def test_without_redis_runs_complete_and_readiness_names_the_broker(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Redis gone: runs still complete and their events are stored (replayable); readiness is
    503 naming the broker."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    container.broker.override(providers.Singleton(RedisBroker, f"redis://127.0.0.1:{closed}/0"))
    headers = auth(container, "alice")
    body = await send(client, headers, await new_thread(client, headers), "what is 1 + 2?")
    assert body["message"]["content"] == "1 + 2 = 3"
    events = await client.get(f"/api/runs/{body['run']['id']}/events", headers=headers)
    assert events.json()["events"][-1]["type"] == "run_completed"
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["broker"] == "unavailable"
