"""Deciding on a paused run's calls: approve, reject (with what the model is told) or edit
(other arguments, checked against the tool's input model like any call). Any host takes a
decision; the one that takes the last decision of the turn resumes the run
(``src/runs/approvals.py``, ``ChatService.resume_run``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from src.agents.base import Agent
from src.runs import pauses
from src.runs.approvals import Resumed
from src.runs.domain import Decision, PendingCall, Run, RunContext, utcnow
from src.runs.leases import Lease
from src.runs.registry import RunRegistry
from src.services.auth import Caller
from src.services.broker import EventBroker, publish_stored
from src.services.database.engine import Transactions
from src.services.errors import Conflict, Invalid, NotFound
from src.services.metrics import Metrics
from src.services.threads import is_uuid

log = logging.getLogger(__name__)

AgentOfRoute = Callable[[RunContext, str | None], Agent]


class ApprovalService:
    def __init__(
        self,
        *,
        transactions: Transactions,
        agent_of_route: AgentOfRoute,
        runs: RunRegistry,
        broker: EventBroker,
        lease: Lease,
        metrics: Metrics,
    ) -> None:
        self._tx = transactions
        self._agent_of_route = agent_of_route
        self._runs = runs
        self._broker = broker
        self._lease = lease
        self._metrics = metrics

    async def decide(
        self, *, caller: Caller, run_id: str, decisions: Sequence[Decision], request_id: str | None
    ) -> tuple[Run, Resumed | None]:
        """Store ``decisions`` about the caller's paused run (one ``approval_resolved`` event
        each); the run as it is after, and, when they were the turn's last, its resumption for
        the caller to start. ``NotFound`` (another user's run), ``Conflict`` (not paused, or a
        call decided already), ``Invalid`` (a call that is not pending, an edit that does not
        fit its tool)."""
        paused = await self._paused_run(caller.user_id, run_id)
        run = paused.run
        context = RunContext(
            run_id=run.id,
            thread_id=run.thread_id,
            user_id=run.user_id,
            request_id=request_id,
            grants=caller.grants,
            content=paused.content,
        )
        await self._check_edits(
            context, run.route, decisions, {c.call_id: c for c in paused.pending}
        )
        now = utcnow()
        self._runs.starting(run.id)  # a cancel of the resumed run reaches its task
        try:
            decided = await self._tx.write(
                pauses.decide,
                run_id=run.id,
                user_id=caller.user_id,
                decisions=decisions,
                decided_by=caller.user_id,
                ts=now,
                owner_id=self._lease.owner_id,
                lease_until=self._lease.until(now),
            )
        except BaseException:
            self._runs.not_started(run.id)
            raise
        for decision in decisions:
            self._metrics.approval_decided(decision.decision)
            log.info(
                "%s decided %s on call %s of run %s",
                caller.user_id,
                decision.decision,
                decision.call_id,
                run.id,
            )
        await publish_stored(self._broker, run.user_id, decided.events)
        if decided.resumed is None:
            self._runs.not_started(run.id)
            return run, None
        state, route, every = decided.resumed
        resumed = Resumed(context=context, route=route, state=state, decisions=every)
        return replace(run, status="running"), resumed

    async def _paused_run(self, user_id: str, run_id: str) -> pauses.PausedRun:
        found = None
        if is_uuid(run_id):
            found = await self._tx.read(pauses.paused_run, run_id=run_id, user_id=user_id)
        if found is None:
            raise NotFound("run not found")
        if isinstance(found, Run):
            raise Conflict(
                f"the run is not awaiting approval ({found.status})", run=found.to_json()
            )
        return found

    async def _check_edits(
        self,
        context: RunContext,
        route: str | None,
        decisions: Sequence[Decision],
        pending: dict[str, PendingCall],
    ) -> None:
        """An edit's arguments must fit its tool's input model, as a model's would; checked
        on the tool itself (built as the run would build it)."""
        agent: Agent | None = None
        for n, decision in enumerate(decisions):
            call = pending.get(decision.call_id)
            if decision.decision != "edit" or call is None:
                continue  # a call id that is not pending is refused with the decisions
            if decision.arguments is None:
                raise Invalid(f"decisions.{n}.input: an edit gives the arguments to run")
            agent = agent or self._agent_of_route(context, route)
            tool = await agent.tool(call.tool)
            if tool is None:
                raise Invalid(f"decisions.{n}.call_id: its tool {call.tool!r} is gone")
            try:
                tool.parse(decision.arguments)
            except Exception as exc:
                raise Invalid(f"decisions.{n}.input: {exc}") from None


def arguments_of(value: object) -> str:
    """An edit's ``input`` (a JSON object) as the arguments text a model would write."""
    return json.dumps(value, ensure_ascii=False)
