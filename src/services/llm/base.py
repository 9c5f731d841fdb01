"""The language-model port that agents depend on."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


class LLMError(Exception):
    """The model failed to answer (HTTP error, garbage, refused connection): ``llm_error``."""


class LLMTimeout(LLMError):
    """One model call took longer than its bound: the run fails with ``timeout``."""


class LLM(Protocol):
    async def complete(self, messages: Sequence[ChatMessage]) -> str:
        """The whole answer at once."""
        ...

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        """The answer piece by piece, as the model produces it. Callers close it
        (``contextlib.aclosing``) so that an abandoned answer stops at once."""
        ...

    async def aclose(self) -> None:
        """Release what the model holds (connections) at application shutdown."""
        ...
