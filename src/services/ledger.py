"""The run ledger: the run's state machine, and the only code that writes runs and their events.

    start -> running --append (seq n+1)--> running --finish--> completed | failed | cancelled

Every step is one statement on the run's row that also checks the run is still ``running``, so
the run's own emitter, a cancel from another worker and the lease sweep can race freely: exactly
one of them ends the run, each event takes the next seq, and whoever loses learns it
(``RunAlreadyFinished``) instead of colliding on ``(run_id, seq)``. PostgreSQL re-checks the
``WHERE`` after waiting for a concurrent writer of the row; SQLite has one writer at a time.

Functions take the caller's session and never commit: the use case owns the transaction.
Statements are SQLAlchemy Core: these are the hot path of every run, and the ORM's unit of work
costs several times more for single-row writes.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from src.services.database.models import MessageRow, RunEventRow, RunRow, ThreadRow
from src.services.domain import Event, Message, Run, RunError, RunStatus
from src.services.errors import NotFound, RateLimited, RunInProgress

# A use case's session, or a bare connection (cheaper, for the emitter's writes).
Executor = AsyncSession | AsyncConnection

INTERRUPTED = RunError("interrupted", "the server stopped while the run was in progress")


class RunAlreadyFinished(Exception):
    """The run reached a terminal state elsewhere first (a cancel from another process, the
    lease sweep): the writer that lost must write nothing more for it."""


async def start(
    session: Executor,
    *,
    run: Run,
    message: Message,
    owner_id: str,
    lease_until: datetime,
    request_id: str | None,
    max_running_per_user: int,
) -> None:
    """Check the thread's owner and the user's running runs, store the user's message and the
    run ``running`` under ``owner_id``'s lease. The database refuses a second running run on
    the thread (``RunInProgress``)."""
    owned = await session.scalar(
        select(ThreadRow.id).where(ThreadRow.id == run.thread_id, ThreadRow.user_id == run.user_id)
    )
    if owned is None:
        raise NotFound("thread not found")
    # Counted by the database, so the limit holds across workers and hosts too.
    running = await session.scalar(
        select(func.count()).where(RunRow.user_id == run.user_id, RunRow.status == "running")
    )
    if int(running or 0) >= max_running_per_user:
        raise RateLimited(
            f"at most {max_running_per_user} runs may be in progress at once", retry_after_s=1
        )
    await session.execute(insert(MessageRow).values(**_message_values(message)))
    try:
        await session.execute(
            insert(RunRow).values(
                id=run.id,
                thread_id=run.thread_id,
                user_id=run.user_id,
                status="running",
                request_id=request_id,
                created_at=run.created_at,
                owner_id=owner_id,
                lease_expires_at=lease_until,
                last_seq=0,
            )
        )
    except IntegrityError:  # the one-running-run-per-thread index refused it
        raise RunInProgress("another run of this thread is still running") from None


async def append(
    session: Executor,
    *,
    run_id: str,
    thread_id: str,
    type_: str,
    agent: str | None,
    data: dict[str, Any],
    ts: datetime,
    lease_until: datetime | None = None,
    route: str | None = None,
) -> Event:
    """Store the run's next event, numbered after the last one; renews the run's lease and
    records its ``route`` on the way. ``RunAlreadyFinished`` if the run is no longer running."""
    values: dict[str, Any] = {"last_seq": RunRow.last_seq + 1}
    if lease_until is not None:
        values["lease_expires_at"] = lease_until
    if route is not None:
        values["route"] = route
    seq = await session.scalar(
        update(RunRow)
        .where(RunRow.id == run_id, RunRow.status == "running")
        .values(values)
        .returning(RunRow.last_seq)
    )
    if seq is None:
        raise RunAlreadyFinished(f"run {run_id} has already ended")
    event = Event(
        type=type_, run_id=run_id, thread_id=thread_id, seq=seq, ts=ts, agent=agent, data=data
    )
    await session.execute(insert(RunEventRow).values(**_event_values(event)))
    return event


async def finish(
    session: Executor,
    *,
    run_id: str,
    thread_id: str,
    error: RunError | None,
    cancelled: bool = False,
    message: Message | None = None,
    ts: datetime,
    route: str | None = None,
    lease_expired_before: datetime | None = None,
) -> Event | None:
    """End a running run with its one final event: ``completed`` with the assistant's
    ``message``, ``failed`` with ``error``, or ``cancelled``. None (nothing written) when it
    had already ended, or, with ``lease_expired_before``, when its lease is still live."""
    status: RunStatus
    if message is not None:
        status, final_type, data = "completed", "run_completed", {"message": message.to_json()}
    elif error is not None:
        status, final_type, data = "failed", "run_failed", {"error": error.to_json()}
    elif cancelled:
        status, final_type, data = "cancelled", "run_cancelled", {}
    else:
        raise ValueError("a run ends with a message, an error or a cancel")
    values: dict[str, Any] = {
        "status": status,
        "error_code": None if error is None else error.code,
        "error_message": None if error is None else error.message,
        "finished_at": ts,
        "lease_expires_at": None,
        "last_seq": RunRow.last_seq + 1,
    }
    if route is not None:
        values["route"] = route
    condition = and_(RunRow.id == run_id, RunRow.status == "running")
    if lease_expired_before is not None:
        condition = and_(condition, _lease_expired(lease_expired_before))
    seq = await session.scalar(
        update(RunRow).where(condition).values(values).returning(RunRow.last_seq)
    )
    if seq is None:
        return None
    if message is not None:
        await session.execute(insert(MessageRow).values(**_message_values(message)))
    event = Event(
        type=final_type, run_id=run_id, thread_id=thread_id, seq=seq, ts=ts, agent=None, data=data
    )
    await session.execute(insert(RunEventRow).values(**_event_values(event)))
    return event


async def renew_leases(
    session: Executor, *, owner_id: str, run_ids: list[str], until: datetime
) -> None:
    """Extend the leases of ``owner_id``'s runs that it still executes."""
    if run_ids:
        await session.execute(
            update(RunRow)
            .where(RunRow.id.in_(run_ids), RunRow.owner_id == owner_id, RunRow.status == "running")
            .values(lease_expires_at=until)
        )


async def expired_runs(session: Executor, *, now: datetime, limit: int = 100) -> list[Run]:
    """Running runs whose owner stopped vouching for them before ``now`` (runs written before
    leases existed have none, and count as expired)."""
    rows = await session.execute(
        select(RunRow.id, RunRow.thread_id, RunRow.user_id, RunRow.created_at)
        .where(RunRow.status == "running", _lease_expired(now))
        .limit(limit)
    )
    return [
        Run(
            id=run_id,
            thread_id=thread_id,
            user_id=user_id,
            status="running",
            route=None,
            error=None,
            created_at=created_at,
            finished_at=None,
        )
        for run_id, thread_id, user_id, created_at in rows
    ]


def _lease_expired(now: datetime) -> Any:
    return or_(RunRow.lease_expires_at.is_(None), RunRow.lease_expires_at < now)


def _message_values(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "thread_id": message.thread_id,
        "role": message.role,
        "content": message.content,
        "run_id": message.run_id,
        "created_at": message.created_at,
    }


def _event_values(event: Event) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "seq": event.seq,
        "type": event.type,
        "agent": event.agent,
        "data": json.dumps(event.data, ensure_ascii=False),
        "ts": event.ts,
    }
