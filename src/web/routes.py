"""The HTTP endpoints of the public contract."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from src.container import AppContainer
from src.logs import bind
from src.services.auth import Caller, WsTickets, valid_user_id
from src.services.chat import ChatService
from src.services.domain import RunJSON, ThreadJSON
from src.services.errors import Unauthorized
from src.services.llm import LLM
from src.settings import Settings
from src.web import sse
from src.web.answers import (
    EventList,
    Live,
    MessagePage,
    Ready,
    RunAndAnswer,
    RunAnswer,
    ThreadPage,
    TicketAnswer,
    TokenAnswer,
)
from src.web.bodies import (
    DevLogin,
    NewMessage,
    NewThread,
    RenameThread,
    check_content,
    read_json,
)
from src.web.detached import start_detached
from src.web.errors import ApiError, error_response
from src.web.openapi import Operation, Param, document, documented
from src.web.pages import (
    MAX_MESSAGES_PAGE,
    MAX_THREADS_PAGE,
    MESSAGES_PAGE,
    THREADS_PAGE,
    cursor,
    page_query,
)
from src.web.websocket import websocket_endpoint

READY_CHECK_TIMEOUT_S = 2.0
VERSION = importlib.metadata.version("isochat")
T = TypeVar("T")


def _container(request: Request) -> AppContainer:
    container: AppContainer = request.app.state.container
    return container


def _settings(request: Request) -> Settings:
    settings: Settings = _container(request).settings()
    return settings


def _chat(request: Request) -> ChatService:
    chat: ChatService = _container(request).request.chat()
    return chat


async def authenticated_user(request: Request, *, rate_limited: bool = True) -> str:
    """The user the bearer token names, the request counted against their rate limit unless
    ``rate_limited`` is False (a cancel: a user at the limit can still stop their runs)."""
    return (await authenticated_caller(request, rate_limited=rate_limited)).user_id


async def authenticated_caller(request: Request, *, rate_limited: bool = True) -> Caller:
    """``authenticated_user``, and whether they are a drill user (whose runs take faults)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    container = _container(request)
    caller: Caller = container.tokens().caller_of(token.strip())
    bind(user_id=caller.user_id)
    if rate_limited:
        await container.rate_limiter().check(caller.user_id)
    return caller


def _json(data: Any, status_code: int = 200) -> Response:
    return JSONResponse(data, status_code=status_code)


# What the OpenAPI document says of what is not JSON.
EVENT_STREAM = {
    200: {
        "text/event-stream": {
            "schema": {"type": "string", "description": "id: seq, event: type, data: Event (JSON)"}
        }
    }
}
AFTER = Param(
    "after", "query", "events after this seq (default 0)", {"type": "integer", "minimum": 0}
)


# health and metrics


@documented(Operation("The process answers", {200: Live}, authenticated=False))
async def live(_: Request) -> Response:
    body: Live = {"status": "ok"}
    return _json(body)


@documented(
    Operation("Ready to serve: each check named", {200: Ready, 503: Ready}, authenticated=False)
)
async def ready(request: Request) -> Response:
    """Ready when the database answers a new client, its schema is at the newest migration,
    events can be delivered and the language model answers; otherwise 503 naming the failing
    checks. The checks run side by side, so the answer takes as long as the slowest one."""
    container = _container(request)
    llm: LLM = container.llm()
    # The model caches its answer (and probes once at a time), so frequent readiness probes
    # from every load balancer cost the model server almost nothing.
    schema_current, broker_up, model_up = await asyncio.gather(
        _probe(container.database().schema_is_current),
        _probe(container.broker().ping),
        _probe(llm.is_available),
    )
    checks = {
        "database": "unavailable" if schema_current is None else "ok",
        "migrations": "unknown" if schema_current is None else "ok" if schema_current else "behind",
        "broker": "ok" if broker_up is not None else "unavailable",
        "model": "ok" if model_up else "unavailable",
    }
    failing = [name for name, state in checks.items() if state != "ok"]
    if not failing:
        healthy: Ready = {"status": "ok", "checks": checks}
        return _json(healthy)
    body: Ready = {
        "status": "unavailable",
        "checks": checks,
        "error": {"code": "unavailable", "message": f"failing checks: {', '.join(failing)}"},
    }
    return _json(body, 503)


async def _probe(check: Callable[[], Awaitable[T]]) -> T | bool | None:
    """What ``check`` answered (True when it answers nothing), or None when it failed or took
    longer than ``READY_CHECK_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            answer = await check()
    except Exception:
        return None
    return True if answer is None else answer


@documented(
    Operation(
        "Prometheus metrics",
        {200: None},
        authenticated=False,
        media={200: {"text/plain": {"schema": {"type": "string"}}}},
    )
)
async def metrics(request: Request) -> Response:
    return Response(
        _container(request).metrics().render(),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


# identity


@documented(
    Operation(
        "A token for a user (development only: 404 otherwise)",
        {200: TokenAnswer},
        body=DevLogin,
        errors=("not_found",),
        authenticated=False,
    )
)
async def dev_login(request: Request) -> Response:
    if not _settings(request).is_development:
        return error_response("not_found", "no such path")
    body = await read_json(request, DevLogin, max_bytes=_settings(request).max_body_bytes)
    if not valid_user_id(body.user_id):
        raise ApiError(
            "validation_error",
            "user_id: 1-200 characters of letters, digits and . _ @ -",
        )
    answer: TokenAnswer = {"token": _container(request).tokens().issue(body.user_id)}
    return _json(answer)


@documented(Operation("A single-use ticket that opens one WebSocket", {200: TicketAnswer}))
async def ws_ticket(request: Request) -> Response:
    """A ticket that opens one WebSocket (``/ws?ticket=...``) within ``expires_in`` seconds:
    the long-lived bearer token stays in a header, out of URLs and access logs."""
    user = await authenticated_user(request)
    tickets: WsTickets = _container(request).ws_tickets()
    answer: TicketAnswer = {"ticket": tickets.issue(user), "expires_in": int(tickets.ttl_s)}
    return _json(answer)


# threads and messages


@documented(Operation("Create a thread", {201: ThreadJSON}, body=NewThread))
async def create_thread(request: Request) -> Response:
    user = await authenticated_user(request)
    body = await read_json(
        request, NewThread, max_bytes=_settings(request).max_body_bytes, empty_ok=True
    )
    thread = await _chat(request).create_thread(user_id=user, title=body.title)
    return _json(thread.to_json(), 201)


PAGE_PARAMS = (
    Param("limit", "query", "items per page", {"type": "integer", "minimum": 1}),
    Param("cursor", "query", "next_cursor of the page before"),
)


@documented(
    Operation(
        "The user's threads, newest first, a page at a time",
        {200: ThreadPage},
        errors=("validation_error",),
        params=PAGE_PARAMS,
    )
)
async def list_threads(request: Request) -> Response:
    user = await authenticated_user(request)
    limit, after = page_query(request, default=THREADS_PAGE, maximum=MAX_THREADS_PAGE)
    page = await _chat(request).list_threads(user_id=user, limit=limit, after=after)
    answer: ThreadPage = {"threads": [t.to_json() for t in page.items], "next_cursor": cursor(page)}
    return _json(answer)


@documented(Operation("A thread", {200: ThreadJSON}))
async def get_thread(request: Request) -> Response:
    user = await authenticated_user(request)
    thread = await _chat(request).get_thread(user_id=user, thread_id=request.path_params["id"])
    return _json(thread.to_json())


@documented(Operation("Rename a thread", {200: ThreadJSON}, body=RenameThread))
async def rename_thread(request: Request) -> Response:
    user = await authenticated_user(request)
    body = await read_json(request, RenameThread, max_bytes=_settings(request).max_body_bytes)
    thread = await _chat(request).rename_thread(
        user_id=user, thread_id=request.path_params["id"], title=body.title
    )
    return _json(thread.to_json())


@documented(
    Operation(
        "Delete a thread with its messages, runs and events (a running run cancelled first)",
        {204: None},
        errors=("run_in_progress",),
    )
)
async def delete_thread(request: Request) -> Response:
    user = await authenticated_user(request)
    await _chat(request).delete_thread(user_id=user, thread_id=request.path_params["id"])
    return Response(status_code=204)


@documented(
    Operation(
        "A thread's messages, oldest first, a page at a time",
        {200: MessagePage},
        errors=("validation_error",),
        params=PAGE_PARAMS,
    )
)
async def list_messages(request: Request) -> Response:
    user = await authenticated_user(request)
    limit, after = page_query(request, default=MESSAGES_PAGE, maximum=MAX_MESSAGES_PAGE)
    page = await _chat(request).list_messages(
        user_id=user, thread_id=request.path_params["id"], limit=limit, after=after
    )
    answer: MessagePage = {
        "messages": [m.to_json() for m in page.items],
        "next_cursor": cursor(page),
    }
    return _json(answer)


@documented(
    Operation(
        "Send a message: its run to the end, or (Accept: text/event-stream) its events live",
        {200: RunAndAnswer},
        body=NewMessage,
        errors=("run_in_progress",),
        media=EVENT_STREAM,
    )
)
async def post_message(request: Request) -> Response:
    """The run to its end (its Run and answer), or, asked for ``text/event-stream``, its
    events as they come."""
    caller = await authenticated_caller(request)
    body = await _message_body(request)
    if _wants_event_stream(request):
        return await _streamed_run(request, caller, body)
    run, message = await _chat(request).send_message(
        user_id=caller.user_id,
        thread_id=request.path_params["id"],
        content=body.content,
        request_id=request.state.request_id,
        drill=caller.drill,
    )
    answer: RunAndAnswer = {
        "run": run.to_json(),
        "message": None if message is None else message.to_json(),
    }
    return _json(answer)


@documented(
    Operation(
        "Start a background run: 202 with the Run at once",
        {202: RunAnswer},
        body=NewMessage,
        errors=("run_in_progress",),
    )
)
async def start_run(request: Request) -> Response:
    """A background run: 202 with the Run as soon as it is stored; it goes on on its own."""
    caller = await authenticated_caller(request)
    body = await _message_body(request)
    run = await start_detached(
        _container(request),
        user_id=caller.user_id,
        thread_id=request.path_params["id"],
        content=body.content,
        request_id=request.state.request_id,
        drill=caller.drill,
    )
    answer: RunAnswer = {"run": run.to_json()}
    return _json(answer, 202)


async def _message_body(request: Request) -> NewMessage:
    settings = _settings(request)
    body = await read_json(request, NewMessage, max_bytes=settings.max_body_bytes)
    check_content(body.content, max_chars=settings.max_message_chars)
    return body


def _wants_event_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


async def _streamed_run(request: Request, caller: Caller, body: NewMessage) -> Response:
    """Subscribed first, then the run started apart from this request: its events stream from
    the first; if the client goes away first, the run is cancelled unless ``on_disconnect``
    says ``continue``."""
    container = _container(request)
    broker = container.broker()
    user = caller.user_id
    subscription = await sse.subscribe(broker, user)
    try:
        run = await start_detached(
            container,
            user_id=user,
            thread_id=request.path_params["id"],
            content=body.content,
            request_id=request.state.request_id,
            drill=caller.drill,
        )
    except BaseException:
        await broker.unsubscribe(subscription)
        raise

    def abandoned() -> None:
        if body.on_disconnect == "cancel":
            container.runs().cancel_soon(run.id)

    events = sse.follow(
        chat=_chat(request),
        broker=broker,
        subscription=subscription,
        user_id=user,
        run_id=run.id,
        after=0,
        on_abandoned=abandoned,
        keepalive_s=_settings(request).sse_keepalive_s,
    )
    return StreamingResponse(events, media_type="text/event-stream", headers=sse.HEADERS)


# runs


@documented(Operation("A run", {200: RunJSON}))
async def get_run(request: Request) -> Response:
    user = await authenticated_user(request)
    run = await _chat(request).get_run(user_id=user, run_id=request.path_params["id"])
    return _json(run.to_json())


@documented(
    Operation(
        "A run's stored events after a seq, in order",
        {200: EventList},
        errors=("validation_error",),
        params=(AFTER,),
    )
)
async def list_events(request: Request) -> Response:
    user = await authenticated_user(request)
    after = _seq(request.query_params.get("after", "0"), name="after")
    events = await _chat(request).list_events(
        user_id=user, run_id=request.path_params["id"], after=after
    )
    answer: EventList = {"events": [e.to_json() for e in events]}
    return _json(answer)


@documented(
    Operation(
        "Follow a run as server-sent events: stored after Last-Event-ID (or ?after), then live",
        {200: None},
        errors=("validation_error",),
        params=(
            AFTER,
            Param("Last-Event-ID", "header", "the seq of the last event received"),
        ),
        media=EVENT_STREAM,
    )
)
async def stream_run(request: Request) -> Response:
    """The run's events as SSE after ``Last-Event-ID`` (or ``?after=N``): stored, then live,
    ending after the final event. Following a run does not own it: leaving cancels nothing."""
    user = await authenticated_user(request)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is not None:
        after = _seq(last_event_id.strip(), name="Last-Event-ID")
    else:
        after = _seq(request.query_params.get("after", "0"), name="after")
    chat, broker = _chat(request), _container(request).broker()
    run = await chat.get_run(user_id=user, run_id=request.path_params["id"])  # 404 first
    subscription = await sse.subscribe(broker, user)
    events = sse.follow(
        chat=chat,
        broker=broker,
        subscription=subscription,
        user_id=user,
        run_id=run.id,
        after=after,
        keepalive_s=_settings(request).sse_keepalive_s,
    )
    return StreamingResponse(events, media_type="text/event-stream", headers=sse.HEADERS)


def _seq(raw: str, *, name: str) -> int:
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError("validation_error", f"{name}: must be a whole number, 0 or more")
    return int(raw)


@documented(Operation("Cancel a running run", {202: RunAnswer}, errors=("conflict",)))
async def cancel_run(request: Request) -> Response:
    user = await authenticated_user(request, rate_limited=False)
    run = await _chat(request).cancel_run(user_id=user, run_id=request.path_params["id"])
    answer: RunAnswer = {"run": run.to_json()}
    return _json(answer, 202)


# the chat page

STATIC = Path(__file__).parent / "static"
# Everything the page loads comes from this server: no CDN, no inline script.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


HTML = {200: {"text/html": {"schema": {"type": "string"}}}}


@documented(Operation("The chat page", {200: None}, authenticated=False, media=HTML))
async def chat_page(_: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


# Swagger UI sets styles inline.
DOCS_HEADERS = PAGE_HEADERS | {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
}


# the API's description

ABOUT = (
    "isochat: a multi-user agent chat backend in which every request is isolated. The public "
    "contract is docs/api.md; WebSocket /ws (not described here) carries the same events."
)


@documented(
    Operation(
        "This document (OpenAPI 3.1)",
        {200: None},
        authenticated=False,
        media={200: {"application/json": {"schema": {"type": "object"}}}},
    )
)
async def openapi_document(request: Request) -> Response:
    cached: dict[str, Any] | None = getattr(request.app.state, "openapi", None)
    if cached is None:
        cached = document(request.app.routes, title="isochat", version=VERSION, about=ABOUT)
        request.app.state.openapi = cached
    return _json(cached)


@documented(
    Operation("A page to try the API (Swagger UI)", {200: None}, authenticated=False, media=HTML)
)
async def docs_page(_: Request) -> Response:
    return FileResponse(STATIC / "docs.html", headers=DOCS_HEADERS)


ROUTES = [
    Route("/", chat_page, methods=["GET"]),
    Route("/openapi.json", openapi_document, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
    # Swagger UI's files, from the swagger-ui-bundle package: no CDN.
    Mount("/docs/assets", app=StaticFiles(directory=swagger_ui_path), name="docs-assets"),
    Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    Route("/health/live", live, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/api/auth/dev-login", dev_login, methods=["POST"]),
    Route("/api/auth/ws-ticket", ws_ticket, methods=["POST"]),
    Route("/api/threads", create_thread, methods=["POST"]),
    Route("/api/threads", list_threads, methods=["GET"]),
    Route("/api/threads/{id}", get_thread, methods=["GET"]),
    Route("/api/threads/{id}", rename_thread, methods=["PATCH"]),
    Route("/api/threads/{id}", delete_thread, methods=["DELETE"]),
    Route("/api/threads/{id}/messages", list_messages, methods=["GET"]),
    Route("/api/threads/{id}/messages", post_message, methods=["POST"]),
    Route("/api/threads/{id}/runs", start_run, methods=["POST"]),
    Route("/api/runs/{id}", get_run, methods=["GET"]),
    Route("/api/runs/{id}/events", list_events, methods=["GET"]),
    Route("/api/runs/{id}/stream", stream_run, methods=["GET"]),
    Route("/api/runs/{id}/cancel", cancel_run, methods=["POST"]),
    WebSocketRoute("/ws", websocket_endpoint),
]
