"""isochat's own tools: the calculator (``math``) and the conversation's history
(``history``). Teams add theirs the same way (see ``src/agents/tool.py``)."""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Sequence
from decimal import (
    ROUND_HALF_UP,
    Decimal,
    DecimalException,
    DivisionByZero,
    InvalidOperation,
    localcontext,
)

from pydantic import BaseModel, ConfigDict, Field

from src.agents.tool import MAX_TOOL_OUTPUT_CHARS, TRUNCATED, Tool, ToolError, truncate
from src.runs.domain import Message, RunContext
from src.services.database import repositories as repo
from src.services.database.engine import Transactions

__all__ = [
    "MAX_TOOL_OUTPUT_CHARS",
    "NO_EARLIER_MESSAGES",
    "TRUNCATED",
    "Calculator",
    "ConversationHistory",
    "ToolError",
    "evaluate",
    "summarise_messages",
    "truncate",
]

# The history tool summarises within the tool cap instead of replaying whole messages: the last
# HISTORY_MESSAGES_SHOWN messages, each cut to an excerpt. 10 * (300 + ~40) + two header lines
# stays under MAX_TOOL_OUTPUT_CHARS, so the tool cap never has to cut the summary.
HISTORY_MESSAGES_SHOWN = 10
# What the history tool says of a thread without earlier messages.
NO_EARLIER_MESSAGES = "no earlier messages"
HISTORY_EXCERPT_CHARS = 300
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_DIGITS = 60
MAX_ROUND_PLACES = 20
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
# A number followed by % and then nothing it could be the left side of: per cent.
_PERCENT = re.compile(r"((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*%(?!\s*[\d.(a-zA-Z])")
ALLOWED = (
    "numbers (1.5e3 too), + - * / // % ** (or ^), brackets, n% (per cent), "
    "sqrt(x), round(x) or round(x, places), abs(x)"
)


class CalculatorInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expression: str = Field(
        description=f"An arithmetic expression, e.g. (12 + 3) * 4 or sqrt(144). Allowed: {ALLOWED}."
    )


class Calculator(Tool[CalculatorInput]):
    """Exact decimal arithmetic, parsed as a tree and never evaluated as code. Exponents,
    magnitudes and rounding places are bounded so no input can stall the process."""

    name = "calculator"
    description = (
        "Evaluates an arithmetic expression exactly (decimal arithmetic: 0.1 + 0.2 = 0.3). "
        "Use it for every calculation instead of computing in your head."
    )

    async def run(self, params: CalculatorInput) -> str:
        return format_number(evaluate(params.expression))


def evaluate(expression: str) -> Decimal:
    text = expression.replace("^", "**").replace("\u00d7", "*").replace("\u00f7", "/").strip()
    if not text:
        raise ToolError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = _PERCENT.sub(r"(\1 / 100)", text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    with localcontext() as ctx:
        ctx.prec = EXACT_DIGITS
        ctx.traps[DivisionByZero] = True
        ctx.traps[InvalidOperation] = True
        try:
            return _Evaluator(text).eval(tree.body)
        except (DivisionByZero, ZeroDivisionError):
            raise ToolError("division by zero") from None
        except InvalidOperation:
            raise ToolError(f"undefined result for {expression!r}") from None
        except DecimalException:
            raise ToolError("the result is out of range") from None


class _Evaluator:
    def __init__(self, source: str) -> None:
        self._source = source

    def eval(self, node: ast.expr) -> Decimal:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            # From the source text, not the float: 1.1e1 is exactly 11.
            value = Decimal(ast.get_source_segment(self._source, node) or str(node.value))
            if len(value.as_tuple().digits) > MAX_DIGITS or abs(value.adjusted()) > MAX_DIGITS:
                raise ToolError("a number has too many digits")
            return value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.eval(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            left, right = self.eval(node.left), self.eval(node.right)
            if isinstance(node.op, ast.Pow):
                if right != right.to_integral_value() or abs(right) > MAX_EXPONENT:
                    raise ToolError(
                        f"exponents must be whole numbers up to {MAX_EXPONENT} (sqrt(x) for roots)"
                    )
                return left**right
            op = _BINARY.get(type(node.op))
            if op is not None:
                return op(left, right)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            return self._call(node.func.id, [self.eval(arg) for arg in node.args])
        raise ToolError(f"only {ALLOWED} are allowed")

    @staticmethod
    def _call(name: str, args: list[Decimal]) -> Decimal:
        if name == "sqrt" and len(args) == 1:
            if args[0] < 0:
                raise ToolError("the square root of a negative number is not a real number")
            return args[0].sqrt()
        if name == "abs" and len(args) == 1:
            return abs(args[0])
        if name == "round" and len(args) in (1, 2):
            places = args[1] if len(args) == 2 else Decimal(0)
            if places != places.to_integral_value() or not 0 <= places <= MAX_ROUND_PLACES:
                raise ToolError(
                    f"round() takes a whole number of places from 0 to {MAX_ROUND_PLACES}"
                )
            return args[0].quantize(Decimal(1).scaleb(-int(places)), rounding=ROUND_HALF_UP)
        raise ToolError(f"only {ALLOWED} are allowed")


def format_number(value: Decimal) -> str:
    if value == value.to_integral_value() and value.adjusted() < EXACT_DIGITS:
        return str(int(value))
    shown = format(value, f".{SHOWN_DIGITS}g")
    if "." in shown and "e" not in shown:
        shown = shown.rstrip("0").rstrip(".")  # 0.0100 is 0.01
    return shown


class NoInput(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationHistory(Tool[NoInput]):
    """The run's thread so far (the user's messages and the answers), read with the run's own
    session."""

    name = "conversation_history"
    description = (
        "This conversation so far, oldest first, each message after who said it (user or "
        f"assistant): the newest {HISTORY_MESSAGES_SHOWN}, each cut to "
        f"{HISTORY_EXCERPT_CHARS} characters."
    )
    concurrent = False  # reads with the run's session

    def __init__(self, *, transactions: Transactions, context: RunContext) -> None:
        self._tx = transactions
        self._context = context

    async def earlier(self) -> list[Message]:
        """The thread's messages before this run's own question, oldest first (not the ones
        queued behind it)."""
        ctx = self._context
        page = await self._tx.read(repo.list_messages, thread_id=ctx.thread_id, user_id=ctx.user_id)
        for n, message in enumerate(page.items):
            if message.run_id == ctx.run_id:
                return page.items[:n]
        return page.items

    async def run(self, params: NoInput) -> str:
        return summarise_messages([(m.role, m.content) for m in await self.earlier()])


def summarise_messages(messages: Sequence[tuple[str, str]]) -> str:
    """The conversation so far (``(role, content)``, oldest first) as a numbered list that fits
    the tool cap: the newest ``HISTORY_MESSAGES_SHOWN`` messages, each an excerpt after who
    said it, with a note of what was left out."""
    if not messages:
        return NO_EARLIER_MESSAGES
    first_shown = max(0, len(messages) - HISTORY_MESSAGES_SHOWN)
    lines = [f"{len(messages)} earlier message(s):"]
    if first_shown:
        lines.append(f"... ({first_shown} earlier {_messages(first_shown)} not shown)")
    lines += [
        f"{number}. {role}: {excerpt(content, HISTORY_EXCERPT_CHARS)}"
        for number, (role, content) in enumerate(messages[first_shown:], start=first_shown + 1)
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


def _messages(count: int) -> str:
    return "message" if count == 1 else "messages"
