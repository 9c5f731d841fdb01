"""The one ender: every way a run ends goes through ``RunEnder.end``.

The run itself (completed, failed, cancelled by its task), a cancel from any host, the lease
sweep, and shutdown (which cancels the runs' tasks) all call it. It

1. stores the end: the ledger's guarded transition (``running`` -> ``completed`` | ``failed`` |
   ``cancelled``) with the final event and, for a completed run, the answer, in one
   transaction; exactly one of several racing enders wins, the others get None;
2. when the write's fate is unknown (the database deadline cut it off, or the connection went,
   while the database may have gone on and committed), reads back what is stored before it
   decides anything failed: an end stored with this ender's own timestamp is this ender's;
   another end is someone else's; no end means the write did not happen, and it is tried again
   (for up to ``retry_for_s``; past that the lease sweep ends the run once the database is back);
3. publishes the final event once, and counts the run once in ``isochat_runs_total`` and
   ``isochat_run_seconds`` (``finished_at - created_at``, one duration whoever ended it);
4. starts the thread's next queued run, which the same transaction set ``running`` under this
   process's lease (``src/runs/queue.py``), in a request scope of its own (``starter``).

So a stored end is always published and counted, by the ender that stored it, and only by it,
and a queue moves on whoever ended the run ahead. Every way in (a paused run cancelled or
expiring, a queued run cancelled) is a ``from_status`` of the same call, not another ender.
Once ``stop_starting`` is called (shutdown), ends start nothing: the queues they leave are
started by any live process's sweep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from src.aio import uninterrupted
from src.runs import ledger, queue, readback
from src.runs.domain import Run, RunError, RunStatus, Usage, utcnow
from src.runs.ledger import Ended, EndStatus, Successor
from src.runs.queue import Promoted
from src.services.broker import EventBroker, publish_stored
from src.services.database.engine import Database
from src.services.database.failures import DatabaseUnavailable, unavailable
from src.services.metrics import Metrics

if TYPE_CHECKING:
    from src.runs.leases import Lease

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.1
MAX_RETRY_S = 2.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ends: its status, and what goes with it."""

    status: EndStatus
    answer: str | None = None  # completed: the assistant's message
    error: RunError | None = None  # failed: why
    # failed in an agent (or the supervisor): counted in isochat_agent_failures_total
    agent: str | None = None
    usage: Usage | None = None
    route: str | None = None  # the route triage chose, if not stored yet

    @classmethod
    def completed(
        cls, answer: str, *, usage: Usage | None = None, route: str | None = None
    ) -> Outcome:
        return cls("completed", answer=answer, usage=usage, route=route)

    @classmethod
    def failed(
        cls,
        error: RunError,
        *,
        agent: str | None = None,
        usage: Usage | None = None,
        route: str | None = None,
    ) -> Outcome:
        return cls("failed", error=error, agent=agent, usage=usage, route=route)

    @classmethod
    def cancelled(cls, *, usage: Usage | None = None, route: str | None = None) -> Outcome:
        return cls("cancelled", usage=usage, route=route)


Starter = Callable[[Promoted], None]


class RunEnder:
    def __init__(
        self,
        *,
        database: Database,
        broker: EventBroker,
        metrics: Metrics,
        retry_for_s: float,
        lease: Lease,
        starter: Starter | None = None,
    ) -> None:
        self._database = database
        self._broker = broker
        self._metrics = metrics
        self._retry_for_s = retry_for_s
        self._lease = lease
        self._starter = starter

    def stop_starting(self) -> None:
        """From now on, an end starts no queued run (this process is shutting down)."""
        self._starter = None

    async def start_stalled(self, thread_id: str) -> bool:
        """Start the head of a queue that has nothing active ahead of it (its thread's run
        ended while its process shut down); whether one started here."""
        if self._starter is None:
            return False
        now = utcnow()
        promoted = await self._database.write(
            queue.start_stalled,
            thread_id=thread_id,
            owner_id=self._lease.owner_id,
            lease_until=self._lease.until(now),
            ts=now,
        )
        if promoted is None:
            return False
        self._start(promoted)
        return True

    async def end(
        self,
        *,
        run_id: str,
        thread_id: str,
        user_id: str,
        outcome: Outcome,
        from_status: RunStatus = "running",
        lease_expired_before: datetime | None = None,
    ) -> Ended | None:
        """End the run as ``outcome`` says if it is still ``from_status`` (and, with
        ``lease_expired_before``, its owner stopped vouching for it before then): stored,
        published, counted. None when someone else ended it first. Raises what kept it from
        being stored (the database away for longer than ``retry_for_s``).

        Finished even if the caller is cancelled meanwhile (then re-raised): an end half done
        would be stored but never published."""
        return await uninterrupted(
            self._end(
                run_id=run_id,
                thread_id=thread_id,
                user_id=user_id,
                outcome=outcome,
                from_status=from_status,
                lease_expired_before=lease_expired_before,
            )
        )

    async def _end(
        self,
        *,
        run_id: str,
        thread_id: str,
        user_id: str,
        outcome: Outcome,
        from_status: RunStatus,
        lease_expired_before: datetime | None,
    ) -> Ended | None:
        ts = utcnow()  # also how this ender knows its own end when it reads one back
        successor = None
        if self._starter is not None:
            successor = Successor(self._lease.owner_id, self._lease.until(ts))
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._retry_for_s
        delay = FIRST_RETRY_S
        failure: Exception | None = None  # set while the last write's fate is unknown
        while True:
            if failure is None:
                try:
                    ended = await self._database.write(
                        ledger.finish,
                        run_id=run_id,
                        thread_id=thread_id,
                        status=outcome.status,
                        ts=ts,
                        error=outcome.error,
                        answer=outcome.answer,
                        route=outcome.route,
                        usage=outcome.usage,
                        from_status=from_status,
                        lease_expired_before=lease_expired_before,
                        successor=successor,
                    )
                    break
                except Exception as exc:
                    if not unavailable(exc):
                        raise
                    failure = exc
                    log.warning(
                        "the end of run %s may not have been stored (%s)", run_id, repr(exc)
                    )
            # What is stored decides: read back before writing again, for as long as it takes.
            stored = await self._read_back(run_id, successor)
            if isinstance(stored, Ended):
                mine = stored.run.finished_at == ts and stored.run.status == outcome.status
                if mine:
                    log.info("the end of run %s was stored after its deadline", run_id)
                ended = stored if mine else None
                break
            if stored is None or (isinstance(stored, Run) and stored.ended):
                return None  # ended by someone else (or gone with its thread)
            if isinstance(stored, Run):
                failure = None  # not stored: the write can be tried again
            if loop.time() + delay > give_up_at:
                raise failure or DatabaseUnavailable(f"the end of run {run_id} was not stored")
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_S)
        if ended is None:
            return None
        self._count(ended, outcome)
        if ended.next is not None:
            self._start(ended.next)  # first: its task is registered for cancels at once
        await publish_stored(self._broker, user_id, [ended.event])
        return ended

    def _start(self, promoted: Promoted) -> None:
        log.info("run %s starts: the run ahead of it ended", promoted.run.id)
        starter = self._starter
        if starter is None:  # shut down meanwhile: its lease lapses, and the sweep ends it
            log.warning("run %s was started as this process stopped", promoted.run.id)
            return
        try:
            starter(promoted)
        except Exception as exc:  # its lease lapses, and the sweep ends it
            log.warning("run %s could not be started here: %s", promoted.run.id, repr(exc))

    async def _read_back(
        self, run_id: str, successor: Successor | None
    ) -> Run | Ended | Exception | None:
        """What is stored of the run's end, or the error that kept it from being read."""
        try:
            return await self._database.write(
                readback.stored_end,
                run_id=run_id,
                successor_id=None if successor is None else successor.owner_id,
            )
        except Exception as exc:
            if not unavailable(exc):
                raise
            return exc

    def _count(self, ended: Ended, outcome: Outcome) -> None:
        run = ended.run
        assert run.finished_at is not None
        self._metrics.run_ended(
            status=run.status, seconds=(run.finished_at - run.created_at).total_seconds()
        )
        if outcome.agent is not None and outcome.error is not None:
            self._metrics.agent_failed(agent=outcome.agent, code=outcome.error.code)
