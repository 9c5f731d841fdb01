"""Test doubles, swapped in only through the container.

Failing runs use the drill's own faults (``src/drill/faults.py``): ``install_chaos`` plugs
them in for every user (no drill token needed), so one batch of concurrent requests can mix
healthy runs with every kind of failure, marked in the message:

- ``[drill:agent]``  the first agent raises              -> ``agent_error``
- ``[drill:db]``     a real SQL error on the run's session -> ``database_error``
- ``[drill:llm]``    the model fails                      -> ``llm_error``
- ``[drill:tool]``   the calculator fails                 -> ``tool_error``
- ``[drill:hang]``   the model never answers              -> ``timeout`` (or a cancel)

Anything else is answered as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from dependency_injector import providers

from src.agents.base import AgentTracker, RunEvents
from src.agents.triage import Route, TriageAgent
from src.container import AppContainer
from src.drill.faults import DrillFaults, faults_in
from src.plugins import plug_in
from src.runs.domain import RunContext
from src.runs.usage import RunUsage
from src.services.llm import LLM


def faults_of_anyone(context: RunContext) -> frozenset[str]:
    return faults_in(context.content)


def install_chaos(container: AppContainer) -> None:
    """The drill's faults, plugged in as ``ISOCHAT_DRILL_SECRET`` does, for every user's
    markers."""
    faults = plug_in(container, DrillFaults)
    faults.faults.override(providers.Callable(faults_of_anyone, container.request.run_context))


class Gate:
    """Where a test holds a run: ``reached`` once the run waits, ``opened`` lets it go on.
    With ``only``, just the messages that contain it are held."""

    def __init__(self, only: str | None = None) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()
        self.only = only


class GatedTriage(TriageAgent):
    """Triage that waits at the gate before it answers."""

    def __init__(
        self,
        *,
        events: RunEvents,
        tracker: AgentTracker,
        llm: LLM,
        usage: RunUsage,
        routes: Mapping[str, Route],
        gate: Gate,
    ) -> None:
        super().__init__(events=events, tracker=tracker, llm=llm, usage=usage, routes=routes)
        self._gate = gate

    async def answer(self, content: str) -> str:
        if self._gate.only is None or self._gate.only in content:
            self._gate.reached.set()
            await self._gate.opened.wait()
        return await super().answer(content)


def hold_triage(container: AppContainer, *, only: str | None = None) -> Gate:
    """Runs wait in triage (those whose message contains ``only``, if given) until the
    returned gate is opened."""
    gate = Gate(only)
    request = container.request
    request.triage.override(
        providers.Factory(
            GatedTriage,
            events=request.emitter,
            tracker=request.metrics,
            llm=request.llm,
            usage=request.usage,
            routes=request.routes,
            gate=providers.Object(gate),
        )
    )
    return gate
