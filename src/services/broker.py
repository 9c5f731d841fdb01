"""Live delivery of run events to their owner's open connections.

``EventBroker`` is the port; ``InProcessBroker`` serves one process. A broker that fans out across
workers (Redis) implements the same port and nothing else changes.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Protocol

from src.services.domain import Event


class Subscription:
    """One connection's inbox. Bounded: a reader that falls too far behind is marked overflowed
    and dropped, so it can never make publishers wait."""

    def __init__(self, user_id: str, max_pending: int) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=max_pending)
        self.overflowed = asyncio.Event()

    def offer(self, event: Event) -> None:
        if self.overflowed.is_set():
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()


class EventBroker(Protocol):
    async def publish(self, user_id: str, event: Event) -> None: ...

    def subscribe(self, user_id: str, *, max_pending: int) -> Subscription: ...

    def unsubscribe(self, subscription: Subscription) -> None: ...


class InProcessBroker:
    def __init__(self) -> None:
        self._subscriptions: defaultdict[str, set[Subscription]] = defaultdict(set)

    async def publish(self, user_id: str, event: Event) -> None:
        for subscription in tuple(self._subscriptions.get(user_id, ())):
            subscription.offer(event)

    def subscribe(self, user_id: str, *, max_pending: int) -> Subscription:
        subscription = Subscription(user_id, max_pending)
        self._subscriptions[user_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscriptions.get(subscription.user_id)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscriptions[subscription.user_id]
