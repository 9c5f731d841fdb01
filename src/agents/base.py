"""What every agent shares. No class-level mutable state: an agent's state lives and dies with
the one run (one request scope) that created it."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from src.agents.tools import MAX_TOOL_OUTPUT_CHARS, TRUNCATED, Tool, ToolError, truncate

log = logging.getLogger(__name__)

# Caps on what agents produce, enforced here for every agent and tool (teams' own included),
# each cut said in the text (it ends with TRUNCATED):
# - an answer (the assistant's message, in ``run_completed``);
MAX_ANSWER_CHARS = 16_000
# - each text an event carries: ``agent_thinking``'s text, a tool's input and output, an agent's
#   result. Every event is a stored row sent to every socket of the user; an agent that has
#   more to say says it in several events (see GeneralAgent).
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
    name: ClassVar[str]

    def __init__(self, *, events: RunEvents, tracker: AgentTracker) -> None:
        self._events = events
        tracker.track_agent(self)

    async def run(self, content: str) -> str:
        """Answer ``content``, reporting start and result as events."""
        log.debug("agent %s started", self.name)
        await self._events.emit("agent_started", agent=self.name)
        result = truncate(await self.answer(content), MAX_ANSWER_CHARS)
        log.debug("agent %s completed", self.name)
        await self._events.emit(
            "agent_completed",
            agent=self.name,
            data={"result": truncate(result, MAX_EVENT_TEXT_CHARS)},
        )
        return result

    @abstractmethod
    async def answer(self, content: str) -> str: ...

    async def think(self, text: str) -> None:
        await self._events.emit(
            "agent_thinking", agent=self.name, data={"text": truncate(text, MAX_EVENT_TEXT_CHARS)}
        )

    async def use_tool(self, tool: Tool, tool_input: str) -> str:
        """``tool``'s output for ``tool_input``, cut to ``MAX_TOOL_OUTPUT_CHARS``. The tool
        gets the whole input; the event shows it cut to ``MAX_EVENT_TEXT_CHARS``."""
        await self._events.emit(
            "tool_executing",
            agent=self.name,
            data={"tool": tool.name, "input": truncate(tool_input, MAX_EVENT_TEXT_CHARS)},
        )
        output = truncate(await tool(tool_input), MAX_TOOL_OUTPUT_CHARS)
        await self._events.emit(
            "tool_completed",
            agent=self.name,
            data={"tool": tool.name, "output": truncate(output, MAX_EVENT_TEXT_CHARS)},
        )
        return output


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
