"""What every agent shares. No class-level mutable state: an agent's state lives and dies with
the one run (one request scope) that created it."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from src.agents.tool import MAX_TOOL_OUTPUT_CHARS, TRUNCATED, Tool, ToolError, truncate
from src.runs.domain import Decision

if TYPE_CHECKING:  # approval.py builds on the tools, which base.py re-exports
    from src.agents.approval import PausedTurn

log = logging.getLogger(__name__)

# Caps on what agents produce, enforced here for every agent and tool (teams' own included),
# each cut said in the text (it ends with TRUNCATED):
# - an answer (the assistant's message, in ``run_completed``);
MAX_ANSWER_CHARS = 16_000
# - each text an event carries: ``agent_thinking``'s text, a tool's input and output, an agent's
#   result. Every event is a stored row sent to every socket of the user; an agent that has
#   more to say says it in several events (see ``src/agents/thinking.py``).
MAX_EVENT_TEXT_CHARS = 4_000


class RunEvents(Protocol):
    """Where an agent reports progress: the run's event emitter."""

    async def emit(
        self, type_: str, *, agent: str | None = None, data: dict[str, Any] | None = None
    ) -> Any: ...


class AgentTracker(Protocol):
    def track_agent(self, agent: object) -> None: ...


class AgentError(Exception):
    """An agent could not do its job (a bug, a broken invariant): ``agent_error``."""


class Agent(ABC):
    name: str

    def __init__(self, *, events: RunEvents, tracker: AgentTracker) -> None:
        self._events = events
        tracker.track_agent(self)

    async def run(self, content: str) -> str:
        """Answer ``content``, reporting start and result as events."""
        log.debug("agent %s started", self.name)
        await self._events.emit("agent_started", agent=self.name)
        result = truncate(await self.answer(content), MAX_ANSWER_CHARS)
        log.debug("agent %s completed", self.name)
        await self._report_result(result)
        return result

    async def _report_result(self, result: str) -> None:
        await self._events.emit(
            "agent_completed",
            agent=self.name,
            data={"result": truncate(result, MAX_EVENT_TEXT_CHARS), **self.result_details()},
        )

    async def resume(self, turn: PausedTurn, decisions: Mapping[str, Decision]) -> str:
        """Go on from a turn paused for approval (``resume_answer``), reporting the result as
        ``run`` does (its start was reported before the pause)."""
        result = truncate(await self.resume_answer(turn, decisions), MAX_ANSWER_CHARS)
        await self._report_result(result)
        return result

    @abstractmethod
    async def answer(self, content: str) -> str: ...

    async def resume_answer(self, turn: PausedTurn, decisions: Mapping[str, Decision]) -> str:
        """The answer after a pause; only an agent that pauses (the agent loop) goes on."""
        raise AgentError(f"the {self.name} agent cannot go on after a pause")

    async def tool(self, name: str) -> Tool[Any] | None:
        """The tool of that name, if this agent calls tools (the agent loop does)."""
        return None

    def result_details(self) -> dict[str, Any]:
        """What ``agent_completed`` says besides the result (triage: why it fell back)."""
        return {}


__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_EVENT_TEXT_CHARS",
    "MAX_TOOL_OUTPUT_CHARS",
    "TRUNCATED",
    "Agent",
    "AgentError",
    "AgentTracker",
    "RunEvents",
    "ToolError",
    "truncate",
]
