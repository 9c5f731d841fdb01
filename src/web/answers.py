"""The JSON bodies the HTTP endpoints answer with, as TypedDicts: the handlers build them as
these types (checked by mypy), and the OpenAPI document publishes them (``src/web/openapi.py``).
Objects (Thread, Message, Run, Event) are in ``src/runs/domain.py``."""

from __future__ import annotations

from typing import Literal, NotRequired

from typing_extensions import TypedDict

from src.runs.domain import EventJSON, MessageJSON, RunJSON, ThreadJSON
from src.web.errors import ErrorDetail


class Live(TypedDict):
    status: Literal["ok"]


class Ready(TypedDict):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]  # database, migrations, broker, model: "ok" or why not
    error: NotRequired[ErrorDetail]


class TokenAnswer(TypedDict):
    token: str


class TicketAnswer(TypedDict):
    ticket: str
    expires_in: int


class ThreadPage(TypedDict):
    threads: list[ThreadJSON]
    next_cursor: str | None


class MessagePage(TypedDict):
    messages: list[MessageJSON]
    next_cursor: str | None


class RunAndAnswer(TypedDict):
    run: RunJSON
    message: MessageJSON | None


class RunAnswer(TypedDict):
    run: RunJSON


class EventList(TypedDict):
    events: list[EventJSON]
