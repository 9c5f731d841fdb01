"""The runs this process is executing right now, so that a cancel can reach their tasks, their
leases can be renewed, and shutdown can end them."""

from __future__ import annotations

import asyncio
from typing import Any


class RunRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        # Runs being stored, whose task does not exist yet: a cancel that arrives between the
        # commit and the task's start is kept here (what it waits on) and delivered when the
        # task starts.
        self._starting: dict[str, asyncio.Future[None] | None] = {}
        # Tasks that own the request scope of a run that outlives the connection that started
        # it (a socket closed for falling behind, ``on_disconnect: continue``): held here so
        # they are neither garbage-collected nor forgotten at shutdown.
        self._adopted: set[asyncio.Task[Any]] = set()
        # Set at shutdown: what is cancelled from now on is cancelled by the process's end, not
        # by a client (a run that waits its turn stays queued, for another process or the next
        # start).
        self.closing = False

    def starting(self, run_id: str) -> None:
        """``run_id`` is about to be stored and started by this process."""
        self._starting[run_id] = None

    def add(self, run_id: str, task: asyncio.Task[Any]) -> None:
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))
        cancelled = self._starting.pop(run_id, None)
        if cancelled is not None:
            task.cancel()
            task.add_done_callback(lambda _: _settle(cancelled))

    def not_started(self, run_id: str) -> None:
        """``run_id`` will get no task here (it was refused, or failed before starting)."""
        cancelled = self._starting.pop(run_id, None)
        if cancelled is not None:
            _settle(cancelled)

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task`` alive until it ends by itself (or shutdown cancels it)."""
        if task.done():
            return
        self._adopted.add(task)
        task.add_done_callback(self._adopted.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    def run_ids(self) -> list[str]:
        """The runs executing in this process now: the ones whose leases it renews."""
        return list(self._tasks)

    def cancel(self, run_id: str) -> asyncio.Future[Any] | None:
        """Cancel the run's task if this process runs it (now, or as soon as its task starts):
        what is done once the task has ended, its end stored by its own path
        (``src/runs/ender.py``); None when this process does not run it."""
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            return task
        if run_id not in self._starting:
            return None
        waiting = self._starting[run_id]
        if waiting is None:
            waiting = self._starting[run_id] = asyncio.get_running_loop().create_future()
        return waiting

    async def cancel_all(self, *, timeout_s: float | None = None) -> int:
        """At shutdown: every run ends ``cancelled`` rather than being left ``running``.

        Waits at most ``timeout_s`` for the runs to record their end; returns how many had not
        by then (their leases expire and another process, or the next start, ends them).
        """
        self.closing = True
        tasks = [*self._tasks.values(), *self._adopted]
        for task in tasks:
            task.cancel()
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return len(pending)


def _settle(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)
