"""What every agent shares. No class-level mutable state: an agent's state lives and dies with
the one run (one request scope) that created it."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Protocol

from src.agents.tool import MAX_TOOL_OUTPUT_CHARS, TRUNCATED, ToolError, truncate

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
        await self._events.emit(
            "agent_completed",
            agent=self.name,
            data={"result": truncate(result, MAX_EVENT_TEXT_CHARS), **self.result_details()},
        )
        return result

    @abstractmethod
    async def answer(self, content: str) -> str: ...

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
