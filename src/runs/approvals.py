"""A run that waits for a person: what it stores when it pauses, and what a decision is.

    running --pause--> awaiting_approval --(every pending call decided)--> running
                              └──cancel / expire──> cancelled | failed (the one ender)

A paused run is data, not a task: its agent's state (opaque here: the agent loop writes and
reads it, ``src/agents/approval.py``), its route, and one row per call that waits
(``run_approvals``). Pausing, deciding and resuming are guarded statements in the ledger, so
any host may take a decision and exactly one resumes the run; nothing of a paused run lives
in any process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from src.runs import pauses
from src.runs.domain import Decision, Event, Pause, RunContext, RunError, iso, utcnow
from src.services.broker import EventBroker, publish_stored
from src.services.database.engine import Database

log = logging.getLogger(__name__)

DEFAULT_REFUSAL = "the user declined this call"


def approval_expired(timeout_s: float) -> RunError:
    return RunError(
        "approval_expired", f"nobody decided on the run's pending calls within {timeout_s:g} s"
    )


@dataclass(frozen=True, slots=True)
class Paused:
    """A run that paused: its ``approval_requested`` events, as stored."""

    events: list[Event]


@dataclass(frozen=True, slots=True)
class Resumed:
    """A run the last decision resumed: who it is, what was asked, what it had stored, and
    every decision of the turn."""

    context: RunContext
    route: str | None
    state: str
    decisions: tuple[Decision, ...]


class RunPauser:
    """Pauses a run: stores its pause and one ``approval_requested`` event per pending call in
    one transaction (the run leaves ``running``: no lease, no owner), then publishes them."""

    def __init__(self, *, database: Database, broker: EventBroker, timeout_s: float) -> None:
        self._database = database
        self._broker = broker
        self._timeout_s = timeout_s

    async def pause(self, context: RunContext, pause: Pause) -> list[Event]:
        """``RunAlreadyFinished`` when the run ended meanwhile."""
        now = utcnow()
        expires_at = now + timedelta(seconds=self._timeout_s)
        events = await self._database.write(
            pauses.pause,
            run_id=context.run_id,
            thread_id=context.thread_id,
            pause=pause,
            ts=now,
            expires_at=expires_at,
        )
        log.info(
            "run %s awaits approval of %d call(s) until %s",
            context.run_id,
            len(pause.pending),
            iso(expires_at),
        )
        await publish_stored(self._broker, context.user_id, events)
        return events
