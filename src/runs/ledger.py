"""The run ledger: the run's state machine, and the only code that writes runs and their events.

    start -> running --append (seq n+1)--> running --finish--> completed | failed | cancelled

Every transition is one statement on the run's row that also checks the state it leaves
(``UPDATE ... WHERE status = <from> RETURNING``), so the run's own emitter, a cancel from
another worker and the lease sweep can race freely: exactly one of them ends the run, each event
takes the next seq, and whoever loses learns it (``RunAlreadyFinished``, or None) instead of
colliding on ``(run_id, seq)``. PostgreSQL re-checks the ``WHERE`` after waiting for a
concurrent writer of the row; SQLite has one writer at a time.

Functions are plain (synchronous) code on the caller's connection and never commit: the caller
runs each in one transaction with ``Database.write``, which runs the whole transaction in one go
on the database's writer (for SQLite, one trip to its writer thread instead of one per
statement). Statements are SQLAlchemy Core, built once: these are the hot path of every run.
Ending a run goes through ``src/runs/ender.py``, which also publishes and counts the end.
Built the same way, beside it: ``starting.py`` (a message and its run, running or queued),
``queue.py`` (a thread's runs one at a time), ``pauses.py`` (a run that waits for a person:
pause, decide, resume) and ``readback.py`` (what is stored of a write in doubt).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    Integer,
    String,
    Text,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection

from src.runs import queue
from src.runs.domain import (
    ACTIVE_STATUSES,
    FINAL_EVENT_OF,
    Event,
    Message,
    Run,
    RunError,
    RunStatus,
    Usage,
)
from src.services.database.models import APPROVALS, EVENTS, MESSAGES, RUNS, UTCDateTime

EndStatus = Literal["completed", "failed", "cancelled"]
INTERRUPTED = RunError("interrupted", "the server stopped while the run was in progress")
UNKNOWN_ERROR = RunError("internal_error", "an internal error ended the run")


class RunAlreadyFinished(Exception):
    """The run reached a terminal state elsewhere first (a cancel from another process, the
    lease sweep): the writer that lost must write nothing more for it."""


# The statements of the hot path, built once: building a statement (coercions, cache keys)
# costs more than executing it. Tables, not ORM classes, so nothing goes through the ORM.
INSERT_MESSAGE = insert(MESSAGES)
INSERT_RUN = insert(RUNS)
INSERT_EVENT = insert(EVENTS)
# The next seq, taken only while the run is running: one statement on the run's row.
_NEXT_SEQ = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("run_id"), RUNS.c.status == bindparam("in_status"))
    .values(
        last_seq=RUNS.c.last_seq + 1,
        lease_expires_at=func.coalesce(
            bindparam("lease_until", type_=UTCDateTime()), RUNS.c.lease_expires_at
        ),
        route=func.coalesce(bindparam("new_route", type_=String()), RUNS.c.route),
    )
    .returning(RUNS.c.last_seq)
)
_FINISH_VALUES = {
    "status": bindparam("new_status"),
    "error_code": bindparam("error_code", type_=String()),
    "error_message": bindparam("error_message", type_=Text()),
    "finished_at": bindparam("finished_at", type_=UTCDateTime()),
    "lease_expires_at": None,
    "last_seq": RUNS.c.last_seq + 1,
    "route": func.coalesce(bindparam("new_route", type_=String()), RUNS.c.route),
    "prompt_tokens": bindparam("prompt_tokens", type_=Integer()),
    "completion_tokens": bindparam("completion_tokens", type_=Integer()),
    "pause_state": None,
    "pause_expires_at": None,
}
# The ended run comes back with the final seq: nobody has to read it again.
_ENDED_RUN = (
    RUNS.c.last_seq,
    RUNS.c.user_id,
    RUNS.c.route,
    RUNS.c.created_at,
    RUNS.c.preempted,
)
_FROM = (RUNS.c.id == bindparam("run_id"), RUNS.c.status == bindparam("from_status"))
_FINISH = update(RUNS).where(*_FROM).values(_FINISH_VALUES).returning(*_ENDED_RUN)
_FINISH_IF_LEASE_EXPIRED = (
    update(RUNS)
    .where(
        *_FROM,
        or_(
            RUNS.c.lease_expires_at.is_(None),
            RUNS.c.lease_expires_at < bindparam("expired_before", type_=UTCDateTime()),
        ),
    )
    .values(_FINISH_VALUES)
    .returning(*_ENDED_RUN)
)
# Read-backs (rare: after a write whose fate is unknown).
RUN_FOR_UPDATE = select(RUNS).where(RUNS.c.id == bindparam("run_id")).with_for_update()


@dataclass(frozen=True, slots=True)
class Ended:
    """A run's end as stored: the run as it ended, its final event, (completed) the
    assistant's message, and the queued run of its thread that started in its place.
    A run rolled back is not stored at all: its ``event`` is only published."""

    run: Run
    event: Event
    message: Message | None = None
    next: queue.Promoted | None = None


@dataclass(frozen=True, slots=True)
class Successor:
    """Who starts the head of the thread's queue when a run ends: this process, under its
    lease."""

    owner_id: str
    lease_until: datetime


def append(
    conn: Connection,
    *,
    run_id: str,
    thread_id: str,
    type_: str,
    agent: str | None,
    data: dict[str, Any],
    ts: datetime,
    lease_until: datetime | None = None,
    route: str | None = None,
    in_status: RunStatus = "running",
) -> Event:
    """Store the run's next event, numbered after the last one; renews the run's lease and
    records its ``route`` on the way. ``RunAlreadyFinished`` if the run is no longer
    ``in_status``."""
    params = {"run_id": run_id, "lease_until": lease_until, "new_route": route}
    seq = conn.scalar(_NEXT_SEQ, params | {"in_status": in_status})
    if seq is None:
        raise RunAlreadyFinished(f"run {run_id} has already ended")
    event = Event(
        type=type_, run_id=run_id, thread_id=thread_id, seq=seq, ts=ts, agent=agent, data=data
    )
    conn.execute(INSERT_EVENT, event_values(event))
    return event


def finish(
    conn: Connection,
    *,
    run_id: str,
    thread_id: str,
    status: EndStatus,
    ts: datetime,
    error: RunError | None = None,
    answer: str | None = None,
    route: str | None = None,
    usage: Usage | None = None,
    from_status: RunStatus = "running",
    lease_expired_before: datetime | None = None,
    successor: Successor | None = None,
) -> Ended | None:
    """End a run that is ``from_status`` with its one final event: ``completed`` with the
    assistant's ``answer``, ``failed`` with ``error``, or ``cancelled``; with the ``usage`` of
    its model calls; ``finished_at`` is ``ts``. None (nothing written) when it was no longer
    ``from_status``, or, with ``lease_expired_before``, when its lease is still live.

    A run a newer message preempted ends as that message asked (``src/runs/queue.py``):
    cancelled with its answer so far kept as an interrupted message, or rolled back (removed
    with its messages and events, whatever its end). With ``successor``, the end of the
    thread's active run starts the head of its queue, in the same transaction."""
    active = from_status in ACTIVE_STATUSES
    if active:
        queue.hold_thread(conn, thread_id=thread_id)
    params: dict[str, Any] = {
        "run_id": run_id,
        "from_status": from_status,
        "new_status": status,
        "error_code": None if error is None else error.code,
        "error_message": None if error is None else error.message,
        "finished_at": ts,
        "new_route": route,
        "prompt_tokens": None if usage is None else usage.prompt_tokens,
        "completion_tokens": None if usage is None else usage.completion_tokens,
    }
    statement = _FINISH
    if lease_expired_before is not None:
        statement = _FINISH_IF_LEASE_EXPIRED
        params["expired_before"] = lease_expired_before
    row = conn.execute(statement, params).first()
    if row is None:
        return None
    seq, user_id, stored_route, created_at, preempted = row
    message = None
    data: dict[str, Any]
    if preempted == "rollback":
        status, error = "cancelled", None
        _remove(conn, run_id=run_id)
        data = {"rolled_back": True}
    elif status == "completed":
        message = Message(
            id=str(uuid.uuid4()),
            thread_id=thread_id,
            role="assistant",
            content=answer or "",
            run_id=run_id,
            created_at=ts,
        )
        data = {"message": message.to_json(), "usage": None if usage is None else usage.to_json()}
    elif status == "failed":
        data = {"error": (error or UNKNOWN_ERROR).to_json()}
    elif preempted == "interrupt" and (so_far := queue.answer_so_far(conn, run_id=run_id)):
        message = queue.interrupted_message(
            run_id=run_id, thread_id=thread_id, content=so_far, ts=ts
        )
        data = {"message": message.to_json()}
    else:
        data = {}
    event = Event(
        type=FINAL_EVENT_OF[status],
        run_id=run_id,
        thread_id=thread_id,
        seq=seq,
        ts=ts,
        agent=None,
        data=data,
    )
    if preempted != "rollback":
        if message is not None:
            conn.execute(INSERT_MESSAGE, message_values(message))
        conn.execute(INSERT_EVENT, event_values(event))
    run = Run(
        id=run_id,
        thread_id=thread_id,
        user_id=user_id,
        status=status,
        route=stored_route,
        error=error,
        created_at=created_at,
        finished_at=ts,
        usage=usage,
    )
    next_run = None
    if active and successor is not None:
        next_run = queue.start_next(
            conn,
            thread_id=thread_id,
            owner_id=successor.owner_id,
            lease_until=successor.lease_until,
            ts=ts,
        )
    return Ended(run=run, event=event, message=message, next=next_run)


def _remove(conn: Connection, *, run_id: str) -> None:
    """A rolled-back run goes with everything it stored: as if it had never been."""
    conn.execute(delete(APPROVALS).where(APPROVALS.c.run_id == run_id))
    conn.execute(delete(EVENTS).where(EVENTS.c.run_id == run_id))
    conn.execute(delete(MESSAGES).where(MESSAGES.c.run_id == run_id))
    conn.execute(delete(RUNS).where(RUNS.c.id == run_id))


def renew_leases(conn: Connection, *, owner_id: str, run_ids: list[str], until: datetime) -> None:
    """Extend the leases of ``owner_id``'s runs that it still executes."""
    if run_ids:
        conn.execute(
            update(RUNS)
            .where(RUNS.c.id.in_(run_ids), RUNS.c.owner_id == owner_id, RUNS.c.status == "running")
            .values(lease_expires_at=until)
        )


def expired_runs(conn: Connection, *, now: datetime, limit: int = 100) -> list[Run]:
    """Running runs whose owner stopped vouching for them before ``now`` (runs written before
    leases existed have none, and count as expired)."""
    rows = conn.execute(
        select(RUNS.c.id, RUNS.c.thread_id, RUNS.c.user_id, RUNS.c.created_at)
        .where(
            RUNS.c.status == "running",
            or_(RUNS.c.lease_expires_at.is_(None), RUNS.c.lease_expires_at < now),
        )
        .limit(limit)
    )
    return [
        Run.running(id=run_id, thread_id=thread_id, user_id=user_id, created_at=created_at)
        for run_id, thread_id, user_id, created_at in rows
    ]


def message_values(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "thread_id": message.thread_id,
        "role": message.role,
        "content": message.content,
        "run_id": message.run_id,
        "created_at": message.created_at,
        "interrupted": message.interrupted,
    }


def event_values(event: Event) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "seq": event.seq,
        "type": event.type,
        "agent": event.agent,
        "data": json.dumps(event.data, ensure_ascii=False),
        "ts": event.ts,
    }
