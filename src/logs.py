"""Logging helpers."""

from __future__ import annotations

import logging
import traceback


def log_failure(logger: logging.Logger, message: str, *args: object, exc: BaseException) -> None:
    """Log ``message`` with ``exc``'s traceback as text.

    Not ``exc_info``: a record that holds the exception holds its frames, and with them a failed
    run's agents, session and emitter, for as long as any handler keeps the record (a queue, a
    buffer, a test's log capture). Text keeps nothing alive.
    """
    details = "".join(traceback.format_exception(exc)).rstrip()
    logger.error(message + "\n%s", *args, details)
