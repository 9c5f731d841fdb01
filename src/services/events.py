"""A run's event emitter: appends each event to the run ledger (seq 1..n, each in its own short
transaction) and publishes it to the run's owner. It also writes the run's one terminal
transaction, because the final event is stored together with the run's terminal state.

The terminal write is the one write that must happen while the process lives: when the database
is locked or its connection is lost, it is retried with backoff, each time on a fresh pooled
connection, for up to a lease. If the database stays away longer, the run is left to the lease
sweep, which ends it once the database is back (see ``src/services/leases.py``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from src.agents.context import RunContext
from src.aio import uninterrupted
from src.services import ledger
from src.services.broker import EventBroker
from src.services.database.engine import Database, unavailable
from src.services.database.models import utcnow
from src.services.domain import Event, Message, Run, RunError, RunStatus
from src.services.leases import Lease
from src.services.ledger import RunAlreadyFinished
from src.services.usage import RunUsage

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.1
MAX_RETRY_S = 2.0

__all__ = ["EventEmitter", "RunAlreadyFinished"]


class EventEmitter:
    def __init__(
        self,
        *,
        context: RunContext,
        database: Database,
        broker: EventBroker,
        lease: Lease,
        usage: RunUsage,
    ) -> None:
        self._context = context
        self._usage = usage  # what the run's model calls used, stored with its end
        self._database = database
        self._broker = broker
        self._lease = lease
        self._route: str | None = None  # stored with the next write: no transaction of its own
        self.finished = False
        # Set once this emitter's terminal write has committed: the run as it ended.
        self.final_run: Run | None = None

    async def emit(
        self, type_: str, *, agent: str | None = None, data: dict[str, Any] | None = None
    ) -> Event:
        if self.finished:
            raise RunAlreadyFinished(f"run {self._context.run_id} has already ended")
        ctx, route, now = self._context, self._route, utcnow()

        def append(conn: Connection) -> Event:
            return ledger.append(
                conn,
                run_id=ctx.run_id,
                thread_id=ctx.thread_id,
                type_=type_,
                agent=agent,
                data=data or {},
                ts=now,
                lease_until=self._lease.until(now),
                route=route,
            )

        # Stored and published as one step a cancellation cannot split: one stored but not
        # published would be missing from the live stream.
        event = await uninterrupted(self._record(append))
        if route is not None and self._route == route:
            self._route = None
        return event

    @property
    def final_status(self) -> RunStatus | None:
        """What the run ended as, if this emitter's terminal write ended it."""
        return None if self.final_run is None else self.final_run.status

    def set_route(self, route: str) -> None:
        """The route triage chose, stored with the run's next write."""
        self._route = route

    async def complete(self, *, content: str) -> Message:
        """Store the assistant message, the run's success and ``run_completed`` at once."""
        ctx = self._context
        message = Message(
            id=str(uuid.uuid4()),
            thread_id=ctx.thread_id,
            role="assistant",
            content=content,
            run_id=ctx.run_id,
            created_at=utcnow(),
        )
        await self._finish("completed", message=message)
        return message

    async def fail(self, error: RunError) -> None:
        await self._finish("failed", error=error)

    async def cancel(self) -> None:
        await self._finish("cancelled")

    async def _finish(
        self, status: RunStatus, *, error: RunError | None = None, message: Message | None = None
    ) -> None:
        if self.finished:
            raise RunAlreadyFinished(f"run {self._context.run_id} has already ended")
        ctx, route, usage = self._context, self._route, self._usage.total

        ended: list[Run] = []

        def finish(conn: Connection) -> Event:
            final = ledger.finish(
                conn,
                run_id=ctx.run_id,
                thread_id=ctx.thread_id,
                error=error,
                cancelled=status == "cancelled",
                message=message,
                ts=utcnow(),
                route=route,
                usage=usage,
            )
            if final is None:
                raise RunAlreadyFinished(f"run {ctx.run_id} has already ended")
            ended.append(final.run)
            return final.event

        try:
            await uninterrupted(self._record(finish, durably=True))
        except RunAlreadyFinished:
            self.finished = True
            raise
        self.finished = True
        self.final_run = ended[-1]

    async def _record(
        self, write: Callable[[Connection], Event], *, durably: bool = False
    ) -> Event:
        event = await (self._write_durably(write) if durably else self._database.transaction(write))
        await self._publish(event)
        return event

    async def _write_durably(self, write: Callable[[Connection], Event]) -> Event:
        """``write``, retried with backoff while the database is unavailable, for up to a lease;
        then the last failure is raised."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._lease.length_s
        delay = FIRST_RETRY_S
        while True:
            try:
                return await self._database.transaction(write)
            except Exception as exc:
                if not unavailable(exc) or loop.time() + delay > give_up_at:
                    raise
                log.warning(
                    "the end of run %s could not be written (%r); retrying in %.1f s",
                    self._context.run_id,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_S)

    async def _publish(self, event: Event) -> None:
        try:
            await self._broker.publish(self._context.user_id, event)
        except Exception:
            # The event is stored: a client that missed it live gets it by replay.
            log.exception("publishing event %s of run %s failed", event.seq, event.run_id)
