"""The drill's progress on the operator's terminal (stderr): a bar per phase, with its time
and how many runs ended, and how many of those not as expected; then one while the hosts'
gauges settle. Wanted or not, it draws nothing unless stderr is a terminal, so a script that
reads the report (``--json``) or a log file never sees it."""

from __future__ import annotations

import asyncio
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

TICK_S = 0.2  # how often a phase's bar moves on


class DrillProgress:
    def __init__(self, console: Console, *, wanted: bool) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[runs]} runs, {task.fields[off]} not as expected"),
            console=console,
            disable=not (wanted and console.is_terminal),
        )

    def __enter__(self) -> DrillProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def phase(self, name: str, *, duration_s: float) -> PhaseBar:
        return PhaseBar(self._progress, name, duration_s)

    def settling(self) -> SettleBar:
        return SettleBar(self._progress)


class PhaseBar:
    """One phase: the time gone of ``duration_s``, and its runs counted as they end."""

    def __init__(self, progress: Progress, name: str, duration_s: float) -> None:
        self._progress = progress
        self._duration_s = duration_s
        self._task = progress.add_task(f"{name:8}", total=duration_s, runs=0, off=0)
        self._runs = 0
        self._off = 0

    async def follow(self, until: float) -> None:
        """Move the bar on until the loop's clock reaches ``until`` (the phase's end)."""
        loop = asyncio.get_running_loop()
        while (left := until - loop.time()) > 0:
            self._progress.update(self._task, completed=self._duration_s - left)
            await asyncio.sleep(TICK_S)

    def count(self, *, as_expected: bool) -> None:
        self._runs += 1
        self._off += not as_expected
        self._progress.update(self._task, runs=self._runs, off=self._off)

    def done(self) -> None:
        self._progress.update(self._task, completed=self._duration_s)


class SettleBar:
    """The wait for the gauges: no length known, only whether it is over."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task("settling", total=None, runs="-", off="-")

    def done(self) -> None:
        self._progress.update(self._task, total=1, completed=1)
