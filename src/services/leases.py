"""Run ownership across processes and hosts.

Every serving process has an id and vouches for the runs it executes by keeping their leases
alive: each stored event renews its run's lease, and ``LeaseKeeper`` renews all of them every
third of a lease, covering runs that wait on a long model call. A run whose lease has expired
(its process was killed, or lost the database for longer than a lease) is ended ``failed`` /
``interrupted`` with one final event by the sweep that every live process runs on the same beat
and at start-up. A run whose owner is alive is never touched: restarting one host leaves the
others' runs alone.

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
from functools import partial
from typing import Protocol

from sqlalchemy.engine import Connection

from src.services import ledger
from src.services.broker import EventBroker
from src.services.database.engine import Database
from src.services.database.models import utcnow
from src.services.domain import Run
from src.services.runs import RunRegistry

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


class EndedRunMetrics(Protocol):
    def run_ended(self, *, status: str, seconds: float) -> None: ...


class LeaseKeeper:
    """Renews this process's leases and ends runs whose owner stopped renewing theirs."""

    def __init__(
        self,
        *,
        lease: Lease,
        database: Database,
        runs: RunRegistry,
        broker: EventBroker,
        metrics: EndedRunMetrics,
    ) -> None:
        self._lease = lease
        self._database = database
        self._runs = runs
        self._broker = broker
        self._metrics = metrics
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
                log.warning("cannot renew run leases or sweep expired runs: %r", exc)
                self._failing = True
        else:
            if self._failing:
                log.info("run leases renewed again")
                self._failing = False

    async def renew(self) -> None:
        run_ids = self._runs.run_ids()
        if not run_ids:
            return
        until = self._lease.until()

        def write(conn: Connection) -> None:
            ledger.renew_leases(conn, owner_id=self._lease.owner_id, run_ids=run_ids, until=until)

        await self._database.transaction(write)

    async def sweep(self, *, now: datetime | None = None) -> int:
        """End every run whose lease had expired by ``now`` as ``interrupted``; how many it
        ended."""
        now = now or utcnow()
        expired = await self._database.transaction(lambda c: ledger.expired_runs(c, now=now))
        ended = 0
        for run in expired:
            closed = await self._database.transaction(partial(_interrupt, run=run, now=now))
            if closed is None:
                continue  # its owner wrote again, or someone else ended it, meanwhile
            ended += 1
            self._metrics.run_ended(
                status="failed", seconds=(closed.event.ts - run.created_at).total_seconds()
            )
            log.warning("run %s ended as interrupted: its owner's lease expired", run.id)
            try:
                await self._broker.publish(run.user_id, closed.event)
            except Exception as exc:  # stored: its owner's clients get it by replay
                log.warning("publishing the end of run %s failed: %r", run.id, exc)
        return ended


def _interrupt(conn: Connection, *, run: Run, now: datetime) -> ledger.Ended | None:
    """End ``run`` as interrupted, unless its owner renewed its lease since ``now``."""
    return ledger.finish(
        conn,
        run_id=run.id,
        thread_id=run.thread_id,
        error=ledger.INTERRUPTED,
        ts=utcnow(),
        lease_expired_before=now,
    )
