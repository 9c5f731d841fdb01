"""The triage agent: the model chooses the route by calling the ``choose_route`` tool, whose
one argument is an enum of the known routes. A turn that names no known route (no call,
arguments that are not JSON, a route nobody declared) goes to the fallback route, and
``agent_completed`` says so (``fallback``: why)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from src.agents.base import Agent, AgentTracker, RunEvents
from src.runs.usage import RunUsage
from src.services.llm import LLM, ChatMessage, Reply, ToolSpec

log = logging.getLogger(__name__)

FALLBACK_ROUTE = "general"
ROUTE_TOOL = "choose_route"


@dataclass(frozen=True, slots=True)
class Route:
    """A specialist triage may choose: what it is for (the model reads this), and how to build
    it (a provider: only the chosen one is ever built)."""

    description: str
    agent: Callable[[], Agent]


def agent_of(routes: Mapping[str, Route], route: str | None) -> Agent:
    """The agent of ``route`` (the fallback route's when there is no such route), built."""
    return (routes.get(route or "") or routes[FALLBACK_ROUTE]).agent()


def with_routes(routes: Mapping[str, Route], **more: Route) -> dict[str, Route]:
    """``routes`` and ``more`` (which replace routes of the same name): a team's routes beside
    isochat's."""
    return {**routes, **more}


class TriageAgent(Agent):
    name = "triage"

    def __init__(
        self,
        *,
        events: RunEvents,
        tracker: AgentTracker,
        llm: LLM,
        usage: RunUsage,
        routes: Mapping[str, Route],
    ) -> None:
        super().__init__(events=events, tracker=tracker)
        self._llm = llm
        self._usage = usage
        self._routes = routes
        self._fallback: str | None = None  # why triage fell back, when it did

    async def answer(self, content: str) -> str:
        reply = await self._llm.reply(
            [ChatMessage("system", ROUTE_PROMPT), ChatMessage("user", content)],
            tools=[route_tool(self._routes)],
            require_tool=ROUTE_TOOL,
        )
        self._usage.add(reply.usage)
        route, self._fallback = chosen_route(reply, known=self._routes)
        if self._fallback is not None:
            log.info("triage fell back to %s: %s", route, self._fallback)
        return route

    def result_details(self) -> dict[str, Any]:
        return {} if self._fallback is None else {"fallback": self._fallback}


ROUTE_PROMPT = (
    "You route a chat message to the specialist that should answer it. Call "
    f"{ROUTE_TOOL} with the one route that fits best."
)


def route_tool(routes: Mapping[str, Route]) -> ToolSpec:
    described = "; ".join(f"{name}: {route.description}" for name, route in routes.items())
    return ToolSpec(
        name=ROUTE_TOOL,
        description=f"Choose the specialist that answers the message. Routes: {described}.",
        parameters={
            "type": "object",
            "properties": {"route": {"type": "string", "enum": list(routes)}},
            "required": ["route"],
            "additionalProperties": False,
        },
    )


def chosen_route(reply: Reply, *, known: Mapping[str, Route]) -> tuple[str, str | None]:
    """The route the model's turn named, and None; or the fallback route and why."""
    call = next((c for c in reply.tool_calls if c.name == ROUTE_TOOL), None)
    if call is None:
        return FALLBACK_ROUTE, f"the model did not call {ROUTE_TOOL}"
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        return FALLBACK_ROUTE, f"the model's {ROUTE_TOOL} arguments are not JSON"
    route = arguments.get("route") if isinstance(arguments, dict) else None
    if not isinstance(route, str) or route not in known:
        return FALLBACK_ROUTE, f"the model named no known route ({repr(route)[:40]})"
    return route, None
