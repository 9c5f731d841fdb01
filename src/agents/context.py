"""The identity of one run, fixed for its whole life."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunContext:
    run_id: str
    thread_id: str
    user_id: str
    request_id: str | None = None
