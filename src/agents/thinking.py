"""The live stream of an answer: the model's text as ``agent_thinking`` events, exactly as it
comes (white space, newlines and code included), so that the events' texts joined are the
answer, character for character.

Not every token is an event (each is a stored row sent to every socket of the user): pending
text goes out at a sentence's end, a screenful, or half a second after the last event. An
answer that outgrows ``MAX_ANSWER_CHARS`` stops the model there and ends with ``TRUNCATED``;
its events stop at the same place, the last one ending with the same note.
"""

from __future__ import annotations

import asyncio
import re

from src.agents.base import MAX_ANSWER_CHARS, MAX_EVENT_TEXT_CHARS, RunEvents
from src.agents.tool import TRUNCATED

THINKING_MAX_CHARS = 400
THINKING_EVERY_S = 0.5
_SENTENCE_END = re.compile(r"[.!?]\s*$")
# What fits before the truncation note: an answer longer than MAX_ANSWER_CHARS keeps this much.
_KEPT = MAX_ANSWER_CHARS - len(TRUNCATED)
# Between the texts of two model turns (one that called tools, then the answer).
TURN_SEPARATOR = "\n\n"


class AnswerFull(Exception):
    """Raised into the model's stream once the answer reached its cap: the model stops."""


class AnswerStream:
    def __init__(self, *, events: RunEvents, agent: str, text: str = "", sent: int = 0) -> None:
        """An answer from its start, or (``text``, ``sent``) one that goes on after a pause."""
        self._events = events
        self._agent = agent
        self._loop = asyncio.get_running_loop()
        self._text = text
        self._sent = sent  # how much of the text has gone out as events
        self._last_sent = self._loop.time()
        self._new_turn = False
        self.truncated = False

    @property
    def text(self) -> str:
        """The answer so far, as the events have it (or will, after ``flush``)."""
        return self._text

    @property
    def sent(self) -> int:
        """How much of the text has gone out as events."""
        return self._sent

    def new_turn(self) -> None:
        """The model is asked again: what it says next is set apart from what it said."""
        self._new_turn = True

    async def add(self, piece: str) -> None:
        """Take the next piece of the model's text (``on_text`` of a model call)."""
        if self._new_turn and self._text and not self._text[-1].isspace():
            piece = TURN_SEPARATOR + piece
        self._new_turn = False
        text = self._text + piece
        if len(text) > MAX_ANSWER_CHARS:
            self._text = text[:_KEPT] + TRUNCATED
            self.truncated = True
            await self.flush()
            raise AnswerFull  # the rest would be cut anyway: stop the model here
        self._text = text
        # Never past what a cut would keep, so that no event says more than the answer.
        pending = self._text[self._sent : _KEPT]
        if pending and (
            _SENTENCE_END.search(pending)
            or len(pending) >= THINKING_MAX_CHARS
            or self._loop.time() - self._last_sent >= THINKING_EVERY_S
        ):
            await self._send(self._sent + len(pending))

    async def flush(self) -> None:
        """Send all that has not gone out yet (the answer is complete, or cut)."""
        await self._send(len(self._text))

    async def _send(self, end: int) -> None:
        """Send the text up to ``end``, in as many events as the event text cap needs (a model
        may send one huge piece)."""
        pending = self._text[self._sent : end]
        for start in range(0, len(pending), MAX_EVENT_TEXT_CHARS):
            await self._events.emit(
                "agent_thinking",
                agent=self._agent,
                data={"text": pending[start : start + MAX_EVENT_TEXT_CHARS]},
            )
        self._sent = max(self._sent, end)
        self._last_sent = self._loop.time()
