"""The specialist agents: each answers one kind of message, calling real tools."""

from __future__ import annotations

import asyncio
import contextlib
import re

from src.agents.base import Agent, AgentError, AgentTracker, RunEvents
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
        answer, pending, last_sent = "", "", loop.time()
        # aclosing: if this run stops (cancelled, failed), the model's stream closes now.
        async with contextlib.aclosing(self._llm.stream(prompt)) as pieces:
            async for piece in pieces:
                answer += piece
                pending += piece
                # A sentence, a screenful or a moment at a time, not every token: each event
                # is a stored row.
                if (
                    _SENTENCE_END.search(pending)
                    or len(pending) >= THINKING_MAX_CHARS
                    or loop.time() - last_sent >= THINKING_EVERY_S
                ) and pending.strip():
                    await self.think(pending.strip())
                    pending, last_sent = "", loop.time()
        if pending.strip():
            await self.think(pending.strip())
        if not answer.strip():
            raise AgentError("the model gave an empty answer")
        return answer.strip()


def _as_chat(message: Message) -> ChatMessage:
    return ChatMessage("assistant" if message.role == "assistant" else "user", message.content)
