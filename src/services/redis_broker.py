"""Events fanned out through Redis pub/sub, so that a socket on any worker (or host) gets its
user's events, whichever worker runs them.

One Redis channel per user with open sockets in this process; one pub/sub connection per
process, read by one task that hands each event to the local subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from src.services.broker import InProcessBroker, Subscription
from src.services.domain import Event

log = logging.getLogger(__name__)

# A publish that cannot reach Redis fails fast: the event is stored, the run goes on.
SOCKET_TIMEOUT_S = 2.0
# How long the reader waits for an event before it looks for new (un)subscriptions.
POLL_S = 0.05


class RedisBroker:
    def __init__(self, url: str, *, prefix: str = "isochat:events:") -> None:
        self._redis: Redis = Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._prefix = prefix
        self._local = InProcessBroker()
        # (un)subscriptions for the reader task: it alone uses the pub/sub connection, because
        # a subscribe sent while another task waits on that connection wedges it.
        self._commands: asyncio.Queue[_Command] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    def _channel(self, user_id: str) -> str:
        return self._prefix + user_id

    async def publish(self, user_id: str, event: Event) -> None:
        await self._redis.publish(self._channel(user_id), json.dumps(event.to_json()))

    async def subscribe(self, user_id: str, *, max_pending: int) -> Subscription:
        subscription = self._local.add(user_id, max_pending=max_pending)
        if self._local.subscriber_count(user_id) == 1:
            try:
                await self._ask("subscribe", self._channel(user_id))
            except BaseException:
                self._local.remove(subscription)
                raise
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        self._local.remove(subscription)
        if self._local.subscriber_count(subscription.user_id) == 0:
            try:
                await self._ask("unsubscribe", self._channel(subscription.user_id))
            except RedisError as exc:
                log.warning("unsubscribing from Redis failed: %r", exc)

    def subscriber_count(self, user_id: str) -> int:
        return self._local.subscriber_count(user_id)

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    async def _ask(self, action: str, channel: str) -> None:
        done = asyncio.get_running_loop().create_future()
        self._commands.put_nowait(_Command(action, channel, done))
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        await done

    async def _read(self) -> None:
        """Apply (un)subscriptions and hand every event to this process's subscriptions, until
        shutdown. A lost connection is retried; redis-py subscribes again when it reconnects."""
        while True:
            if not self._pubsub.subscribed:
                await self._apply(await self._commands.get())  # nothing to read until then
            while not self._commands.empty():
                await self._apply(self._commands.get_nowait())
            try:
                message = await self._pubsub.get_message(timeout=POLL_S)
            except (RedisError, OSError) as exc:
                log.warning("reading events from Redis failed, retrying: %r", exc)
                await asyncio.sleep(1.0)
                continue
            if message is not None and message.get("type") == "message":
                self._deliver(message["channel"].decode(), message["data"])

    async def _apply(self, command: _Command) -> None:
        try:
            if command.action == "subscribe":
                await self._pubsub.subscribe(command.channel)
            else:
                await self._pubsub.unsubscribe(command.channel)
        except Exception as exc:
            command.done.set_exception(exc)
        else:
            command.done.set_result(None)

    def _deliver(self, channel: str, data: bytes) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            log.warning("an event on %s is not JSON; dropped", channel)
            return
        self._local.deliver(channel.removeprefix(self._prefix), frame)


@dataclass(frozen=True, slots=True)
class _Command:
    action: str  # "subscribe" | "unsubscribe"
    channel: str
    done: asyncio.Future[None]
