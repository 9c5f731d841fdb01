"""A streamed answer's server-sent events, read from the body's bytes however they are cut."""

from __future__ import annotations

import pytest

from src.services.llm.base import INVALID_REPLY, LLMError
from src.services.llm.openai_wire import MAX_PENDING_BYTES, EventStream, chunk_of

BODY = (
    b": keep-alive comment\n"
    b'data: {"a": 1}\n\n'
    b"event: message\n"
    b"id: 7\n"
    b'data:{"b": 2}\n\n'
    b"data: first line\n"
    b"data: second line\n\n"
    b"retry: 100\n\n"  # no data: not an event
    b"data: [DONE]\n\n"
)
EVENTS = [b'{"a": 1}', b'{"b": 2}', b"first line\nsecond line", b"[DONE]"]


def read(pieces: list[bytes]) -> list[bytes]:
    stream = EventStream()
    return [event for piece in pieces for event in stream.feed(piece)]


def test_a_whole_body_gives_its_events_in_order() -> None:
    assert read([BODY]) == EVENTS


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_every_line_ending_reads_the_same(newline: bytes) -> None:
    assert read([BODY.replace(b"\n", newline)]) == EVENTS


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_the_events_are_the_same_however_the_body_is_cut(newline: bytes) -> None:
    """Cut at every byte (a CRLF split in two included), then at every pair of places."""
    body = BODY.replace(b"\n", newline)
    assert read([body[i : i + 1] for i in range(len(body))]) == EVENTS
    for first in range(0, len(body), 7):
        for second in range(first, len(body), 11):
            assert read([body[:first], body[first:second], body[second:]]) == EVENTS


def test_an_event_is_given_only_when_its_blank_line_has_come() -> None:
    stream = EventStream()
    assert stream.feed(b'data: {"a": 1}\n') == []
    assert stream.feed(b"\n") == [b'{"a": 1}']
    assert stream.feed(b"data: unfinished") == []  # the body ended: never an event


def test_a_line_without_end_over_a_mebibyte_is_refused() -> None:
    stream = EventStream()
    with pytest.raises(LLMError) as refused:
        stream.feed(b"x" * (MAX_PENDING_BYTES + 1))
    assert str(refused.value) == INVALID_REPLY


def test_a_chunk_is_its_json_and_an_error_event_is_an_llm_error() -> None:
    assert chunk_of(b'{"choices": []}') == {"choices": []}
    with pytest.raises(LLMError) as not_json:
        chunk_of(b"{not json")
    assert str(not_json.value) == INVALID_REPLY
    assert "{not json" in (not_json.value.detail or "")
    with pytest.raises(LLMError) as error:
        chunk_of(b'{"error": {"message": "model overloaded", "type": "server_error"}}')
    assert "model overloaded" in (error.value.detail or "")
