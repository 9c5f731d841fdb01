"""A thread's runs one at a time: the queue of runs that wait their turn behind the busy one
(the ledger's other transitions are in ``src/runs/ledger.py``, built the same way: guarded
statements, plain functions on the caller's connection that never commit).

    queued --(the run ahead of it ends: in the ender's same transaction)--> running
       └──cancel──> cancelled (it never started)

A thread is busy while it has a run running, awaiting approval, or queued. A message sent then
does what its ``multitask`` says (``src/runs/starting.py``): ``reject`` (409), ``enqueue`` (its run
waits behind the others, in the order of storing), ``interrupt`` or ``rollback`` (its run waits
ahead of the others, and the busy run is marked ``preempted``: whoever ends it keeps its answer
so far, or removes it, and starts the head of the queue, all in one transaction).

Every transaction that starts a run or ends a thread's active one holds the thread's row
first (``hold_thread``: PostgreSQL's ``FOR NO KEY UPDATE``; SQLite has one writer at a time),
before any run row: two of them never interleave on a thread, so the queue keeps the order of
storing, its limit is exact, and a queue is never left with nothing running ahead of it. (A
shutdown starts nothing: what it leaves queued, any live process's sweep starts,
``stalled_queues``.)
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import bindparam, exists, select, text, union_all, update
from sqlalchemy.engine import Connection

from src.runs.domain import ACTIVE_STATUSES, Message, Run, RunContext
from src.services.database.models import (
    ACTIVE_WHERE,
    EVENTS,
    MESSAGES,
    RUNS,
    THREADS,
    UTCDateTime,
)
from src.services.database.repositories import QUEUE_ORDER, QUEUED, run_of

Preemption = Literal["interrupt", "rollback"]

_THREAD = select(THREADS.c.id).where(THREADS.c.id == bindparam("thread_id"))
_OWNED_THREAD = _THREAD.where(THREADS.c.user_id == bindparam("user_id"))
# NO KEY: two holders of a thread wait for each other, while the foreign-key checks of rows
# that point at it (its runs' messages) do not.
_HELD_THREAD = _THREAD.with_for_update(key_share=True)
_HELD_OWNED_THREAD = _OWNED_THREAD.with_for_update(key_share=True)
# The condition of the partial unique index, written as it is (literal: the index serves it,
# and no expanding IN is rendered at every execution).
_ACTIVE = text(ACTIVE_WHERE)
_ACTIVE_OF_THREAD = select(RUNS).where(RUNS.c.thread_id == bindparam("thread_id"), _ACTIVE)
_ACTIVE_ID_OF_THREAD = select(RUNS.c.id).where(RUNS.c.thread_id == bindparam("thread_id"), _ACTIVE)
# Both in one statement, each part served by its partial index.
_BUSY_OF_THREAD = union_all(
    _ACTIVE_OF_THREAD, select(RUNS).where(RUNS.c.thread_id == bindparam("thread_id"), QUEUED)
)
_QUEUE_OF_THREAD = (
    select(RUNS.c.id, RUNS.c.queue_position)
    .where(RUNS.c.thread_id == bindparam("thread_id"), QUEUED)
    .order_by(*QUEUE_ORDER)
)
_RUN = select(RUNS).where(RUNS.c.id == bindparam("run_id"))
_START_QUEUED = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("run_id"), QUEUED)
    .values(
        status="running",
        owner_id=bindparam("owner_id"),
        lease_expires_at=bindparam("lease_until", type_=UTCDateTime()),
        queue_position=None,
        queue_ahead=False,
    )
)
_RETIME_MESSAGE = (
    update(MESSAGES)
    .where(MESSAGES.c.run_id == bindparam("queued_run_id"), MESSAGES.c.role == "user")
    .values(created_at=bindparam("at", type_=UTCDateTime()))
)


def hold_thread(conn: Connection, *, thread_id: str, user_id: str | None = None) -> bool:
    """Hold the thread's row until the transaction ends (and, with ``user_id``, check that it
    is the user's): whether it is there."""
    params = {"thread_id": thread_id, "user_id": user_id}
    if conn.dialect.name == "sqlite":
        # One writer at a time holds every row already; only the owner's check is left.
        return user_id is None or conn.scalar(_OWNED_THREAD, params) is not None
    held = _HELD_THREAD if user_id is None else _HELD_OWNED_THREAD
    return conn.scalar(held, params) is not None


@dataclass(frozen=True, slots=True)
class Busy:
    """What keeps a thread busy: its active run (running or paused), and its queued runs in
    the order they will start."""

    active: Run | None
    queued: list[str]
    last_position: int

    @property
    def first(self) -> str:
        """The run a refused message is told about: the active one, else the queue's head."""
        return self.active.id if self.active is not None else self.queued[0]


def busy(conn: Connection, *, thread_id: str) -> Busy | None:
    """What keeps the thread busy, None when nothing does (read while holding it)."""
    rows = conn.execute(_BUSY_OF_THREAD, {"thread_id": thread_id}).all()
    if not rows:
        return None
    active = next((run_of(row) for row in rows if row.status != "queued"), None)
    queued = sorted(
        (row for row in rows if row.status == "queued"),
        key=lambda row: (not row.queue_ahead, row.queue_position or 0),
    )
    last = max((row.queue_position or 0 for row in queued), default=0)
    return Busy(active, [row.id for row in queued], last)


def enqueue_values(busy: Busy, *, ahead: bool, grants: frozenset[str]) -> dict[str, Any]:
    """A queued run's own columns: its place (after every queued run; ``ahead``: before the
    ones that did not preempt), and the grants it runs with."""
    return {
        "queue_position": busy.last_position + 1,
        "queue_ahead": ahead,
        "grants": json.dumps(sorted(grants)),
    }


def preempt(conn: Connection, *, run_id: str, how: Preemption) -> None:
    """Mark an active run displaced by a newer message: whoever ends it stores its end as
    ``how`` says (the first mark stands)."""
    conn.execute(
        update(RUNS)
        .where(RUNS.c.id == run_id, _ACTIVE, RUNS.c.preempted.is_(None))
        .values(preempted=how)
    )


@dataclass(frozen=True, slots=True)
class Promoted:
    """A queued run that has just been started (``running`` under the promoting process's
    lease): everything a process needs to run it."""

    run: Run
    context: RunContext


def start_next(
    conn: Connection, *, thread_id: str, owner_id: str, lease_until: datetime, ts: datetime
) -> Promoted | None:
    """Start the head of the thread's queue under ``owner_id``'s lease, if it has one and no
    run is active (the caller holds the thread). Its question, and every message still queued
    behind it, move to ``ts`` on: a queued message takes its place in the conversation when its
    run starts, after the answer before it."""
    params = {"thread_id": thread_id}
    queued = [run_id for run_id, _ in conn.execute(_QUEUE_OF_THREAD, params)]  # mostly none
    if not queued or conn.scalar(_ACTIVE_ID_OF_THREAD, params) is not None:
        return None
    while queued:
        head = queued.pop(0)
        # Guarded: a cancel of the queued run (which does not hold the thread) may win.
        started = conn.execute(
            _START_QUEUED, {"run_id": head, "owner_id": owner_id, "lease_until": lease_until}
        )
        if started.rowcount:
            break
    else:
        return None
    conn.execute(
        _RETIME_MESSAGE,
        [
            {"queued_run_id": run_id, "at": ts + timedelta(microseconds=1 + n)}
            for n, run_id in enumerate([head, *queued])
        ],
    )
    return _promoted(conn, conn.execute(_RUN, {"run_id": head}).one())


def start_stalled(
    conn: Connection, *, thread_id: str, owner_id: str, lease_until: datetime, ts: datetime
) -> Promoted | None:
    """``start_next`` for a queue found stalled (``stalled_queues``), holding its thread."""
    if not hold_thread(conn, thread_id=thread_id):
        return None
    return start_next(conn, thread_id=thread_id, owner_id=owner_id, lease_until=lease_until, ts=ts)


def started_by(conn: Connection, *, thread_id: str, owner_id: str) -> Promoted | None:
    """The run ``start_next`` started for ``owner_id`` on the thread, if it has not begun yet
    (for an ender whose write's fate was unknown, and that found it stored after all)."""
    row = conn.execute(_ACTIVE_OF_THREAD, {"thread_id": thread_id}).first()
    if row is None or row.status != "running" or row.owner_id != owner_id or row.last_seq:
        return None
    return _promoted(conn, row)


def _promoted(conn: Connection, row: Any) -> Promoted:
    question = conn.scalar(
        select(MESSAGES.c.content).where(MESSAGES.c.run_id == row.id, MESSAGES.c.role == "user")
    )
    run = Run.running(
        id=row.id, thread_id=row.thread_id, user_id=row.user_id, created_at=row.created_at
    )
    context = RunContext(
        run_id=row.id,
        thread_id=row.thread_id,
        user_id=row.user_id,
        request_id=row.request_id,
        grants=frozenset(json.loads(row.grants or "[]")),
        content=question or "",
        route=row.route,  # chosen by its caller, or None: triage chooses
    )
    return Promoted(run, context)


def stalled_queues(conn: Connection, *, limit: int = 100) -> list[str]:
    """Threads with queued runs and nothing active ahead of them (left so by a shutdown)."""
    ahead = RUNS.alias("ahead")
    active = select(ahead.c.id).where(
        ahead.c.thread_id == RUNS.c.thread_id, ahead.c.status.in_(ACTIVE_STATUSES)
    )  # (rare: every third of a lease)
    rows = conn.execute(
        select(RUNS.c.thread_id).where(QUEUED, ~exists(active)).distinct().limit(limit)
    )
    return [thread_id for (thread_id,) in rows]


def answer_so_far(conn: Connection, *, run_id: str) -> str:
    """What the run had answered: its ``agent_thinking`` texts, in order (concatenated, they
    are its answer)."""
    rows = conn.execute(
        select(EVENTS.c.data)
        .where(EVENTS.c.run_id == run_id, EVENTS.c.type == "agent_thinking")
        .order_by(EVENTS.c.seq)
    )
    return "".join(str(json.loads(data).get("text", "")) for (data,) in rows)


def interrupted_message(*, run_id: str, thread_id: str, content: str, ts: datetime) -> Message:
    """The answer of a run a newer message interrupted, as far as it had come."""
    return Message(
        id=str(uuid.uuid4()),
        thread_id=thread_id,
        role="assistant",
        content=content,
        run_id=run_id,
        created_at=ts,
        interrupted=True,
    )
