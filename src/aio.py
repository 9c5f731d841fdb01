"""asyncio helpers shared by the scope and the database layer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def uninterrupted(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end even if this task is cancelled meanwhile, then re-raise.

    For short work that must never stop half-way (a transaction, closing a session): cut in the
    middle, it would leave a connection checked out of the pool. The cancellation is delayed,
    never lost.
    """
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # mark it retrieved: the cancellation is what the caller sees
        raise asyncio.CancelledError
    return task.result()
