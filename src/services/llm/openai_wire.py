"""OpenAI's ``/chat/completions`` wire format, both ways: a run's messages and tools as the
request's JSON, and the answer's JSON (whole, or chunk by chunk from its event stream) as a
``Reply``. Answers are read leniently: servers differ in what else they send and what they
leave out; only what a run needs must be there, and its absence is an ``LLMError``
(``INVALID_REPLY``).

A streamed answer's body is split into its server-sent events here (``EventStream``), straight
from the bytes as they arrive: one token is one event, and with 200 answers streaming at once
the openai client's own decoder (an object per line and per event, through several layers of
async generators) was about half of what a token cost on the aiohttp transport (109 µs of CPU
per token with it, 46-61 without)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from src.runs.domain import Usage
from src.services.llm.base import (
    INVALID_REPLY,
    ChatMessage,
    LLMError,
    Reply,
    ToolCall,
    ToolSpec,
)

# How much of a failed answer's body an operator gets in the log.
BODY_EXCERPT_CHARS = 200
# The last event of an answer's stream.
DONE = b"[DONE]"
# A line longer than this without its end is not an event stream (a misconfigured server
# sending something else): the stream stops instead of holding it all in memory.
MAX_PENDING_BYTES = 1 << 20


class EventStream:
    """The ``data`` of each server-sent event of a body fed piece by piece, as the pieces
    come (an event split across pieces waits for its end). Lines end with LF, CRLF or CR;
    several ``data`` lines of one event are joined with LF; comments and other fields
    (``event``, ``id``, ``retry``) are skipped."""

    def __init__(self) -> None:
        self._pending = b""  # an unfinished line
        self._data: list[bytes] = []  # the data lines of the event under way
        self._after_cr = False  # the last piece ended with CR: an LF first in this one is its

    def feed(self, piece: bytes) -> list[bytes]:
        """The events that ``piece`` completes, in order."""
        if not piece:
            return []
        if self._after_cr and piece.startswith(b"\n"):
            piece = piece[1:]
        self._after_cr = piece.endswith(b"\r")
        text = self._pending + piece
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = text.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_PENDING_BYTES:
            raise LLMError(INVALID_REPLY, detail="the event stream has a line over 1 MiB")
        events = []
        for line in lines:
            if not line:  # a blank line ends the event
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events


def chunk_of(data: bytes) -> Any:
    """One streamed event's JSON; the server's ``error`` event is an ``LLMError``."""
    try:
        chunk = json.loads(data)
    except ValueError:
        excerpt = data[:BODY_EXCERPT_CHARS]
        raise LLMError(
            INVALID_REPLY, detail=f"a streamed chunk is not valid JSON: {excerpt!r}"
        ) from None
    if isinstance(chunk, dict) and chunk.get("error"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else None
        said = message if isinstance(message, str) and message else "an error"
        raise LLMError(detail=f"the server sent an error mid-stream: {said[:BODY_EXCERPT_CHARS]}")
    return chunk


@dataclass
class StreamedTurn:
    """A streamed turn, assembled chunk by chunk: the text, and each tool call from its
    deltas (its id and name come first, its arguments in pieces, by the call's index)."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)  # index -> [id, name, arguments]
    usage: Usage | None = None

    def add(self, chunk: object) -> str:
        """Take one chunk (its JSON, read leniently: servers differ in what they leave out);
        the text it adds, if any."""
        if not isinstance(chunk, dict):
            return ""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage_of(usage)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""  # e.g. the closing usage chunk
        delta = choices[0].get("delta")
        if not isinstance(delta, dict):
            return ""
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            parts = self.calls.setdefault(int(call.get("index") or 0), ["", "", ""])
            parts[0] = str(call.get("id") or parts[0])
            function = call.get("function")
            if isinstance(function, dict):
                parts[1] += str(function.get("name") or "")
                parts[2] += str(function.get("arguments") or "")
        piece = delta.get("content")
        if not isinstance(piece, str) or not piece:
            return ""
        self.text.append(piece)
        return piece

    def reply(self) -> Reply:
        calls = tuple(
            ToolCall(id=call_id or f"call_{index}", name=name, arguments=arguments)
            for index, (call_id, name, arguments) in sorted(self.calls.items())
        )
        text = "".join(self.text)
        if not text and not calls:
            raise LLMError(INVALID_REPLY, detail="the streamed answer has no text and no call")
        return Reply(text=text, tool_calls=calls, usage=self.usage)


def wire_message(message: ChatMessage) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def wire_tool(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def json_of(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        excerpt = body[:BODY_EXCERPT_CHARS]
        raise LLMError(INVALID_REPLY, detail=f"the answer is not valid JSON: {excerpt!r}") from None


def reply_of(data: Any) -> Reply:
    """A whole (not streamed) answer's turn, read leniently: servers differ in what else they
    send, and only the first choice's message matters."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        raise LLMError(INVALID_REPLY, detail="the answer has no 'choices'")
    if not choices:
        raise LLMError(INVALID_REPLY, detail="the answer has no choices")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise LLMError(INVALID_REPLY, detail="the first choice has no message")
    text = message.get("content") or ""
    calls = tuple(call_of(i, c) for i, c in enumerate(message.get("tool_calls") or ()))
    if not isinstance(text, str) or (not text.strip() and not calls):
        raise LLMError(INVALID_REPLY, detail="the answer has no text and no call")
    usage = data.get("usage")
    return Reply(
        text=text,
        tool_calls=calls,
        usage=usage_of(usage) if isinstance(usage, dict) else None,
    )


def usage_of(usage: dict[str, Any]) -> Usage:
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def call_of(index: int, call: Any) -> ToolCall:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise LLMError(INVALID_REPLY, detail="a tool call has no function name")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {})
    return ToolCall(
        id=str(call.get("id") or f"call_{index}"), name=function["name"], arguments=arguments
    )
