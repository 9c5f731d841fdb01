"""Run ownership across processes and hosts.

Every serving process has an id and vouches for the runs it executes by keeping their leases
alive: each stored event renews its run's lease, and ``LeaseKeeper`` renews all of them every
third of a lease, covering runs that wait on a long model call. A run whose lease has expired
(its process was killed, or lost the database for longer than a lease) is ended ``failed`` /
``interrupted`` with one final event by the sweep that every live process runs on the same beat
and at start-up. A run whose owner is alive is never touched: restarting one host leaves the
others' runs alone.

The same sweep ends runs that waited for approval longer than ``APPROVAL_TIMEOUT_S``
(``approval_expired``); a paused run has no owner and no lease, so nothing else touches it.
It also starts queued runs left with nothing running ahead of them (their thread's run ended
while its process shut down, which starts nothing): a queued run has no owner either.

Leases compare wall-clock times written by different hosts: their clocks must agree to within a
small part of ``RUN_LEASE_S`` (NTP does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from src.runs import ledger, pauses, queue
from src.runs.approvals import approval_expired
from src.runs.domain import utcnow
from src.runs.ender import Outcome, RunEnder
from src.runs.registry import RunRegistry
from src.services.database.engine import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lease:
    """This process's name on its runs, and how long its word holds."""

    owner_id: str
    length_s: float

    @classmethod
    def for_this_process(cls, length_s: float) -> Lease:
        # Host and pid say where to look; the random part tells a restarted process (which may
        # get the same pid in a container) from its predecessor.
        owner = f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return cls(owner_id=owner, length_s=length_s)

    def until(self, now: datetime | None = None) -> datetime:
        return (now or utcnow()) + timedelta(seconds=self.length_s)


class LeaseKeeper:
    """Renews this process's leases and ends runs whose owner stopped renewing theirs."""

    def __init__(
        self,
        *,
        lease: Lease,
        database: Database,
        runs: RunRegistry,
        ender: RunEnder,
        approval_timeout_s: float,
    ) -> None:
        self._lease = lease
        self._expired = approval_expired(approval_timeout_s)
        self._database = database
        self._runs = runs
        self._ender = ender
        self.interval_s = lease.length_s / 3
        self._failing = False

    async def keep(self) -> None:
        """Until cancelled: a beat every third of a lease."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.beat()

    async def beat(self) -> None:
        """Renew this process's leases, then sweep. A database that is away is reported once
        and tried again at the next beat; this never raises."""
        try:
            await self.renew()
            await self.sweep()
        except Exception as exc:
            if not self._failing:
                log.warning("cannot renew run leases or sweep expired runs: %s", repr(exc))
                self._failing = True
        else:
            if self._failing:
                log.info("run leases renewed again")
                self._failing = False

    async def renew(self) -> None:
        run_ids = self._runs.run_ids()
        if run_ids:
            await self._database.write(
                ledger.renew_leases,
                owner_id=self._lease.owner_id,
                run_ids=run_ids,
                until=self._lease.until(),
            )

    async def sweep(self, *, now: datetime | None = None) -> int:
        """End every run whose lease had expired by ``now`` as ``interrupted``, and every run
        whose pause for approval had expired as ``approval_expired``; how many it ended."""
        now = now or utcnow()
        ended = 0
        for run in await self._database.write(pauses.expired_pauses, now=now):
            closed = await self._ender.end(
                run_id=run.id,
                thread_id=run.thread_id,
                user_id=run.user_id,
                outcome=Outcome.failed(self._expired),
                from_status="awaiting_approval",
            )
            if closed is not None:
                ended += 1
                log.warning("run %s ended: nobody decided on its calls in time", run.id)
        for run in await self._database.write(ledger.expired_runs, now=now):
            closed = await self._ender.end(
                run_id=run.id,
                thread_id=run.thread_id,
                user_id=run.user_id,
                outcome=Outcome.failed(ledger.INTERRUPTED),
                lease_expired_before=now,
            )
            if closed is None:
                continue  # its owner wrote again, or someone else ended it, meanwhile
            ended += 1
            log.warning("run %s ended as interrupted: its owner's lease expired", run.id)
        for thread_id in await self._database.read(queue.stalled_queues):
            if await self._ender.start_stalled(thread_id):
                log.info("the queue of thread %s moves on: nothing was running ahead", thread_id)
        return ended
