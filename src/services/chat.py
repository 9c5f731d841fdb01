"""The message and run use cases: a message's path through isochat, and a run's reads and cancel.

    send_message: store the message and its run (one transaction) -> the run's agents in a task
                  of their own, to the run's one end -> the run and its answer

No transaction is open while an agent, a model or a tool is awaited: each transaction is one
short call of ``Transactions`` (or, for the run's own writes, of the run's emitter and ender).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Protocol

from src.aio import release_frames
from src.logs import bind, log_failure
from src.runs import ledger
from src.runs.approvals import Paused, Resumed
from src.runs.cancel import RunCanceller
from src.runs.domain import Event, Message, Run, RunContext, RunError, utcnow
from src.runs.ender import Outcome, RunEnder
from src.runs.leases import Lease
from src.runs.ledger import Ended
from src.runs.registry import RunRegistry
from src.services.auth import Caller
from src.services.database import repositories as repo
from src.services.database.engine import Transactions
from src.services.errors import Conflict, NotFound, RunInProgress
from src.services.threads import is_uuid
from src.settings import Settings

NOT_STARTED = RunError("internal_error", "an internal error kept the run from starting")

log = logging.getLogger(__name__)


class RunsAgents(Protocol):
    async def run(self) -> Ended | Paused | None:
        """The run's agents to the run's end or pause, stored (None when it ended elsewhere
        first)."""
        ...

    async def resume(self, resumed: Resumed) -> Ended | Paused | None:
        """The same, going on from the run's pause."""
        ...

    @property
    def ended(self) -> Ended | None:
        """The run as its agents stored its end, if they did (also when they were cancelled)."""
        ...


class ChatService:
    """One request's message and run use cases."""

    def __init__(
        self,
        *,
        transactions: Transactions,
        runs: RunRegistry,
        agents_for: Callable[[RunContext], RunsAgents],
        ender: RunEnder,
        canceller: RunCanceller,
        lease: Lease,
        settings: Settings,
    ) -> None:
        self._tx = transactions
        self._runs = runs
        self._agents_for = agents_for
        self._ender = ender
        self._canceller = canceller
        self._lease = lease
        self._max_running = settings.max_running_runs_per_user

    async def send_message(
        self,
        *,
        caller: Caller,
        thread_id: str,
        content: str,
        request_id: str | None,
        on_started: Callable[[Run], None] | None = None,
    ) -> tuple[Run, Message | None]:
        """Store the message, run the agents to the run's end, and report the run and its
        answer. ``on_started`` hears of the run as soon as it is stored, before any agent
        works."""
        run = await self._start_run(
            user_id=caller.user_id, thread_id=thread_id, content=content, request_id=request_id
        )
        if on_started is not None:
            on_started(run)
        context = RunContext(
            run_id=run.id,
            thread_id=thread_id,
            user_id=caller.user_id,
            request_id=request_id,
            grants=caller.grants,
            content=content,
        )
        ended = await self._run_to_end(context)
        if isinstance(ended, Ended):
            return ended.run, ended.message
        # Paused for approval, or ended by someone else (a cancel from another process, the
        # lease sweep): as stored.
        stored = await self.get_run(user_id=caller.user_id, run_id=run.id)
        answer = None
        if stored.status == "completed":
            answer = await self._tx.read(repo.assistant_message, run_id=run.id)
        return stored, answer

    async def _start_run(
        self, *, user_id: str, thread_id: str, content: str, request_id: str | None
    ) -> Run:
        """One transaction: check the owner, store the message, create the run ``running``.

        The message is committed before any agent runs, so it survives any failure of the run.
        """
        if not is_uuid(thread_id):
            raise NotFound("thread not found")
        now = utcnow()
        run = Run.running(
            id=str(uuid.uuid4()), thread_id=thread_id, user_id=user_id, created_at=now
        )
        message = Message(
            id=str(uuid.uuid4()),
            thread_id=thread_id,
            role="user",
            content=content,
            run_id=run.id,
            created_at=now,
        )
        self._runs.starting(run.id)  # a cancel from now on reaches its task once it exists
        try:
            await self._tx.write(
                ledger.start,
                run=run,
                message=message,
                owner_id=self._lease.owner_id,
                lease_until=self._lease.until(now),
                request_id=request_id,
                max_running_per_user=self._max_running,
            )
        except RunInProgress as exc:
            self._runs.not_started(run.id)
            thread = await self._tx.read(repo.get_thread, thread_id=thread_id, user_id=user_id)
            running = None if thread is None else thread.active_run_id
            raise RunInProgress(exc.message, run_id=running) from None
        except BaseException:
            self._runs.not_started(run.id)
            raise
        return run

    async def resume_run(self, resumed: Resumed) -> None:
        """Go on with a run its last decision resumed (already ``running`` under this
        process's lease), in this request scope, to its end or its next pause."""
        await self._run_to_end(resumed.context, resumed=resumed)

    async def _run_to_end(
        self, context: RunContext, *, resumed: Resumed | None = None
    ) -> Ended | Paused | None:
        """The run's agents in a task of their own (so that a cancel reaches exactly this run),
        to the run's one end, or its pause."""
        ctx = context  # its ids name the run throughout
        bind(run_id=ctx.run_id, thread_id=ctx.thread_id, user_id=ctx.user_id)  # its task inherits
        try:
            agents = self._agents_for(context)
        except Exception as exc:
            # The run exists: it must still end, or its thread would stay locked.
            log_failure(log, "the agents of run %s could not be built", ctx.run_id, exc=exc)
            self._runs.not_started(ctx.run_id)
            return await self._ender.end(
                run_id=ctx.run_id,
                thread_id=ctx.thread_id,
                user_id=ctx.user_id,
                outcome=Outcome.failed(NOT_STARTED),
            )
        task = asyncio.create_task(agents.run() if resumed is None else agents.resume(resumed))
        self._runs.add(ctx.run_id, task)
        try:
            return await task
        except asyncio.CancelledError as cancel:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # This request itself is being cancelled, not only its run. The cancel and the
                # frames it went through, this one included, form a cycle (see release_frames):
                # not one that keeps the run's agents.
                release_frames(cancel)
                del agents, task
                raise
        # The run was cancelled: its task stored the end (unless another process did first).
        return agents.ended

    async def get_run(self, *, user_id: str, run_id: str) -> Run:
        run = None
        if is_uuid(run_id):
            run = await self._tx.read(repo.get_run, run_id=run_id, user_id=user_id)
        if run is None:
            raise NotFound("run not found")
        return run

    async def list_events(self, *, user_id: str, run_id: str, after: int) -> list[Event]:
        events = None
        if is_uuid(run_id):
            events = await self._tx.read(
                repo.run_events, run_id=run_id, user_id=user_id, after=after
            )
        if events is None:
            raise NotFound("run not found")
        return events

    async def cancel_run(self, *, user_id: str, run_id: str) -> Run:
        """Cancel a run that has not ended, and answer once its end is stored (or, when the
        process that runs it does not answer in time, with the run as it is). A run that ended
        first (also one that completed while the cancel was on its way) is a ``Conflict`` that
        carries the run as it ended."""
        run = await self.get_run(user_id=user_id, run_id=run_id)
        if not run.ended:
            await self._canceller.cancel(run)
            run = await self.get_run(user_id=user_id, run_id=run_id)
            if not run.ended or run.status == "cancelled":
                return run
        raise Conflict(f"the run has already ended ({run.status})", run=run.to_json())
