"""The message and run use cases: a message's path through isochat, and a run's reads and cancel.

    send_message: store the message and its run (one transaction) -> the run's agents in a task
                  of their own, to the run's one end -> the run and its answer
                  (thread busy, ``multitask``: refused; or the run queued: followed until
                  whichever process ends the run ahead starts it, and it ends)

No transaction is open while an agent, a model or a tool is awaited: each transaction is one
short call of ``Transactions`` (or, for the run's own writes, of the run's emitter and ender).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from src.aio import release_frames, uninterrupted
from src.logs import bind, log_failure
from src.runs import starting
from src.runs.approvals import Paused, Resumed
from src.runs.cancel import RunCanceller
from src.runs.domain import Event, Message, Multitask, Run, RunContext, RunError, utcnow
from src.runs.ender import Outcome, RunEnder
from src.runs.follower import EventStore, following, to_the_end
from src.runs.leases import Lease
from src.runs.ledger import Ended
from src.runs.queue import Promoted
from src.runs.registry import RunRegistry
from src.runs.starting import Opening, Started
from src.services.auth import Caller
from src.services.broker import EventBroker
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
        broker: EventBroker,
        store: EventStore,
    ) -> None:
        self._tx = transactions
        self._runs = runs
        self._agents_for = agents_for
        self._ender = ender
        self._canceller = canceller
        self._lease = lease
        self._broker = broker
        self._store = store
        self._max_running = settings.max_running_runs_per_user
        self._max_queued = settings.max_queued_runs
        self._multitask: Multitask = settings.multitask_default
        self._keepalive_s = settings.sse_keepalive_s

    async def send_message(
        self,
        *,
        caller: Caller,
        thread_id: str,
        content: str,
        request_id: str | None,
        multitask: Multitask | None = None,
        on_started: Callable[[Run], None] | None = None,
        wait_queued: bool = True,
        route: str | None = None,
        opening: Opening | None = None,
    ) -> tuple[Run, Message | None]:
        """Store the message, run the agents to the run's end, and report the run and its
        answer. ``on_started`` hears of the run as soon as it is stored, before any agent
        works. A message to a busy thread does what ``multitask`` says (the server's default
        when None): refused (``RunInProgress``), or its run queued and followed to its end
        (having cancelled the busy run first, for ``interrupt`` and ``rollback``); with
        ``wait_queued`` False, the queued run as stored, at once (it goes on without anyone
        waiting for it). ``route`` names the specialist (no triage); ``opening`` is stored
        first, in the same transaction (see ``starting.Opening``)."""
        started = await self._start_run(
            caller=caller,
            thread_id=thread_id,
            content=content,
            request_id=request_id,
            multitask=multitask or self._multitask,
            route=route,
            opening=opening,
        )
        run = started.run
        if on_started is not None:
            on_started(run)
        if run.status == "queued" and not wait_queued:
            if started.preempts is not None:
                await self._cancel_preempted(started.preempts)
            return run, None
        if run.status == "queued":
            return await self._when_ended(run, preempts=started.preempts)
        context = RunContext(
            run_id=run.id,
            thread_id=thread_id,
            user_id=caller.user_id,
            request_id=request_id,
            grants=caller.grants,
            content=content,
            route=route,
        )
        ended = await self._run_to_end(context)
        if isinstance(ended, Ended):
            return ended.run, ended.message
        # Paused for approval, or ended by someone else (a cancel from another process, the
        # lease sweep): as stored.
        return await self._as_stored(run)

    async def _start_run(
        self,
        *,
        caller: Caller,
        thread_id: str,
        content: str,
        request_id: str | None,
        multitask: Multitask,
        route: str | None,
        opening: Opening | None,
    ) -> Started:
        """One transaction: check the owner, store the message, create the run (``running``,
        or ``queued`` behind the thread's busy run).

        The message is committed before any agent runs, so it survives any failure of the run.
        """
        if not is_uuid(thread_id):
            raise NotFound("thread not found")
        run_id = str(uuid.uuid4())
        self._runs.starting(run_id)  # a cancel from now on reaches its task once it exists
        try:
            started: Started = await self._tx.write(
                starting.start,
                run_id=run_id,
                thread_id=thread_id,
                user_id=caller.user_id,
                content=content,
                request_id=request_id,
                grants=caller.grants,
                owner_id=self._lease.owner_id,
                lease_s=self._lease.length_s,
                max_running_per_user=self._max_running,
                multitask=multitask,
                max_queued=self._max_queued,
                route=route,
                opening=opening,
            )
        except RunInProgress as exc:
            self._runs.not_started(run_id)
            if exc.details.get("run_id") is not None:
                raise
            thread = await self._tx.read(
                repo.get_thread, thread_id=thread_id, user_id=caller.user_id
            )
            running = None if thread is None else thread.active_run_id
            raise RunInProgress(exc.message, run_id=running) from None
        except BaseException:
            self._runs.not_started(run_id)
            raise
        if started.run.status == "queued":
            # Whichever process ends the run ahead of it starts it.
            self._runs.not_started(run_id)
        return started

    async def _cancel_preempted(self, busy: Run) -> None:
        """The busy run a message displaced: its end (as the mark says: its answer kept, or
        rolled back) starts the head of the queue, the displacing run."""
        try:
            await self._canceller.cancel(busy)
        except Exception as exc:  # it still ends by itself (or by the sweep), and starts it
            log.warning("the run %s could not be cancelled now: %s", busy.id, repr(exc))

    async def _when_ended(
        self, run: Run, *, preempts: Run | None = None
    ) -> tuple[Run, Message | None]:
        """A queued run, followed until it ends (or pauses): it is started by whichever
        process ends the run ahead of it (``preempts``, cancelled here first: its end starts
        this one). A caller that goes away cancels it, unless this process is shutting down:
        a queued run outlives its host."""
        try:
            async with following(
                self._broker,
                self._store,
                user_id=run.user_id,
                run_id=run.id,
                keepalive_s=self._keepalive_s,
            ) as follower:
                if preempts is not None:
                    await self._cancel_preempted(preempts)
                await to_the_end(follower)
        except asyncio.CancelledError:
            if not self._runs.closing:
                await uninterrupted(self._canceller.cancel(run))
            raise
        return await self._as_stored(run)

    async def _as_stored(self, run: Run) -> tuple[Run, Message | None]:
        """The run and its answer as stored; a run rolled back by a newer message is gone,
        and reported cancelled."""
        stored = await self._tx.read(repo.get_run, run_id=run.id, user_id=run.user_id)
        if stored is None:
            return replace(run, status="cancelled", finished_at=utcnow()), None
        answer = None
        if stored.status == "completed":
            answer = await self._tx.read(repo.assistant_message, run_id=run.id)
        return stored, answer

    async def run_promoted(self, promoted: Promoted) -> None:
        """Run a queued run that the end of the run ahead of it started here (``running``
        under this process's lease), in this request scope, to its end or its pause."""
        await self._run_to_end(promoted.context)

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

    async def wait_for_end(self, *, user_id: str, run_id: str) -> tuple[Run, Message | None]:
        """The user's run once it has ended or paused for approval, and its answer: followed
        (not owned: a caller that goes away cancels nothing)."""
        run = await self.get_run(user_id=user_id, run_id=run_id)
        if run.status in ("running", "queued"):
            async with following(
                self._broker,
                self._store,
                user_id=user_id,
                run_id=run_id,
                keepalive_s=self._keepalive_s,
            ) as follower:
                await to_the_end(follower)
        return await self._as_stored(run)

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
