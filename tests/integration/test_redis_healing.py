"""The Redis broker heals: whatever stops its reader (a killed connection, Redis unreachable
for a while, a bug in a callback, a subscriber that gave up), it reads again on a new
connection, still hears cancels, and tells its subscriptions that they may have missed events.

Two ``RedisBroker`` instances in one process stand for two workers; each test uses channels of
its own, so parallel runs on one Redis do not meet. Needs Redis (``ISOCHAT_TEST_REDIS_URL``);
skipped, saying why, when it cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from src.runs.domain import Event
from src.services.broker import Frame, Subscription
from src.services.redis_broker import GAP_MESSAGE, RedisBroker, gap_frame
from tests.helpers import REDIS_TIMEOUT_S, reachable_redis

pytestmark = pytest.mark.redis

# Bounds that only turn a hang into a failure; every wait ends on a condition long before.
WITHIN_S = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class Names:
    prefix: str  # of this test's channels
    a: str  # Redis client names of worker A's connections
    b: str


@pytest.fixture
async def redis_url() -> str:
    return await reachable_redis()


@pytest.fixture
def names() -> Names:
    tag = f"isochat-test-{uuid.uuid4().hex[:8]}"
    return Names(prefix=f"{tag}:", a=f"{tag}-a", b=f"{tag}-b")


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def worker_a(redis_url: str, names: Names) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(
        redis_url, timeout_s=REDIS_TIMEOUT_S, prefix=names.prefix, client_name=names.a
    )
    yield broker
    await broker.aclose()


@pytest.fixture
async def worker_b(redis_url: str, names: Names) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(
        redis_url, timeout_s=REDIS_TIMEOUT_S, prefix=names.prefix, client_name=names.b
    )
    yield broker
    await broker.aclose()


def event(seq: int) -> Event:
    return Event(
        type="agent_thinking", run_id="run-1", thread_id="thread-1", seq=seq,
        ts=datetime.now(UTC), agent="math", data={"text": f"step {seq}"},
    )  # fmt: skip


async def within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(WITHIN_S):
        return await awaitable


async def frames_until(subscription: Subscription, done: Callable[[Frame], bool]) -> list[Frame]:
    """Frames received until one satisfies ``done`` (the last one)."""
    frames: list[Frame] = []
    async with asyncio.timeout(WITHIN_S):
        while not frames or not done(frames[-1]):
            frames.append(await subscription.frames.get())
    return frames


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Polls ``condition``, for a state of Redis that sends no event when it changes."""
    async with asyncio.timeout(WITHIN_S):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.01)


async def subscribed(admin: Redis, channel: str, *, count: int) -> bool:
    """Whether ``count`` connections are subscribed to ``channel``."""
    counts: list[tuple[bytes | str, int]] = await admin.pubsub_numsub(channel)
    return counts[0][1] == count


async def pubsub_client_ids(admin: Redis, name: str) -> list[str]:
    clients: list[dict[str, Any]] = await admin.client_list(_type="pubsub")
    return [client["id"] for client in clients if client["name"] == name]


async def publish_steadily(broker: RedisBroker, user_id: str) -> None:
    for seq in itertools.count(1):
        await broker.publish(user_id, event(seq))
        await asyncio.sleep(0.005)  # paces the traffic; nothing waits on it


async def test_a_killed_pubsub_connection_is_replaced_and_subscribers_are_told_of_the_gap(
    worker_a: RedisBroker, worker_b: RedisBroker, admin: Redis, names: Names
) -> None:
    """CLIENT KILL of worker A's pub/sub connection while events flow: A reads again on a new
    connection, the subscription gets a `gap` frame then the events published after it, in
    order, and a cancel asked by worker B is still heard by A."""
    cancels: asyncio.Queue[str] = asyncio.Queue()
    await worker_a.listen_for_cancels(cancels.put_nowait)
    alice = await worker_a.subscribe("alice", max_pending=10_000)
    await until(lambda: subscribed(admin, names.prefix + "!cancel", count=1))
    publishing = asyncio.create_task(publish_steadily(worker_b, "alice"))
    try:
        before = await frames_until(alice, lambda frame: frame.get("seq", 0) >= 3)
        [killed] = await pubsub_client_ids(admin, names.a)
        await admin.client_kill_filter(_id=killed)
        gap = await frames_until(alice, lambda frame: frame["type"] == "gap")
        after = await frames_until(alice, lambda frame: frame.get("seq", 0) > before[-1]["seq"] + 3)
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing

    assert gap[-1] == {"type": "gap", "message": GAP_MESSAGE}
    seqs = [frame["seq"] for frame in before + gap[:-1] + after]
    assert seqs == sorted(set(seqs))  # in order, none twice; the ones missed are replayable
    [replacement] = await pubsub_client_ids(admin, names.a)
    assert replacement != killed
    await worker_b.request_cancel("run-9")
    assert await within(cancels.get()) == "run-9"


async def test_a_subscribe_cancelled_while_the_reader_is_busy_stops_nothing(
    worker_a: RedisBroker, worker_b: RedisBroker, admin: Redis, names: Names
) -> None:
    """A subscribe whose caller is cancelled before the reader (busy reading) answers it: the
    reader lives on, later subscribes and deliveries work, cancels are still heard, and the
    abandoned channel is left unsubscribed."""
    cancels: asyncio.Queue[str] = asyncio.Queue()
    await worker_a.listen_for_cancels(cancels.put_nowait)
    await worker_a.subscribe("alice", max_pending=100)  # the reader is up and reading
    abandoned = asyncio.create_task(worker_a.subscribe("bob", max_pending=100))
    await asyncio.sleep(0)  # one step: it asks the reader, which needs a round trip to answer
    assert not abandoned.done()
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned

    carol = await within(worker_a.subscribe("carol", max_pending=100))
    await worker_b.publish("carol", event(1))
    assert (await within(carol.frames.get()))["seq"] == 1
    await worker_b.request_cancel("run-1")
    assert await within(cancels.get()) == "run-1"
    assert worker_a.subscriber_count("bob") == 0
    await until(lambda: subscribed(admin, names.prefix + "bob", count=0))


async def test_an_exception_in_the_reader_restarts_it(
    worker_a: RedisBroker,
    worker_b: RedisBroker,
    admin: Redis,
    names: Names,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cancel handler that raises inside the reader: the failure is logged once, the reader
    starts again, its subscriptions get a `gap` frame, and the next cancel and event arrive."""
    heard: asyncio.Queue[str] = asyncio.Queue()

    def on_cancel(run_id: str) -> None:
        heard.put_nowait(run_id)
        if run_id == "run-bad":
            raise RuntimeError("a cancel handler failed")

    await worker_a.listen_for_cancels(on_cancel)
    alice = await worker_a.subscribe("alice", max_pending=100)
    await until(lambda: subscribed(admin, names.prefix + "!cancel", count=1))
    await worker_b.request_cancel("run-bad")
    assert await within(heard.get()) == "run-bad"
    assert await within(alice.frames.get()) == gap_frame()

    await worker_b.request_cancel("run-good")
    assert await within(heard.get()) == "run-good"
    await worker_b.publish("alice", event(1))
    assert (await within(alice.frames.get()))["seq"] == 1
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]  # logged once
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], RuntimeError)


async def test_the_last_unsubscribe_drops_the_channel(
    worker_a: RedisBroker, admin: Redis, names: Names
) -> None:
    """Two sockets of one user share one channel; it is dropped when the last one leaves."""
    first = await worker_a.subscribe("alice", max_pending=100)
    second = await worker_a.subscribe("alice", max_pending=100)
    assert await subscribed(admin, names.prefix + "alice", count=1)
    await worker_a.unsubscribe(first)
    await worker_a.unsubscribe(second)
    await until(lambda: subscribed(admin, names.prefix + "alice", count=0))


async def test_a_broker_heals_once_redis_is_reachable_again(
    redis_url: str, worker_b: RedisBroker, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis unreachable for a while (through a relay the test cuts): a subscribe fails instead
    of hanging, listening for cancels does not fail, one warning is logged however many retries;
    once Redis is back the subscription gets a `gap` frame, then events and cancels arrive."""
    async with Relay(redis_url) as relay:
        worker_a = RedisBroker(
            relay.url, timeout_s=REDIS_TIMEOUT_S, prefix=names.prefix, client_name=names.a
        )
        try:
            alice = await worker_a.subscribe("alice", max_pending=100)
            await relay.cut()
            cancels: asyncio.Queue[str] = asyncio.Queue()
            await worker_a.listen_for_cancels(cancels.put_nowait)
            with pytest.raises(RedisError):
                await within(worker_a.subscribe("bob", max_pending=100))
            await relay.restore()
            assert await within(alice.frames.get()) == gap_frame()

            await worker_b.publish("alice", event(1))
            assert (await within(alice.frames.get()))["seq"] == 1
            await worker_b.request_cancel("run-1")
            assert await within(cancels.get()) == "run-1"
        finally:
            await worker_a.aclose()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings


class Relay:
    """A TCP relay to Redis that the test can cut (every connection through it closed, new ones
    refused) and restore on the same port: Redis unreachable for one broker only."""

    def __init__(self, redis_url: str) -> None:
        target = urlsplit(redis_url)
        self._target = (target.hostname or "127.0.0.1", target.port or 6379)
        self._path = target.path
        self._port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}{self._path}"

    async def __aenter__(self) -> Relay:
        await self.restore()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.cut()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _connect(self, client_in: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            redis_in, redis = await asyncio.open_connection(*self._target)
            await asyncio.gather(
                _pipe(client_in, redis), _pipe(redis_in, client), return_exceptions=True
            )
        except (OSError, asyncio.CancelledError):
            pass  # cut: the broker sees its connection reset
        finally:
            client.transport.abort()
            self._pipes.discard(task)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy one way until either side closes, then close both (the other pipe then ends)."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.transport.abort()
