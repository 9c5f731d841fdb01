"""A deterministic model that needs no network: the default, and the one tests rely on.

It honours the two prompts isochat sends: a route choice ("Reply with exactly one word from this
list: ...") and a free answer. Same input, same output, always.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Sequence

from src.services.llm.base import ChatMessage

ROUTE_CHOICE_MARKER = "Reply with exactly one word from this list:"

_ARITHMETIC = re.compile(
    r"\d\s*(\*\*|[-+*/%^x\u00d7\u00f7])\s*[-+(]*\s*\d|\b(sqrt|calculate|compute)\b", re.I
)
_ABOUT_CONVERSATION = re.compile(
    r"\b(what did i|did i (say|ask|tell)|i (said|asked|told)|my (previous|last|earlier|first) "
    r"(message|question)|earlier|so far|our conversation|this conversation|history|remind me)\b",
    re.I,
)


class OfflineLLM:
    async def aclose(self) -> None:
        return None

    async def is_available(self) -> bool:
        return True  # nothing to reach

    async def complete(self, messages: Sequence[ChatMessage]) -> str:
        return "".join([piece async for piece in self.stream(messages)])

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        system = "\n".join(m.content for m in messages if m.role == "system")
        user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        if ROUTE_CHOICE_MARKER in system:
            yield _choose_route(system, user)
            return
        for piece in _answer(user, history=[m for m in messages[:-1] if m.role != "system"]):
            yield piece


def _choose_route(system: str, user: str) -> str:
    listed = system.split(ROUTE_CHOICE_MARKER, 1)[1].splitlines()[0]
    options = [o.strip(" .") for o in listed.split(",") if o.strip(" .")]
    if "math" in options and _ARITHMETIC.search(user):
        return "math"
    if "history" in options and _ABOUT_CONVERSATION.search(user):
        return "history"
    return "general" if "general" in options else options[-1]


# The general answer quotes the start of the message, not all of it: a message may be
# thousands of characters, and one "word" of them may be the whole message.
TOPIC_WORDS = 12
TOPIC_MAX_CHARS = 80


def _answer(user: str, *, history: Sequence[ChatMessage]) -> list[str]:
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
    if history:
        text += f" This conversation has {len(history)} earlier message(s)."
    # Word by word, like a streaming model.
    return [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]]
