"""What every handler does with a request: find the application's container and its use cases,
answer JSON, and read the seq a client has events up to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from src.agents.triage import Route
from src.container import AppContainer
from src.services.approvals import ApprovalService
from src.services.chat import ChatService
from src.services.threads import ThreadService
from src.settings import Settings
from src.web.errors import ApiError


def container_of(conn: HTTPConnection) -> AppContainer:
    container: AppContainer = conn.app.state.container
    return container


def settings_of(conn: HTTPConnection) -> Settings:
    settings: Settings = container_of(conn).settings()
    return settings


def chat_of(conn: HTTPConnection) -> ChatService:
    """The request's message and run use cases (from its request scope)."""
    chat: ChatService = container_of(conn).request.chat()
    return chat


def approval_of(conn: HTTPConnection) -> ApprovalService:
    """The request's decisions on paused runs (from its request scope)."""
    approval: ApprovalService = container_of(conn).request.approval()
    return approval


def threads_of(conn: HTTPConnection) -> ThreadService:
    """The request's thread use cases (from its request scope)."""
    threads: ThreadService = container_of(conn).request.threads()
    return threads


def routes_of(conn: HTTPConnection) -> Mapping[str, Route]:
    """The specialists triage chooses from, by route name (a team's container may add its
    own)."""
    routes: Mapping[str, Route] = container_of(conn).request.routes()
    return routes


def json_response(data: Any, status_code: int = 200) -> Response:
    return JSONResponse(data, status_code=status_code)


def seq_param(raw: str, *, name: str) -> int:
    """A seq from a query parameter or header: ASCII digits only (``str.isdigit()`` also
    accepts "²", which ``int()`` refuses)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError("validation_error", f"{name}: must be a whole number, 0 or more")
    return int(raw)
