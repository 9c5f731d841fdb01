"""The Vercel AI SDK's chat protocol (``useChat``, ``DefaultChatTransport``): ``POST /api/chat``
answers a chat's message, or the person's answers to approval requests, as the UI message
stream (``ai_sdk_wire.py``); ``GET /api/chat/{id}/stream`` resumes the chat's run.

A chat id (the client's) names one thread of the caller's, made on its first message
(``ThreadService.chat_thread``: ids are per user). Everything else is isochat's own use cases,
as its own endpoints call them: the run started apart from the request and followed by the one
follower (``sse.start_and_stream``), decisions through ``ApprovalService.decide``, the resumed
run through ``resume_detached``. Refusals (401, 404, 409, 413, 422, 429) are isochat's JSON
errors, before the stream starts.
"""

from __future__ import annotations

from typing import cast

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from src.runs.approvals import Resumed
from src.runs.domain import Decision, Event, Run, Thread
from src.runs.starting import Opening
from src.services.auth import Caller
from src.services.broker import Frame
from src.services.threads import title_from
from src.web import sse
from src.web.adapters.ai_sdk_bodies import (
    MAX_CHAT_ID_CHARS,
    ChatRequest,
    answers_of,
    question_of,
    sent_messages,
)
from src.web.adapters.ai_sdk_wire import UiMessageStreamWire
from src.web.auth import authenticated
from src.web.bodies import read_json
from src.web.detached import cancel_detached, resume_detached, start_detached
from src.web.errors import ApiError
from src.web.openapi import Operation, Param, documented
from src.web.requests import (
    approval_of,
    chat_of,
    container_of,
    settings_of,
    threads_of,
)

CHAT_ID = Param(
    "id",
    "path",
    "the chat's id, as its client chose it",
    {"type": "string", "minLength": 1, "maxLength": MAX_CHAT_ID_CHARS, "pattern": "^[^/]+$"},
)
UI_MESSAGE_STREAM = {
    200: {
        "text/event-stream": {
            "schema": {
                "type": "string",
                "description": "the AI SDK's UI message stream: data: <chunk as JSON>, "
                "ending with data: [DONE] (header x-vercel-ai-ui-message-stream: v1)",
            }
        }
    }
}


@documented(
    Operation(
        "The AI SDK's chat (useChat): a chat's message, or answers to approval requests, "
        "answered as the UI message stream",
        {200: None},
        body=ChatRequest,
        errors=("not_found", "run_in_progress", "conflict"),
        media=UI_MESSAGE_STREAM,
    )
)
async def post_chat(request: Request) -> Response:
    """The chat's thread (made on its first message) runs the last user message; or, when
    the last message is the assistant's with the person's answers to its approval requests,
    they decide the paused run, which goes on in the same message."""
    caller = await authenticated(request)
    settings = settings_of(request)
    body = await read_json(request, ChatRequest, max_bytes=settings.max_body_bytes)
    messages = sent_messages(body)
    decisions = answers_of(messages)
    if decisions is not None:
        return await _decide(request, caller, body=body, decisions=decisions)
    question = question_of(messages, max_chars=settings.max_message_chars)
    thread, made = await threads_of(request).chat_thread(
        user_id=caller.user_id,
        client_key=body.id,
        title=title_from(question.first_question),
        origin="ai_sdk",
    )
    opening = None
    if question.earlier and (made or await _holds_nothing(request, caller, thread=thread)):
        # The thread holds the conversation from then on: what the client sends of it later
        # is its copy, not news.
        opening = Opening(earlier=question.earlier)
    container = container_of(request)
    return await sse.start_and_stream(
        container,
        user_id=caller.user_id,
        start=lambda: start_detached(
            container,
            caller=caller,
            thread_id=thread.id,
            content=question.content,
            request_id=request.state.request_id,
            multitask=body.multitask,
            opening=opening,
        ),
        wire_for=lambda run: UiMessageStreamWire(message_id=run.id),
        cancel_on_leave=body.on_disconnect == "cancel",
    )


async def _holds_nothing(request: Request, caller: Caller, *, thread: Thread) -> bool:
    """Whether the chat's thread has no message yet (its first request was refused: it was
    made, but nothing was stored in it)."""
    page = await threads_of(request).list_messages(
        user_id=caller.user_id, thread_id=thread.id, limit=1
    )
    return not page.items


async def _decide(
    request: Request, caller: Caller, *, body: ChatRequest, decisions: list[Decision]
) -> Response:
    """The decisions on the chat's paused run, and the run from there on, in the message the
    client has: subscribed before deciding, so that nothing of the resumed run is missed."""
    thread = await threads_of(request).find_chat_thread(user_id=caller.user_id, client_key=body.id)
    if thread is None or thread.active_run_id is None:
        raise ApiError("conflict", "no run of this chat is awaiting approval")
    run_id = thread.active_run_id
    chat = chat_of(request)
    # Where the message the client has ends: the run's events so far (it is paused: none
    # come until these decisions).
    before = await chat.list_events(user_id=caller.user_id, run_id=run_id, after=0)
    after = before[-1].seq if before else 0
    # The client sends its whole message again: answers it sent before (other calls of the
    # turn waited) are decided already, and stand.
    decided = {e.data.get("call_id") for e in before if e.type == "approval_resolved"}
    decisions = [d for d in decisions if d.call_id not in decided]
    container, settings = container_of(request), settings_of(request)
    broker = container.broker()
    subscription = await sse.subscribe(broker, caller.user_id, settings)
    try:
        run, resumed = await _decided(request, caller, run_id=run_id, decisions=decisions)
    except BaseException:
        await broker.unsubscribe(subscription)
        raise
    wire = UiMessageStreamWire(message_id=run.id, continuing=True)
    if resumed is None:
        # Other calls of the turn still wait: the decisions are the whole answer for now.
        await broker.unsubscribe(subscription)
        news = await chat.list_events(user_id=caller.user_id, run_id=run.id, after=after)
        return StreamingResponse(
            iter([_still_waiting(wire, news)]),
            media_type=wire.media_type,
            headers=dict(wire.headers),
        )
    resume_detached(container, resumed)

    def abandoned() -> None:
        if body.on_disconnect == "cancel":
            cancel_detached(container, run)

    return sse.stream(
        broker=broker,
        subscription=subscription,
        store=container.event_store(),
        settings=settings,
        run_id=run.id,
        after=after,
        on_abandoned=abandoned,
        wire=wire,
    )


async def _decided(
    request: Request, caller: Caller, *, run_id: str, decisions: list[Decision]
) -> tuple[Run, Resumed | None]:
    """``ApprovalService.decide``, when there is something new to decide; else the run as
    it is, still waiting for the calls not answered yet."""
    if decisions:
        return await approval_of(request).decide(
            caller=caller, run_id=run_id, decisions=decisions, request_id=request.state.request_id
        )
    run = await chat_of(request).get_run(user_id=caller.user_id, run_id=run_id)
    if run.status != "awaiting_approval":
        raise ApiError("conflict", f"the run is not awaiting approval ({run.status})")
    return run, None


def _still_waiting(wire: UiMessageStreamWire, decided: list[Event]) -> bytes:
    out = wire.opening()
    for event in decided:
        out += wire.event(cast(Frame, event.to_json()))  # a TypedDict is a dict
    return out + wire.waiting()


@documented(
    Operation(
        "Resume the stream of a chat's run (useChat's resume): from the run's start; "
        "204 when none is going",
        {200: None, 204: None},
        params=(CHAT_ID,),
        media=UI_MESSAGE_STREAM,
    )
)
async def resume_chat(request: Request) -> Response:
    """The chat's active run (running, or paused for approval: up to the pause), else the
    first of its queued runs, replayed from its start and followed to its end; 204 when the
    chat has none (or no thread: nothing is made). Following does not own the run: leaving
    cancels nothing."""
    caller = await authenticated(request)
    thread = await threads_of(request).find_chat_thread(
        user_id=caller.user_id, client_key=request.path_params["id"]
    )
    run_id = None
    if thread is not None:
        run_id = thread.active_run_id or next(iter(thread.queued_run_ids), None)
    if run_id is None:
        return Response(status_code=204)
    return await sse.follow(
        container_of(request),
        user_id=caller.user_id,
        run_id=run_id,
        wire=UiMessageStreamWire(message_id=run_id),
    )


ROUTES: list[BaseRoute] = [
    Route("/api/chat", post_chat, methods=["POST"]),
    Route("/api/chat/{id}/stream", resume_chat, methods=["GET"]),
]
