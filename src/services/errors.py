"""Errors a use case reports to its caller; the web layer maps each to its status and code."""

from __future__ import annotations

from typing import Any


class ChatError(Exception):
    code = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        # Extra fields of the error body, beside code and message (e.g. the run a 409 is about).
        self.details = details


class NotFound(ChatError):
    """Also raised for another user's object: its existence is never revealed."""

    code = "not_found"


class RunInProgress(ChatError):
    code = "run_in_progress"


class Conflict(ChatError):
    code = "conflict"


class Invalid(ChatError):
    """Input that parsed but names something the request cannot be about (422)."""

    code = "validation_error"


class Unauthorized(ChatError):
    code = "unauthorized"


class RateLimited(ChatError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
