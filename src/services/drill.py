"""Drills: faults a deployment injects into its own runs, for drill users only, so that an
operator can prove isolation on the live system (``isochat drill``, ``src/drill/``).

With ``ISOCHAT_DRILL_SECRET`` set, a run whose user's token carries a valid ``drill`` claim
obeys the fault markers in its message:

- ``[drill:agent]``  the first agent raises, as a bug would         -> ``agent_error``
- ``[drill:db]``     a real SQL error on the run's own session         -> ``database_error``
- ``[drill:llm]``    the model fails                                   -> ``llm_error``
- ``[drill:tool]``   every call of the calculator fails, as a bug would -> ``tool_error``
- ``[drill:hang]``   the model never answers: the run's deadline or a cancel ends it

Anyone else's markers are plain text, and without the setting everybody's are.

The claim is proof of the drill secret: ``HMAC-SHA256(secret, "isochat-drill:<sub>:<exp>")``,
in a token signed as usual with the auth secret (see ``TokenService``). So a token from
dev-login, ``isochat token`` or a team's own login has no claim and forces nothing; a claim made
with another secret, or copied into a token of another user or another expiry, is ignored (the
token stays valid, its runs just take no faults); and the auth secret alone, which can already
act as any user, cannot force a fault. What a drill user can force is a failure of their own runs,
within every limit a user has.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.context import RunContext
from src.agents.tool import Tool
from src.services.llm import LLM, ChatMessage, LLMError, Reply, TextSink, ToolSpec

DRILL_CLAIM = "drill"
FAULTS = ("agent", "tool", "llm", "db", "hang")
MODEL_FAULTS = frozenset(FAULTS) - {"tool"}  # the ones the run's model injects
_MARKER = re.compile(r"\[drill:([a-z]+)\]")


def marker(fault: str) -> str:
    return f"[drill:{fault}]"


def faults_in(content: str) -> frozenset[str]:
    """The faults ``content``'s markers ask for (only known ones)."""
    return frozenset(name for name in _MARKER.findall(content) if name in FAULTS)


def drill_proof(secret: str, *, user_id: str, exp: int) -> str:
    """The ``drill`` claim of a drill user's token that names ``user_id`` and expires at
    ``exp``."""
    message = f"isochat-drill:{user_id}:{exp}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def proves_drill(secret: str | None, claims: dict[str, Any]) -> bool:
    """Whether verified ``claims`` make a drill user (never without a drill secret)."""
    claim = claims.get(DRILL_CLAIM)
    if secret is None or not isinstance(claim, str):
        return False
    sub, exp = claims.get("sub"), claims.get("exp")
    if not isinstance(sub, str) or not isinstance(exp, int):
        return False
    return hmac.compare_digest(claim, drill_proof(secret, user_id=sub, exp=exp))


# The run's parts, swapped for failing ones when its context asks for faults (the container
# calls these for every run: they hand back the real part unless there is a fault to inject).


def model_for(
    model: LLM, context: RunContext, session: Callable[[], AsyncSession]
) -> LLM | FaultyModel:
    faults = context.faults & MODEL_FAULTS
    return FaultyModel(model, faults, session) if faults else model


def tool_for(tool: Tool[Any], context: RunContext) -> Tool[Any]:
    return BrokenTool(tool) if "tool" in context.faults else tool


class FaultyModel:
    """The run's model, failing in the ways its faults say before it would answer."""

    def __init__(
        self, model: LLM, faults: frozenset[str], session: Callable[[], AsyncSession]
    ) -> None:
        self._model = model
        self._faults = faults
        self._session = session

    async def reply(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        require_tool: str | None = None,
        on_text: TextSink | None = None,
    ) -> Reply:
        if "hang" in self._faults:
            await asyncio.Event().wait()  # until the run's deadline or a cancel ends it
        if "agent" in self._faults:
            raise RuntimeError("a drill fault: the agent failed on purpose")
        if "db" in self._faults:
            session = self._session()
            async with session.begin():
                await session.execute(text("SELECT * FROM isochat_drill_no_such_table"))
        if "llm" in self._faults:
            raise LLMError("the language model failed (a drill fault)")
        return await self._model.reply(
            messages, tools=tools, require_tool=require_tool, on_text=on_text
        )

    async def is_available(self) -> bool:
        return await self._model.is_available()

    async def aclose(self) -> None:
        return None  # the application's model is closed by the application


class BrokenTool(Tool[BaseModel]):
    """``tool`` as the model sees it, each call failing as a bug in the tool would."""

    def __init__(self, tool: Tool[Any]) -> None:
        self.name = tool.name  # type: ignore[misc]  # per instance here
        self.description = tool.description  # type: ignore[misc]
        self.input_model = tool.input_model  # type: ignore[misc]
        self.concurrent = tool.concurrent  # type: ignore[misc]

    async def run(self, params: BaseModel) -> str:
        raise RuntimeError(f"a drill fault: the {self.name} tool failed on purpose")
