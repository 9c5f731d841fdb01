"""The runs this process is executing right now, so a cancel can reach their tasks."""

from __future__ import annotations

import asyncio
from typing import Any


class RunRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def add(self, run_id: str, task: asyncio.Task[Any]) -> None:
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel(self, run_id: str) -> bool:
        """Cancel the run's task and wait until it has recorded its end; False if the run is
        not executing in this process."""
        task = self._tasks.get(run_id)
        if task is None:
            return False
        task.cancel()
        await asyncio.wait((task,))
        return True

    def cancel_soon(self, run_id: str) -> None:
        """Cancel the run's task if this process runs it (a cancel asked by another worker)."""
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()

    async def cancel_all(self) -> None:
        """At shutdown: every run ends ``cancelled`` rather than being left ``running``."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
