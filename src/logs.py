"""Logging: ids from context on every line, JSON or console format, uvicorn's lines included,
and no secret on any of them.

``bind(request_id=..., user_id=...)`` adds ids to the current context (a request's task, a run's
task and the tasks they create inherit them); ``ContextFilter`` puts them on every record, so
no call site passes them by hand.

``RedactingFilter`` sits on the one handler every logger writes through (isochat's, uvicorn's,
SQLAlchemy's, alembic's, httpx's, ...) and rewrites each record before any formatter sees it:
the message merged with its args (uvicorn passes the request path, query string included, as
an arg), the exception text and the stack. The formatters redact what they produce once more,
so a record that reached them some other way is covered too. What goes: bearer tokens and
anything JWT-shaped, ``token=`` / ``ticket=`` / ``api_key=`` / ``password=`` values, the
password of any ``scheme://user:password@host`` URL, the ``isochat.bearer`` WebSocket
subprotocol's token, and the literal secrets of the configuration (the model's API key, the
auth secret, the database's and Redis's passwords).
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pydantic import ValidationError
from pydantic_settings import SettingsError

from src.settings import Settings

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


REDACTED = "[REDACTED]"
# A literal secret shorter than this is not searched for: replacing every occurrence of a short
# value would shred the logs (and tell the value by where it is missing). Such values are still
# caught wherever they appear in a recognisable place (a URL's password, ``password=...``).
MIN_LITERAL_SECRET_CHARS = 8

_KEYS = r"(?:access_|refresh_|id_)?token|ticket|api[_-]?key|apikey|password|passwd|secret"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host: the password (up to the last @ before white space, so an
    # unescaped @ in it does not leave the rest behind); the user stays, as SQLAlchemy shows it.
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)\S+(?=@)"), r"\1***"),
    # Authorization: Bearer <token>, in headers, reprs of headers, error messages.
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + REDACTED),
    # JWTs (isochat's bearer tokens and WebSocket tickets), whole or cut short: their first
    # part is always base64 of '{"', that is "eyJ".
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    # ?token=... / &ticket=... in paths, and key=value pairs in messages (not again once
    # redacted: a line passes both the filter and the formatter).
    (
        re.compile(rf"(?i)(?<![A-Za-z0-9_])((?:{_KEYS})=)(?!\[REDACTED\])[^&\s#'\",;)\]}}]+"),
        r"\1" + REDACTED,
    ),
    # 'password': '...' / "api_key": "..." in reprs of dicts and JSON bodies.
    (
        re.compile(rf"(?i)(['\"](?:{_KEYS}|authorization)['\"]\s*:\s*['\"])[^'\"]+"),
        r"\1" + REDACTED,
    ),
    # Sec-WebSocket-Protocol: isochat.bearer, <token> (the browsers' way to send a token).
    (re.compile(r"(?i)(isochat\.bearer\s*,\s*)[^\s,'\"]+"), r"\1" + REDACTED),
)


class Redactor:
    """Removes secrets from a text: the patterns above, and ``secrets`` wherever they appear
    (also URL-encoded, as they are inside URLs)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        literals: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_LITERAL_SECRET_CHARS:
                literals.update({secret, quote(secret, safe=""), unquote(secret)})
        # Longest first, so that a secret containing another one goes whole.
        ordered = sorted(literals, key=len, reverse=True)
        self._literals = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._literals is not None:
            text = self._literals.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


class RedactingFilter(logging.Filter):
    """Rewrites a record without its secrets: the message merged with its args, the exception
    text, the stack. Put it on handlers (a logger's filters miss the records its children
    propagate); every handler after it sees the clean record."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._redact = Redactor(secrets)
        self._exceptions = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        # Merged first: an arg alone may look harmless ("/ws?token=" + a value) and the
        # formatters would only merge them again later.
        record.msg = self._redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exceptions.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._redact = Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        exception = record.exc_text or (
            self.formatException(record.exc_info) if record.exc_info else None
        )
        if exception:
            line["exception"] = self._redact(exception)
        if record.stack_info:
            line["stack"] = self._redact(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s%(ids)s")
        self._redact = Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{f}={getattr(record, f)}" for f in CONTEXT_FIELDS if getattr(record, f, None)]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return self._redact(super().format(record))


def configured_secrets(settings: Settings) -> list[str]:
    """The literal secrets of ``settings`` that must never be logged."""
    secrets = [settings.auth_secret]
    for secret in (settings.llm_api_key, settings.drill_secret):
        if secret:
            secrets.append(secret)
    for url in (settings.database_url, settings.broker_url, settings.llm_base_url or ""):
        try:
            password = urlsplit(url).password
        except ValueError:  # not a URL that can carry one
            password = None
        if password:
            secrets.append(unquote(password))
    # MCP servers' headers carry their credentials (Authorization, API keys).
    for server in settings.mcp_servers.values():
        secrets += [value for value in server.headers.values() if value]
    return secrets


def logging_config(
    *, level: str, fmt: str, secrets: Iterable[str | None] | None = None
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for isochat and uvicorn alike (uvicorn applies it in
    each worker process). Every line goes through one handler, which redacts secrets (see the
    module's doc); ``secrets`` are the literal values to redact besides the patterns, by default
    those of the operator's settings (``configured_secrets(Settings())``)."""
    if secrets is None:
        try:
            secrets = configured_secrets(Settings())
        except (ValidationError, SettingsError):
            secrets = []  # start-up reports the bad setting; the patterns still apply
    literals = [s for s in secrets if s]
    formatter = "src.logs.JsonFormatter" if fmt == "json" else "src.logs.ConsoleFormatter"
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        # Redacted after the ids are added, so that nothing added later escapes it.
        "filters": ["context", "redact"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "src.logs.ContextFilter"},
            "redact": {"()": "src.logs.RedactingFilter", "secrets": literals},
        },
        "formatters": {"default": {"()": formatter, "secrets": literals}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            **{
                name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            # A line per model request and retry at info: the adapter logs what went wrong.
            **{name: {"level": "WARNING"} for name in ("openai", "httpx2")},
            # isochat logs each MCP server failure once, naming the server (src/services/mcp/
            # run.py); the SDK's own lines name no server, and a server answering garbage gets
            # a traceback per request. Shown at debug only.
            "mcp": {"level": "DEBUG" if level == "debug" else "CRITICAL"},
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
