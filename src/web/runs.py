"""Messages and runs: send a message (its run to the end, or its events live), start a run in
the background, read a run and its events, follow it, cancel it. Each handler parses, calls the
run use cases (``src/services/chat.py``), and renders."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from src.runs.domain import RunJSON
from src.services.auth import Caller
from src.web import sse
from src.web.answers import EventList, RunAndAnswer, RunAnswer
from src.web.auth import authenticated
from src.web.bodies import Approvals, NewMessage, check_content, read_json
from src.web.detached import resume_detached, start_detached
from src.web.openapi import Operation, Param, documented
from src.web.requests import (
    approval_of,
    chat_of,
    container_of,
    json_response,
    seq_param,
    settings_of,
)

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
    caller = await authenticated(request)
    body = await _message_body(request)
    if "text/event-stream" in request.headers.get("accept", ""):
        return await _streamed_run(request, caller, body)
    run, message = await chat_of(request).send_message(
        caller=caller,
        thread_id=request.path_params["id"],
        content=body.content,
        request_id=request.state.request_id,
        multitask=body.multitask,
    )
    answer: RunAndAnswer = {
        "run": run.to_json(),
        "message": None if message is None else message.to_json(),
    }
    return json_response(answer)


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
    caller = await authenticated(request)
    body = await _message_body(request)
    run = await start_detached(
        container_of(request),
        caller=caller,
        thread_id=request.path_params["id"],
        content=body.content,
        request_id=request.state.request_id,
        multitask=body.multitask,
    )
    answer: RunAnswer = {"run": run.to_json()}
    return json_response(answer, 202)


async def _message_body(request: Request) -> NewMessage:
    settings = settings_of(request)
    body = await read_json(request, NewMessage, max_bytes=settings.max_body_bytes)
    check_content(body.content, max_chars=settings.max_message_chars)
    return body


async def _streamed_run(request: Request, caller: Caller, body: NewMessage) -> Response:
    """Subscribed first, then the run started apart from this request: its events stream from
    the first; if the client goes away first, the run is cancelled unless ``on_disconnect``
    says ``continue``."""
    container = container_of(request)
    return await sse.start_and_stream(
        container,
        user_id=caller.user_id,
        start=lambda: start_detached(
            container,
            caller=caller,
            thread_id=request.path_params["id"],
            content=body.content,
            request_id=request.state.request_id,
            multitask=body.multitask,
        ),
        wire_for=lambda _: sse.ISOCHAT_WIRE,
        cancel_on_leave=body.on_disconnect == "cancel",
    )


@documented(Operation("A run", {200: RunJSON}))
async def get_run(request: Request) -> Response:
    caller = await authenticated(request)
    run = await chat_of(request).get_run(user_id=caller.user_id, run_id=request.path_params["id"])
    return json_response(run.to_json())


@documented(
    Operation(
        "A run's stored events after a seq, in order",
        {200: EventList},
        errors=("validation_error",),
        params=(AFTER,),
    )
)
async def list_events(request: Request) -> Response:
    caller = await authenticated(request)
    after = seq_param(request.query_params.get("after", "0"), name="after")
    events = await chat_of(request).list_events(
        user_id=caller.user_id, run_id=request.path_params["id"], after=after
    )
    answer: EventList = {"events": [e.to_json() for e in events]}
    return json_response(answer)


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
    caller = await authenticated(request)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is not None:
        after = seq_param(last_event_id.strip(), name="Last-Event-ID")
    else:
        after = seq_param(request.query_params.get("after", "0"), name="after")
    run = await chat_of(request).get_run(user_id=caller.user_id, run_id=request.path_params["id"])
    return await sse.follow(
        container_of(request), user_id=caller.user_id, run_id=run.id, after=after
    )


@documented(
    Operation(
        "Decide on a paused run's calls: approve, reject or edit; the last decision resumes it",
        {202: RunAnswer},
        body=Approvals,
        errors=("conflict",),
    )
)
async def decide(request: Request) -> Response:
    """202 with the run: ``running`` when these decisions completed the turn (it goes on in the
    background, on this host), else still ``awaiting_approval``."""
    caller = await authenticated(request)
    body = await read_json(request, Approvals, max_bytes=settings_of(request).max_body_bytes)
    run, resumed = await approval_of(request).decide(
        caller=caller,
        run_id=request.path_params["id"],
        decisions=[decision.as_decision() for decision in body.decisions],
        request_id=request.state.request_id,
    )
    if resumed is not None:
        resume_detached(container_of(request), resumed)
    answer: RunAnswer = {"run": run.to_json()}
    return json_response(answer, 202)


@documented(Operation("Cancel a running run", {202: RunAnswer}, errors=("conflict",)))
async def cancel_run(request: Request) -> Response:
    caller = await authenticated(request, rate_limited=False)
    run = await chat_of(request).cancel_run(
        user_id=caller.user_id, run_id=request.path_params["id"]
    )
    answer: RunAnswer = {"run": run.to_json()}
    return json_response(answer, 202)
