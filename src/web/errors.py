"""Error responses, exactly as the public contract shapes them:
``{"error": {"code": "<snake_case>", "message": "<for humans>"}}``."""

from __future__ import annotations

import logging
from typing import Any, Required

from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from typing_extensions import TypedDict

from src.logs import log_failure
from src.services.database.failures import DATABASE_UNAVAILABLE, unavailable
from src.services.errors import ChatError, RateLimited

log = logging.getLogger(__name__)

STATUS_OF_CODE = {
    "invalid_json": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "run_in_progress": 409,
    "payload_too_large": 413,
    "validation_error": 422,
    "rate_limited": 429,
    "internal_error": 500,
    "unavailable": 503,
}


class ErrorDetail(TypedDict, total=False):
    code: Required[str]
    message: Required[str]
    run_id: str | None  # run_in_progress: the running run
    run: dict[str, Any]  # conflict: the run as it ended


class ErrorAnswer(TypedDict):
    """The body of every error answer."""

    error: ErrorDetail


class ApiError(Exception):
    """A request the web layer refuses before any use case runs (bad JSON, bad field, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_response(
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> Response:
    detail: ErrorDetail = {"code": code, "message": message, **(details or {})}  # type: ignore[typeddict-item]
    body: ErrorAnswer = {"error": detail}
    return JSONResponse(body, status_code=STATUS_OF_CODE[code], headers=headers)


async def on_api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError | ChatError)
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif exc.code == "unauthorized":
        headers = {"WWW-Authenticate": "Bearer"}
    details = exc.details if isinstance(exc, ChatError) else None
    return error_response(exc.code, exc.message, headers=headers, details=details)


async def on_database_unavailable(_: Request, exc: Exception) -> Response:
    """The database cannot be reached or is overloaded: 503, so clients retry later."""
    log.warning("database unavailable: %s", type(exc).__name__)
    return error_response(
        "unavailable", "the database is unavailable; retry later", headers={"Retry-After": "5"}
    )


async def on_database_error(request: Request, exc: Exception) -> Response:
    """A driver error: 503 when it says the connection was lost (a killed backend), else a
    bug (500, logged with the request's id by the log context)."""
    if unavailable(exc):
        return await on_database_unavailable(request, exc)
    log_failure(log, "database error in request %s", request.url.path, exc=exc)
    return error_response("internal_error", "an internal error occurred")


async def on_http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response("method_not_allowed", "this method is not allowed on this path")
    if exc.status_code == 404:
        return error_response("not_found", "no such path")
    return error_response("internal_error", "the server could not answer this request")


# DATABASE_UNAVAILABLE: connection, pool and deadline failures of the database, not constraint
# violations (those are bugs: 500), and not any TimeoutError or ConnectionError (a handler's
# own is a bug too). Re-exported for the WebSocket's error frames.
__all__ = ["DATABASE_UNAVAILABLE", "EXCEPTION_HANDLERS", "ApiError", "error_response"]

EXCEPTION_HANDLERS = {
    ApiError: on_api_error,
    ChatError: on_api_error,
    HTTPException: on_http_exception,
    DBAPIError: on_database_error,
    **dict.fromkeys(DATABASE_UNAVAILABLE, on_database_unavailable),
}
