"""OpenAI's ``/chat/completions`` wire format, both ways: a run's messages and tools as the
request's JSON, and the answer's JSON (whole, or chunk by chunk from a stream) as a ``Reply``.
Answers are read leniently: servers differ in what else they send and what they leave out;
only what a run needs must be there, and its absence is an ``LLMError`` (``INVALID_REPLY``)."""

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
