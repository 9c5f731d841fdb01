"""Pure ASGI middleware: a request id and a request scope for every HTTP request.

The scope is entered for every request but costs nothing until a handler first resolves a
request-scoped provider; it is disposed on every way out: a response, an exception, a client
that went away, a cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.container import AppContainer, request_scope
from src.logs import fresh_context, log_failure
from src.web.bodies import REQUEST_ID
from src.web.errors import error_response

log = logging.getLogger(__name__)
# Instead of uvicorn's access log, which is written outside the request's context.
access_log = logging.getLogger("isochat.access")

_VALID_REQUEST_ID = re.compile(REQUEST_ID.pattern.encode())  # headers are bytes


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return value.decode("ascii") if _VALID_REQUEST_ID.match(value) else None
    return None


class RequestScopeMiddleware:
    def __init__(self, app: ASGIApp, *, container: AppContainer) -> None:
        self._app = app
        self._container = container

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        # Every log line of this request carries its id, and nothing of an earlier request.
        with fresh_context(request_id=request_id):
            await self._serve(scope, receive, send, request_id=request_id)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, *, request_id: str) -> None:
        started = time.perf_counter()
        status = 0

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            async with request_scope(self._container, request_id=request_id):
                try:
                    await self._app(scope, receive, send_with_request_id)
                except asyncio.CancelledError:
                    # The server is shutting down and gave up waiting for this request (its run
                    # is stored `cancelled`): say so in the API's shape, not as a bare 500.
                    if not status:
                        response = error_response(
                            "unavailable",
                            "the server is shutting down; retry",
                            headers={"Retry-After": "1"},
                        )
                        await response(scope, receive, send_with_request_id)
                    raise
                except Exception as exc:
                    # Logged here with its request id; the client gets no detail.
                    log_failure(log, "unhandled error in request %s", request_id, exc=exc)
                    if not status:
                        response = error_response("internal_error", "an internal error occurred")
                        await response(scope, receive, send_with_request_id)
        finally:
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
            )
