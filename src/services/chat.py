"""The chat use cases. Each owns its transactions and keeps them short: no transaction is open
while an agent, a model or a tool is awaited."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.context import RunContext
from src.aio import release_frames
from src.logs import bind, log_failure
from src.services import ledger
from src.services.broker import EventBroker
from src.services.database import repositories as repo
from src.services.database.engine import Database, atomic
from src.services.database.models import utcnow
from src.services.database.repositories import Page
from src.services.domain import Event, Message, Run, RunError, Thread
from src.services.drill import faults_in
from src.services.errors import Conflict, NotFound, RunInProgress
from src.services.leases import Lease
from src.services.runs import RunRegistry
from src.settings import Settings

DEFAULT_TITLE = "New chat"
# How long a cancel waits for another worker to end the run before ending it in the database.
CANCEL_WAIT_S = 3.0
CANCEL_POLL_S = 0.05
# Rounds of cancel-then-delete before a thread whose runs keep running is refused.
DELETE_ATTEMPTS = 3
NOT_STARTED = RunError("internal_error", "an internal error kept the run from starting")

log = logging.getLogger(__name__)


class RunsAgents(Protocol):
    async def run(self, content: str) -> Message | None: ...

    @property
    def final_run(self) -> Run | None:
        """The run as the agents' own terminal write left it, if they wrote it."""
        ...


class RunMetrics(Protocol):
    def run_ended(self, *, status: str, seconds: float) -> None: ...


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class ChatService:
    """One request's use cases: reads on that request's session, writes through the database's
    writer in transactions of their own."""

    def __init__(
        self,
        *,
        session: AsyncSession,
        database: Database,
        runs: RunRegistry,
        agents_for: Callable[[RunContext], RunsAgents],
        metrics: RunMetrics,
        broker: EventBroker,
        lease: Lease,
        settings: Settings,
    ) -> None:
        self._broker = broker
        self._lease = lease
        self._session = session
        self._database = database
        self._runs = runs
        self._agents_for = agents_for
        self._metrics = metrics
        self._max_running = settings.max_running_runs_per_user

    # threads

    async def create_thread(self, *, user_id: str, title: str | None) -> Thread:
        thread = Thread(
            id=str(uuid.uuid4()),
            user_id=user_id,
            title=title or DEFAULT_TITLE,
            created_at=utcnow(),
        )

        def write(conn: Connection) -> None:
            repo.add_thread(conn, thread)

        await self._database.transaction(write)
        return thread

    async def list_threads(
        self, *, user_id: str, limit: int, after: tuple[datetime, str] | None = None
    ) -> Page[Thread]:
        return await atomic(
            self._session, lambda s: repo.list_threads(s, user_id=user_id, limit=limit, after=after)
        )

    async def get_thread(self, *, user_id: str, thread_id: str) -> Thread:
        thread = None
        if is_uuid(thread_id):
            thread = await atomic(
                self._session, lambda s: repo.get_thread(s, thread_id=thread_id, user_id=user_id)
            )
        if thread is None:
            raise NotFound("thread not found")
        return thread

    async def rename_thread(self, *, user_id: str, thread_id: str, title: str) -> Thread:
        def write(conn: Connection) -> bool:
            return repo.rename_thread(conn, thread_id=thread_id, user_id=user_id, title=title)

        if not is_uuid(thread_id) or not await self._database.transaction(write):
            raise NotFound("thread not found")
        return await self.get_thread(user_id=user_id, thread_id=thread_id)

    async def delete_thread(self, *, user_id: str, thread_id: str) -> None:
        """Cancel the thread's running run, if any, then delete the thread with its messages,
        runs and events in one transaction. A run that starts in between is cancelled too; a
        run that will not end (its owner is alive but out of reach) is ``RunInProgress``."""

        def delete(conn: Connection) -> bool | None:
            return repo.delete_idle_thread(conn, thread_id=thread_id, user_id=user_id)

        for _ in range(DELETE_ATTEMPTS):
            thread = await self.get_thread(user_id=user_id, thread_id=thread_id)
            if thread.active_run_id is not None:
                with contextlib.suppress(Conflict):  # it ended meanwhile: fine
                    await self.cancel_run(user_id=user_id, run_id=thread.active_run_id)
            deleted = await self._database.transaction(delete)
            if deleted is None:
                raise NotFound("thread not found")
            if deleted:
                return
        raise RunInProgress(
            "the thread's run could not be cancelled; retry later", run_id=thread.active_run_id
        )

    async def list_messages(
        self,
        *,
        user_id: str,
        thread_id: str,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> Page[Message]:
        async def read(session: AsyncSession) -> Page[Message]:
            if await repo.get_thread(session, thread_id=thread_id, user_id=user_id) is None:
                raise NotFound("thread not found")
            return await repo.list_messages(
                session, thread_id=thread_id, user_id=user_id, limit=limit, after=after
            )

        if not is_uuid(thread_id):
            raise NotFound("thread not found")
        return await atomic(self._session, read)

    # runs

    async def send_message(
        self,
        *,
        user_id: str,
        thread_id: str,
        content: str,
        request_id: str | None,
        on_started: Callable[[Run], None] | None = None,
        drill: bool = False,
    ) -> tuple[Run, Message | None]:
        """Store the message, run the agents to the end, and report the run and its answer.
        ``on_started`` hears of the run as soon as it is stored, before any agent works. A
        drill user's (``drill``) message may ask for faults (src/services/drill.py)."""
        run_id = str(uuid.uuid4())
        self._runs.starting(run_id)
        try:
            run = await self._start_run(
                run_id=run_id,
                user_id=user_id,
                thread_id=thread_id,
                content=content,
                request_id=request_id,
            )
        except RunInProgress as exc:
            self._runs.not_started(run_id)
            thread = await atomic(
                self._session, lambda s: repo.get_thread(s, thread_id=thread_id, user_id=user_id)
            )
            running = None if thread is None else thread.active_run_id
            raise RunInProgress(exc.message, run_id=running) from None
        except BaseException:
            self._runs.not_started(run_id)
            raise
        if on_started is not None:
            on_started(run)
        context = RunContext(
            run_id=run.id,
            thread_id=thread_id,
            user_id=user_id,
            request_id=request_id,
            faults=faults_in(content) if drill else frozenset(),
        )
        bind(run_id=run.id, thread_id=thread_id, user_id=user_id)  # the run's task inherits it
        try:
            agents = self._agents_for(context)
        except Exception as exc:
            # The run exists: it must still end, or its thread would stay locked.
            log_failure(log, "the agents of run %s could not be built", run.id, exc=exc)
            self._runs.not_started(run_id)
            await self._end_here(run, error=NOT_STARTED)
            return await self.get_run(user_id=user_id, run_id=run.id), None
        # Its own task, so that a cancel (POST /api/runs/{id}/cancel) reaches exactly this run.
        task = asyncio.create_task(agents.run(content))
        self._runs.add(run.id, task)
        message: Message | None = None
        try:
            message = await task
        except asyncio.CancelledError as cancel:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # This request itself is being cancelled, not only its run. The cancel and
                # the frames it went through, this one included, form a cycle (see
                # release_frames): not one that keeps the run's agents.
                release_frames(cancel)
                del agents, task
                raise
        # The terminal write returned the run; read it only when someone else ended it.
        ended = agents.final_run or await self.get_run(user_id=user_id, run_id=run.id)
        if message is None and ended.status == "completed":
            # It completed although its task saw a cancel that arrived too late: the stored
            # answer is the answer.
            message = await atomic(
                self._session, lambda s: repo.assistant_message(s, run_id=run.id)
            )
        return ended, message

    async def _start_run(
        self, *, run_id: str, user_id: str, thread_id: str, content: str, request_id: str | None
    ) -> Run:
        """One transaction: check the owner, store the message, create the run ``running``.

        The message is committed before any agent runs, so it survives any failure of the run.
        """
        now = utcnow()
        run = Run.running(id=run_id, thread_id=thread_id, user_id=user_id, created_at=now)
        message = Message(
            id=str(uuid.uuid4()),
            thread_id=thread_id,
            role="user",
            content=content,
            run_id=run.id,
            created_at=now,
        )

        def write(conn: Connection) -> None:
            ledger.start(
                conn,
                run=run,
                message=message,
                owner_id=self._lease.owner_id,
                lease_until=self._lease.until(now),
                request_id=request_id,
                max_running_per_user=self._max_running,
            )

        if not is_uuid(thread_id):
            raise NotFound("thread not found")
        await self._database.transaction(write)
        return run

    async def get_run(self, *, user_id: str, run_id: str) -> Run:
        run = None
        if is_uuid(run_id):
            run = await atomic(
                self._session, lambda s: repo.get_run(s, run_id=run_id, user_id=user_id)
            )
        if run is None:
            raise NotFound("run not found")
        return run

    async def list_events(self, *, user_id: str, run_id: str, after: int) -> list[Event]:
        async def read(session: AsyncSession) -> list[Event]:
            if await repo.get_run(session, run_id=run_id, user_id=user_id) is None:
                raise NotFound("run not found")
            return await repo.list_events(session, run_id=run_id, user_id=user_id, after=after)

        if not is_uuid(run_id):
            raise NotFound("run not found")
        return await atomic(self._session, read)

    async def cancel_run(self, *, user_id: str, run_id: str) -> Run:
        """Cancel a running run and answer once its end is recorded. A run that ended first
        (also one that completed while the cancel was on its way) is a ``Conflict`` that
        carries the run as it ended."""
        run = await self.get_run(user_id=user_id, run_id=run_id)
        if run.status != "running":
            raise Conflict(f"the run has already ended ({run.status})", run=run.to_json())
        if not await self._runs.cancel(run_id) and not await self._cancelled_elsewhere(run):
            # No live process ended it: one whose lease expired may be ended from here;
            # one whose owner is alive is never touched (it ends when its owner hears).
            await self._end_here(run, error=None, only_if_lease_expired=True)
        run = await self.get_run(user_id=user_id, run_id=run_id)
        if run.status not in ("running", "cancelled"):
            raise Conflict(f"the run has already ended ({run.status})", run=run.to_json())
        return run

    async def _end_here(
        self, run: Run, *, error: RunError | None, only_if_lease_expired: bool = False
    ) -> None:
        """End a run that no task of this process executes; counted if this wrote its end."""
        now = utcnow()

        def write(conn: Connection) -> ledger.Ended | None:
            return ledger.finish(
                conn,
                run_id=run.id,
                thread_id=run.thread_id,
                error=error,
                cancelled=error is None,
                ts=now,
                lease_expired_before=now if only_if_lease_expired else None,
            )

        ended = await self._database.transaction(write)
        if ended is None:
            return
        self._metrics.run_ended(
            status="cancelled" if error is None else "failed",
            seconds=(now - run.created_at).total_seconds(),
        )
        try:
            await self._broker.publish(run.user_id, ended.event)
        except Exception as exc:  # stored: replayable
            log.warning("publishing the end of run %s failed: %r", run.id, exc)

    async def _cancelled_elsewhere(self, run: Run) -> bool:
        """Ask the other workers to cancel ``run``; True once the worker running it has
        recorded its end (within ``CANCEL_WAIT_S``)."""
        try:
            asked = await self._broker.request_cancel(run.id)
        except Exception as exc:
            log.warning("could not ask the other workers to cancel run %s: %r", run.id, exc)
            return False
        if not asked:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_S
        while loop.time() < deadline:
            await asyncio.sleep(CANCEL_POLL_S)
            current = await self.get_run(user_id=run.user_id, run_id=run.id)
            if current.status != "running":
                return True
        return False
