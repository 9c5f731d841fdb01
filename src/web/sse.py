"""A run's events as a streamed HTTP answer, in the wire format its client speaks: isochat's
own server-sent events (``id:`` the seq, ``event:`` the type, ``data:`` the Event; a keep-alive
comment after every ``SSE_KEEPALIVE_S`` of silence, so that proxies do not cut an idle stream),
or an adapter's (``src/web/adapters/``). What comes when, each event once and in seq order
until the final one, is the follower's job (``src/runs/follower.py``); a ``Wire`` only renders.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from starlette.responses import StreamingResponse

from src.container import AppContainer
from src.runs.domain import Run
from src.runs.follower import KEEPALIVE, EventStore, Follower
from src.services.broker import EventBroker, Frame, Subscription
from src.settings import Settings
from src.web.detached import cancel_detached

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Wire(Protocol):
    """How one client's protocol writes a run's events."""

    media_type: str
    headers: Mapping[str, str]

    def opening(self) -> bytes:
        """What comes before the first event."""
        ...

    def event(self, event: Frame) -> bytes:
        """One event (b"" when the protocol shows nothing of it)."""
        ...

    def keepalive(self) -> bytes: ...

    def closing(self, follower: Follower) -> bytes:
        """What comes after the last event: the run ended (``follower.done``), paused for
        approval (``follower.paused``), or the stream is over for another reason."""
        ...


def sse(event: Mapping[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {data}\n\n".encode()


class IsochatWire:
    """isochat's own: every event as it is stored."""

    media_type = "text/event-stream"
    headers: Mapping[str, str] = HEADERS

    def opening(self) -> bytes:
        return b""

    def event(self, event: Frame) -> bytes:
        return sse(event)

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def closing(self, follower: Follower) -> bytes:
        return b""


ISOCHAT_WIRE = IsochatWire()


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
    wire: Wire = ISOCHAT_WIRE,
) -> StreamingResponse:
    """The run's events after seq ``after`` as ``wire`` writes them, ending after its final
    event (or its pause for approval). ``on_abandoned`` is called when the client goes away
    before that (the run it started is then cancelled, unless it asked otherwise)."""
    follower = Follower(
        subscription, store, keepalive_s=settings.sse_keepalive_s, run_id=run_id, after=after
    )
    return StreamingResponse(
        _events(follower, broker, subscription, on_abandoned, wire),
        media_type=wire.media_type,
        headers=dict(wire.headers),
    )


async def follow(
    container: AppContainer,
    *,
    user_id: str,
    run_id: str,
    after: int = 0,
    wire: Wire = ISOCHAT_WIRE,
    on_abandoned: Callable[[], None] | None = None,
) -> StreamingResponse:
    """``stream`` of the user's run after seq ``after``, subscribed now: a client joining a
    run that goes on without it (following does not own it, unless ``on_abandoned`` says)."""
    settings = container.settings()
    broker = container.broker()
    return stream(
        broker=broker,
        subscription=await subscribe(broker, user_id, settings),
        store=container.event_store(),
        settings=settings,
        run_id=run_id,
        after=after,
        on_abandoned=on_abandoned,
        wire=wire,
    )


async def start_and_stream(
    container: AppContainer,
    *,
    user_id: str,
    start: Callable[[], Awaitable[Run]],
    wire_for: Callable[[Run], Wire],
    cancel_on_leave: bool = True,
) -> StreamingResponse:
    """Subscribed first, then the run started (``start``: ``start_detached`` apart from this
    request): its events stream from the first, as ``wire_for(run)`` writes them; a client
    that goes away first cancels the run, unless ``cancel_on_leave`` is False. What refused
    the run is raised here, before any byte is sent."""
    settings = container.settings()
    broker = container.broker()
    subscription = await subscribe(broker, user_id, settings)
    try:
        run = await start()
    except BaseException:
        await broker.unsubscribe(subscription)
        raise

    def abandoned() -> None:
        if cancel_on_leave:
            cancel_detached(container, run)

    return stream(
        broker=broker,
        subscription=subscription,
        store=container.event_store(),
        settings=settings,
        run_id=run.id,
        after=0,
        on_abandoned=abandoned,
        wire=wire_for(run),
    )


async def _events(
    follower: Follower,
    broker: EventBroker,
    subscription: Subscription,
    on_abandoned: Callable[[], None] | None,
    wire: Wire,
) -> AsyncIterator[bytes]:
    try:
        if opening := wire.opening():
            yield opening
        async for frame in follower.frames():
            chunk = wire.keepalive() if frame is KEEPALIVE else wire.event(frame)
            if chunk:
                yield chunk
        if closing := wire.closing(follower):
            yield closing
    finally:
        if not follower.done and on_abandoned is not None:
            on_abandoned()
        # Shielded: a client gone away cancels this stream, and the unsubscribe must finish.
        await asyncio.shield(broker.unsubscribe(subscription))
