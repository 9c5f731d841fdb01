"""The live stream of an answer: the model's text as ``agent_thinking`` events, exactly as it
comes (white space, newlines and code included), so that the events' texts joined are the
answer, character for character.

When text goes out (natural batching): as soon as the answer's previous event has been stored
and published; what the model says meanwhile goes in the next event (at most
``THINKING_MAX_CHARS``). Each event is a stored row sent to every socket of the user, so not
every token can be an event on a busy server; but text held back on purpose (until a sentence
ends, or for a while) is time the user waits for nothing. This way, on an idle server every
piece is an event at once, and under load the events get bigger and fewer by themselves: text
never waits longer than one write.

The sending runs in a task of its own (the pump), so that the model's stream is read on while
an event is written: ``add`` never waits for the store. The run's task stays in charge of it:
``flush`` waits for the pump (before the agent reports anything else, so that events stay in
order), a failure of the pump is raised in the run's task at the next ``add`` or ``flush``, and
``close`` cancels it on any other way out, so that nothing is written after the run ended.

An answer that outgrows ``MAX_ANSWER_CHARS`` stops the model there and ends with ``TRUNCATED``;
its events stop at the same place, the last one ending with the same note.
"""

from __future__ import annotations

import asyncio
import logging

from src.agents.base import MAX_ANSWER_CHARS, MAX_EVENT_TEXT_CHARS, RunEvents
from src.agents.tool import TRUNCATED

log = logging.getLogger(__name__)

THINKING_MAX_CHARS = 400
_EVENT_CHARS = min(THINKING_MAX_CHARS, MAX_EVENT_TEXT_CHARS)
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
        self._text = text
        self._sent = sent  # how much of the text has gone out as events
        self._flushing = False  # the pump may send past what a cut would keep
        self._pump: asyncio.Task[None] | None = None
        self._failure: Exception | None = None  # the pump's, for the run's task to raise
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
        """Take the next piece of the model's text (``on_text`` of a model call); it goes out
        when the answer's previous event is out."""
        self._raise_failure()
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
        self._start_pump()

    async def flush(self) -> None:
        """Send all that has not gone out yet (the answer is complete, cut, or the agent is
        about to report something else) and wait until it is out."""
        self._flushing = True
        try:
            self._start_pump()
            pump = self._pump
            if pump is not None:
                await asyncio.wait((pump,))
                if pump.cancelled():  # not by ``close``: the run is being torn down
                    raise asyncio.CancelledError
        finally:
            self._flushing = False
        self._raise_failure()

    async def close(self) -> None:
        """The run leaves another way than through ``flush`` (a failure, a cancel): stop the
        pump and wait for it, so that no event of this answer is written after the run ended."""
        pump, self._pump = self._pump, None
        failure, self._failure = self._failure, None
        if failure is not None:  # the run ends for a reason of its own, which is what it tells
            log.info("agent_thinking of %s not sent: %r", self._agent, failure)
        if pump is None:
            return
        pump.cancel()  # an event being written is finished first (the emitter shields it)
        cancelled = False
        while not pump.done():
            try:
                await asyncio.wait((pump,))
            except asyncio.CancelledError:
                cancelled = True  # the pump's end is awaited all the same
        if cancelled:
            raise asyncio.CancelledError

    def _start_pump(self) -> None:
        if self._pump is None and self._failure is None and self._next_end() > self._sent:
            self._pump = asyncio.create_task(self._send_pending())

    async def _send_pending(self) -> None:
        """The pump: one event at a time, each with all the text pending when it starts,
        until nothing is pending."""
        try:
            while (end := self._next_end()) > self._sent:
                text = self._text[self._sent : end]
                await self._events.emit("agent_thinking", agent=self._agent, data={"text": text})
                self._sent = end
        except Exception as exc:
            self._failure = exc
        finally:
            self._pump = None

    def _next_end(self) -> int:
        """Where the next event's text ends: at most ``_EVENT_CHARS`` on; until the flush, never
        past what a cut would keep (no event says more than the answer); and never inside the
        truncation note, so that the last event ends with all of it."""
        limit = len(self._text) if self._flushing else min(len(self._text), _KEPT)
        end = min(self._sent + _EVENT_CHARS, limit)
        note = len(self._text) - len(TRUNCATED)
        if self.truncated and self._sent < note < end < len(self._text):
            end = note
        return end

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
