"""Starting a run: the message is stored with its run, ``running`` when its thread is idle,
else as the message's ``multitask`` says (``src/runs/queue.py``). One transition of the run's
state machine, built like the others in ``src/runs/ledger.py``: a plain function on the
caller's connection that never commits, its statements built once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from src.runs import queue
from src.runs.domain import Message, Multitask, Run, Thread, utcnow
from src.runs.ledger import INSERT_MESSAGE, INSERT_RUN, message_values
from src.services.database import repositories as repo
from src.services.database.models import RUNS
from src.services.errors import NotFound, RateLimited, RunInProgress

_RUNNING_OF_USER = select(func.count()).where(
    RUNS.c.user_id == bindparam("user_id"), RUNS.c.status == "running"
)


# An earlier message of a conversation its client keeps: its role and its text.
Earlier = tuple[Literal["user", "assistant"], str]


@dataclass(frozen=True, slots=True)
class Opening:
    """What a client that keeps the conversation itself sends before its question (the
    OpenAI-compatible API, the Agent Protocol, the AI SDK): the thread to make for it, and
    the earlier messages (role, text) the thread does not hold yet. Stored with the question
    and its run, in one transaction: a run refused leaves none of them."""

    thread: Thread | None = None
    earlier: tuple[Earlier, ...] = ()


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
    route: str | None = None,
    opening: Opening | None = None,
) -> Started:
    """Store the user's message and its run: ``running`` under ``owner_id``'s lease when the
    thread is idle; when it is busy, as ``multitask`` says (``src/runs/queue.py``):
    ``RunInProgress``, or ``queued`` (``RateLimited`` past ``max_queued``). ``NotFound`` for
    another user's thread. Timed here, holding the thread: messages keep the order of storing.
    ``route`` names the specialist (triage is skipped); ``opening``'s thread and earlier
    messages are stored first."""
    if opening is not None and opening.thread is not None:
        repo.add_thread(conn, opening.thread)
    if not queue.hold_thread(conn, thread_id=thread_id, user_id=user_id):
        raise NotFound("thread not found")
    now = utcnow()
    busy = queue.busy(conn, thread_id=thread_id)
    values: dict[str, Any] = {
        "id": run_id,
        "thread_id": thread_id,
        "user_id": user_id,
        "status": "running",
        "route": route,
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
    if opening is not None:
        _store_earlier(conn, opening, thread_id=thread_id, at=now)
    message = Message(
        id=str(uuid.uuid4()),
        thread_id=thread_id,
        role="user",
        content=content,
        run_id=run_id,
        created_at=now,
    )
    conn.execute(INSERT_MESSAGE, message_values(message))
    try:
        conn.execute(INSERT_RUN, values)
    except IntegrityError:  # the one-active-run-per-thread index refused it
        raise RunInProgress("another run of this thread is in progress") from None
    run = Run(
        id=run_id,
        thread_id=thread_id,
        user_id=user_id,
        status=values["status"],
        route=route,
        error=None,
        created_at=now,
        finished_at=None,
    )
    return Started(run, message, preempts)


def _store_earlier(conn: Connection, opening: Opening, *, thread_id: str, at: datetime) -> None:
    """The earlier messages, each a microsecond apart before ``at`` (the question's time), so
    that the thread's order (by time) is the order they came in."""
    count = len(opening.earlier)
    for index, (role, content) in enumerate(opening.earlier):
        earlier = Message(
            id=str(uuid.uuid4()),
            thread_id=thread_id,
            role=role,
            content=content,
            run_id=None,
            created_at=at - timedelta(microseconds=count - index),
        )
        conn.execute(INSERT_MESSAGE, message_values(earlier))
