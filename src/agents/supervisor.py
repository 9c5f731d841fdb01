"""The supervisor runs triage, then the chosen specialist, and turns whatever happens into
exactly one terminal state with exactly one final event."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from src.agents.base import Agent
from src.agents.context import RunContext
from src.agents.loop import StepLimitReached
from src.agents.tool import ToolError
from src.agents.triage import FALLBACK_ROUTE, Route
from src.aio import release_frames
from src.logs import log_failure
from src.services.database.engine import DATABASE_UNAVAILABLE, unavailable
from src.services.domain import Message, Run, RunError
from src.services.events import EventEmitter, RunAlreadyFinished
from src.services.llm import LLMError, LLMTimeout

log = logging.getLogger(__name__)


class RunMetrics(Protocol):
    def run_ended(self, *, status: str, seconds: float) -> None: ...

    def agent_failed(self, *, agent: str, code: str) -> None: ...


class Supervisor:
    def __init__(
        self,
        *,
        context: RunContext,
        emitter: EventEmitter,
        triage: Agent,
        routes: Mapping[str, Route],
        run_timeout_s: float,
        metrics: RunMetrics,
    ) -> None:
        self._context = context
        self._emitter = emitter
        self._triage = triage
        self._routes = routes
        self._run_timeout_s = run_timeout_s
        self._metrics = metrics
        self._at_work: str | None = None  # the agent working now, named in failure metrics
        self._failed_in: str | None = None
        self._deadline: asyncio.Timeout | None = None

    @property
    def final_run(self) -> Run | None:
        """The run as this supervisor's terminal write left it (None if it ended elsewhere)."""
        return self._emitter.final_run

    async def run(self, content: str) -> Message | None:
        """Run the agents on ``content`` to one terminal state; the assistant's message when the
        run completed. Re-raises a cancellation after recording it, as asyncio expects.

        The run is counted in the metrics once its terminal write has committed, and only by
        the writer that ended it: a run ended elsewhere (a cancel from another process, the
        lease sweep) is counted there."""
        started = time.perf_counter()
        log.info("run started")
        message = None
        failure: RunError | None = None
        try:
            message = await self._run(content)
        except asyncio.CancelledError:
            await self._end(self._emitter.cancel())
            raise
        except RunAlreadyFinished:
            log.info("run %s ended elsewhere while its agents worked", self._context.run_id)
        except Exception as exc:
            failure = self._describe(exc)  # logged there, with its traceback
            release_frames(exc)
            await self._end(self._emitter.fail(failure))
        finally:
            seconds = time.perf_counter() - started
            ended = self._emitter.final_status
            if ended is not None:
                self._metrics.run_ended(status=ended, seconds=seconds)
                if ended == "failed" and failure is not None:
                    self._metrics.agent_failed(
                        agent=self._failed_in or "supervisor", code=failure.code
                    )
            log.info("run ended %s in %.3f s", ended or "elsewhere", seconds)
        return message

    async def _run(self, content: str) -> Message:
        async with asyncio.timeout(self._run_timeout_s) as self._deadline:
            await self._emitter.emit("run_started", data={"request_id": self._context.request_id})
            route = await self._work(self._triage, content)
            self._emitter.set_route(route)
            chosen = self._routes.get(route) or self._routes[FALLBACK_ROUTE]
            answer = await self._work(chosen.agent(), content)
        self._at_work = None
        return await self._emitter.complete(content=answer)

    async def _work(self, agent: Agent, content: str) -> str:
        self._at_work = agent.name
        result = await agent.run(content)
        self._at_work = None
        return result

    async def _end(self, write_final: Awaitable[None]) -> None:
        """Write the terminal state. Nothing to do when the run had already ended (another
        process owns its one final event); when the database stays away past the terminal
        write's retries, the lease sweep ends the run once it is back."""
        try:
            await write_final
        except RunAlreadyFinished:
            log.info("run %s had already ended elsewhere", self._context.run_id)
        except Exception as exc:
            if not unavailable(exc):
                raise
            log_failure(
                log,
                "the end of run %s could not be written; the lease sweep will end it",
                self._context.run_id,
                exc=exc,
            )

    def _describe(self, exc: Exception) -> RunError:
        agent = self._failed_in = self._at_work
        if self._deadline is not None and self._deadline.expired():
            return RunError("timeout", f"the run took longer than {self._run_timeout_s:g} s")
        if isinstance(exc, LLMTimeout):
            return RunError("timeout", str(exc) or "the language model did not answer in time")
        if isinstance(exc, LLMError):
            return RunError("llm_error", str(exc) or "the language model failed")
        if isinstance(exc, ToolError):
            return RunError("tool_error", str(exc))
        if isinstance(exc, StepLimitReached):
            return RunError("step_limit", str(exc))
        if isinstance(exc, (SQLAlchemyError, *DATABASE_UNAVAILABLE)):
            log_failure(log, "database error in run %s", self._context.run_id, exc=exc)
            return RunError("database_error", "the database failed during the run")
        log_failure(
            log, "run %s failed in %s", self._context.run_id, agent or "supervisor", exc=exc
        )
        if agent is not None:
            return RunError("agent_error", f"the {agent} agent failed")
        return RunError("internal_error", "an internal error ended the run")
