"""Test doubles, swapped in only through the container.

``ChaosTriage`` fails in the way a message asks for, so one batch of concurrent requests can mix
healthy runs with every kind of failure:

- ``[fail:agent]``  the triage agent raises            -> ``agent_error``
- ``[fail:db]``     a real SQL error on the run's session -> ``database_error``
- ``[fail:llm]``    the model raises (see ``FlakyLLM``)  -> ``llm_error``
- ``[hang]``        the agent never answers             -> ``timeout`` (or a cancel)

Anything else is triaged as usual. A tool failure needs no fake: ``what is 1/0`` is one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from dependency_injector import providers
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.base import AgentTracker, RunEvents
from src.agents.triage import Route, TriageAgent
from src.container import AppContainer
from src.runs.usage import RunUsage
from src.services.llm import LLM, ChatMessage, LLMError, Reply, TextSink, ToolSpec
from src.services.llm.offline import OfflineLLM


class ChaosTriage(TriageAgent):
    def __init__(
        self,
        *,
        events: RunEvents,
        tracker: AgentTracker,
        llm: LLM,
        usage: RunUsage,
        routes: Mapping[str, Route],
        session: AsyncSession,
    ) -> None:
        super().__init__(events=events, tracker=tracker, llm=llm, usage=usage, routes=routes)
        self._session = session

    async def answer(self, content: str) -> str:
        if "[fail:agent]" in content:
            raise RuntimeError("triage broke on purpose")
        if "[fail:db]" in content:
            async with self._session.begin():
                await self._session.execute(text("SELECT * FROM no_such_table"))
        if "[hang]" in content:
            await asyncio.Event().wait()
        return await super().answer(content)


class FlakyLLM:
    """The offline model, except that it fails for a message that says ``[fail:llm]``."""

    def __init__(self) -> None:
        self._model = OfflineLLM()

    async def aclose(self) -> None:
        await self._model.aclose()

    async def is_available(self) -> bool:
        return await self._model.is_available()

    async def reply(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        require_tool: str | None = None,
        on_text: TextSink | None = None,
    ) -> Reply:
        self._check(messages)
        return await self._model.reply(
            messages, tools=tools, require_tool=require_tool, on_text=on_text
        )

    @staticmethod
    def _check(messages: Sequence[ChatMessage]) -> None:
        if any("[fail:llm]" in m.content for m in messages if m.role == "user"):
            raise LLMError("the model answered 500 on purpose")


def install_chaos(container: AppContainer) -> None:
    container.llm.override(providers.Singleton(FlakyLLM))
    request = container.request
    request.triage.override(
        providers.Factory(
            ChaosTriage,
            events=request.emitter,
            tracker=request.metrics,
            llm=request.llm,
            usage=request.usage,
            routes=request.routes,
            session=request.session,
        )
    )


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
