"""A run's events as server-sent events: ``id:`` the seq, ``event:`` the type, ``data:`` the
Event; a keep-alive comment after every ``SSE_KEEPALIVE_S`` of silence, so that proxies do not
cut an idle stream. What comes when, each event once and in seq order until the final one, is
the follower's job (``src/runs/follower.py``); this is only the wire format.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from starlette.responses import StreamingResponse

from src.runs.follower import KEEPALIVE, EventStore, Follower
from src.services.broker import EventBroker, Subscription
from src.settings import Settings

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: Mapping[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {data}\n\n".encode()


async def subscribe(broker: EventBroker, user_id: str, settings: Settings) -> Subscription:
    """The user's live events, taken before the store is read."""
    return await broker.subscribe(user_id, max_pending=settings.ws_max_pending_frames)


def stream(
    *,
    broker: EventBroker,
    subscription: Subscription,
    store: EventStore,
    settings: Settings,
    run_id: str,
    after: int,
    on_abandoned: Callable[[], None] | None = None,
) -> StreamingResponse:
    """The run's events after seq ``after`` as an SSE answer, ending after its final event.
    ``on_abandoned`` is called when the client goes away before that (the run it started is
    then cancelled, unless it asked otherwise)."""
    follower = Follower(
        subscription, store, keepalive_s=settings.sse_keepalive_s, run_id=run_id, after=after
    )
    return StreamingResponse(
        _events(follower, broker, subscription, on_abandoned),
        media_type="text/event-stream",
        headers=HEADERS,
    )


async def _events(
    follower: Follower,
    broker: EventBroker,
    subscription: Subscription,
    on_abandoned: Callable[[], None] | None,
) -> AsyncIterator[bytes]:
    try:
        async for frame in follower.frames():
            yield b": keep-alive\n\n" if frame is KEEPALIVE else sse(frame)
    finally:
        if not follower.done and on_abandoned is not None:
            on_abandoned()
        # Shielded: a client gone away cancels this stream, and the unsubscribe must finish.
        await asyncio.shield(broker.unsubscribe(subscription))
