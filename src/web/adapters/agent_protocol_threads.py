"""The Agent Protocol's server, its assistants and its threads: each handler parses, calls the
thread and run use cases (``src/services/threads.py``, ``chat.py``), and renders in
``agent_protocol_shapes``."""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from src.runs.domain import Thread
from src.services.auth import Caller
from src.services.errors import Conflict, NotFound
from src.web.adapters.agent_protocol_bodies import (
    AssistantSearch,
    ThreadCreate,
    ThreadPatch,
    ThreadSearch,
)
from src.web.adapters.agent_protocol_shapes import (
    ASSISTANT_NAMES,
    ThreadStatus,
    ThreadView,
    assistant,
    metadata_of,
    state_json,
    thread_json,
)
from src.web.auth import authenticated
from src.web.bodies import read_json
from src.web.openapi import Operation, documented
from src.web.requests import chat_of, json_response, settings_of, threads_of

VERSION = importlib.metadata.version("isochat")
# Threads read at a time while searching (isochat lists them newest first, a page at a time).
SEARCH_PAGE = 200
OBJECT = dict[str, Any]
OBJECTS = list[dict[str, Any]]


async def view_of(request: Request, caller: Caller, thread: Thread) -> ThreadView:
    """The thread with its messages, its status and, when its run is paused, the calls that
    wait: ``busy`` while a run runs or waits its turn, ``interrupted`` while one waits for
    approval, ``error`` when its latest run failed, else ``idle``."""
    user_id = caller.user_id
    messages = await threads_of(request).all_messages(user_id=user_id, thread_id=thread.id)
    chat = chat_of(request)
    status: ThreadStatus = "busy" if thread.queued_run_ids else "idle"
    if thread.active_run_id is not None:
        active = await chat.get_run(user_id=user_id, run_id=thread.active_run_id)
        if active.status == "awaiting_approval":
            pending, agent = await _waiting_calls(request, caller, active.id)
            return ThreadView(thread, messages, "interrupted", active.id, agent, pending)
        return ThreadView(thread, messages, "busy")
    latest = next((m.run_id for m in reversed(messages) if m.run_id is not None), None)
    if status == "idle" and latest is not None:
        run = await chat.get_run(user_id=user_id, run_id=latest)
        status = "error" if run.status == "failed" else "idle"
    return ThreadView(thread, messages, status)


async def _waiting_calls(
    request: Request, caller: Caller, run_id: str
) -> tuple[list[dict[str, Any]], str | None]:
    """The paused run's calls not yet decided (their ``approval_requested`` data), and the
    agent that asked."""
    events = await chat_of(request).list_events(user_id=caller.user_id, run_id=run_id, after=0)
    decided = {e.data.get("call_id") for e in events if e.type == "approval_resolved"}
    asked = [e for e in events if e.type == "approval_requested"]
    pending = [e.data for e in asked if e.data.get("call_id") not in decided]
    return pending, asked[-1].agent if asked else None


async def _thread(request: Request, caller: Caller) -> Thread:
    return await threads_of(request).get_thread(
        user_id=caller.user_id, thread_id=request.path_params["thread_id"]
    )


@documented(Operation("Agent Protocol: the server", {200: OBJECT}))
async def langgraph_info(request: Request) -> Response:
    """Authenticated, unlike LangGraph's: agent-chat-ui checks its URL and API key here."""
    await authenticated(request)
    flags = {"assistants": True, "crons": False, "langsmith": False}
    return json_response({"version": VERSION, "flags": flags})


@documented(Operation("Agent Protocol: the assistants", {200: OBJECTS}, body=AssistantSearch))
async def langgraph_search_assistants(request: Request) -> Response:
    await authenticated(request)
    max_bytes = settings_of(request).max_body_bytes
    body = await read_json(request, AssistantSearch, max_bytes=max_bytes, empty_ok=True)
    one = assistant()
    fits = (
        body.graph_id in (None, one["graph_id"])
        and body.name in (None, one["name"])
        and _within(one["metadata"], body.metadata)
    )
    found = [one] if fits else []
    return json_response(found[body.offset : body.offset + body.limit])


@documented(Operation("Agent Protocol: an assistant (its id or the graph's)", {200: OBJECT}))
async def langgraph_get_assistant(request: Request) -> Response:
    await authenticated(request)
    if request.path_params["assistant_id"] not in ASSISTANT_NAMES:
        raise NotFound("assistant not found")
    return json_response(assistant())


@documented(
    Operation(
        "Agent Protocol: create a thread", {200: OBJECT}, body=ThreadCreate, errors=("conflict",)
    )
)
async def langgraph_create_thread(request: Request) -> Response:
    """A thread, with the id the client chose if it did: one that exists is 409, or, with
    ``if_exists: do_nothing``, the caller's own thread as it is."""
    caller = await authenticated(request)
    max_bytes = settings_of(request).max_body_bytes
    body = await read_json(request, ThreadCreate, max_bytes=max_bytes, empty_ok=True)
    threads = threads_of(request)
    try:
        made = await threads.create_thread(
            user_id=caller.user_id,
            title=None,
            origin="agent_protocol",
            metadata=None if body.metadata is None else json.dumps(body.metadata),
            thread_id=body.thread_id,
        )
    except Conflict:
        if body.if_exists != "do_nothing" or body.thread_id is None:
            raise
        try:
            thread = await threads.get_thread(user_id=caller.user_id, thread_id=body.thread_id)
        except NotFound:
            raise Conflict("a thread with this id exists") from None
        return json_response(thread_json(await view_of(request, caller, thread)))
    # A thread just made holds nothing and runs nothing: no need to read it back.
    return json_response(thread_json(ThreadView(made, [], "idle")))


@documented(Operation("Agent Protocol: a thread", {200: OBJECT}))
async def langgraph_get_thread(request: Request) -> Response:
    caller = await authenticated(request)
    thread = await _thread(request, caller)
    return json_response(thread_json(await view_of(request, caller, thread)))


@documented(
    Operation("Agent Protocol: add to a thread's metadata", {200: OBJECT}, body=ThreadPatch)
)
async def langgraph_patch_thread(request: Request) -> Response:
    """The given keys replace the same keys of the thread's metadata (as LangGraph merges)."""
    caller = await authenticated(request)
    body = await read_json(request, ThreadPatch, max_bytes=settings_of(request).max_body_bytes)
    thread = await _thread(request, caller)
    stored = json.loads(thread.metadata) if thread.metadata else {}
    thread = await threads_of(request).set_metadata(
        user_id=caller.user_id, thread_id=thread.id, metadata=json.dumps(stored | body.metadata)
    )
    return json_response(thread_json(await view_of(request, caller, thread)))


@documented(Operation("Agent Protocol: delete a thread", {204: None}, errors=("run_in_progress",)))
async def langgraph_delete_thread(request: Request) -> Response:
    caller = await authenticated(request)
    await threads_of(request).delete_thread(
        user_id=caller.user_id, thread_id=request.path_params["thread_id"]
    )
    return Response(status_code=204)


@documented(
    Operation("Agent Protocol: search the caller's threads", {200: OBJECTS}, body=ThreadSearch)
)
async def langgraph_search_threads(request: Request) -> Response:
    """The caller's threads, newest first, that have every key of ``metadata`` (as shown:
    with ``graph_id`` and ``assistant_id``), one of ``ids`` and ``status``, if given; after
    ``offset`` of them, at most ``limit``. Read a page of threads at a time until enough
    match."""
    caller = await authenticated(request)
    max_bytes = settings_of(request).max_body_bytes
    body = await read_json(request, ThreadSearch, max_bytes=max_bytes, empty_ok=True)
    threads = threads_of(request)
    wanted = body.offset + body.limit
    found: list[dict[str, Any]] = []
    after = None
    while len(found) < wanted:
        page = await threads.list_threads(user_id=caller.user_id, limit=SEARCH_PAGE, after=after)
        for thread in page.items:
            if body.ids is not None and thread.id not in body.ids:
                continue
            if not _within(metadata_of(thread), body.metadata):
                continue
            try:
                view = await view_of(request, caller, thread)
            except NotFound:  # deleted meanwhile
                continue
            if body.status is None or view.status == body.status:
                found.append(thread_json(view))
        if page.next_after is None:
            break
        after = page.next_after
    return json_response(found[body.offset : wanted])


@documented(Operation("Agent Protocol: a thread's state", {200: OBJECT}))
async def langgraph_get_state(request: Request) -> Response:
    caller = await authenticated(request)
    thread = await _thread(request, caller)
    return json_response(state_json(await view_of(request, caller, thread)))


@documented(Operation("Agent Protocol: a thread's states (only the present)", {200: OBJECTS}))
async def langgraph_get_history(request: Request) -> Response:
    """isochat keeps no checkpoints: a thread's history is its present state alone (what
    ``useStream`` asks for, ``fetchStateHistory``). The request's body (limit, before, ...)
    changes nothing."""
    caller = await authenticated(request)
    thread = await _thread(request, caller)
    return json_response([state_json(await view_of(request, caller, thread))])


def _within(metadata: dict[str, Any], wanted: dict[str, Any] | None) -> bool:
    return all(metadata.get(key) == value for key, value in (wanted or {}).items())


@documented(Operation("Agent Protocol: a thread's states, asked by POST", {200: OBJECTS}))
async def langgraph_post_history(request: Request) -> Response:
    """The SDKs ask for the history by POST (with a body of filters): the same answer."""
    return await langgraph_get_history(request)
