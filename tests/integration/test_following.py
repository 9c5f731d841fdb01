"""Following runs when the live stream loses events: a socket still gets every seq of its runs
once, in order, and never a `gap` frame; the missed events come from the store.

Needs Redis (``ISOCHAT_TEST_REDIS_URL``, default the local one); skipped, saying why, without.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers
from redis.asyncio import Redis

from src.container import AppContainer, build_container, shutdown
from src.runs.domain import FINAL_EVENT_TYPES
from src.services.database.migrations import upgrade_to_head
from src.services.redis_broker import RedisBroker
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import hold_triage
from tests.helpers import (
    NO_LEAKS,
    REDIS_TIMEOUT_S,
    leaks_once_settled,
    reachable_redis,
    serving,
    stored_events,
)
from tests.ws import open_socket

pytestmark = pytest.mark.redis

WITHIN_S = 60.0  # only guards against a hang
# The broker's reader waits this long before it reads again once its connection is killed:
# the run ends meanwhile, so its last events are published while nobody listens.
AWAY_S = 3.0


async def within(awaitable: Any) -> Any:
    async with asyncio.timeout(WITHIN_S):
        return await awaitable


def stored(settings: Settings, run_id: str) -> list[tuple[int, str]]:
    return stored_events(Path(settings.database_url.split("///", 1)[1]), run_id)


@pytest.fixture
async def container(settings: Settings) -> AsyncIterator[AppContainer]:
    """A host whose followers never look at the store on their own (no keep-alive in the
    test's time): what they fill, they fill because the broker said it lost events."""
    quiet = settings.model_copy(update={"sse_keepalive_s": 3600.0})
    await asyncio.to_thread(upgrade_to_head, quiet.database_url)
    container = build_container(quiet)
    yield container
    await shutdown(container)


async def ended(settings: Settings, run_id: str) -> None:
    """Once the run's final event is stored (polled: nothing tells a test that from outside
    while the broker is away)."""
    while True:
        if any(kind in FINAL_EVENT_TYPES for _, kind in stored(settings, run_id)):
            return
        await asyncio.sleep(0.01)


async def test_a_socket_gets_every_seq_once_when_the_pubsub_connection_is_killed_mid_run(
    container: AppContainer, settings: Settings
) -> None:
    """CLIENT KILL TYPE pubsub while a run is held half-way; the run then ends while the
    broker's reader is away, so its last events reach Redis with nobody subscribed. The socket
    that started it receives every seq exactly once, in order, as stored, and no `gap` frame."""
    redis_url = await reachable_redis()
    tag = f"isochat-test-{uuid.uuid4().hex[:8]}"
    container.broker.override(
        providers.Singleton(
            RedisBroker,
            redis_url,
            timeout_s=REDIS_TIMEOUT_S,
            prefix=f"{tag}:",
            client_name=tag,
            restart_min_s=AWAY_S,
        )
    )
    gate = hold_triage(container)
    admin = Redis.from_url(redis_url)
    token = container.tokens().issue("alice")
    try:
        async with (
            serving(create_app(container)) as address,
            httpx.AsyncClient(base_url=f"http://{address}") as client,
            open_socket(address, token=token) as socket,
        ):
            headers = {"Authorization": f"Bearer {token}"}
            created = await client.post("/api/threads", json={}, headers=headers)
            thread_id = created.json()["id"]
            await socket.send({"type": "chat", "thread_id": thread_id, "content": "what is 2 + 5?"})
            await within(gate.reached.wait())
            before = await within(socket.until(lambda f: f.get("type") == "agent_started"))
            run_id = before["run_id"]

            # This broker's pub/sub connection only: other test runs may share the Redis.
            listening = await admin.client_list(_type="pubsub")
            [reader] = [c["id"] for c in listening if c["name"] == tag]
            assert await admin.client_kill_filter(_id=reader) == 1
            gate.opened.set()
            await within(ended(settings, run_id))  # while the reader is away
            channel = f"{tag}:alice"
            [(_, listeners)] = await admin.pubsub_numsub(channel)
            assert listeners == 0  # its last events went out with nobody listening

            await within(socket.until(lambda f: f.get("type") in FINAL_EVENT_TYPES))
    finally:
        gate.opened.set()
        await admin.aclose()

    assert all(frame["type"] != "gap" for frame in socket.received)
    mine = [(f["seq"], f["type"]) for f in socket.received if f.get("run_id") == run_id]
    assert mine == stored(settings, run_id)
    assert [seq for seq, _ in mine] == list(range(1, len(mine) + 1))
    assert await leaks_once_settled(container) == NO_LEAKS | {"ws_connections": 0}
