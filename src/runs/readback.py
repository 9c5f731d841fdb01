"""Read-backs: what is stored of a write whose fate is unknown (a deadline cut it off, or the
connection went, while the database may have gone on and committed). Run as write
transactions, they wait for the write in doubt: SQLite has one writer at a time, and
PostgreSQL's ``FOR UPDATE`` waits for the row's lock. The one ender (``src/runs/ender.py``)
and the emitter decide nothing before one of these has answered."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from src.runs import queue
from src.runs.domain import Event, Run
from src.runs.ledger import RUN_FOR_UPDATE, Ended
from src.services.database.models import EVENTS, UTCDateTime
from src.services.database.repositories import assistant_message, event_of, run_of

_EVENT = select(EVENTS).where(
    EVENTS.c.run_id == bindparam("run_id"), EVENTS.c.seq == bindparam("seq")
)
_EVENT_AT = select(EVENTS).where(
    EVENTS.c.run_id == bindparam("run_id"),
    EVENTS.c.type == bindparam("type"),
    EVENTS.c.ts == bindparam("ts", type_=UTCDateTime()),
)


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
