"""The ledger's transitions of a run that waits for a person (``src/runs/ledger.py`` has the
others, built the same way: guarded statements, plain functions on the caller's connection that
never commit):

    running --pause--> awaiting_approval --(the turn's last decision)--> running

``pause`` stores what the run needs to go on and one ``approval_requested`` per waiting call;
``decide`` stores decisions (one ``approval_resolved`` each) and, with the turn's last, resumes
the run under the deciding process's lease, in the same transaction. Ending a paused run (a
cancel, an expiry) is the one ender's ``from_status="awaiting_approval"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, Text, and_, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from src.runs.domain import Decision, Event, Pause, PendingCall, Run, iso
from src.runs.ledger import (
    INSERT_EVENT,
    RUN_FOR_UPDATE,
    RunAlreadyFinished,
    append,
    event_values,
)
from src.services.database.models import APPROVALS, RUNS, UTCDateTime
from src.services.database.repositories import run_of, user_message
from src.services.errors import Conflict, Invalid, NotFound

# Pausing: the run leaves running for awaiting_approval, with no owner and no lease, taking
# one seq for each approval_requested event.
_PAUSE = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("run_id"), RUNS.c.status == "running")
    .values(
        status="awaiting_approval",
        owner_id=None,
        lease_expires_at=None,
        pause_state=bindparam("pause_state", type_=Text()),
        pause_expires_at=bindparam("pause_expires_at", type_=UTCDateTime()),
        last_seq=RUNS.c.last_seq + bindparam("events", type_=Integer()),
        route=func.coalesce(bindparam("new_route", type_=String()), RUNS.c.route),
    )
    .returning(RUNS.c.last_seq)
)
# Resuming: back to running under the deciding process's lease.
_RESUME = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("run_id"), RUNS.c.status == "awaiting_approval")
    .values(
        status="running",
        owner_id=bindparam("owner_id"),
        lease_expires_at=bindparam("lease_until", type_=UTCDateTime()),
        pause_state=None,
        pause_expires_at=None,
    )
    .returning(RUNS.c.id)
)


def pause(
    conn: Connection,
    *,
    run_id: str,
    thread_id: str,
    pause: Pause,
    ts: datetime,
    expires_at: datetime,
) -> list[Event]:
    """Pause a running run for approval of ``pause.pending``: its state stored, one
    ``approval_requested`` event and one ``run_approvals`` row per pending call.
    ``RunAlreadyFinished`` if the run is no longer running."""
    count = len(pause.pending)
    last = conn.scalar(
        _PAUSE,
        {
            "run_id": run_id,
            "pause_state": pause.state,
            "pause_expires_at": expires_at,
            "events": count,
            "new_route": pause.route,
        },
    )
    if last is None:
        raise RunAlreadyFinished(f"run {run_id} has already ended")
    events = [
        Event(
            type="approval_requested",
            run_id=run_id,
            thread_id=thread_id,
            seq=last - count + 1 + n,
            ts=ts,
            agent=pause.agent,
            data={
                "call_id": call.call_id,
                "tool": call.tool,
                "input": call.input(),
                "expires_at": iso(expires_at),
            },
        )
        for n, call in enumerate(pause.pending)
    ]
    conn.execute(INSERT_EVENT, [event_values(event) for event in events])
    conn.execute(
        insert(APPROVALS),
        [
            {
                "run_id": run_id,
                "pause": last - count + 1,
                "call_id": call.call_id,
                "tool": call.tool,
                "input": call.arguments,
                "requested_at": ts,
            }
            for call in pause.pending
        ],
    )
    return events


def _this_pause(run_id: str) -> Any:
    """The run's latest pause (its approvals rows)."""
    latest = select(func.max(APPROVALS.c.pause)).where(APPROVALS.c.run_id == run_id)
    return and_(APPROVALS.c.run_id == run_id, APPROVALS.c.pause == latest.scalar_subquery())


@dataclass(frozen=True, slots=True)
class PausedRun:
    """A paused run as a decision needs it: the run, its pending calls, and its question."""

    run: Run
    pending: list[PendingCall]
    content: str


def paused_run(conn: Connection, *, run_id: str, user_id: str) -> PausedRun | Run | None:
    """The user's run: as ``PausedRun`` when it awaits approval, else as it is (None when
    the user has no such run)."""
    row = conn.execute(select(RUNS).where(RUNS.c.id == run_id, RUNS.c.user_id == user_id)).first()
    if row is None:
        return None
    run = run_of(row)
    if run.status != "awaiting_approval":
        return run
    question = user_message(conn, run_id=run_id)
    return PausedRun(
        run, pending_calls(conn, run_id=run_id), "" if question is None else question.content
    )


def pending_calls(conn: Connection, *, run_id: str) -> list[PendingCall]:
    """The calls of the run's latest pause that wait for a decision."""
    rows = conn.execute(
        select(APPROVALS.c.call_id, APPROVALS.c.tool, APPROVALS.c.input)
        .where(_this_pause(run_id), APPROVALS.c.decision.is_(None))
        .order_by(APPROVALS.c.call_id)
    )
    return [PendingCall(call_id, tool, arguments) for call_id, tool, arguments in rows]


@dataclass(frozen=True, slots=True)
class Decided:
    """What ``decide`` stored: the ``approval_resolved`` events, and, when the decisions
    completed the turn, the run's resumption (its stored state and every decision)."""

    events: list[Event]
    resumed: tuple[str, str | None, tuple[Decision, ...]] | None  # state, route, decisions


def decide(
    conn: Connection,
    *,
    run_id: str,
    user_id: str,
    decisions: Sequence[Decision],
    decided_by: str,
    ts: datetime,
    owner_id: str,
    lease_until: datetime,
) -> Decided:
    """Store ``decisions`` about the user's paused run, one ``approval_resolved`` event each;
    when no call of the pause is left undecided, the run resumes (``running`` under
    ``owner_id``'s lease) in the same transaction, so of two deciders exactly one resumes it.
    ``NotFound`` for another user's run, ``Conflict`` for a run that is not paused or a call
    decided already, ``Invalid`` for a call id that is not one of its pending calls."""
    row = conn.execute(RUN_FOR_UPDATE, {"run_id": run_id}).first()
    if row is None or row.user_id != user_id:
        raise NotFound("run not found")
    run = run_of(row)
    if run.status != "awaiting_approval":
        raise Conflict(f"the run is not awaiting approval ({run.status})", run=run.to_json())
    if row.pause_expires_at is not None and row.pause_expires_at < ts:
        raise Conflict("the run's pause has expired", run=run.to_json())
    decided: dict[str, str | None] = dict(
        conn.execute(
            select(APPROVALS.c.call_id, APPROVALS.c.decision).where(_this_pause(run_id))
        ).all()
    )
    seen: set[str] = set()
    for n, decision in enumerate(decisions):
        if decision.call_id not in decided:
            raise Invalid(f"decisions.{n}.call_id: not a pending call of this run")
        if decided[decision.call_id] is not None or decision.call_id in seen:
            raise Conflict(f"call {decision.call_id} has already been decided")
        seen.add(decision.call_id)
    events = []
    for decision in decisions:
        conn.execute(
            update(APPROVALS)
            .where(_this_pause(run_id), APPROVALS.c.call_id == decision.call_id)
            .values(
                decision=decision.decision,
                edited_input=decision.arguments,
                message=decision.message,
                decided_by=decided_by,
                decided_at=ts,
            )
        )
        events.append(
            append(
                conn,
                run_id=run_id,
                thread_id=run.thread_id,
                type_="approval_resolved",
                agent=None,
                data=_resolved(decision),
                ts=ts,
                in_status="awaiting_approval",
            )
        )
    if any(decided[call_id] is None and call_id not in seen for call_id in decided):
        return Decided(events, None)
    resumed = conn.scalar(
        _RESUME, {"run_id": run_id, "owner_id": owner_id, "lease_until": lease_until}
    )
    assert resumed is not None  # the row is locked and awaiting approval
    state, route = row.pause_state, row.route
    every = conn.execute(
        select(
            APPROVALS.c.call_id, APPROVALS.c.decision, APPROVALS.c.edited_input, APPROVALS.c.message
        ).where(_this_pause(run_id))
    ).all()
    return Decided(
        events,
        (state, route, tuple(Decision(c, d, a, m) for c, d, a, m in every)),
    )


def _resolved(decision: Decision) -> dict[str, Any]:
    """``approval_resolved``'s data: the call and the decision, and what went with it (the
    arguments an edit gave, the reason a rejection gave), so every tab can show it."""
    data: dict[str, Any] = {"call_id": decision.call_id, "decision": decision.decision}
    if decision.arguments is not None:
        data["input"] = json.loads(decision.arguments)
    if decision.message is not None:
        data["message"] = decision.message
    return data


def expired_pauses(conn: Connection, *, now: datetime, limit: int = 100) -> list[Run]:
    """Paused runs nobody decided on before their pause expired."""
    rows = conn.execute(
        select(RUNS)
        .where(RUNS.c.status == "awaiting_approval", RUNS.c.pause_expires_at < now)
        .limit(limit)
    )
    return [run_of(row) for row in rows]
