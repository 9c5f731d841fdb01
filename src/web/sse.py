"""A run's events as server-sent events: ``id:`` the seq, ``event:`` the type, ``data:`` the
Event. The stored events after the client's last one first, then the live ones, each once and
in seq order, until the final event; a keep-alive comment after every ``KEEPALIVE_S`` of
silence, so that proxies do not cut an idle stream.

The stream subscribes to the user's live events before it reads the stored ones, so nothing
can fall between the two. A live event that does not follow the last one sent (the
subscription fell behind, or the broker's connection was lost and back) sends the client to
the store again; so does every keep-alive, so a stream always ends, even if the final event's
live copy was lost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from src.services.broker import EventBroker, Frame, Subscription
from src.services.chat import ChatService
from src.services.domain import FINAL_EVENT_TYPES

KEEPALIVE_S = 15.0
# How often a stream whose subscription fell behind reads the store instead.
BEHIND_POLL_S = 0.5
MAX_PENDING_FRAMES = 256
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: Mapping[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {data}\n\n".encode()


async def subscribe(broker: EventBroker, user_id: str) -> Subscription:
    return await broker.subscribe(user_id, max_pending=MAX_PENDING_FRAMES)


async def follow(
    *,
    chat: ChatService,
    broker: EventBroker,
    subscription: Subscription,
    user_id: str,
    run_id: str,
    after: int,
    on_abandoned: Callable[[], None] | None = None,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """The run's events after seq ``after`` as SSE, from ``subscription`` (taken before the
    store is read) and the store. ``on_abandoned`` is called when the client goes away before
    the final event (the run it started is then cancelled, unless it asked otherwise)."""
    last = after
    ended = False

    async def from_store() -> list[bytes]:
        nonlocal last, ended
        out = []
        for event in await chat.list_events(user_id=user_id, run_id=run_id, after=last):
            out.append(sse(event.to_json()))
            last, ended = event.seq, event.type in FINAL_EVENT_TYPES
            if ended:
                break
        return out

    try:
        for chunk in await from_store():
            yield chunk
        while not ended:
            frame = await _next_frame(subscription, run_id, keepalive_s)
            if frame is SILENCE:
                yield b": keep-alive\n\n"
            if frame is SILENCE or frame is BEHIND or not _follows(frame, last):
                for chunk in await from_store():
                    yield chunk
                continue
            if frame["seq"] <= last:
                continue  # sent already, from the store
            yield sse(frame)
            last, ended = frame["seq"], frame["type"] in FINAL_EVENT_TYPES
    finally:
        if not ended and on_abandoned is not None:
            on_abandoned()
        # Shielded: a client gone away cancels this stream, and the unsubscribe must finish.
        await asyncio.shield(broker.unsubscribe(subscription))


SILENCE: Frame = {"type": "silence"}
BEHIND: Frame = {"type": "behind"}


async def _next_frame(subscription: Subscription, run_id: str, wait_s: float) -> Frame:
    """The next frame of ``run_id`` (or a ``gap`` frame: live events were missed); SILENCE
    after ``wait_s`` without one; BEHIND, after a short pause, once the subscription has
    fallen behind (it gets nothing more: the store is read instead)."""
    if subscription.overflowed.is_set():
        await asyncio.sleep(BEHIND_POLL_S)
        return BEHIND
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                frame = await subscription.frames.get()
        except TimeoutError:
            return SILENCE
        if frame.get("type") == "gap" or frame.get("run_id") == run_id:
            return frame


def _follows(frame: Frame, last: int) -> bool:
    """Whether ``frame`` is the next event (or one already sent), not a sign of a gap."""
    return (
        frame.get("type") != "gap"
        and isinstance(frame.get("seq"), int)
        and frame["seq"] <= last + 1
    )
