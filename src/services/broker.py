"""Live delivery of run events to their owner's open connections.

``EventBroker`` is the port; ``InProcessBroker`` serves one process. A broker that fans out across
workers (Redis) implements the same port and nothing else changes: agents and routes only see
``publish`` (through the emitter) and ``subscribe``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from src.runs.domain import Event

Frame = dict[str, Any]

log = logging.getLogger(__name__)


class Subscription:
    """One connection's outbox of JSON-ready frames.

    Bounded: a reader that falls ``max_pending`` frames behind is marked overflowed and gets
    nothing more, so a slow client can never make a publisher wait or grow the server's memory.
    Its events stay stored; it can replay them.
    """

    def __init__(self, user_id: str, max_pending: int) -> None:
        self.user_id = user_id
        self.frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=max_pending)
        self.overflowed = asyncio.Event()

    def offer(self, frame: Frame) -> None:
        if self.overflowed.is_set():
            return
        try:
            self.frames.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflowed.set()


async def publish_stored(broker: EventBroker, user_id: str, events: Iterable[Event]) -> None:
    """Publish events already stored. A publish that fails is logged and goes no further: the
    events are in the store, and every follower fills from there what it missed live
    (``src/runs/follower.py``)."""
    for event in events:
        try:
            await broker.publish(user_id, event)
        except Exception as exc:  # text: a record must not keep the run's frames alive
            log.warning(
                "publishing event %s of run %s failed: %s", event.seq, event.run_id, repr(exc)
            )


class EventBroker(Protocol):
    async def publish(self, user_id: str, event: Event) -> None: ...

    async def subscribe(self, user_id: str, *, max_pending: int) -> Subscription: ...

    async def unsubscribe(self, subscription: Subscription) -> None: ...

    def subscriber_count(self, user_id: str) -> int:
        """Open subscriptions of ``user_id`` in this process."""
        ...

    async def ping(self) -> None:
        """Raise if events cannot be delivered now (for readiness)."""
        ...

    async def listen_for_cancels(self, on_cancel: Callable[[str], object]) -> None:
        """From now on, call ``on_cancel(run_id)`` whenever any worker asks for a cancel."""
        ...

    async def request_cancel(self, run_id: str) -> bool:
        """Ask every worker to cancel ``run_id`` if it runs it; False when no other process
        can hear (then nobody else runs it)."""
        ...

    async def aclose(self) -> None: ...


class InProcessBroker:
    """Delivers to the subscriptions of this process only: right for one worker."""

    def __init__(self) -> None:
        self._subscriptions: defaultdict[str, set[Subscription]] = defaultdict(set)

    async def publish(self, user_id: str, event: Event) -> None:
        self.deliver(user_id, cast(Frame, event.to_json()))  # a TypedDict is a dict

    def deliver(self, user_id: str, frame: Frame) -> None:
        for subscription in tuple(self._subscriptions.get(user_id, ())):
            subscription.offer(frame)

    async def subscribe(self, user_id: str, *, max_pending: int) -> Subscription:
        return self.add(user_id, max_pending=max_pending)

    def add(self, user_id: str, *, max_pending: int) -> Subscription:
        subscription = Subscription(user_id, max_pending)
        self._subscriptions[user_id].add(subscription)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        self.remove(subscription)

    def remove(self, subscription: Subscription) -> None:
        subscribers = self._subscriptions.get(subscription.user_id)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscriptions[subscription.user_id]

    def subscriber_count(self, user_id: str) -> int:
        return len(self._subscriptions.get(user_id, ()))

    async def ping(self) -> None:
        return None  # in-process delivery is up while the process is

    async def listen_for_cancels(self, on_cancel: Callable[[str], object]) -> None:
        return None  # runs of this process are cancelled through its own RunRegistry

    async def request_cancel(self, run_id: str) -> bool:
        return False

    async def aclose(self) -> None:
        return None
