"""The tokens one run's model calls used: recorded on the run (``usage``) when it ends, and
counted in ``isochat_llm_tokens_total{kind}`` as each call reports them."""

from __future__ import annotations

from typing import Protocol

from src.runs.domain import Usage


class TokenCounter(Protocol):
    def tokens_used(self, usage: Usage) -> None: ...


class RunUsage:
    """One per run (request scope): every agent of the run adds what its model calls cost."""

    def __init__(self, *, counter: TokenCounter) -> None:
        self._counter = counter
        self.total: Usage | None = None  # None until a call reports usage

    def add(self, usage: Usage | None) -> None:
        if usage is None:
            return
        self._counter.tokens_used(usage)
        self.total = usage if self.total is None else self.total + usage

    def carry(self, usage: Usage | None) -> None:
        """What the run's calls had used before it paused (counted then): added to its total,
        not counted again."""
        if usage is not None:
            self.total = usage if self.total is None else self.total + usage
