"""Logging: ids from context on every line, JSON or console format, uvicorn's lines included.

``bind(request_id=..., user_id=...)`` adds ids to the current context (a request's task, a run's
task and the tasks they create inherit them); ``ContextFilter`` puts them on every record, so
no call site passes them by hand.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

CONTEXT_FIELDS = ("request_id", "user_id", "thread_id", "run_id")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("isochat_log_context", default=_EMPTY)


def bind(**fields: str | None) -> None:
    """Add ids to every log line of this context from now on (None leaves a field as it is)."""
    update = {k: v for k, v in fields.items() if v is not None}
    if update:
        _context.set(MappingProxyType({**_context.get(), **update}))


@contextmanager
def fresh_context(**fields: str) -> Iterator[None]:
    """Only these ids inside the block (a new request inherits nothing); the previous ones
    after it."""
    token = _context.set(MappingProxyType(fields))
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context's ids onto each record (None where unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        for field in CONTEXT_FIELDS:
            if not hasattr(record, field):
                setattr(record, field, context.get(field))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s%(ids)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{f}={getattr(record, f)}" for f in CONTEXT_FIELDS if getattr(record, f, None)]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def logging_config(*, level: str, fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for isochat and uvicorn alike (uvicorn applies it in
    each worker process)."""
    formatter = "src.logs.JsonFormatter" if fmt == "json" else "src.logs.ConsoleFormatter"
    handler = {"class": "logging.StreamHandler", "formatter": "default", "filters": ["context"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "src.logs.ContextFilter"}},
        "formatters": {"default": {"()": formatter}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def log_failure(logger: logging.Logger, message: str, *args: object, exc: BaseException) -> None:
    """Log ``message`` with ``exc``'s traceback as text.

    Not ``exc_info``: a record that holds the exception holds its frames, and with them a failed
    run's agents, session and emitter, for as long as any handler keeps the record (a queue, a
    buffer, a test's log capture). Text keeps nothing alive.
    """
    details = "".join(traceback.format_exception(exc)).rstrip()
    logger.error(message + "\n%s", *args, details)
