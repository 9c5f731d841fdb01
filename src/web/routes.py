"""The application's routes: every path of the public contract, and the handler that answers
it (by resource: ``auth``, ``threads``, ``runs``, ``health``, ``page``; ``/ws`` in
``websocket``). The OpenAPI document is generated from this table."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from src.web import auth, health, page, runs, threads
from src.web.adapters import agent_protocol, ai_sdk, openai
from src.web.openapi import Operation, document, documented
from src.web.requests import json_response
from src.web.websocket import websocket_endpoint

VERSION = importlib.metadata.version("isochat")
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
    return json_response(cached)


ROUTES = [
    Route("/", page.chat_page, methods=["GET"]),
    Route("/favicon.ico", page.favicon, methods=["GET"]),
    Route("/openapi.json", openapi_document, methods=["GET"]),
    Route("/docs", page.docs_page, methods=["GET"]),
    # Swagger UI's files, from the swagger-ui-bundle package: no CDN.
    Mount("/docs/assets", app=StaticFiles(directory=swagger_ui_path), name="docs-assets"),
    Mount("/static", app=StaticFiles(directory=page.STATIC), name="static"),
    Route("/health/live", health.live, methods=["GET"]),
    Route("/health/ready", health.ready, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    Route("/api/auth/dev-login", auth.dev_login, methods=["POST"]),
    Route("/api/auth/ws-ticket", auth.ws_ticket, methods=["POST"]),
    Route("/api/threads", threads.create_thread, methods=["POST"]),
    Route("/api/threads", threads.list_threads, methods=["GET"]),
    Route("/api/threads/{id}", threads.get_thread, methods=["GET"]),
    Route("/api/threads/{id}", threads.rename_thread, methods=["PATCH"]),
    Route("/api/threads/{id}", threads.delete_thread, methods=["DELETE"]),
    Route("/api/threads/{id}/messages", threads.list_messages, methods=["GET"]),
    Route("/api/threads/{id}/messages", runs.post_message, methods=["POST"]),
    Route("/api/threads/{id}/runs", runs.start_run, methods=["POST"]),
    Route("/api/runs/{id}", runs.get_run, methods=["GET"]),
    Route("/api/runs/{id}/events", runs.list_events, methods=["GET"]),
    Route("/api/runs/{id}/stream", runs.stream_run, methods=["GET"]),
    Route("/api/runs/{id}/cancel", runs.cancel_run, methods=["POST"]),
    Route("/api/runs/{id}/approvals", runs.decide, methods=["POST"]),
    WebSocketRoute("/ws", websocket_endpoint),
    # The protocols of clients that already exist (src/web/adapters/).
    *openai.ROUTES,
    *agent_protocol.ROUTES,
    *ai_sdk.ROUTES,
]
