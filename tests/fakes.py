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
from collections.abc import AsyncGenerator, Sequence

from dependency_injector import providers
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.base import AgentTracker, RunEvents
from src.agents.triage import TriageAgent
from src.container import AppContainer
from src.services.llm import LLM, ChatMessage, LLMError
from src.services.llm.offline import OfflineLLM


class ChaosTriage(TriageAgent):
    def __init__(
        self, *, events: RunEvents, tracker: AgentTracker, llm: LLM, session: AsyncSession
    ) -> None:
        super().__init__(events=events, tracker=tracker, llm=llm)
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

    async def complete(self, messages: Sequence[ChatMessage]) -> str:
        self._check(messages)
        return await self._model.complete(messages)

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        self._check(messages)
        async for piece in self._model.stream(messages):
            yield piece

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

    def __init__(self, *, events: RunEvents, tracker: AgentTracker, llm: LLM, gate: Gate) -> None:
        super().__init__(events=events, tracker=tracker, llm=llm)
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
            gate=providers.Object(gate),
        )
    )
    return gate
