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
from collections.abc import Callable
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
RETRY_S = 1.0


class RedisBroker:
    def __init__(self, url: str, *, prefix: str = "isochat:events:") -> None:
        self._redis: Redis = Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._prefix = prefix
        # "!" never appears in a user id, so this channel cannot be a user's.
        self._cancel_channel = prefix + "!cancel"
        self._on_cancel: Callable[[str], None] | None = None
        self._hearing_cancels = False
        self._local = InProcessBroker()
        # (un)subscriptions for the reader task: it alone uses the pub/sub connection, because
        # a subscribe sent while another task waits on that connection wedges it.
        self._commands: asyncio.Queue[_Command] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._failing = False

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

    async def listen_for_cancels(self, on_cancel: Callable[[str], None]) -> None:
        """Never fails: the reader subscribes to the cancel channel as soon as Redis answers,
        so a worker started while Redis is down still hears cancels once it is back."""
        self._on_cancel = on_cancel
        self._start_reader()

    async def request_cancel(self, run_id: str) -> bool:
        await self._redis.publish(self._cancel_channel, run_id)
        return True

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
        self._start_reader()
        await done

    def _start_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        """Apply (un)subscriptions and hand every event to this process's subscriptions, until
        shutdown. While Redis is unreachable it retries every second; redis-py subscribes to
        the channels again when it reconnects."""
        while True:
            while not self._commands.empty():
                await self._apply(self._commands.get_nowait())
            if self._on_cancel is not None and not self._hearing_cancels:
                try:
                    await self._pubsub.subscribe(self._cancel_channel)
                    # Once is enough: redis-py subscribes again by itself after a reconnect.
                    self._hearing_cancels = True
                except (RedisError, OSError) as exc:
                    self._report(exc)
            if not self._pubsub.subscribed:
                # Nothing to read: wait for a command (and retry the cancel channel meanwhile).
                with contextlib.suppress(TimeoutError):
                    await self._apply(await asyncio.wait_for(self._commands.get(), RETRY_S))
                continue
            try:
                message = await self._pubsub.get_message(timeout=POLL_S)
            except (RedisError, OSError) as exc:
                self._report(exc)
                await asyncio.sleep(RETRY_S)
                continue
            if self._failing:
                log.info("reading events from Redis again")
                self._failing = False
            if message is not None and message.get("type") == "message":
                self._deliver(message["channel"].decode(), message["data"])

    def _report(self, exc: BaseException) -> None:
        """One warning when Redis goes away, not one a second while it stays away."""
        if not self._failing:
            log.warning("Redis is unreachable, retrying every %.0f s: %r", RETRY_S, exc)
            self._failing = True

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
        if channel == self._cancel_channel:
            if self._on_cancel is not None:
                self._on_cancel(data.decode())
            return
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
