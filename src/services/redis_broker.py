"""Events fanned out through Redis pub/sub, so that a socket on any worker (or host) gets its
user's events, whichever worker runs them.

One Redis channel per user with open sockets in this process, plus one channel for cancels; one
pub/sub connection per process, owned by one reader task that hands each event to the local
subscriptions. The reader is supervised: whatever stops it (a lost connection, a bug), it starts
again on a new connection after a back-off, subscribes again to every channel still wanted, and
offers every local subscription a `gap` frame, since events published meanwhile were missed.
Events stay stored: clients replay what they missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from src.runs.domain import Event
from src.services.broker import Frame, InProcessBroker, Subscription
from src.services.redis_client import redis_client

log = logging.getLogger(__name__)

# How long the reader waits for an event before it looks for new (un)subscriptions.
POLL_S = 0.05
# Pause before the reader starts again: doubles while it keeps failing, back to the minimum
# after a good read, so a dead Redis is not hammered and a blip costs little.
RESTART_MIN_S = 0.1
RESTART_MAX_S = 2.0
# Redis confirms a subscription within a round trip; no answer for this long means the
# connection is dead even if the socket does not say so.
CONFIRM_S = 10.0
GAP_MESSAGE = "live events may have been missed; fill them from the store"


def gap_frame() -> Frame:
    """What a subscription is offered when the reader may have missed events for it (its
    follower reads them from the store: ``src/runs/follower.py``; clients never see it)."""
    return {"type": "gap", "message": GAP_MESSAGE}


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        prefix: str = "isochat:events:",
        client_name: str = "isochat-events",
        restart_min_s: float = RESTART_MIN_S,
    ) -> None:
        """``timeout_s`` bounds each Redis call (``ISOCHAT_REDIS_TIMEOUT_S``): a publish that
        cannot reach Redis fails fast, the event is stored and the run goes on.
        ``client_name`` names this broker's connections in Redis's CLIENT LIST;
        ``restart_min_s`` is the reader's first pause before it starts again."""
        self._redis = redis_client(url, timeout_s=timeout_s, client_name=client_name)
        # The pub/sub connection must never reconnect behind the reader's back: redis-py would
        # subscribe again by itself, and the events published meanwhile would be lost without
        # anyone being told. Without reconnects, every loss reaches the reader.
        self._listener = redis_client(
            url, timeout_s=timeout_s, client_name=client_name, reconnect=False
        )
        self._prefix = prefix
        # "!" never appears in a user id, so this channel cannot be a user's.
        self._cancel_channel = prefix + "!cancel"
        self._on_cancel: Callable[[str], object] | None = None
        self._local = InProcessBroker()
        self._users: set[str] = set()  # those with a subscription in self._local
        # Requests for the reader task: it alone uses the pub/sub connection, because a
        # subscribe sent while another task waits on that connection wedges it.
        self._wake = asyncio.Event()
        self._waiting: list[asyncio.Future[None]] = []
        # Channels Redis has confirmed on the reader's current connection.
        self._subscribed: set[str] = set()
        self._pings = itertools.count()
        self._reader: asyncio.Task[None] | None = None
        self._restart_min_s = self._restart_s = restart_min_s
        self._failing = False
        self._closed = False

    def _channel(self, user_id: str) -> str:
        return self._prefix + user_id

    async def publish(self, user_id: str, event: Event) -> None:
        await self._redis.publish(self._channel(user_id), json.dumps(event.to_json()))

    async def subscribe(self, user_id: str, *, max_pending: int) -> Subscription:
        """Returns once Redis sends this user's events to this process; raises a RedisError
        when it cannot now."""
        subscription = self._local.add(user_id, max_pending=max_pending)
        self._users.add(user_id)
        if self._channel(user_id) in self._subscribed:
            return subscription
        try:
            await self._ask()
        except BaseException:
            # Failed, or the caller is gone: undo it, even if the reader subscribed meanwhile.
            self._remove(subscription)
            raise
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Returns at once: the reader drops the channel at its next turn if nobody in this
        process still follows that user."""
        self._remove(subscription)

    def subscriber_count(self, user_id: str) -> int:
        return self._local.subscriber_count(user_id)

    async def ping(self) -> None:
        await self._redis.ping()

    async def listen_for_cancels(self, on_cancel: Callable[[str], object]) -> None:
        """Never fails: the reader subscribes to the cancel channel as soon as Redis answers,
        so a worker started while Redis is down still hears cancels once it is back."""
        self._on_cancel = on_cancel
        self._request(None)

    async def request_cancel(self, run_id: str) -> bool:
        await self._redis.publish(self._cancel_channel, run_id)
        return True

    async def aclose(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        asked, self._waiting = self._waiting, []
        _answer(asked, RedisConnectionError("the event broker is closed"))
        await self._listener.aclose()
        await self._redis.aclose()

    def _remove(self, subscription: Subscription) -> None:
        self._local.remove(subscription)
        if self._local.subscriber_count(subscription.user_id) == 0:
            self._users.discard(subscription.user_id)
            self._request(None)

    async def _ask(self) -> None:
        """Wait until the reader has brought Redis in line with this process's subscriptions."""
        if self._closed:
            raise RedisConnectionError("the event broker is closed")
        done = asyncio.get_running_loop().create_future()
        self._request(done)
        await done

    def _request(self, done: asyncio.Future[None] | None) -> None:
        """Have the reader bring Redis in line with this process's subscriptions; ``done``, if
        any, is answered once it has (or could not)."""
        if done is not None:
            self._waiting.append(done)
        self._wake.set()
        if self._reader is None and not self._closed:
            self._reader = asyncio.create_task(self._read(), name="redis-broker-reader")

    async def _read(self) -> None:
        """Supervise the reader until shutdown: whatever stops it, start it again on a new
        connection (a used one may hold half a reply) after the back-off."""
        recovering = False
        while True:
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                await self._serve(pubsub, recovering=recovering)
            except Exception as exc:
                self._report(exc)
            finally:
                self._subscribed = set()
                await _discard(pubsub)
            recovering = True
            await asyncio.sleep(self._restart_s)
            self._restart_s = min(2 * self._restart_s, RESTART_MAX_S)

    async def _serve(self, pubsub: PubSub, *, recovering: bool) -> None:
        """Subscribe to every channel wanted, then hand events over and follow (un)subscriptions
        until something fails."""
        await self._sync(pubsub)
        if recovering:
            self._offer_gap()
        while True:
            if self._wake.is_set():
                await self._sync(pubsub)
            if not self._subscribed:
                await self._wake.wait()  # nothing to read until someone subscribes
                continue
            # A read after every sync: a stream of (un)subscriptions cannot starve the events.
            self._handle(await pubsub.get_message(timeout=POLL_S))
            self._restart_s = self._restart_min_s

    async def _sync(self, pubsub: PubSub) -> None:
        """Bring the connection in line with what this process wants, then answer whoever asked
        before: once Redis has confirmed, or with the error that stopped it."""
        self._wake.clear()
        asked, self._waiting = self._waiting, []
        try:
            await self._align(pubsub)
        except BaseException as exc:
            _answer(asked, exc)
            raise
        _answer(asked, None)

    async def _align(self, pubsub: PubSub) -> None:
        wanted = {self._channel(user_id) for user_id in self._users}
        if self._on_cancel is not None:
            wanted.add(self._cancel_channel)
        gone = self._subscribed - wanted
        new = wanted - self._subscribed
        if gone:
            # Forgotten first: a subscribe arriving meanwhile must wait for the reader.
            self._subscribed -= gone
            await pubsub.unsubscribe(*gone)
        if new:
            await pubsub.subscribe(*new)
            await self._confirm(pubsub)
            self._subscribed |= new
            if self._failing:
                log.info("reading events from Redis again")
                self._failing = False

    async def _confirm(self, pubsub: PubSub) -> None:
        """Return once Redis answers a PING sent after the subscriptions: it answers a
        connection's commands in order, so from then on no event published is missed. Events
        read meanwhile are handed over as usual."""
        token = f"isochat-{next(self._pings)}".encode()
        await pubsub.ping(token)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIRM_S
        while True:
            message = await pubsub.get_message(timeout=POLL_S)
            if message is not None and message["type"] == "pong" and message["data"] == token:
                return
            self._handle(message)
            if loop.time() > deadline:
                raise TimeoutError(f"Redis did not confirm the subscriptions in {CONFIRM_S} s")

    def _offer_gap(self) -> None:
        """Events published while the reader was away never reached this process: tell every
        subscription to replay its runs from the database."""
        for user_id in tuple(self._users):
            self._local.deliver(user_id, gap_frame())

    def _report(self, exc: Exception) -> None:
        if isinstance(exc, RedisError | OSError):
            # One warning when Redis goes away, not one per retry while it stays away.
            if not self._failing:
                log.warning("lost Redis pub/sub, reconnecting: %r", exc)
                self._failing = True
        else:
            log.error("the Redis event reader failed; restarting it", exc_info=exc)

    def _handle(self, message: dict[str, Any] | None) -> None:
        if message is not None and message["type"] == "message":
            self._deliver(message["channel"].decode(), message["data"])

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


def _answer(asked: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for done in asked:
        if done.done():
            continue  # its caller is gone; it undid its own subscription
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(_unavailable(error))


def _unavailable(error: BaseException) -> RedisConnectionError:
    """A RedisError for each waiting caller, whatever stopped the reader (even shutdown)."""
    if isinstance(error, RedisConnectionError):
        return error
    unavailable = RedisConnectionError(f"events cannot be received now: {error!r}")
    unavailable.__cause__ = error
    return unavailable


async def _discard(pubsub: PubSub) -> None:
    """Close a connection the reader gives up; it may be broken already, which is why."""
    with contextlib.suppress(Exception):
        await pubsub.aclose()  # type: ignore[no-untyped-call]
