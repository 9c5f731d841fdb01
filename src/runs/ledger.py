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
Ending a run goes through ``src/runs/ender.py``, which also publishes and counts the end; the
transitions of a run that waits for a person (pause, decide and resume) are in
``src/runs/pauses.py``, built the same way.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

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
from sqlalchemy.exc import IntegrityError

from src.runs import queue
from src.runs.domain import (
    ACTIVE_STATUSES,
    FINAL_EVENT_OF,
    Event,
    Message,
    Multitask,
    Run,
    RunError,
    RunStatus,
    Usage,
    utcnow,
)
from src.services.database.models import APPROVALS, EVENTS, MESSAGES, RUNS, UTCDateTime
from src.services.database.repositories import assistant_message, event_of, run_of
from src.services.errors import NotFound, RateLimited, RunInProgress

EndStatus = Literal["completed", "failed", "cancelled"]
INTERRUPTED = RunError("interrupted", "the server stopped while the run was in progress")
UNKNOWN_ERROR = RunError("internal_error", "an internal error ended the run")


class RunAlreadyFinished(Exception):
    """The run reached a terminal state elsewhere first (a cancel from another process, the
    lease sweep): the writer that lost must write nothing more for it."""


# The statements of the hot path, built once: building a statement (coercions, cache keys)
# costs more than executing it. Tables, not ORM classes, so nothing goes through the ORM.
_RUNNING_OF_USER = select(func.count()).where(
    RUNS.c.user_id == bindparam("user_id"), RUNS.c.status == "running"
)
_INSERT_MESSAGE = insert(MESSAGES)
_INSERT_RUN = insert(RUNS)
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
_EVENT = select(EVENTS).where(
    EVENTS.c.run_id == bindparam("run_id"), EVENTS.c.seq == bindparam("seq")
)
_EVENT_AT = select(EVENTS).where(
    EVENTS.c.run_id == bindparam("run_id"),
    EVENTS.c.type == bindparam("type"),
    EVENTS.c.ts == bindparam("ts", type_=UTCDateTime()),
)


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


@dataclass(frozen=True, slots=True)
class Started:
    """A run as ``start`` stored it (``running``, or ``queued`` behind its thread's busy run),
    its question, and the busy run it displaced (``interrupt``, ``rollback``), for the caller
    to cancel."""

    run: Run
    message: Message
    preempts: Run | None = None


def start(
    conn: Connection,
    *,
    run_id: str,
    thread_id: str,
    user_id: str,
    content: str,
    request_id: str | None,
    grants: frozenset[str],
    owner_id: str,
    lease_s: float,
    max_running_per_user: int,
    multitask: Multitask,
    max_queued: int,
) -> Started:
    """Store the user's message and its run: ``running`` under ``owner_id``'s lease when the
    thread is idle; when it is busy, as ``multitask`` says (``src/runs/queue.py``):
    ``RunInProgress``, or ``queued`` (``RateLimited`` past ``max_queued``). ``NotFound`` for
    another user's thread. Timed here, holding the thread: messages keep the order of storing."""
    if not queue.hold_thread(conn, thread_id=thread_id, user_id=user_id):
        raise NotFound("thread not found")
    now = utcnow()
    busy = queue.busy(conn, thread_id=thread_id)
    values: dict[str, Any] = {
        "id": run_id,
        "thread_id": thread_id,
        "user_id": user_id,
        "status": "running",
        "route": None,
        "error_code": None,
        "error_message": None,
        "request_id": request_id,
        "created_at": now,
        "finished_at": None,
        "owner_id": owner_id,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "last_seq": 0,
    }
    preempts = None
    if busy is None:
        # Counted by the database, so the limit holds across workers and hosts too.
        running = conn.scalar(_RUNNING_OF_USER, {"user_id": user_id})
        if int(running or 0) >= max_running_per_user:
            raise RateLimited(
                f"at most {max_running_per_user} runs may be in progress at once", retry_after_s=1
            )
    elif multitask == "reject":
        raise RunInProgress("another run of this thread is in progress", run_id=busy.first)
    elif len(busy.queued) >= max_queued:
        raise RateLimited(
            f"at most {max_queued} runs may wait their turn on a thread", retry_after_s=1
        )
    else:
        ahead = multitask != "enqueue"
        values |= queue.enqueue_values(busy, ahead=ahead, grants=grants)
        values |= {"status": "queued", "owner_id": None, "lease_expires_at": None}
        if ahead and busy.active is not None:
            queue.preempt(conn, run_id=busy.active.id, how=cast(queue.Preemption, multitask))
            preempts = busy.active
    message = Message(
        id=str(uuid.uuid4()),
        thread_id=thread_id,
        role="user",
        content=content,
        run_id=run_id,
        created_at=now,
    )
    conn.execute(_INSERT_MESSAGE, _message_values(message))
    try:
        conn.execute(_INSERT_RUN, values)
    except IntegrityError:  # the one-active-run-per-thread index refused it
        raise RunInProgress("another run of this thread is in progress") from None
    run = Run(
        id=run_id,
        thread_id=thread_id,
        user_id=user_id,
        status=values["status"],
        route=None,
        error=None,
        created_at=now,
        finished_at=None,
    )
    return Started(run, message, preempts)


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
            conn.execute(_INSERT_MESSAGE, _message_values(message))
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


def stored_end(
    conn: Connection, *, run_id: str, successor_id: str | None = None
) -> Run | Ended | None:
    """What is stored of the run's end: the ``Ended`` run (with its final event, its answer,
    and the queued run ``successor_id``'s end of it started), the run as it is if it has not
    ended, None if there is no such run.

    For a writer that cannot tell whether its own write committed (a deadline cut it off while
    the database went on). Run as a write transaction, it waits for the write in doubt: SQLite
    has one writer at a time, and PostgreSQL's ``FOR UPDATE`` waits for the row's lock."""
    row = conn.execute(RUN_FOR_UPDATE, {"run_id": run_id}).first()
    if row is None:
        return None
    run = run_of(row)
    if not run.ended:
        return run
    event = stored_event(conn, run_id=run_id, thread_id=run.thread_id, seq=row.last_seq)
    if event is None:  # an end from before final events existed: nothing to publish
        return run
    message = assistant_message(conn, run_id=run_id) if event.data.get("message") else None
    next_run = None
    if successor_id is not None:
        next_run = queue.started_by(conn, thread_id=run.thread_id, owner_id=successor_id)
    return Ended(run=run, event=event, message=message, next=next_run)


def stored_event(conn: Connection, *, run_id: str, thread_id: str, seq: int) -> Event | None:
    """The run's event ``seq``, if it is stored."""
    row = conn.execute(_EVENT, {"run_id": run_id, "seq": seq}).first()
    return None if row is None else event_of(row, thread_id=thread_id)


def stored_append(
    conn: Connection, *, run_id: str, thread_id: str, type_: str, ts: datetime
) -> Event | None:
    """The run's event of ``type_`` stored at ``ts`` (an emitter's own: its timestamps are
    its own), read back after an append whose fate is unknown: as a write transaction, after
    the append in doubt has finished (see ``stored_end``)."""
    conn.execute(RUN_FOR_UPDATE, {"run_id": run_id})
    row = conn.execute(_EVENT_AT, {"run_id": run_id, "type": type_, "ts": ts}).first()
    return None if row is None else event_of(row, thread_id=thread_id)


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


def _message_values(message: Message) -> dict[str, Any]:
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
