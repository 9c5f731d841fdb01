"""What every agent shares. No class-level mutable state: an agent's state lives and dies with
the one run (one request scope) that created it."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from src.agents.tools import Tool, ToolError

log = logging.getLogger(__name__)


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
        result = await self.answer(content)
        log.debug("agent %s completed", self.name)
        await self._events.emit("agent_completed", agent=self.name, data={"result": result})
        return result

    @abstractmethod
    async def answer(self, content: str) -> str: ...

    async def think(self, text: str) -> None:
        await self._events.emit("agent_thinking", agent=self.name, data={"text": text})

    async def use_tool(self, tool: Tool, tool_input: str) -> str:
        await self._events.emit(
            "tool_executing", agent=self.name, data={"tool": tool.name, "input": tool_input}
        )
        output = await tool(tool_input)
        await self._events.emit(
            "tool_completed", agent=self.name, data={"tool": tool.name, "output": output}
        )
        return output


__all__ = ["Agent", "AgentError", "AgentTracker", "RunEvents", "ToolError"]
