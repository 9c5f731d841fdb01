"""Every part of isochat that uses Redis gets its client from one factory
(``src/services/redis_client.py``): one client library, one timeout (``ISOCHAT_REDIS_TIMEOUT_S``),
and for the broker's pub/sub a connection that never reconnects behind its reader's back."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from src.container import build_container, shutdown
from src.services.auth import TicketCheckUnavailable
from src.services.redis_client import redis_client
from src.settings import Settings
from tests.helpers import REDIS_TIMEOUT_S, reachable_redis

# A bound against a hang (a Redis call that never gives up), not a timing.
HANG_BOUND_S = 30


@asynccontextmanager
async def silent_redis() -> AsyncIterator[str]:
    """The URL of a "Redis" that accepts connections and never answers: a hung Redis."""
    held: set[asyncio.Task[None]] = set()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        held.add(task)
        try:
            while await reader.read(65536):
                pass  # whatever is asked, no answer
        finally:
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await server.wait_closed()


async def test_with_a_hung_redis_every_part_gives_up_after_the_redis_timeout(
    tmp_path: Path,
) -> None:
    """With a Redis that never answers, each call gives up after ISOCHAT_REDIS_TIMEOUT_S
    instead of hanging: the limits let the request and the socket through (fail open), the
    ticket is refused for now (fail closed), and a publish fails (events stay stored)."""
    async with silent_redis() as url:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/hung.db",
            broker_url=url,
            redis_timeout_s=0.1,
            _env_file=None,
        )
        container = build_container(settings)
        try:
            async with asyncio.timeout(HANG_BOUND_S):
                await container.rate_limiter().check("alice")
                assert await container.socket_counter().admit("alice", "s1", limit=1)
                tickets = container.ws_tickets()
                with pytest.raises(TicketCheckUnavailable):
                    await tickets.redeem(tickets.issue("alice"))
                with pytest.raises(RedisError):
                    await container.broker().request_cancel("run-1")
        finally:
            await shutdown(container)


async def pubsub_client_ids(admin: Redis, name: str) -> list[str]:
    clients: list[dict[str, Any]] = await admin.client_list(_type="pubsub")
    return [client["id"] for client in clients if client["name"] == name]


async def until_subscribed(admin: Redis, channel: str) -> None:
    """Polls Redis: a subscription sends nothing the test could wait on."""
    async with asyncio.timeout(HANG_BOUND_S):
        while True:
            if (await admin.pubsub_numsub(channel))[0][1] == 1:
                return
            await asyncio.sleep(0.01)


async def read_on(pubsub: PubSub) -> None:
    """Read messages until a read raises."""
    while True:
        await pubsub.get_message(timeout=0.05)


@pytest.mark.redis
async def test_a_client_without_reconnects_reports_a_lost_subscription() -> None:
    """Its pub/sub connection killed, a client made with ``reconnect=False`` raises at the next
    read instead of subscribing again by itself: its owner (the broker's reader) learns that
    events may have been missed, and says so to its subscribers."""
    url = await reachable_redis()
    name = f"isochat-test-{uuid.uuid4().hex[:8]}"
    channel = f"{name}:events"
    client = redis_client(url, timeout_s=REDIS_TIMEOUT_S, client_name=name, reconnect=False)
    admin: Redis = Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
        await until_subscribed(admin, channel)
        [killed] = await pubsub_client_ids(admin, name)
        await admin.client_kill_filter(_id=killed)
        async with asyncio.timeout(HANG_BOUND_S):
            with pytest.raises(RedisConnectionError):
                await read_on(pubsub)
        assert await pubsub_client_ids(admin, name) == []  # not subscribed again behind its back
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
        await admin.aclose()
