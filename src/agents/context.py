"""The identity of one run, fixed for its whole life."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunContext:
    run_id: str
    thread_id: str
    user_id: str
    request_id: str | None = None
    # What a drill user's message asked to go wrong (src/services/drill.py); empty otherwise.
    faults: frozenset[str] = frozenset()
