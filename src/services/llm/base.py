"""The language-model port that agents depend on."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


# What the run's user is told (``str(exc)``, in ``run.error.message``). Short and safe: the
# model server's URL, its answers and its errors are for operators, in the log.
UNAVAILABLE = "the language model is unavailable"
TOO_SLOW = "the language model did not answer in time"
INVALID_REPLY = "the language model answered something that is not a valid reply"


class LLMError(Exception):
    """The model failed to answer (HTTP error, garbage, refused connection): ``llm_error``.

    ``str(exc)`` is the message for the run's user; ``detail`` (the server's URL without
    credentials, the status, an excerpt of the answer) is for operators only, and the adapter
    that raised it has already logged it with the run's ids."""

    def __init__(self, message: str = UNAVAILABLE, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class LLMTimeout(LLMError):
    """One model call took longer than its bound: the run fails with ``timeout``."""

    def __init__(self, message: str = TOO_SLOW, *, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)


class LLM(Protocol):
    async def complete(self, messages: Sequence[ChatMessage]) -> str:
        """The whole answer at once."""
        ...

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        """The answer piece by piece, as the model produces it. Callers close it
        (``contextlib.aclosing``) so that an abandoned answer stops at once."""
        ...

    async def is_available(self) -> bool:
        """Whether the model can answer now, for ``/health/ready``. Cheap enough to be asked
        by every readiness probe: an adapter that must ask a server caches the answer."""
        ...

    async def aclose(self) -> None:
        """Release what the model holds (connections) at application shutdown."""
        ...
