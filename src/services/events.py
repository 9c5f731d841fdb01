"""A run's event emitter: stores each event (seq 1..n) in its own short transaction, then
publishes it to the run's owner. It also writes the run's one terminal transaction, because the
final event must be stored together with the run's terminal state."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.context import RunContext
from src.aio import uninterrupted
from src.services.broker import EventBroker
from src.services.database import repositories as repo
from src.services.database.engine import atomic, transaction
from src.services.database.models import utcnow
from src.services.domain import Event, Message, RunError, RunStatus

log = logging.getLogger(__name__)


class RunAlreadyFinished(Exception):
    """The run reached a terminal state elsewhere (a cancel from another worker) first."""


class EventEmitter:
    def __init__(self, *, context: RunContext, session: AsyncSession, broker: EventBroker) -> None:
        self._context = context
        self._session = session
        self._broker = broker
        self._seq = 0
        self.finished = False

    def _event(self, type_: str, agent: str | None, data: dict[str, Any]) -> Event:
        ctx = self._context
        return Event(
            type=type_,
            run_id=ctx.run_id,
            thread_id=ctx.thread_id,
            seq=self._seq + 1,
            ts=utcnow(),
            agent=agent,
            data=data,
        )

    async def emit(
        self, type_: str, *, agent: str | None = None, data: dict[str, Any] | None = None
    ) -> Event:
        if self.finished:
            raise RunAlreadyFinished(f"run {self._context.run_id} has already ended")
        event = self._event(type_, agent, data or {})

        async def store(session: AsyncSession) -> None:
            await repo.add_event(session, event)

        await uninterrupted(self._record(event, store))
        return event

    async def _record(
        self, event: Event, store: Callable[[AsyncSession], Awaitable[None]], *, final: bool = False
    ) -> None:
        """Store, number and publish ``event`` as one step that a cancellation cannot split:
        a stored event that was not counted would hand its seq to the next one, and one that
        was not published would be missing from the live stream."""
        await transaction(self._session, store)
        self._seq = event.seq  # only a stored event takes a number: seq never has gaps
        self.finished = final
        await self._publish(event)

    async def set_route(self, route: str) -> None:
        async def store(session: AsyncSession) -> None:
            await repo.set_route(session, run_id=self._context.run_id, route=route)

        await atomic(self._session, store)

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
        await self._finish(
            "completed", None, "run_completed", {"message": message.to_json()}, message=message
        )
        return message

    async def fail(self, error: RunError) -> None:
        await self._finish("failed", error, "run_failed", {"error": error.to_json()})

    async def cancel(self) -> None:
        await self._finish("cancelled", None, "run_cancelled", {})

    async def _finish(
        self,
        status: RunStatus,
        error: RunError | None,
        type_: str,
        data: dict[str, Any],
        *,
        message: Message | None = None,
    ) -> None:
        if self.finished:
            raise RunAlreadyFinished(f"run {self._context.run_id} has already ended")
        event = self._event(type_, None, data)

        async def store(session: AsyncSession) -> None:
            moved = await repo.finish_run(
                session,
                run_id=self._context.run_id,
                status=status,
                error=error,
                finished_at=event.ts,
            )
            if not moved:
                raise RunAlreadyFinished(f"run {self._context.run_id} has already ended")
            if message is not None:
                await repo.add_message(session, message)
            await repo.add_event(session, event)

        await uninterrupted(self._record(event, store, final=True))

    async def _publish(self, event: Event) -> None:
        try:
            await self._broker.publish(self._context.user_id, event)
        except Exception:
            # The event is stored: a client that missed it live gets it by replay.
            log.exception("publishing event %s of run %s failed", event.seq, event.run_id)
