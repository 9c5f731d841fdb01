"""A run's event emitter: appends each event to the run ledger (seq 1..n, each in its own short
transaction) and publishes it to the run's owner. It only appends: the run's end, with its
final event, is written by the one ender (``src/runs/ender.py``).

An append whose transaction was cut off by the database deadline may still have committed
(SQLite's writer thread, or PostgreSQL, finishing it after the caller stopped waiting). Before
the run fails for it, the emitter reads back what is stored: if its event is there, it is
published and the run goes on, so the live stream has no gap the store does not have.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from src.aio import uninterrupted
from src.runs import ledger, readback
from src.runs.domain import Event, RunContext, utcnow
from src.runs.leases import Lease
from src.services.broker import EventBroker, publish_stored
from src.services.database.engine import Database
from src.services.database.failures import unavailable

log = logging.getLogger(__name__)


class EventEmitter:
    def __init__(
        self,
        *,
        context: RunContext,
        database: Database,
        broker: EventBroker,
        lease: Lease,
    ) -> None:
        self._context = context
        self._database = database
        self._broker = broker
        self._lease = lease
        self._route: str | None = None  # stored with the next write: no transaction of its own

    def set_route(self, route: str) -> None:
        """The route triage chose, stored with the run's next event."""
        self._route = route

    async def emit(
        self, type_: str, *, agent: str | None = None, data: dict[str, Any] | None = None
    ) -> Event:
        """Store the run's next event and publish it; ``RunAlreadyFinished`` once the run has
        ended (it writes nothing more)."""
        # Stored and published as one step a cancellation cannot split: an event stored but
        # not published would be missing from the live stream.
        return await uninterrupted(self._emit(type_, agent=agent, data=data or {}))

    async def _emit(self, type_: str, *, agent: str | None, data: dict[str, Any]) -> Event:
        ctx, route, now = self._context, self._route, utcnow()
        try:
            event = await self._database.write(
                ledger.append,
                run_id=ctx.run_id,
                thread_id=ctx.thread_id,
                type_=type_,
                agent=agent,
                data=data,
                ts=now,
                lease_until=self._lease.until(now),
                route=route,
            )
        except Exception as exc:
            if not unavailable(exc):
                raise
            event = await self._stored_all_the_same(type_, now, failure=exc)
        if route is not None and self._route == route:
            self._route = None
        await publish_stored(self._broker, ctx.user_id, [event])
        return event

    async def _stored_all_the_same(self, type_: str, ts: datetime, *, failure: Exception) -> Event:
        """The event an append that failed with ``failure`` stored all the same, or
        ``failure`` raised again when it stored nothing."""
        log.warning(
            "an event of run %s may not have been stored (%s); reading back",
            self._context.run_id,
            repr(failure),  # text: a record must not keep the run's frames alive
        )
        ctx = self._context
        try:
            # A write transaction: it runs after the write in doubt has finished.
            stored = await self._database.write(
                readback.stored_append,
                run_id=ctx.run_id,
                thread_id=ctx.thread_id,
                type_=type_,
                ts=ts,
            )
        except Exception as exc:
            log.warning("reading back run %s failed too: %s", ctx.run_id, repr(exc))
            raise failure from None
        if stored is None:
            raise failure
        log.info("event %s of run %s was stored after its deadline", stored.seq, ctx.run_id)
        return stored
