"""The OpenAI-compatible API (``/v1``), for the ``openai`` SDKs and Open WebUI: the models
(``isochat``: triage chooses; ``isochat-<route>``: that specialist) and chat completions.

Each completion is a new thread (origin ``openai``, titled from the first user message)
holding the messages it was sent, whose last, the user's question, starts a run: the same
use cases as isochat's own API (``ChatService.send_message`` to the run's end, or
``start_detached`` followed as it happens), so ownership, limits and approvals hold as they do
there. The answer is rendered in OpenAI's shapes (``openai_wire``); where the thread and run
are is in the headers ``X-Isochat-Thread-Id`` and ``X-Isochat-Run-Id``. docs/api.md
("OpenAI-compatible") says what each OpenAI field becomes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from src.runs.domain import Message, Run, RunError
from src.runs.starting import Opening
from src.services.database.failures import unavailable
from src.services.errors import ChatError, RateLimited
from src.services.threads import new_thread
from src.web import sse
from src.web.adapters.openai_bodies import (
    ChatCompletionRequest,
    InvalidField,
    UnknownModel,
    conversation_of,
    model_names,
    read_request,
    route_of,
)
from src.web.adapters.openai_wire import (
    NO_RETRY,
    ChatCompletion,
    ChunkWire,
    ModelList,
    OpenAIError,
    answer_text,
    completion,
    error_response,
    ids_headers,
    openai_error,
    run_error,
    waiting_calls,
    waiting_note,
)
from src.web.auth import authenticated
from src.web.detached import start_detached
from src.web.errors import ApiError
from src.web.openapi import Operation, documented
from src.web.requests import chat_of, container_of, json_response, routes_of, settings_of

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

# isochat's error codes as OpenAI's clients know them: (status, type, code). The statuses are
# the ones the SDKs turn into their usual exceptions (BadRequestError for any body refused).
OPENAI_OF_CODE: dict[str, tuple[int, str, str]] = {
    "invalid_json": (400, "invalid_request_error", "invalid_json"),
    "validation_error": (400, "invalid_request_error", "validation_error"),
    "payload_too_large": (413, "invalid_request_error", "payload_too_large"),
    "unauthorized": (401, "invalid_request_error", "invalid_api_key"),
    "not_found": (404, "invalid_request_error", "not_found"),
    "conflict": (409, "invalid_request_error", "conflict"),
    "run_in_progress": (409, "invalid_request_error", "run_in_progress"),
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "unavailable": (503, "server_error", "unavailable"),
}
INTERNAL = (500, "server_error", "internal_error")
# The models are isochat's routes, not dated releases.
MODELS_CREATED = 0
OWNED_BY = "isochat"

ERRORS: dict[int, type] = dict.fromkeys(
    (400, 401, 404, 409, 413, 429, 500, 502, 503, 504), OpenAIError
)
STREAM = {
    200: {
        "text/event-stream": {
            "schema": {
                "type": "string",
                "description": "data: chat.completion.chunk (JSON) per delta, then data: [DONE]",
            }
        }
    }
}


def openai_errors(handler: Handler) -> Handler:
    """``handler`` with every refusal in OpenAI's error shape (isochat's own handlers answer
    in isochat's): a refused request, a database that cannot be reached (503)."""

    @functools.wraps(handler)
    async def answering(request: Request) -> Response:
        try:
            return await handler(request)
        except (ApiError, ChatError) as exc:
            return _refused(exc)
        except Exception as exc:
            if not unavailable(exc):
                raise  # a bug: isochat's 500, logged with the request's id
            log.warning("database unavailable: %s", type(exc).__name__)
            error = openai_error(
                "the database is unavailable; retry later", kind="server_error", code="unavailable"
            )
            return error_response(503, error, headers={"Retry-After": "5"})

    return answering


def _refused(exc: ApiError | ChatError) -> Response:
    status, kind, code = OPENAI_OF_CODE.get(exc.code, INTERNAL)
    param = exc.param if isinstance(exc, InvalidField) else None
    headers: dict[str, str] = {}
    if isinstance(exc, UnknownModel):
        code, param = "model_not_found", "model"
    elif isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif exc.code == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    error = openai_error(exc.message, kind=kind, code=code, param=param)
    return error_response(status, error, headers=headers)


@documented(
    Operation(
        "OpenAI-compatible: the models (isochat: triage chooses; isochat-<route>: that route)",
        {200: ModelList, **dict.fromkeys((401, 429, 503), OpenAIError)},
    )
)
@openai_errors
async def list_models(request: Request) -> Response:
    await authenticated(request)
    answer: ModelList = {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": OWNED_BY}
            for name in model_names(routes_of(request))
        ],
    }
    return json_response(answer)


@documented(
    Operation(
        "OpenAI-compatible: a new thread holding the messages, whose last (the user's) is "
        "answered by a run: whole, or as chunks (stream)",
        {200: ChatCompletion, **ERRORS},
        body=ChatCompletionRequest,
        media=STREAM,
    )
)
@openai_errors
async def chat_completions(request: Request) -> Response:
    """Everything is checked (the caller, the body, the model, the messages) before the one
    transaction that stores the thread, the messages, the question and its run."""
    caller = await authenticated(request)
    settings = settings_of(request)
    body = await read_request(request, max_bytes=settings.max_body_bytes)
    route = route_of(body.model, routes_of(request))
    conversation = conversation_of(body, max_message_chars=settings.max_message_chars)
    thread = new_thread(user_id=caller.user_id, title=conversation.title, origin="openai")
    opening = Opening(thread=thread, earlier=conversation.earlier)
    if body.stream:
        container = container_of(request)
        return await sse.start_and_stream(
            container,
            user_id=caller.user_id,
            start=lambda: start_detached(
                container,
                caller=caller,
                thread_id=thread.id,
                content=conversation.question,
                request_id=request.state.request_id,
                route=route,
                opening=opening,
            ),
            wire_for=lambda run: ChunkWire(run, model=body.model, include_usage=body.include_usage),
            cancel_on_leave=True,  # nobody else knows of the run: a client gone, it stops
        )
    run, message = await chat_of(request).send_message(
        caller=caller,
        thread_id=thread.id,
        content=conversation.question,
        request_id=request.state.request_id,
        route=route,
        opening=opening,
    )
    return await _whole(request, run, message, body=body)


async def _whole(
    request: Request, run: Run, message: Message | None, *, body: ChatCompletionRequest
) -> Response:
    """The run's end as one answer: its answer; at a pause for approval, the answer so far
    and what waits; an error for a run that failed or was cancelled."""
    headers = ids_headers(run)
    if run.status == "completed":
        content = "" if message is None else message.content
        return JSONResponse(completion(run, model=body.model, content=content), headers=headers)
    if run.status == "awaiting_approval":
        stored = await chat_of(request).list_events(user_id=run.user_id, run_id=run.id, after=0)
        events = [event.to_json() for event in stored]
        said = answer_text(events)
        content = said + waiting_note(run, waiting_calls(events), after=said)
        return JSONResponse(completion(run, model=body.model, content=content), headers=headers)
    failed = None
    if run.status != "cancelled":
        # Any other way out has its error (a run this request followed has ended or paused).
        failed = (run.error or RunError("internal_error", f"the run is {run.status}")).to_json()
    status, error = run_error(run.id, error=failed)
    return error_response(status, error, headers=headers | NO_RETRY)


ROUTES: list[BaseRoute] = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
]
