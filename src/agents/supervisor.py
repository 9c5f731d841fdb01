"""The supervisor runs triage, then the chosen specialist, and turns whatever happens into
exactly one outcome, which the one ender stores, publishes and counts (``src/runs/ender.py``);
or, when the specialist's calls wait for a person, into a pause (``src/runs/approvals.py``),
from which ``resume`` goes on, in another scope and maybe on another host."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from src.agents.approval import AwaitingApproval, PausedTurn
from src.agents.base import Agent, RunEvents
from src.agents.triage import FALLBACK_ROUTE, Route
from src.aio import release_frames
from src.logs import log_failure
from src.runs.approvals import Paused, Resumed, RunPauser
from src.runs.domain import Pause, RunContext, RunError, RunFailure
from src.runs.ender import Outcome, RunEnder
from src.runs.ledger import Ended, RunAlreadyFinished
from src.runs.usage import RunUsage

log = logging.getLogger(__name__)


class RunEmitter(RunEvents, Protocol):
    """The run's emitter, as the supervisor uses it: events, and the route triage chose."""

    def set_route(self, route: str) -> None: ...


class Supervisor:
    def __init__(
        self,
        *,
        context: RunContext,
        emitter: RunEmitter,
        ender: RunEnder,
        usage: RunUsage,
        triage: Agent,
        routes: Mapping[str, Route],
        run_timeout_s: float,
        pauser: RunPauser,
    ) -> None:
        self._context = context
        self._emitter = emitter
        self._ender = ender
        self._pauser = pauser
        self._usage = usage
        self._triage = triage
        self._routes = routes
        self._run_timeout_s = run_timeout_s
        self._at_work: str | None = None  # the agent working now, named when the run fails
        self._route: str | None = None
        self._deadline: asyncio.Timeout | None = None
        # The run as its end was stored here (kept for the caller: a task that stored its
        # cancel re-raises the cancellation, and returns nothing).
        self.ended: Ended | None = None

    async def run(self) -> Ended | Paused | None:
        """Run the agents on the run's message to one end, stored: the run as it ended, or its
        pause (None when it ended elsewhere first: a cancel from another process, the lease
        sweep). Re-raises a cancellation after its end is stored, as asyncio expects."""
        log.info("run started")
        return await self._drive(self._answer(self._context.content))

    async def resume(self, resumed: Resumed) -> Ended | Paused | None:
        """Go on from the run's pause, every waiting call decided, as ``run`` goes on."""
        log.info("run resumed")
        self._route = resumed.route
        return await self._drive(self._resume(resumed))

    async def _drive(self, work: Awaitable[str]) -> Ended | Paused | None:
        try:
            answer = await work
        except AwaitingApproval as paused:
            return await self._pause(paused.turn)
        except asyncio.CancelledError:
            await self._end(Outcome.cancelled(usage=self._usage.total, route=self._route))
            raise
        except RunAlreadyFinished:
            log.info("run %s ended elsewhere while its agents worked", self._context.run_id)
            return None
        except Exception as exc:
            error = self._describe(exc)  # logged there, with its traceback
            release_frames(exc)
            return await self._end(
                Outcome.failed(
                    error,
                    agent=self._at_work or "supervisor",
                    usage=self._usage.total,
                    route=self._route,
                )
            )
        return await self._end(
            Outcome.completed(answer, usage=self._usage.total, route=self._route)
        )

    async def _answer(self, content: str) -> str:
        async with asyncio.timeout(self._run_timeout_s) as self._deadline:
            await self._emitter.emit("run_started", data={"request_id": self._context.request_id})
            # A route its caller chose is stored with the run already; else triage chooses.
            route = self._context.route
            if route is None:
                route = await self._work(self._triage, content)
                self._emitter.set_route(route)
            self._route = route
            chosen = self._routes.get(route) or self._routes[FALLBACK_ROUTE]
            return await self._work(chosen.agent(), content)

    async def _resume(self, resumed: Resumed) -> str:
        # The run's deadline bounds each stretch of work, not the time it waited for a person.
        async with asyncio.timeout(self._run_timeout_s) as self._deadline:
            turn = PausedTurn.from_json(resumed.state)
            chosen = self._routes.get(resumed.route or "") or self._routes[FALLBACK_ROUTE]
            agent = chosen.agent()
            self._at_work = agent.name
            decisions = {decision.call_id: decision for decision in resumed.decisions}
            result = await agent.resume(turn, decisions)
            self._at_work = None
            return result

    async def _pause(self, turn: PausedTurn) -> Paused | Ended | None:
        """Store the pause (its task, lease and scope end with this call); a pause that cannot
        be stored fails the run."""
        pause = Pause(
            route=self._route, agent=turn.agent, state=turn.to_json(), pending=turn.pending_calls()
        )
        try:
            events = await self._pauser.pause(self._context, pause)
        except RunAlreadyFinished:
            log.info("run %s ended elsewhere while its agents worked", self._context.run_id)
            return None
        except Exception as exc:
            error = self._describe(exc)
            release_frames(exc)
            return await self._end(Outcome.failed(error, agent="supervisor", route=self._route))
        return Paused(events)

    async def _work(self, agent: Agent, content: str) -> str:
        self._at_work = agent.name
        result = await agent.run(content)
        self._at_work = None
        return result

    async def _end(self, outcome: Outcome) -> Ended | None:
        """Have the ender store ``outcome``. When the database stays away past its retries, the
        lease sweep ends the run once it is back."""
        try:
            ended = await self._ender.end(
                run_id=self._context.run_id,
                thread_id=self._context.thread_id,
                user_id=self._context.user_id,
                outcome=outcome,
            )
        except Exception as exc:
            # The run stops here all the same: no longer vouched for, it is ended by the lease
            # sweep of any live process once the database takes its end.
            log_failure(
                log,
                "the end of run %s could not be stored; the lease sweep will end it",
                self._context.run_id,
                exc=exc,
            )
            return None
        if ended is None:
            log.info("run %s had already ended elsewhere", self._context.run_id)
        else:
            log.info("run ended %s", ended.run.status)
        self.ended = ended
        return ended

    def _describe(self, exc: Exception) -> RunError:
        """The run error ``exc`` stands for: the run's deadline, a database error, a failure
        that names its own code (the model's, a tool's, the agent loop's), else a bug in the
        agent at work (or in the supervisor)."""
        agent = self._at_work
        if self._deadline is not None and self._deadline.expired():
            return RunError("timeout", f"the run took longer than {self._run_timeout_s:g} s")
        if isinstance(exc, RunFailure) and exc.code != "database_error":
            return exc.as_run_error()
        if isinstance(exc, SQLAlchemyError | RunFailure):  # the database's, ours or the driver's
            log_failure(log, "database error in run %s", self._context.run_id, exc=exc)
            return RunError("database_error", "the database failed during the run")
        log_failure(
            log, "run %s failed in %s", self._context.run_id, agent or "supervisor", exc=exc
        )
        if agent is not None:
            return RunError("agent_error", f"the {agent} agent failed")
        return RunError("internal_error", "an internal error ended the run")
