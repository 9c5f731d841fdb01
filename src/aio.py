"""asyncio helpers shared by the scope, the database layer and the runs."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """``uninterrupted`` gave up waiting: the work's own deadline passed (not a timeout the
    work itself raised)."""


async def uninterrupted(awaitable: Awaitable[T], *, timeout_s: float | None = None) -> T:
    """Await ``awaitable`` to its end even if this task is cancelled meanwhile, then re-raise.

    For short work that must never stop half-way (a transaction, closing a session): cut in the
    middle, it would leave a connection checked out of the pool. The cancellation is delayed,
    never lost. A hung database must not make the caller uncancellable forever, though: after
    ``timeout_s`` the work is cancelled and left to unwind in its own task, and the caller gets
    ``DeadlineExceeded`` (or its own cancellation).

    Every database write and every event goes through here: a shield and a timer, not
    ``asyncio.wait`` (its sets, waiter and callbacks were 5 % of a run's CPU).
    """
    task = asyncio.ensure_future(awaitable)
    if task.done():
        return task.result()
    waiting = _Waiting()
    timer = None
    if timeout_s is not None:
        timer = asyncio.get_running_loop().call_later(timeout_s, waiting.expire)
    cancelled = False
    try:
        while not task.done():
            waiting.outer = asyncio.shield(task)
            try:
                await waiting.outer
            except asyncio.CancelledError:
                if waiting.expired:
                    break
                cancelled = True  # ours (or the work's own, which its result says again)
            except BaseException:
                pass  # the work's own outcome: read below
    finally:
        waiting.outer = None
        if timer is not None:
            timer.cancel()
    if not task.done():  # the deadline passed
        task.cancel()
        task.add_done_callback(_retrieve)
        if cancelled:
            raise asyncio.CancelledError
        raise DeadlineExceeded(f"gave up after {timeout_s:g} s")
    if cancelled:
        if not task.cancelled():
            task.exception()  # mark it retrieved: the cancellation is what the caller sees
        raise asyncio.CancelledError
    return task.result()


class _Waiting:
    """What ``uninterrupted``'s deadline stops: the wait, not the work."""

    __slots__ = ("expired", "outer")

    def __init__(self) -> None:
        self.expired = False
        self.outer: asyncio.Future[Any] | None = None

    def expire(self) -> None:
        self.expired = True
        if self.outer is not None:
            self.outer.cancel()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark the outcome of abandoned work as seen: nobody is left to await it."""
    if not task.cancelled():
        task.exception()


def release_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames ``exc`` (and what caused it) went through, so
    that the exception no longer keeps a run's agents and session alive. Two ways it would:
    SQLAlchemy keeps the exception it raises in a local of the frame that raised it (a cycle
    that waits for a full garbage collection, which an idle server may not run for a long
    while), and a cancel that a socket's close sends through a run ends up in such a cycle
    too."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)  # frames still running are kept
        current = current.__cause__ or current.__context__
