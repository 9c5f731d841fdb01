"""A deterministic model that needs no network: the default, and the one most tests rely on.

It speaks the same protocol as a remote model, tool calls included, so every offline run goes
through the agent loop's real code path:

- asked to call a tool that takes a ``route`` (triage's ``choose_route``), it calls it with the
  route the message fits (arithmetic to ``math``, questions about the conversation to
  ``history``, a route whose name the message says to that route, anything else to
  ``general``);
- offered the ``calculator``, it calls it with the one calculation it finds in the message
  (``src/services/llm/arithmetic.py``), then answers ``<expression> = <result>``; where it
  finds none (or several) it says plainly that it cannot tell what to calculate;
- offered ``conversation_history``, it calls it, then answers with what it returned;
- offered a tool the message names (a team's, an MCP server's ``<server>__<tool>``), it calls
  it with the arguments written after the name, as a JSON object (``demo__add {"a": 2, "b":
  3}``) or as ``key=value`` words (``demo__add a=2 b=3``), then answers with what it returned;
- offered other tools it is not told to use, it says it cannot choose among them, and how to
  get a model that can;
- with no tools, it answers simply, saying what it is.

A tool's error it does not try to get past: it answers nothing, so the run fails with the
tool's reason (``tool_error``). A call a person declined (approvals) it says it did not make.
It never answers a number it did not get from the calculator.
Usage is counted in words, the offline model's tokens. Same input, same output, always.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from src.runs.domain import Usage
from src.services.llm.arithmetic import find_arithmetic
from src.services.llm.base import ChatMessage, Reply, TextSink, ToolCall, ToolSpec

# The tools it knows by name, as a model knows the tools it was trained on (isochat's own:
# src/agents/tools.py), and what the history tool answers for a thread with no earlier
# messages (tests/unit/test_tools.py checks that the tool says just that).
CALCULATOR = "calculator"
HISTORY = "conversation_history"
NO_EARLIER_MESSAGES = "no earlier messages"

_CALCULATION_WORDS = re.compile(r"\b(sqrt|square root|calculate|compute|percent)\b", re.I)
_ABOUT_CONVERSATION = re.compile(
    r"\b(what did i|did i (say|ask|tell)|i (said|asked|told)|my (previous|last|earlier|first) "
    r"(message|question)|earlier|so far|our conversation|this conversation|history|remind me|"
    r"summari[sz]e)\b",
    re.I,
)
# The general answer quotes the start of the message, not all of it: a message may be
# thousands of characters, and one "word" of them may be the whole message.
TOPIC_WORDS = 12
TOPIC_MAX_CHARS = 80
NO_CALCULATION = (
    "I can't tell what to calculate in your message. I am isochat's offline model: write "
    'the calculation out, for example "what is (12 + 3) * 4?", "sqrt(144)" or '
    '"15% of 80".'
)


class OfflineLLM:
    async def aclose(self) -> None:
        return None

    async def is_available(self) -> bool:
        return True  # nothing to reach

    async def reply(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        require_tool: str | None = None,
        on_text: TextSink | None = None,
    ) -> Reply:
        turn = _turn(messages, tools=tools, require_tool=require_tool)
        if on_text is not None:
            for piece in _pieces(turn.text):
                await on_text(piece)
        said = turn.text + "".join(c.arguments for c in turn.tool_calls)
        usage = Usage(sum(_words(m.content) for m in messages), _words(said))
        return Reply(text=turn.text, tool_calls=turn.tool_calls, usage=usage)


def _turn(
    messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec], require_tool: str | None
) -> Reply:
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    user = messages[last_user].content if last_user >= 0 else ""
    offered = {tool.name: tool for tool in tools}
    required = offered.get(require_tool or "")
    if required is not None and _route_options(required):
        return _call(required.name, {"route": choose_route(user, _route_options(required))})
    this_run = messages[last_user + 1 :]
    results = [m for m in this_run if m.role == "tool"]
    if results:
        return Reply(text=_answer_from(results, this_run))
    named = _named_tool(user, offered)
    if named is not None:
        return _call(named, _arguments_after(user, named))
    if CALCULATOR in offered:
        expression = find_arithmetic(user)
        if expression is None:
            return Reply(text=NO_CALCULATION)
        return _call(CALCULATOR, {"expression": expression})
    if HISTORY in offered:
        return _call(HISTORY, {})
    if offered and not _only_mcp(offered):
        names = ", ".join(offered)
        return Reply(
            text=f"I am isochat's offline model and cannot use the tools this question needs "
            f"({names}). Set ISOCHAT_LLM_PROVIDER=openai with a model that calls tools."
        )
    earlier = [m for m in messages[:last_user] if m.role in ("user", "assistant")]
    text = _general_answer(user, earlier=len(earlier))
    if offered:
        text += f" To call a tool, name it: {', '.join(offered)}."
    return Reply(text=text)


def _only_mcp(offered: dict[str, ToolSpec]) -> bool:
    """Whether every tool offered is an MCP server's: a specialist of its own with those only
    (``general``) answers as it would without them, unless the message names one."""
    return all("__" in name for name in offered)


def choose_route(user: str, options: Sequence[str]) -> str:
    if "math" in options and (find_arithmetic(user) or _CALCULATION_WORDS.search(user)):
        return "math"
    if "history" in options and _ABOUT_CONVERSATION.search(user):
        return "history"
    words = set(re.findall(r"[a-z_]+", user.lower()))
    named = [o for o in options if o in words and o not in ("math", "history", "general")]
    if named:
        return named[0]
    return "general" if "general" in options else options[-1]


def _route_options(tool: ToolSpec) -> list[str]:
    """The routes a tool that takes a ``route`` offers (none for any other tool)."""
    route = tool.parameters.get("properties", {}).get("route", {})
    return [str(option) for option in route.get("enum", [])]


def _answer_from(results: Sequence[ChatMessage], this_run: Sequence[ChatMessage]) -> str:
    """The answer once the tools have answered; nothing when one failed."""
    calls = {c.id: c for m in this_run for c in m.tool_calls}
    lines = []
    for result in results:
        if _is_error(result.content):
            return ""
        call = calls.get(result.tool_call_id or "")
        refusal = _refusal(result.content)
        if refusal is not None:
            # Declined by a person: said plainly, never answered as if the tool had run.
            what = "calculate that" if call and call.name == CALCULATOR else "use that tool"
            lines.append(f"I did not {what}: it was declined ({refusal}).")
        elif call is not None and call.name == CALCULATOR:
            lines.append(f"{json.loads(call.arguments)['expression']} = {result.content}")
        elif result.content == NO_EARLIER_MESSAGES:
            lines.append("This is the first thing you have asked in this conversation.")
        elif call is not None and call.name == HISTORY:
            lines.append(
                "Here is this conversation so far (I am the offline model: I can list it, "
                f"not summarise it): {result.content}"
            )
        else:
            lines.append(f"{call.name if call else 'The tool'} answered: {result.content}")
    return "\n".join(lines)


def _is_error(content: str) -> bool:
    return _only_key(content, "error") is not None


def _refusal(content: str) -> str | None:
    """What a person said declining the call (a tool result ``{"refused": ...}``), if so."""
    return _only_key(content, "refused")


def _only_key(content: str, key: str) -> str | None:
    try:
        parsed = json.loads(content)
    except ValueError:
        return None
    if isinstance(parsed, dict) and set(parsed) == {key}:
        return str(parsed[key])
    return None


def _named_tool(user: str, offered: dict[str, ToolSpec]) -> str | None:
    """The first offered tool the message names (isochat's own are chosen by what is asked,
    not by name)."""
    for name, spec in offered.items():
        if (
            name not in (CALCULATOR, HISTORY)
            and not _route_options(spec)
            and re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", user)
        ):
            return name
    return None


def _arguments_after(user: str, name: str) -> dict[str, Any]:
    """The arguments written after the tool's name: a JSON object, or ``key=value`` words
    (each value JSON where it reads as JSON: 2 is a number, Paris a text)."""
    rest = user[user.index(name) + len(name) :].strip()
    if rest.startswith("{"):
        try:
            value, _ = json.JSONDecoder().raw_decode(rest)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    arguments: dict[str, Any] = {}
    for key, text in re.findall(r"([A-Za-z_]\w*)=(\"[^\"]*\"|\S+)", rest):
        try:
            arguments[key] = json.loads(text)
        except ValueError:
            arguments[key] = text.rstrip(".,;!?")
    return arguments


def _call(name: str, arguments: dict[str, Any]) -> Reply:
    return Reply(
        text="",
        tool_calls=(ToolCall(id=f"call_{name}", name=name, arguments=json.dumps(arguments)),),
    )


def _general_answer(user: str, *, earlier: int) -> str:
    words = user.split()
    topic = " ".join(words[:TOPIC_WORDS])
    if len(topic) > TOPIC_MAX_CHARS:
        topic = topic[:TOPIC_MAX_CHARS].rstrip() + " ..."
    elif len(words) > TOPIC_WORDS:
        topic += " ..."
    text = (
        f'You wrote {len(words)} word{"s" if len(words) != 1 else ""} about "{topic}". '
        "I am isochat's offline model, so I can only answer simply: "
        'ask me arithmetic ("what is 12 * 7?") or about this conversation '
        '("what did I ask before?").'
    )
    if earlier:
        text += f" This conversation has {earlier} earlier message(s)."
    return text


def _pieces(text: str) -> list[str]:
    """Word by word, like a streaming model: each piece a word and the space after it."""
    return re.findall(r"\S+\s*|\s+", text)


def _words(text: str) -> int:
    return len(text.split())
