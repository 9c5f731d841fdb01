"""Cancelling a run wherever it runs, and waiting for its end instead of polling for it.

    it waits its turn (queued) or for a person (paused): end it here, it has no task anywhere
    this process runs it: cancel its task, wait for the task (at most ``wait_s``)
    another does: follow the run (subscribed before anything is asked), ask every process
    through the broker, wait for its final event (at most ``wait_s``); nobody ended it: a run
    whose owner stopped vouching for it (lease expired) is ended here

The run's own path stores the ``cancelled`` end through the one ender (``src/runs/ender.py``);
a run whose owner is alive is never ended from another process.
"""

from __future__ import annotations

import asyncio
import logging

from src.runs.domain import Run, RunStatus, utcnow
from src.runs.ender import Outcome, RunEnder
from src.runs.follower import EventStore, Follower, following, to_the_end
from src.runs.registry import RunRegistry
from src.services.broker import EventBroker

log = logging.getLogger(__name__)

# How long a cancel waits for the run's final event.
CANCEL_WAIT_S = 3.0


class RunCanceller:
    def __init__(
        self,
        *,
        registry: RunRegistry,
        broker: EventBroker,
        ender: RunEnder,
        store: EventStore,
        wait_s: float = CANCEL_WAIT_S,
    ) -> None:
        self._registry = registry
        self._broker = broker
        self._ender = ender
        self._store = store
        self._wait_s = wait_s

    async def cancel(self, run: Run) -> None:
        """Have ``run`` end ``cancelled`` if it has not ended; returns once its final event is
        stored (whatever it is: it may have completed meanwhile) or after ``wait_s``."""
        if run.status == "queued" and await self._end_queued(run):
            return  # it never started (unless it started meanwhile: then as any other)
        if run.status == "awaiting_approval" and await self._end_paused(run):
            return
        here = self._registry.cancel(run.id)
        if here is not None:
            # Its task stores its end before it ends (if it does not end in time, it is stuck
            # in the database: its own lease is live, so nobody else may end it either). A
            # task cancelled while it stored a pause leaves the run paused: ended here.
            await asyncio.wait((here,), timeout=self._wait_s)
            await self._end_paused(run)
            return
        async with following(
            self._broker, self._store, user_id=run.user_id, run_id=run.id, keepalive_s=self._wait_s
        ) as follower:
            if await self._ask_others(run.id) and await self._ended(follower):
                if follower.paused:  # it paused before its process heard the cancel
                    await self._end_paused(run)
                return
            # No live process ended it: one whose lease has expired is ended from here; one
            # whose owner is alive is left to its owner (it ends when its owner hears).
            await self._ender.end(
                run_id=run.id,
                thread_id=run.thread_id,
                user_id=run.user_id,
                outcome=Outcome.cancelled(),
                lease_expired_before=utcnow(),
            )

    async def _end_queued(self, run: Run) -> bool:
        """End a run that waits its turn; False when it was not queued any more (it started,
        or ended, meanwhile)."""
        return await self._end_waiting(run, "queued")

    async def _end_paused(self, run: Run) -> bool:
        """End a run that waits for approval; False when it was not paused any more (resumed,
        or ended, meanwhile)."""
        return await self._end_waiting(run, "awaiting_approval")

    async def _end_waiting(self, run: Run, waiting: RunStatus) -> bool:
        """A run that waits (its turn, or a person) has no task anywhere: ended here."""
        ended = await self._ender.end(
            run_id=run.id,
            thread_id=run.thread_id,
            user_id=run.user_id,
            outcome=Outcome.cancelled(),
            from_status=waiting,
        )
        return ended is not None

    async def _ask_others(self, run_id: str) -> bool:
        """Ask every other process to cancel ``run_id``; whether any could hear."""
        try:
            return await self._broker.request_cancel(run_id)
        except Exception as exc:
            log.warning("could not ask the other processes to cancel run %s: %s", run_id, repr(exc))
            return False

    async def _ended(self, follower: Follower) -> bool:
        try:
            async with asyncio.timeout(self._wait_s):
                await to_the_end(follower)
        except TimeoutError:
            return False
        return follower.done
