"""Following runs: the one way a client gets a run's events, behind SSE, the WebSocket, a cancel
that waits for its run's end, and every adapter.

    subscribe -> replay from the store -> live from the broker -> gaps filled from the store
              -> every event once, in seq order per run

The subscription is taken before the store is read, so nothing falls between the two. For each
run it follows, the follower keeps the last seq it delivered: a live event already delivered is
dropped; one that skips ahead sends it to the store for what was missed (a subscription that
fell behind, a publish that failed), and the broker's ``gap`` signal (its connection to Redis
was lost and is back) sends it to the store for every run of the user that may have had events
meanwhile. After ``keepalive_s`` of silence it checks the store for the runs in progress, so a
lost final event still ends what follows it. Clients never see a gap: they get every seq of
a run once, in order, from its first event (a run first heard of half-way is replayed from its
start).

Two ways to follow:
- a user's runs, all of them (a WebSocket): the follower also passes the connection's own
  frames (``pong``, ``error``) through in order;
- one run until its final event, or until it pauses for approval (``run_id``: SSE, a cancel
  waiting for the end): a paused run may wait a day for a person, and its client follows it
  again once it has decided.

A run paused for approval is quiet until someone decides: silences do not send the follower to
the store for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Protocol, cast

from src.runs.domain import FINAL_EVENT_TYPES, Event, iso, utcnow
from src.services.broker import EventBroker, Frame, Subscription
from src.services.database import repositories as repo
from src.services.database.engine import Database

log = logging.getLogger(__name__)

# The event of a run that pauses for approval (one per call that waits).
PAUSE_EVENT = "approval_requested"
# Yielded after ``keepalive_s`` of silence (SSE sends a comment); never an event.
KEEPALIVE: Frame = {"type": "keep-alive"}
# How often a single-run follower whose subscription fell behind reads the store instead.
BEHIND_POLL_S = 0.5
# How far apart hosts' clocks may be (event times come from the host that ran the run).
CLOCK_SKEW_S = 5.0
# Runs whose end was delivered are remembered (to drop late copies) while this many or fewer;
# past it, the ones that ended well before the newest event heard are forgotten.
ENDED_KEPT = 1024

# While the broker cannot deliver, a follower of one run reads the store this often instead.
STORE_CHECK_S = 0.1
MAX_PENDING = 256

_SILENCE: Frame = {"type": "silence"}
_BEHIND: Frame = {"type": "behind"}


class EventStore(Protocol):
    async def events_after(self, *, user_id: str, run_id: str, after: int) -> list[Event] | None:
        """The run's stored events after seq ``after``, in order; None when the user has no
        such run (another user's, or one rolled back by a newer message)."""
        ...

    async def runs_since(self, *, user_id: str, since: datetime) -> list[str]:
        """The user's runs still going, or ended at ``since`` or later."""
        ...


class StoredEvents:
    """The store, read on pooled connections of their own: a follower lives as long as its
    connection, outside any request scope."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def events_after(self, *, user_id: str, run_id: str, after: int) -> list[Event] | None:
        events = await self._database.read(
            repo.list_events, run_id=run_id, user_id=user_id, after=after
        )
        if events:
            return events
        # Nothing new: whether the run is there at all is read only then (not on every fill).
        run = await self._database.read(repo.get_run, run_id=run_id, user_id=user_id)
        return None if run is None else events

    async def runs_since(self, *, user_id: str, since: datetime) -> list[str]:
        return await self._database.read(repo.runs_since, user_id=user_id, since=since)


class Follower:
    def __init__(
        self,
        subscription: Subscription,
        store: EventStore,
        *,
        keepalive_s: float,
        run_id: str | None = None,
        after: int = 0,
    ) -> None:
        """Follow ``subscription``'s user's runs; with ``run_id``, that run alone from after
        seq ``after`` until its final event."""
        self._subscription = subscription
        self._store = store
        self._user_id = subscription.user_id
        self._keepalive_s = keepalive_s
        self._only = run_id
        self._last: dict[str, int] = {}  # runs in progress -> the last seq delivered
        self._ended: dict[str, str] = {}  # runs whose final event was delivered -> its ts
        self._paused: set[str] = set()  # runs in progress whose last event asked for approval
        self._heard = iso(utcnow())  # the newest event time heard (ISO text sorts as time)
        self._recovering = False  # a gap's fill failed: tried again at the next silence
        self.done = False
        self.paused = False  # the one run followed paused for approval (and ``done``)
        if run_id is not None:
            self._last[run_id] = after

    def follow(self, run_id: str, after: int = 0) -> None:
        """Deliver ``run_id``'s events after seq ``after`` (a run this connection started: any
        of its events missed live is filled from the store)."""
        if run_id not in self._last and run_id not in self._ended:
            self._last[run_id] = after

    async def frames(self) -> AsyncIterator[Frame]:
        """The followed runs' events as they come (and ``KEEPALIVE`` after each silence), until
        the one run's final event; for a user's runs, until the subscription falls behind."""
        if self._only is not None:
            for frame in await self._fill(self._only):
                yield frame
        while not self.done:
            if self._only in self._paused:
                for frame in await self._paused_until_decided(self._only):
                    yield frame
                continue
            frame = await self._next()
            if frame is _BEHIND and self._only is None:
                return  # the connection is closed for it; its client replays what it missed
            if frame is _SILENCE or frame is _BEHIND:
                for event in await self._check_store():
                    yield event
                if frame is _SILENCE:
                    yield KEEPALIVE
                continue
            if frame.get("type") == "gap":
                for event in await self._recover():
                    yield event
                continue
            run_id, seq = frame.get("run_id"), frame.get("seq")
            if not isinstance(run_id, str) or not isinstance(seq, int):
                if self._only is None:
                    yield frame  # the connection's own (pong, error)
                continue
            for event in await self._take(frame, run_id, seq):
                yield event

    async def _next(self) -> Frame:
        """The next frame; ``_SILENCE`` after ``keepalive_s`` without one; ``_BEHIND``, after a
        short pause for a single run, once the subscription has fallen behind (it gets
        nothing more)."""
        if self._subscription.overflowed.is_set():
            if self._only is not None:
                await asyncio.sleep(BEHIND_POLL_S)
            return _BEHIND
        try:
            async with asyncio.timeout(self._keepalive_s):
                return await self._subscription.frames.get()
        except TimeoutError:
            return _SILENCE

    async def _take(self, frame: Frame, run_id: str, seq: int) -> list[Frame]:
        ts = frame.get("ts")
        if isinstance(ts, str) and ts > self._heard:
            self._heard = ts
        if run_id in self._ended:
            return []  # a late copy
        last = self._last.get(run_id)
        if last is None:
            if self._only is not None:
                return []  # another run's
            if seq != 1:
                return await self._fill(run_id)  # heard of half-way: from its start
            last = 0
        if seq <= last:
            return []
        if seq > last + 1:
            return await self._fill(run_id)  # missed some: stored before it was published
        self._delivered(run_id, frame)
        return [frame]

    async def _paused_until_decided(self, run_id: str) -> list[Frame]:
        """The followed run paused: the rest of its pause's events (stored together), and the
        end of following it, unless it has gone on meanwhile."""
        frames = await self._fill(run_id)
        if run_id in self._paused:
            self.paused = self.done = True
        return frames

    def _delivered(self, run_id: str, frame: Frame) -> None:
        if frame["type"] in FINAL_EVENT_TYPES:
            self._last.pop(run_id, None)
            self._paused.discard(run_id)
            self._ended[run_id] = frame["ts"]
            if len(self._ended) > ENDED_KEPT:
                self._forget_old_ends()
            if run_id == self._only:
                self.done = True
            return
        self._last[run_id] = frame["seq"]
        if frame["type"] == PAUSE_EVENT:
            self._paused.add(run_id)
        else:
            self._paused.discard(run_id)

    def _gone(self, run_id: str) -> None:
        """The run is not stored (any more): rolled back, its thread deleted, or never the
        user's. Nothing more will come of it."""
        self._last.pop(run_id, None)
        self._paused.discard(run_id)
        if run_id == self._only:
            self.done = True

    async def _fill(self, run_id: str) -> list[Frame]:
        """The run's stored events after the last one delivered (delivered now)."""
        if run_id in self._ended:
            return []
        after = self._last.get(run_id, 0)
        try:
            events = await self._store.events_after(
                user_id=self._user_id, run_id=run_id, after=after
            )
        except Exception as exc:
            # Tried again at the next event of the run, or the next silence.
            log.warning("reading the events of run %s failed: %s", run_id, repr(exc))
            self._last.setdefault(run_id, after)
            return []
        if events is None:
            self._gone(run_id)
            return []
        frames = []
        for event in events:
            frame = cast(Frame, event.to_json())  # a TypedDict is a dict
            self._delivered(run_id, frame)
            frames.append(frame)
            if run_id in self._ended:
                break
        if not events:
            self._last.setdefault(run_id, after)
        return frames

    async def _check_store(self) -> list[Frame]:
        """After a silence: whatever the runs in progress (not paused) stored that was not
        heard live."""
        if self._recovering:
            return await self._recover()
        frames: list[Frame] = []
        for run_id in [r for r in self._last if r not in self._paused]:
            frames += await self._fill(run_id)
        return frames

    async def _recover(self) -> list[Frame]:
        """Live events were missed (the broker's connection was lost): fill every run in
        progress, and every run of the user that may have had events since the newest event
        heard (everything published before it was heard: the broker keeps each connection's
        order)."""
        if self._only is not None:
            return await self._fill(self._only)
        since = datetime.fromisoformat(self._heard) - timedelta(seconds=CLOCK_SKEW_S)
        try:
            found = await self._store.runs_since(user_id=self._user_id, since=since)
        except Exception as exc:
            log.warning("reading the runs of %s after a gap failed: %s", self._user_id, repr(exc))
            self._recovering = True
            return []
        self._recovering = False
        frames: list[Frame] = []
        for run_id in dict.fromkeys([*self._last, *found]):
            frames += await self._fill(run_id)
        return frames

    def _forget_old_ends(self) -> None:
        cutoff = datetime.fromisoformat(self._heard) - timedelta(seconds=2 * CLOCK_SKEW_S)
        oldest = iso(cutoff)
        self._ended = {run_id: ts for run_id, ts in self._ended.items() if ts >= oldest}


@asynccontextmanager
async def following(
    broker: EventBroker, store: EventStore, *, user_id: str, run_id: str, keepalive_s: float
) -> AsyncIterator[Follower]:
    """A follower of one run, subscribed before anything else is done (so that nothing the
    caller then asks for falls before it); when the broker cannot deliver now, one with a
    subscription of its own that reads the store every ``STORE_CHECK_S``. Unsubscribed on
    every way out."""
    try:
        subscription = await broker.subscribe(user_id, max_pending=MAX_PENDING)
    except Exception as exc:
        log.warning("run %s is followed from the store: %s", run_id, repr(exc))
        subscription, keepalive_s = Subscription(user_id, MAX_PENDING), STORE_CHECK_S
    try:
        yield Follower(subscription, store, keepalive_s=keepalive_s, run_id=run_id)
    finally:
        # Shielded: a caller gone away must not leave the subscription behind.
        await asyncio.shield(broker.unsubscribe(subscription))


async def to_the_end(follower: Follower) -> None:
    """Until the followed run's final event (or its pause for approval)."""
    async for _ in follower.frames():
        pass
