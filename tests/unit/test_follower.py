"""The follower: every event of each followed run once, in seq order, whatever the live stream
drops, repeats or reorders; what it missed comes from the store (a fake store here, the
subscription a real one fed by hand)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from src.runs.domain import Event
from src.runs.follower import KEEPALIVE, Follower
from src.services.broker import Frame, Subscription
from src.services.redis_broker import gap_frame

START = datetime(2026, 1, 1, tzinfo=UTC)
FINAL = "run_completed"


def event(run_id: str, seq: int, kind: str = "agent_thinking") -> Event:
    return Event(
        type=kind,
        run_id=run_id,
        thread_id="t",
        seq=seq,
        ts=START + timedelta(seconds=seq),
        agent=None,
        data={"n": seq},
    )


def frame(run_id: str, seq: int, kind: str = "agent_thinking") -> Frame:
    return dict(event(run_id, seq, kind).to_json())


class FakeStore:
    """What is stored: each run's events; reads are counted."""

    def __init__(self) -> None:
        self.events: dict[str, list[Event]] = {}
        self.reads = 0

    def store(self, run_id: str, last: int, *, ended: bool = False) -> None:
        self.events[run_id] = [
            event(run_id, seq, FINAL if ended and seq == last else "agent_thinking")
            for seq in range(1, last + 1)
        ]

    async def events_after(self, *, user_id: str, run_id: str, after: int) -> list[Event]:
        self.reads += 1
        return [e for e in self.events.get(run_id, []) if e.seq > after]

    async def runs_since(self, *, user_id: str, since: datetime) -> list[str]:
        return list(self.events)


def subscription(*frames: Frame) -> Subscription:
    subscribed = Subscription("alice", max_pending=100)
    for item in frames:
        subscribed.offer(item)
    return subscribed


async def take(frames: AsyncIterator[Frame], count: int) -> list[Frame]:
    taken: list[Frame] = []
    async with asyncio.timeout(5):
        async for item in frames:
            if item is not KEEPALIVE:
                taken.append(item)
            if len(taken) == count:
                return taken
    return taken


def seqs(frames: list[Frame]) -> list[tuple[str, int]]:
    return [(f["run_id"], f["seq"]) for f in frames]


async def test_repeats_are_dropped_and_a_skip_is_filled_from_the_store() -> None:
    """Live 1, 1, 3, 2, 4: the client gets 1, 2, 3, 4, each once; 2 comes from the store."""
    store = FakeStore()
    store.store("r", 4)
    live = subscription(frame("r", 1), frame("r", 1), frame("r", 3), frame("r", 2), frame("r", 4))
    follower = Follower(live, store, keepalive_s=60)
    follower.follow("r")
    assert seqs(await take(follower.frames(), 4)) == [("r", 1), ("r", 2), ("r", 3), ("r", 4)]


async def test_a_gap_fills_every_run_that_may_have_had_events_meanwhile() -> None:
    """The broker lost its connection: runs in progress go on from the store, and a run that
    started and ended while nothing was heard is delivered whole; nobody sees the gap."""
    store = FakeStore()
    store.store("known", 5)
    store.store("unseen", 3, ended=True)
    live = subscription(frame("known", 1), gap_frame(), frame("known", 5))
    follower = Follower(live, store, keepalive_s=60)
    got = await take(follower.frames(), 8)
    assert sorted(seqs(got)) == [("known", n) for n in range(1, 6)] + [
        ("unseen", n) for n in range(1, 4)
    ]
    assert all(f["type"] != "gap" for f in got)
    by_run: dict[str, list[int]] = {}
    for item in got:
        by_run.setdefault(item["run_id"], []).append(item["seq"])
    assert by_run == {"known": [1, 2, 3, 4, 5], "unseen": [1, 2, 3]}


async def test_a_run_first_heard_of_half_way_is_delivered_from_its_start() -> None:
    """A socket that opens while a run is going hears seq 3 first: it gets 1, 2, 3."""
    store = FakeStore()
    store.store("r", 3)
    follower = Follower(subscription(frame("r", 3)), store, keepalive_s=60)
    assert seqs(await take(follower.frames(), 3)) == [("r", 1), ("r", 2), ("r", 3)]


async def test_one_run_ends_at_its_final_event_and_ignores_the_others() -> None:
    """Following one run from after seq 1 (SSE's Last-Event-ID): the stored 2, then live 3
    and the final 4; another run's frames and the connection's own frames are not its."""
    store = FakeStore()
    store.store("r", 2)
    live = subscription(
        frame("other", 1), {"type": "pong"}, frame("r", 2), frame("r", 3), frame("r", 4, FINAL)
    )
    follower = Follower(live, store, keepalive_s=60, run_id="r", after=1)
    got = [f async for f in follower.frames()]
    assert seqs(got) == [("r", 2), ("r", 3), ("r", 4)]
    assert follower.done


async def test_a_silence_checks_the_store_so_a_lost_final_event_still_ends_the_stream() -> None:
    """The final event was stored but its publish failed: after the keep-alive interval the
    follower finds it in the store."""
    store = FakeStore()
    store.store("r", 3, ended=True)
    follower = Follower(subscription(frame("r", 1)), store, keepalive_s=0.05, run_id="r")
    got = [f async for f in follower.frames()]
    assert seqs([f for f in got if f is not KEEPALIVE]) == [("r", 1), ("r", 2), ("r", 3)]
    assert follower.done


async def test_the_connections_own_frames_pass_through_in_order() -> None:
    """A user's follower (a socket) passes pong and error frames on where they came."""
    store = FakeStore()
    store.store("r", 1)
    error: dict[str, Any] = {"type": "error", "error": {"code": "x", "message": "y"}}
    follower = Follower(subscription({"type": "pong"}, frame("r", 1), error), store, keepalive_s=60)
    got = await take(follower.frames(), 3)
    assert [f["type"] for f in got] == ["pong", "agent_thinking", "error"]
    assert store.reads == 0  # nothing was missed: the store was never read


async def test_a_user_follower_that_fell_behind_stops() -> None:
    """Its socket is closed for falling behind (4408); the follower yields nothing more."""
    live = Subscription("alice", max_pending=1)
    live.offer(frame("r", 1))
    live.offer(frame("r", 2))  # one too many: overflowed
    follower = Follower(live, FakeStore(), keepalive_s=60)
    async with asyncio.timeout(5):
        got = [f async for f in follower.frames()]
    assert got == []
