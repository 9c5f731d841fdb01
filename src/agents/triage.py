"""The triage agent: asks the model which specialist should answer."""

from __future__ import annotations

import re
from collections.abc import Sequence

from src.agents.base import Agent, AgentTracker, RunEvents
from src.services.llm import LLM, ChatMessage
from src.services.llm.offline import ROUTE_CHOICE_MARKER

ROUTES: dict[str, str] = {
    "math": "arithmetic and calculations",
    "history": "questions about this conversation: what the user said or asked before",
    "general": "everything else",
}
FALLBACK_ROUTE = "general"


class TriageAgent(Agent):
    name = "triage"

    def __init__(self, *, events: RunEvents, tracker: AgentTracker, llm: LLM) -> None:
        super().__init__(events=events, tracker=tracker)
        self._llm = llm

    async def answer(self, content: str) -> str:
        reply: str = await self._llm.complete(
            [ChatMessage("system", route_prompt(ROUTES)), ChatMessage("user", content)]
        )
        return parse_route(reply, known=tuple(ROUTES))


def route_prompt(routes: dict[str, str]) -> str:
    described = "\n".join(f"- {name}: {what}" for name, what in routes.items())
    return (
        "You route a chat message to the specialist that should answer it.\n"
        f"{described}\n"
        f"{ROUTE_CHOICE_MARKER} {', '.join(routes)}."
    )


def parse_route(reply: str, *, known: Sequence[str]) -> str:
    """The first known route the model named; an answer that names none goes to general."""
    named = (word for word in re.findall(r"[a-z]+", reply.lower()) if word in known)
    return str(next(named, FALLBACK_ROUTE))
