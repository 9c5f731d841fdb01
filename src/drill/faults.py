"""Drill faults: failures a deployment injects into its own runs, for drill users only, so that
an operator can prove isolation on the live system (``isochat drill``, ``src/drill/``).

A plug-in container (``src/plugins.py``) that ``ISOCHAT_DRILL_SECRET`` plugs in, the way teams
plug in theirs; isochat's own container names no drill. With it, a run whose user's token
carries a valid ``drill`` claim obeys the fault markers in its message:

- ``[drill:agent]``  the first agent raises, as a bug would         -> ``agent_error``
- ``[drill:db]``     a real SQL error on the run's own session         -> ``database_error``
- ``[drill:llm]``    the model fails                                   -> ``llm_error``
- ``[drill:tool]``   every call of the calculator fails, as a bug would -> ``tool_error``
- ``[drill:hang]``   the model never answers: the run's deadline or a cancel ends it
- ``[drill:approval]`` every call of the calculator waits for a person's approval: the run
  pauses (``awaiting_approval``) as any run does whose tool needs approval, until a decision,
  a cancel or the approval timeout

Anyone else's markers are plain text, and without the setting everybody's are.

The claim is proof of the drill secret: ``HMAC-SHA256(secret, "isochat-drill:<sub>:<exp>")``,
in a token signed as usual with the auth secret (``DrillClaim`` is the token service's claims
hook). So a token from dev-login, ``isochat token`` or a team's own login has no claim and
forces nothing; a claim made with another secret, or copied into a token of another user or
another expiry, is ignored (the token stays valid, its runs just take no faults); and the auth
secret alone, which can already act as any user, cannot force a fault. What a drill user can
force is a failure of their own runs, within every limit a user has.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dependency_injector import containers, providers
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import Connection

from src.agents.tool import Tool
from src.agents.tools import Calculator
from src.runs.domain import RunContext
from src.services.database.engine import Transactions
from src.services.llm import LLM, ChatMessage, LLMError, Reply, TextSink, ToolSpec

DRILL_CLAIM = "drill"
DRILL_GRANT = "drill"  # what a valid claim grants the caller (RunContext.grants)
FAULTS = ("agent", "tool", "llm", "db", "hang", "approval")
TOOL_FAULTS = frozenset({"tool", "approval"})  # the ones the calculator injects
MODEL_FAULTS = frozenset(FAULTS) - TOOL_FAULTS  # the ones the run's model injects
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


class DrillClaim:
    """The token service's claims hook: a valid ``drill`` claim grants ``drill``; and, for the
    drill client, the claim that makes a token a drill user's."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def grants(self, claims: Mapping[str, Any]) -> frozenset[str]:
        claim, sub, exp = claims.get(DRILL_CLAIM), claims.get("sub"), claims.get("exp")
        if not (isinstance(claim, str) and isinstance(sub, str) and isinstance(exp, int)):
            return frozenset()
        proof = drill_proof(self._secret, user_id=sub, exp=exp)
        return frozenset({DRILL_GRANT}) if hmac.compare_digest(claim, proof) else frozenset()

    def add_to(self, claims: dict[str, Any]) -> None:
        """Make ``claims`` (with their ``sub`` and ``exp``) a drill user's."""
        claims[DRILL_CLAIM] = drill_proof(self._secret, user_id=claims["sub"], exp=claims["exp"])


def faults_of(context: RunContext) -> frozenset[str]:
    """The faults a drill user's message asks for; none for anyone else."""
    return faults_in(context.content) if DRILL_GRANT in context.grants else frozenset()


# The run's parts, swapped for failing ones when its faults say so (the plug-in's providers
# call these for every run: they hand back the real part unless there is a fault to inject).


def model_for(model: LLM, faults: frozenset[str], transactions: Any) -> LLM:
    asked = faults & MODEL_FAULTS
    return FaultyModel(model, asked, transactions) if asked else model


def tool_for(tool: Tool[Any], faults: frozenset[str]) -> Tool[Any]:
    if "tool" in faults:
        tool = BrokenTool(tool)
    if "approval" in faults:
        tool = AskingTool(tool)
    return tool


class FaultyModel:
    """The run's model, failing in the ways its faults say before it would answer."""

    def __init__(
        self, model: LLM, faults: frozenset[str], transactions: providers.Provider[Transactions]
    ) -> None:
        self._model = model
        self._faults = faults
        self._transactions = transactions  # resolved only for a db fault

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
            await self._transactions().read(_no_such_table)
        if "llm" in self._faults:
            raise LLMError("the language model failed (a drill fault)")
        return await self._model.reply(
            messages, tools=tools, require_tool=require_tool, on_text=on_text
        )

    async def is_available(self) -> bool:
        return await self._model.is_available()

    async def aclose(self) -> None:
        return None  # the application's model is closed by the application


def _no_such_table(conn: Connection) -> None:
    conn.execute(text("SELECT * FROM isochat_drill_no_such_table"))


class BrokenTool(Tool[BaseModel]):
    """``tool`` as the model sees it, each call failing as a bug in the tool would."""

    def __init__(self, tool: Tool[Any]) -> None:
        self.name = tool.name  # type: ignore[misc]  # per instance here
        self.description = tool.description  # type: ignore[misc]
        self.input_model = tool.input_model  # type: ignore[misc]
        self.concurrent = tool.concurrent  # type: ignore[misc]

    async def run(self, params: BaseModel) -> str:
        raise RuntimeError(f"a drill fault: the {self.name} tool failed on purpose")


class AskingTool(Tool[BaseModel]):
    """``tool`` as the model sees it, each call waiting for a person's approval (its run
    pauses as it would for any tool that needs approval); approved, the call runs ``tool``."""

    def __init__(self, tool: Tool[Any]) -> None:
        self._tool = tool
        self.name = tool.name  # type: ignore[misc]  # per instance here
        self.description = tool.description  # type: ignore[misc]
        self.input_model = tool.input_model  # type: ignore[misc]
        self.concurrent = tool.concurrent  # type: ignore[misc]

    async def run(self, params: BaseModel) -> str:
        return await self._tool.run(params)

    def needs_approval(self, params: BaseModel) -> bool:
        return True


class DrillFaults(containers.DeclarativeContainer):
    """The plug-in: isochat's token grants, the run's model and the calculator, each in a form
    that fails for a drill user's message that asks for it."""

    isochat = providers.DependenciesContainer()

    token_grants = providers.Singleton(DrillClaim, isochat.settings.provided.drill_secret)
    faults = providers.Callable(faults_of, isochat.run_context)
    run_llm = providers.Callable(model_for, isochat.llm, faults, isochat.transactions.provider)
    calculator = providers.Callable(tool_for, providers.Factory(Calculator), faults)
