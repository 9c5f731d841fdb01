"""Tools the specialists call. Each takes text and returns text, like an LLM tool call."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Sequence
from decimal import Decimal, DecimalException, DivisionByZero, InvalidOperation, localcontext
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.context import RunContext
from src.services.database import repositories as repo
from src.services.database.engine import atomic
from src.services.domain import Message


class ToolError(Exception):
    """A tool refused its input or failed: the run fails with ``tool_error``."""


class Tool(Protocol):
    name: str

    async def __call__(self, tool_input: str) -> str: ...


NO_EARLIER_MESSAGES = "no earlier messages"
# Every tool's output is cut to this by the agent that calls it (``Agent.use_tool``): it is
# stored in an event and handed on to the answer, so no tool can flood a run.
MAX_TOOL_OUTPUT_CHARS = 4_000
# Said at the end of a text a cap has cut; counted within the cap.
TRUNCATED = "\u2026 [truncated]"
# The history tool summarises within the tool cap instead of replaying whole messages: the last
# HISTORY_MESSAGES_SHOWN messages, each cut to an excerpt. 10 * (300 + ~40) + two header lines
# stays under MAX_TOOL_OUTPUT_CHARS, so the tool cap never has to cut the summary.
HISTORY_MESSAGES_SHOWN = 10
HISTORY_EXCERPT_CHARS = 300
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_DIGITS = 60
EXACT_DIGITS = 50  # integers up to this many digits come out exact
SHOWN_DIGITS = 28  # other results are shown to this many significant digits

_BINARY: dict[type[ast.operator], Callable[[Decimal, Decimal], Decimal]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


class Calculator:
    """Exact decimal arithmetic on + - * / // % ** and parentheses, parsed as a tree and never
    evaluated as code. Exponents and magnitudes are bounded so no input can stall the process."""

    name = "calculator"

    async def __call__(self, tool_input: str) -> str:
        return format_number(evaluate(tool_input))


def evaluate(expression: str) -> Decimal:
    text = expression.replace("^", "**").replace("\u00d7", "*").replace("\u00f7", "/").strip()
    if not text:
        raise ToolError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    with localcontext() as ctx:
        ctx.prec = EXACT_DIGITS
        ctx.traps[DivisionByZero] = True
        ctx.traps[InvalidOperation] = True
        try:
            return _eval(tree.body)
        except (DivisionByZero, ZeroDivisionError):
            raise ToolError("division by zero") from None
        except InvalidOperation:
            raise ToolError(f"undefined result for {expression!r}") from None
        except DecimalException:
            raise ToolError("the result is out of range") from None


def _eval(node: ast.expr) -> Decimal:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = Decimal(str(node.value))
        if len(value.as_tuple().digits) > MAX_DIGITS:
            raise ToolError("a number has too many digits")
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _eval(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if right != right.to_integral_value() or abs(right) > MAX_EXPONENT:
                raise ToolError(f"exponents must be whole numbers up to {MAX_EXPONENT}")
            return left**right
        op = _BINARY.get(type(node.op))
        if op is not None:
            return op(left, right)
    raise ToolError("only numbers, + - * / // % ** and parentheses are allowed")


def format_number(value: Decimal) -> str:
    if value == value.to_integral_value() and value.adjusted() < EXACT_DIGITS:
        return str(int(value))
    return format(value, f".{SHOWN_DIGITS}g")


class ConversationHistory:
    """The user's own earlier messages in the run's thread, read with the run's own session."""

    name = "conversation_history"

    def __init__(self, *, session: AsyncSession, context: RunContext) -> None:
        self._session = session
        self._context = context

    async def earlier(self, *, role: str | None = None) -> list[Message]:
        """The thread's messages before this run's own, oldest first."""
        ctx = self._context

        async def read(session: AsyncSession) -> list[Message]:
            return await repo.list_messages(
                session, thread_id=ctx.thread_id, user_id=ctx.user_id, role=role
            )

        return [m for m in await atomic(self._session, read) if m.run_id != ctx.run_id]

    async def __call__(self, tool_input: str) -> str:
        earlier = await self.earlier(role="user")
        return summarise_messages([m.content for m in earlier])


def summarise_messages(contents: Sequence[str]) -> str:
    """The user's earlier messages as a numbered list that fits the tool cap: the newest
    ``HISTORY_MESSAGES_SHOWN``, each an excerpt, with a note of what was left out."""
    if not contents:
        return NO_EARLIER_MESSAGES
    first_shown = max(0, len(contents) - HISTORY_MESSAGES_SHOWN)
    lines = [f"{len(contents)} earlier message(s):"]
    if first_shown:
        lines.append(f"... ({first_shown} earlier {_messages(first_shown)} not shown)")
    lines += [
        f"{number}. {excerpt(content, HISTORY_EXCERPT_CHARS)}"
        for number, content in enumerate(contents[first_shown:], start=first_shown + 1)
    ]
    # A backstop only: the constants above keep the summary within the cap.
    return truncate("\n".join(lines), MAX_TOOL_OUTPUT_CHARS)


def excerpt(text: str, limit: int) -> str:
    """``text`` on one line (runs of white space as one space); past ``limit`` characters,
    its first ``limit`` followed by a note of how long it was."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit].rstrip()}\u2026 [truncated: {len(text):,} characters]"


def truncate(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and ``TRUNCATED``, in
    ``limit`` characters all told."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATED))] + TRUNCATED


def _messages(count: int) -> str:
    return "message" if count == 1 else "messages"
