"""The language-model port that agents depend on: one chat-completions call, with tools.

A call sends the conversation so far (``ChatMessage``), the tools the model may call
(``ToolSpec``, a JSON schema each) and, optionally, a tool it must call. It returns the model's
turn (``Reply``): its text, the tool calls it asked for, and what the call cost (``Usage``).
With ``on_text`` the answer is streamed: each piece of text is handed to ``on_text`` as the
model produces it, and the ``Reply`` holds the whole text at the end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from src.runs.domain import RunFailure, Usage


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asked for. ``arguments`` is the JSON text exactly as the model wrote
    it: checking it against the tool's schema is the caller's job."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    # An assistant turn that called tools; each tool message answers one call, by its id.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What the model is told about a tool: its name, what it is for, its arguments' schema."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """One turn of the model: text, tool calls, or both; ``usage`` when the server said."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None


TextSink = Callable[[str], Awaitable[None]]

# What the run's user is told (``str(exc)``, in ``run.error.message``). Short and safe: the
# model server's URL, its answers and its errors are for operators, in the log.
UNAVAILABLE = "the language model is unavailable"
TOO_SLOW = "the language model did not answer in time"
INVALID_REPLY = "the language model answered something that is not a valid reply"


class LLMError(RunFailure):
    """The model failed to answer (HTTP error, garbage, refused connection): ``llm_error``.

    ``str(exc)`` is the message for the run's user; ``detail`` (the server's URL without
    credentials, the status, an excerpt of the answer) is for operators only, and the adapter
    that raised it has already logged it with the run's ids."""

    code = "llm_error"
    default_message = "the language model failed"

    def __init__(self, message: str = UNAVAILABLE, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class LLMTimeout(LLMError):
    """One model call took longer than its bound: the run fails with ``timeout``."""

    code = "timeout"
    default_message = TOO_SLOW

    def __init__(self, message: str = TOO_SLOW, *, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)


class LLM(Protocol):
    async def reply(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        require_tool: str | None = None,
        on_text: TextSink | None = None,
    ) -> Reply:
        """The model's next turn. ``require_tool`` names a tool of ``tools`` it must call.
        With ``on_text`` the answer streams: each piece is awaited there as it comes (a
        cancelled call closes the model's stream at once)."""
        ...

    async def is_available(self) -> bool:
        """Whether the model can answer now, for ``/health/ready``. Cheap enough to be asked
        by every readiness probe: an adapter that must ask a server caches the answer."""
        ...

    async def aclose(self) -> None:
        """Release what the model holds (connections) at application shutdown."""
        ...
