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
    """
    task = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    cancelled = False
    while not task.done():
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            task.cancel()
            task.add_done_callback(_retrieve)
            if cancelled:
                raise asyncio.CancelledError
            raise DeadlineExceeded(f"gave up after {timeout_s:g} s")
        try:
            await asyncio.wait((task,), timeout=remaining)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # mark it retrieved: the cancellation is what the caller sees
        raise asyncio.CancelledError
    return task.result()


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
