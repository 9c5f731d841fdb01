"""asyncio helpers shared by the scope and the database layer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def uninterrupted(awaitable: Awaitable[T], *, timeout_s: float | None = None) -> T:
    """Await ``awaitable`` to its end even if this task is cancelled meanwhile, then re-raise.

    For short work that must never stop half-way (a transaction, closing a session): cut in the
    middle, it would leave a connection checked out of the pool. The cancellation is delayed,
    never lost. A hung database must not make the caller uncancellable forever, though: after
    ``timeout_s`` the work is cancelled and left to unwind in its own task, and the caller gets
    ``TimeoutError`` (or its own cancellation).
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
            raise TimeoutError(f"gave up after {timeout_s:g} s")
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
