"""The Agent Protocol's runs on a thread: start one (in the background, to its end, or
streamed), read it, wait for it, follow its stream again, cancel it. Each handler parses,
calls the run use cases (``start_detached``, ``ChatService``, ``ApprovalService.decide``) and
renders; streams are ``sse.stream`` with the LangGraph wire."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from src.runs.domain import Message, Run
from src.runs.starting import Opening
from src.services.auth import Caller
from src.services.errors import Conflict, NotFound
from src.web import sse
from src.web.adapters.agent_protocol_bodies import RunCreate, parse_stream_modes
from src.web.adapters.agent_protocol_shapes import (
    ASSISTANT_NAMES,
    interrupt,
    run_json,
    run_location,
    values_of,
)
from src.web.adapters.agent_protocol_threads import view_of
from src.web.adapters.agent_protocol_wire import (
    EVERYTHING_OF_SEQ,
    LangGraphWire,
    parse_event_id,
)
from src.web.auth import authenticated
from src.web.bodies import read_json
from src.web.detached import cancel_detached, resume_detached, start_detached
from src.web.errors import ApiError
from src.web.openapi import Operation, Param, documented
from src.web.requests import (
    approval_of,
    chat_of,
    container_of,
    json_response,
    settings_of,
    threads_of,
)

OBJECT = dict[str, Any]
STARTS = ("run_in_progress", "conflict")
EVENT_STREAM = {
    200: {"text/event-stream": {"schema": {"type": "string", "description": "id: N-k, event"}}}
}


async def _run_body(request: Request) -> RunCreate:
    body = await read_json(request, RunCreate, max_bytes=settings_of(request).max_body_bytes)
    if body.assistant_id not in ASSISTANT_NAMES:
        raise NotFound("assistant not found")
    return body


async def _start(request: Request, caller: Caller, body: RunCreate) -> tuple[Run, int]:
    """The run the body asks for, stored (and going on by itself), and the seq its client has
    seen up to: 0 for a new run; for a resumed one (``command.resume``: decisions on the
    thread's paused run), its last event before the decisions."""
    thread_id = request.path_params["thread_id"]
    if body.command is not None:
        return await _resume(request, caller, body)
    earlier, question = body.conversation(max_chars=settings_of(request).max_message_chars)
    if body.if_not_exists == "create":
        await _thread_made(request, caller, thread_id)
    opening = Opening(earlier=tuple(earlier)) if earlier else None
    run = await start_detached(
        container_of(request),
        caller=caller,
        thread_id=thread_id,
        content=question,
        request_id=request.state.request_id,
        multitask=body.multitask_strategy,
        opening=opening,
    )
    return run, 0


async def _thread_made(request: Request, caller: Caller, thread_id: str) -> None:
    """``if_not_exists: create``: the caller's thread with this id, made now if there is
    none (another user's is a conflict: ids are chosen by clients)."""
    threads = threads_of(request)
    try:
        await threads.get_thread(user_id=caller.user_id, thread_id=thread_id)
    except NotFound:
        await threads.create_thread(
            user_id=caller.user_id, title=None, origin="agent_protocol", thread_id=thread_id
        )


async def _resume(request: Request, caller: Caller, body: RunCreate) -> tuple[Run, int]:
    """The decisions go to the thread's paused run, as ``POST /api/runs/{id}/approvals``'s
    do; the run that goes on is that same run (isochat resumes a run, it makes no new one)."""
    assert body.command is not None
    thread = await threads_of(request).get_thread(
        user_id=caller.user_id, thread_id=request.path_params["thread_id"]
    )
    if thread.active_run_id is None:
        raise Conflict("no run of this thread is waiting for approval")
    chat = chat_of(request)
    seen = await chat.list_events(user_id=caller.user_id, run_id=thread.active_run_id, after=0)
    run, resumed = await approval_of(request).decide(
        caller=caller,
        run_id=thread.active_run_id,
        decisions=[d.as_decision() for d in body.command.resume.decisions],
        request_id=request.state.request_id,
    )
    if resumed is not None:
        resume_detached(container_of(request), resumed)
    return run, seen[-1].seq if seen else 0


async def _run_of_thread(request: Request, caller: Caller) -> Run:
    run = await chat_of(request).get_run(
        user_id=caller.user_id, run_id=request.path_params["run_id"]
    )
    if run.thread_id != request.path_params["thread_id"]:
        raise NotFound("run not found")
    return run


def _base(messages: list[Message], run: Run) -> list[Message]:
    """The thread's messages up to the run's question (its state when the run began)."""
    for index, message in enumerate(messages):
        if message.run_id == run.id and message.role == "user":
            return messages[: index + 1]
    return messages


async def _outcome(request: Request, caller: Caller, run: Run) -> dict[str, Any]:
    """What ``wait`` and ``join`` answer once the run has ended or paused: the thread's
    values, with the calls waiting for approval as ``__interrupt__``; for a failed run,
    ``__error__`` (the SDK raises it)."""
    ended, _ = await chat_of(request).wait_for_end(user_id=caller.user_id, run_id=run.id)
    if ended.status == "failed" and ended.error is not None:
        return {"__error__": {"error": ended.error.code, "message": ended.error.message}}
    thread = await threads_of(request).get_thread(user_id=caller.user_id, thread_id=run.thread_id)
    view = await view_of(request, caller, thread)
    values = values_of(view.messages)
    if view.pending:
        values["__interrupt__"] = [interrupt(p) for p in view.pending]
    return values


@documented(
    Operation(
        "Agent Protocol: start a run in the background",
        {200: OBJECT},
        body=RunCreate,
        errors=STARTS,
    )
)
async def langgraph_create_run(request: Request) -> Response:
    caller = await authenticated(request)
    body = await _run_body(request)
    run, _ = await _start(request, caller, body)
    return _with_headers(run_json(run, multitask=body.multitask_strategy), run_location(run))


@documented(
    Operation(
        "Agent Protocol: a run to its end: the thread's values",
        {200: OBJECT},
        body=RunCreate,
        errors=STARTS,
    )
)
async def langgraph_wait_run(request: Request) -> Response:
    """To the run's end (or pause); a client that goes away cancels it only with
    ``on_disconnect: cancel``."""
    caller = await authenticated(request)
    body = await _run_body(request)
    run, _ = await _start(request, caller, body)
    try:
        values = await _outcome(request, caller, run)
    except asyncio.CancelledError:
        if body.on_disconnect == "cancel":
            cancel_detached(container_of(request), run)
        raise
    join = f"/threads/{run.thread_id}/runs/{run.id}/join"
    return _with_headers(values, {"Location": join, **run_location(run)})


@documented(
    Operation(
        "Agent Protocol: a run, streamed",
        {200: None},
        body=RunCreate,
        errors=STARTS,
        media=EVENT_STREAM,
    )
)
async def langgraph_stream_run(request: Request) -> Response:
    """Subscribed first, then the run started: its events from the first, in the asked
    modes, after a ``metadata`` event with its id."""
    caller = await authenticated(request)
    body = await _run_body(request)
    container = container_of(request)
    begun: dict[str, Any] = {}

    async def start() -> Run:
        run, seen = await _start(request, caller, body)
        messages = await threads_of(request).all_messages(
            user_id=caller.user_id, thread_id=run.thread_id
        )
        begun.update(base=_base(messages, run), seen=seen)
        return run

    return await sse.start_and_stream(
        container,
        user_id=caller.user_id,
        start=start,
        wire_for=lambda run: LangGraphWire(
            run,
            base=begun["base"],
            modes=body.modes(),
            resume_after=(begun["seen"], EVERYTHING_OF_SEQ),
            announce=True,
        ),
        cancel_on_leave=body.on_disconnect == "cancel",
    )


@documented(Operation("Agent Protocol: a run", {200: OBJECT}))
async def langgraph_get_run(request: Request) -> Response:
    caller = await authenticated(request)
    return json_response(run_json(await _run_of_thread(request, caller)))


@documented(Operation("Agent Protocol: wait for a run: the thread's values", {200: OBJECT}))
async def langgraph_join_run(request: Request) -> Response:
    """Follows the run to its end or pause without owning it: leaving cancels nothing."""
    caller = await authenticated(request)
    run = await _run_of_thread(request, caller)
    return json_response(await _outcome(request, caller, run))


JOIN_PARAMS = (
    Param("stream_mode", "query", "a stream mode (repeated for several; default values)"),
    Param("cancel_on_disconnect", "query", "true: the run is cancelled when the client leaves"),
    Param("Last-Event-ID", "header", "the id of the last event received (N-k)"),
)


@documented(
    Operation(
        "Agent Protocol: follow a run's stream (again)",
        {200: None},
        errors=("validation_error",),
        params=JOIN_PARAMS,
        media=EVENT_STREAM,
    )
)
async def langgraph_join_stream(request: Request) -> Response:
    """The run's events in the asked modes, after ``Last-Event-ID``: stored, then live."""
    caller = await authenticated(request)
    modes = parse_stream_modes(request.query_params.getlist("stream_mode"))
    last_event_id = request.headers.get("last-event-id")
    after = (0, EVERYTHING_OF_SEQ) if not last_event_id else parse_event_id(last_event_id)
    cancel = request.query_params.get("cancel_on_disconnect", "false").lower() in ("true", "1")
    run = await _run_of_thread(request, caller)
    messages = await threads_of(request).all_messages(
        user_id=caller.user_id, thread_id=run.thread_id
    )
    container = container_of(request)

    def abandoned() -> None:
        if cancel:
            container.runs().adopt(asyncio.create_task(container.canceller().cancel(run)))

    return await sse.follow(
        container,
        user_id=caller.user_id,
        run_id=run.id,
        after=0,  # from the first: the wire rebuilds its state, and writes after ``after``
        on_abandoned=abandoned,
        wire=LangGraphWire(run, base=_base(messages, run), modes=modes, resume_after=after),
    )


@documented(
    Operation(
        "Agent Protocol: cancel a run",
        {202: OBJECT},
        errors=("conflict", "validation_error"),
        params=(Param("action", "query", "interrupt (rollback is refused)"),),
    )
)
async def langgraph_cancel_run(request: Request) -> Response:
    """``action=interrupt`` (the SDK's default) cancels as ``POST /api/runs/{id}/cancel``
    does; ``rollback`` is refused (isochat removes a run only for a newer message)."""
    caller = await authenticated(request, rate_limited=False)
    if request.query_params.get("action", "interrupt") != "interrupt":
        raise ApiError("validation_error", "action: isochat cancels with interrupt only")
    run = await _run_of_thread(request, caller)
    cancelled = await chat_of(request).cancel_run(user_id=caller.user_id, run_id=run.id)
    return json_response(run_json(cancelled), 202)


def _with_headers(answer: Any, headers: dict[str, str]) -> Response:
    response = json_response(answer)
    response.headers.update(headers)
    return response
