"""The answer's live stream (natural batching): a piece goes out as an event as soon as the
answer's previous event is stored; what the model says meanwhile goes in the next event. Writes
are held on an event the test controls (no timing): nothing is sent out of order or twice, the
texts joined are the answer, a failed write is raised in the run's task, and a run that leaves
another way leaves no task behind and writes nothing after."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import pytest

from src.agents.base import MAX_ANSWER_CHARS
from src.agents.thinking import THINKING_MAX_CHARS, AnswerFull, AnswerStream
from src.agents.tool import TRUNCATED
from src.aio import uninterrupted
from src.runs.ledger import RunAlreadyFinished


class HeldEvents:
    """A run's events whose writes the test lets through: open by default; ``hold`` makes each
    write wait until ``release``. ``shielded`` writes, as the real emitter's, finish even when
    cancelled; ``failure`` is raised by the next write instead of storing it."""

    def __init__(self, *, shielded: bool = False) -> None:
        self.stored: list[tuple[str, str]] = []  # (type, text) in the order written
        self.started: list[str] = []  # texts whose write began
        self.in_flight = 0
        self.overlaps = 0  # writes that began while another was in flight
        self.failure: Exception | None = None
        self.shielded = shielded
        self._open = asyncio.Event()
        self._open.set()
        self._changed = asyncio.Condition()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    @property
    def texts(self) -> list[str]:
        return [text for kind, text in self.stored if kind == "agent_thinking"]

    async def emit(
        self, type_: str, *, agent: str | None = None, data: dict[str, Any] | None = None
    ) -> None:
        text = (data or {}).get("text", "")
        if self.shielded:
            await uninterrupted(self._write(type_, text))
        else:
            await self._write(type_, text)

    async def _write(self, type_: str, text: str) -> None:
        self.overlaps += self.in_flight > 0
        self.in_flight += 1
        self.started.append(text)
        await self._notify()
        try:
            await self._open.wait()
            failure, self.failure = self.failure, None
            if failure is not None:
                raise failure
            self.stored.append((type_, text))
        finally:
            self.in_flight -= 1
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, *, started: int = 0, stored: int = 0, idle: bool = False) -> None:
        """Wait until that many writes began / were stored (and none is in flight)."""
        async with asyncio.timeout(10), self._changed:  # a bound for a broken build only
            await self._changed.wait_for(
                lambda: (
                    len(self.started) >= started
                    and len(self.stored) >= stored
                    and not (idle and self.in_flight)
                )
            )


def stream(events: HeldEvents, **kwargs: Any) -> AnswerStream:
    return AnswerStream(events=events, agent="general", **kwargs)


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_each_piece_goes_out_at_once_when_no_event_is_being_written() -> None:
    """Nothing is held back waiting for a sentence's end or a timer: on an idle store every
    piece is an event of its own as soon as it comes."""
    events = HeldEvents()
    answer = stream(events)
    await answer.add("Hello")
    await events.until(stored=1)
    await answer.add(" wor")
    await events.until(stored=2)
    await answer.add("ld")
    await events.until(stored=3, idle=True)
    assert events.texts == ["Hello", " wor", "ld"]
    assert answer.sent == len(answer.text)


async def test_what_comes_while_an_event_is_written_goes_in_one_next_event() -> None:
    """While an event's write is held, ``add`` returns at once and the pieces coalesce: one
    next event carries all of them, and no write starts before the one in flight ends."""
    events = HeldEvents()
    events.hold()
    answer = stream(events)
    await answer.add("The ")
    await events.until(started=1)
    for piece in ["sea ", "is ", "wide", "."]:
        await answer.add(piece)  # returns although the store is held
    assert events.started == ["The "]
    events.release()
    await answer.flush()
    assert events.texts == ["The ", "sea is wide."]
    assert events.overlaps == 0
    assert answer.sent == len(answer.text) == len("The sea is wide.")


async def test_flush_returns_once_everything_is_stored() -> None:
    """``flush`` waits for the pump: what the agent reports after it (a tool call, its end)
    comes after every text of the answer."""
    events = HeldEvents()
    events.hold()
    answer = stream(events)
    await answer.add("Let me ")
    await events.until(started=1)
    await answer.add("check.")
    flushing = asyncio.create_task(answer.flush())
    await asyncio.sleep(0)  # a flush that did not wait would be done now
    assert not flushing.done()
    events.release()
    await flushing
    await events.emit("tool_executing")
    assert events.stored == [
        ("agent_thinking", "Let me "),
        ("agent_thinking", "check."),
        ("tool_executing", ""),
    ]
    assert not other_tasks()


async def test_no_event_carries_more_than_the_event_text_cap() -> None:
    """Coalesced text and one huge piece alike go out in events of at most
    ``THINKING_MAX_CHARS``, in order."""
    events = HeldEvents()
    events.hold()
    answer = stream(events)
    await answer.add("a")
    await events.until(started=1)
    for _ in range(30):
        await answer.add("b" * 37)
    await answer.add("c" * 2_500)
    events.release()
    await answer.flush()
    assert max(len(text) for text in events.texts) <= THINKING_MAX_CHARS
    assert "".join(events.texts) == answer.text == "a" + "b" * 1_110 + "c" * 2_500
    assert events.overlaps == 0


async def test_the_texts_joined_are_the_answer_across_turns_and_holds() -> None:
    """Pieces with white space and newlines, two model turns, writes held now and then: the
    events' texts joined are the answer, character for character."""
    events = HeldEvents()
    answer = stream(events)
    pieces = ["  Let", " me\n", "look", " it up.", "\t", "\n\n```py\n", "x = 1\n", "  ```"]
    answer.new_turn()
    for index, piece in enumerate(pieces):
        if index % 3 == 0:
            events.hold()
        await answer.add(piece)
        if index % 3 == 2:
            events.release()
        await asyncio.sleep(0)  # the pump's turn
    events.release()
    await answer.flush()
    answer.new_turn()
    await answer.add("Found")
    await answer.add(" it.")
    await answer.flush()
    assert answer.text == "".join(pieces) + "\n\nFound it."
    assert "".join(events.texts) == answer.text
    assert events.overlaps == 0


async def test_an_answer_resumed_after_a_pause_sends_only_what_is_new() -> None:
    """After a pause the answer goes on from what its events already said."""
    events = HeldEvents()
    answer = stream(events, text="Checking.", sent=len("Checking."))
    answer.new_turn()
    await answer.add("Done.")
    await answer.flush()
    assert events.texts == ["\n\nDone."]
    assert answer.text == "Checking.\n\nDone."
    assert answer.sent == len(answer.text)


@pytest.mark.parametrize("first", [1, 390])
async def test_a_truncated_answer_stops_its_events_where_it_is_cut(first: int) -> None:
    """An answer that outgrows its cap stops the model; its events hold exactly the cut
    answer, the last one ending with the whole note (``first`` = 390 puts an event boundary
    inside the note, which the stream moves before it)."""
    events = HeldEvents()
    events.hold()
    answer = stream(events)
    await answer.add("x" * first)
    await events.until(started=1)
    while len(answer.text) + 97 <= MAX_ANSWER_CHARS:
        await answer.add("y" * 97)
    events.release()  # before the cut, whose flush waits for the writes
    with pytest.raises(AnswerFull):
        await answer.add("y" * 97)
    assert answer.truncated
    assert len(answer.text) == MAX_ANSWER_CHARS
    assert answer.text.endswith(TRUNCATED)
    assert "".join(events.texts) == answer.text
    assert events.texts[-1].endswith(TRUNCATED)
    assert max(len(text) for text in events.texts) <= THINKING_MAX_CHARS
    assert not other_tasks()


async def test_a_truncated_answer_sends_nothing_past_the_cut_before_it_is_cut() -> None:
    """Text beyond what a cut would keep waits for the end of the answer: if the answer is
    then cut, no event said more than the answer does."""
    events = HeldEvents()
    answer = stream(events)
    kept = MAX_ANSWER_CHARS - len(TRUNCATED)
    await answer.add("z" * (MAX_ANSWER_CHARS - 5))
    await events.until(stored=-(-kept // THINKING_MAX_CHARS), idle=True)
    assert len("".join(events.texts)) == kept
    with pytest.raises(AnswerFull):
        await answer.add("z" * 10)
    assert "".join(events.texts) == answer.text
    assert answer.text.endswith(TRUNCATED)


@pytest.mark.parametrize("at", ["add", "flush"])
async def test_a_failed_write_is_raised_in_the_runs_task(at: str) -> None:
    """A write that fails (the run ended elsewhere, the database) is raised at the next
    ``add`` or ``flush``, once, and the pump is gone: nothing is left to report it."""
    events = HeldEvents()
    events.hold()
    answer = stream(events)
    await answer.add("Once ")
    await events.until(started=1)
    events.failure = RunAlreadyFinished("run r has already ended")
    events.release()
    await events.until(idle=True)
    assert not other_tasks()
    with pytest.raises(RunAlreadyFinished):
        await (answer.add("upon") if at == "add" else answer.flush())
    assert events.texts == []


async def test_a_failed_write_while_more_text_waits_is_raised_at_the_flush() -> None:
    """The failure stops the pump; the flush raises it instead of sending what waited."""
    events = HeldEvents()
    events.hold()
    answer = stream(events)
    await answer.add("Once ")
    await events.until(started=1)
    await answer.add("upon a time")
    events.failure = ConnectionError("database down")
    flushing = asyncio.create_task(answer.flush())
    events.release()
    with pytest.raises(ConnectionError):
        await flushing
    assert events.started == ["Once "]
    assert not other_tasks()


@pytest.mark.parametrize("shielded", [False, True])
async def test_a_cancelled_run_leaves_no_pump_and_writes_nothing_after(shielded: bool) -> None:
    """A run cancelled while the model streams (its ``finally`` closes the stream, as the
    agent loop does): the write in flight ends (a shielded one is finished first), what was
    pending is dropped, no task is left, and nothing is written once the run's task ended."""
    events = HeldEvents(shielded=shielded)
    events.hold()
    next_piece, model_streams = asyncio.Event(), asyncio.Event()  # the model is still streaming

    async def run() -> None:
        answer = stream(events)
        try:
            await answer.add("Once ")
            await next_piece.wait()
            await answer.add("upon")
            await model_streams.wait()
        finally:
            await answer.close()

    task = asyncio.create_task(run())
    await events.until(started=1)
    next_piece.set()
    await asyncio.sleep(0)  # "upon" waits for the write in flight
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done() or not shielded  # a shielded write is awaited to its end
    events.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    written = list(events.stored)
    assert written == ([("agent_thinking", "Once ")] if shielded else [])
    assert not other_tasks()
    await events.until(idle=True)
    assert events.stored == written
    assert events.started == ["Once "]


async def test_a_pump_failure_on_a_run_failing_anyway_is_not_left_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The model fails while a write fails too: the run fails for the model's error, and the
    write's failure is logged, not left in a task nobody awaits."""
    caplog.set_level(logging.INFO, logger="src.agents.thinking")
    events = HeldEvents()
    events.hold()
    answer = stream(events)
    await answer.add("Once ")
    await events.until(started=1)
    events.failure = ConnectionError("database down")
    events.release()
    await events.until(idle=True)
    await answer.close()
    assert "database down" in caplog.text
    assert not other_tasks()


async def test_the_stream_is_freed_without_a_garbage_collection() -> None:
    """The pump keeps no reference to the answer once it is done: the answer (and what it
    holds, the run's emitter) goes as soon as its last reference does."""
    events = HeldEvents()
    answer = stream(events)
    await answer.add("Once ")
    events.hold()
    await answer.add("upon ")
    await answer.add("a time")
    events.release()
    await answer.flush()
    await answer.close()
    gone = weakref.ref(answer)
    del answer
    assert gone() is None
