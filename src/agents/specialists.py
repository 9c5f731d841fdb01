"""The specialist agents: each answers one kind of message, calling real tools."""

from __future__ import annotations

import asyncio
import contextlib
import re

from src.agents.base import (
    MAX_ANSWER_CHARS,
    MAX_EVENT_TEXT_CHARS,
    TRUNCATED,
    Agent,
    AgentError,
    AgentTracker,
    RunEvents,
)
from src.agents.tools import NO_EARLIER_MESSAGES, Calculator, ConversationHistory
from src.services.domain import Message
from src.services.llm import LLM, ChatMessage

# A run of characters that can form an arithmetic expression, starting at a number or bracket.
_EXPRESSION = re.compile(r"[-+(]*\s*[\d.][\d.\s()+\-*/%^\u00d7\u00f7x]*")
GENERAL_HISTORY_MESSAGES = 20
THINKING_MAX_CHARS = 400
THINKING_EVERY_S = 0.5
_SENTENCE_END = re.compile(r"[.!?]\s*$")


class MathAgent(Agent):
    name = "math"

    def __init__(self, *, events: RunEvents, tracker: AgentTracker, calculator: Calculator) -> None:
        super().__init__(events=events, tracker=tracker)
        self._calculator = calculator

    async def answer(self, content: str) -> str:
        expression = extract_expression(content)
        if expression is None:
            return "I could not find an arithmetic expression in your message."
        result = await self.use_tool(self._calculator, expression)
        return f"{expression} = {result}"


def extract_expression(text: str) -> str | None:
    candidates = [
        m.group().strip().replace("x", "*") for m in _EXPRESSION.finditer(text.replace(",", ""))
    ]
    candidates = [c.rstrip(".").strip() for c in candidates if re.search(r"\d", c)]
    return max(candidates, key=len) if candidates else None


class HistoryAgent(Agent):
    """Answers questions about the user's own conversation from the database."""

    name = "history"

    def __init__(
        self, *, events: RunEvents, tracker: AgentTracker, history: ConversationHistory
    ) -> None:
        super().__init__(events=events, tracker=tracker)
        self._history = history

    async def answer(self, content: str) -> str:
        found = await self.use_tool(self._history, content)
        if found == NO_EARLIER_MESSAGES:
            return "This is the first thing you have asked in this conversation."
        return f"Here is what you asked before in this conversation: {found}"


class GeneralAgent(Agent):
    """Answers anything else with the model, the thread's recent messages as context."""

    name = "general"

    def __init__(
        self, *, events: RunEvents, tracker: AgentTracker, llm: LLM, history: ConversationHistory
    ) -> None:
        super().__init__(events=events, tracker=tracker)
        self._llm = llm
        self._history = history

    async def answer(self, content: str) -> str:
        earlier = (await self._history.earlier())[-GENERAL_HISTORY_MESSAGES:]
        prompt = [ChatMessage("system", "You are isochat, a helpful assistant.")]
        prompt += [_as_chat(m) for m in earlier]
        prompt.append(ChatMessage("user", content))
        loop = asyncio.get_running_loop()
        # What fits before the truncation note: an answer longer than MAX_ANSWER_CHARS keeps
        # this much of its start. Thinking never goes past it, so the thinking events never
        # say more than the answer does.
        kept = MAX_ANSWER_CHARS - len(TRUNCATED)
        answer, sent, last_sent, too_long = "", 0, loop.time(), False
        # aclosing: if this run stops (cancelled, failed, or the answer outgrew its cap), the
        # model's stream closes now.
        async with contextlib.aclosing(self._llm.stream(prompt)) as pieces:
            async for piece in pieces:
                answer += piece
                if len(answer) > MAX_ANSWER_CHARS:
                    too_long = True  # the rest would be cut anyway: stop the model here
                    break
                pending = answer[sent:kept]
                # A sentence, a screenful or a moment at a time, not every token: each event
                # is a stored row.
                if (
                    _SENTENCE_END.search(pending)
                    or len(pending) >= THINKING_MAX_CHARS
                    or loop.time() - last_sent >= THINKING_EVERY_S
                ) and pending.strip():
                    await self._think_in_events(pending.strip())
                    sent, last_sent = sent + len(pending), loop.time()
        if too_long:
            answer = answer[:kept] + TRUNCATED
        if answer[sent:].strip():
            await self._think_in_events(answer[sent:].strip())
        if not answer.strip():
            raise AgentError("the model gave an empty answer")
        return answer.strip()

    async def _think_in_events(self, text: str) -> None:
        """``text`` as thinking, in as many events as the event text cap needs (a model may
        send one huge piece)."""
        for start in range(0, len(text), MAX_EVENT_TEXT_CHARS):
            await self.think(text[start : start + MAX_EVENT_TEXT_CHARS])


def _as_chat(message: Message) -> ChatMessage:
    return ChatMessage("assistant" if message.role == "assistant" else "user", message.content)
