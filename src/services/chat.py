"""The chat use cases. Each owns its transactions and keeps them short: no transaction is open
while an agent, a model or a tool is awaited."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.context import RunContext
from src.logs import bind, log_failure
from src.services.broker import EventBroker
from src.services.database import repositories as repo
from src.services.database.engine import atomic
from src.services.database.models import utcnow
from src.services.domain import Event, Message, Run, RunError, RunStatus, Thread
from src.services.errors import Conflict, NotFound, RateLimited, RunInProgress
from src.services.runs import RunRegistry
from src.settings import Settings

DEFAULT_TITLE = "New chat"
INTERRUPTED = RunError("interrupted", "the server stopped while the run was in progress")
# How long a cancel waits for another worker to end the run before ending it in the database.
CANCEL_WAIT_S = 3.0
CANCEL_POLL_S = 0.05
NOT_STARTED = RunError("internal_error", "an internal error kept the run from starting")

log = logging.getLogger(__name__)


class RunsAgents(Protocol):
    async def run(self, content: str) -> Message | None: ...


class RunMetrics(Protocol):
    def run_ended(self, *, status: str, seconds: float) -> None: ...


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class ChatService:
    """One request's use cases, on that request's session."""

    def __init__(
        self,
        *,
        session: AsyncSession,
        runs: RunRegistry,
        agents_for: Callable[[RunContext], RunsAgents],
        metrics: RunMetrics,
        broker: EventBroker,
        settings: Settings,
    ) -> None:
        self._broker = broker
        self._session = session
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

        async def write(session: AsyncSession) -> None:
            await repo.add_thread(session, thread)

        await atomic(self._session, write)
        return thread

    async def list_threads(self, *, user_id: str) -> list[Thread]:
        return await atomic(self._session, lambda s: repo.list_threads(s, user_id=user_id))

    async def get_thread(self, *, user_id: str, thread_id: str) -> Thread:
        thread = None
        if is_uuid(thread_id):
            thread = await atomic(
                self._session, lambda s: repo.get_thread(s, thread_id=thread_id, user_id=user_id)
            )
        if thread is None:
            raise NotFound("thread not found")
        return thread

    async def list_messages(self, *, user_id: str, thread_id: str) -> list[Message]:
        async def read(session: AsyncSession) -> list[Message]:
            if await repo.get_thread(session, thread_id=thread_id, user_id=user_id) is None:
                raise NotFound("thread not found")
            return await repo.list_messages(session, thread_id=thread_id, user_id=user_id)

        if not is_uuid(thread_id):
            raise NotFound("thread not found")
        return await atomic(self._session, read)

    # runs

    async def send_message(
        self, *, user_id: str, thread_id: str, content: str, request_id: str | None
    ) -> tuple[Run, Message | None]:
        """Store the message, run the agents to the end, and report the run and its answer."""
        run = await self._start_run(
            user_id=user_id, thread_id=thread_id, content=content, request_id=request_id
        )
        context = RunContext(
            run_id=run.id, thread_id=thread_id, user_id=user_id, request_id=request_id
        )
        bind(run_id=run.id, thread_id=thread_id, user_id=user_id)  # the run's task inherits it
        try:
            agents = self._agents_for(context)
        except Exception as exc:
            # The run exists: it must still end, or its thread would stay locked.
            log_failure(log, "the agents of run %s could not be built", run.id, exc=exc)
            await atomic(self._session, lambda s: end_run(s, run, error=NOT_STARTED))
            self._metrics.run_ended(status="failed", seconds=0.0)
            return await self.get_run(user_id=user_id, run_id=run.id), None
        # Its own task, so that a cancel (POST /api/runs/{id}/cancel) reaches exactly this run.
        task = asyncio.create_task(agents.run(content))
        self._runs.add(run.id, task)
        message: Message | None = None
        try:
            message = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this request itself is being cancelled, not only its run
        return await self.get_run(user_id=user_id, run_id=run.id), message

    async def _start_run(
        self, *, user_id: str, thread_id: str, content: str, request_id: str | None
    ) -> Run:
        """One transaction: check the owner, store the message, create the run ``running``.

        The message is committed before any agent runs, so it survives any failure of the run.
        """
        now = utcnow()
        run = Run(
            id=str(uuid.uuid4()),
            thread_id=thread_id,
            user_id=user_id,
            status="running",
            route=None,
            error=None,
            created_at=now,
            finished_at=None,
        )
        message = Message(
            id=str(uuid.uuid4()),
            thread_id=thread_id,
            role="user",
            content=content,
            run_id=run.id,
            created_at=now,
        )

        async def write(session: AsyncSession) -> None:
            if await repo.get_thread(session, thread_id=thread_id, user_id=user_id) is None:
                raise NotFound("thread not found")
            # Counted by the database, so the limit holds across workers too.
            if await repo.count_running_runs(session, user_id=user_id) >= self._max_running:
                raise RateLimited(
                    f"at most {self._max_running} runs may be in progress at once",
                    retry_after_s=1,
                )
            await repo.add_message(session, message)
            try:
                await repo.add_run(session, run, request_id=request_id)
            except IntegrityError:  # the one-running-run-per-thread index refused it
                raise RunInProgress("another run of this thread is still running") from None

        if not is_uuid(thread_id):
            raise NotFound("thread not found")
        await atomic(self._session, write)
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
        run = await self.get_run(user_id=user_id, run_id=run_id)
        if run.status != "running":
            raise Conflict(f"the run has already ended ({run.status})")
        if not await self._runs.cancel(run_id) and not await self._cancelled_elsewhere(run):
            # No live task anywhere ended it: a dead process's run. Ending it in the database
            # is safe even if one is still alive: whichever writer ends it first wins.
            await atomic(self._session, lambda s: end_run(s, run, error=None))
            self._metrics.run_ended(status="cancelled", seconds=0.0)
        run = await self.get_run(user_id=user_id, run_id=run_id)
        if run.status == "running":  # pragma: no cover - the task wrote nothing on its way out
            raise Conflict("the run could not be cancelled")
        return run

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


async def end_run(session: AsyncSession, run: Run, *, error: RunError | None) -> bool:
    """End a run that no live task owns: ``cancelled`` when ``error`` is None, else ``failed``,
    with its final event numbered after those already stored. False if it had already ended."""
    now = utcnow()
    status: RunStatus = "cancelled" if error is None else "failed"
    if not await repo.finish_run(
        session, run_id=run.id, status=status, error=error, finished_at=now
    ):
        return False
    final_type, data = (
        ("run_cancelled", {}) if error is None else ("run_failed", {"error": error.to_json()})
    )
    seq = await repo.last_seq(session, run_id=run.id) + 1
    await repo.add_event(
        session,
        Event(
            type=final_type,
            run_id=run.id,
            thread_id=run.thread_id,
            seq=seq,
            ts=now,
            agent=None,
            data=data,
        ),
    )
    return True


async def close_interrupted_runs(session: AsyncSession) -> int:
    """At start-up: runs a dead process left ``running`` end ``failed`` (``interrupted``), so
    no thread stays locked. Returns how many were closed."""

    async def close(s: AsyncSession) -> int:
        closed = 0
        for run in await repo.running_runs(s):
            closed += await end_run(s, run, error=INTERRUPTED)
        return closed

    return await atomic(session, close)
