"""``/api/threads``: a user's threads and their messages. Each handler parses, calls the
thread use cases (``src/services/threads.py``), and renders."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from src.runs.domain import ThreadJSON
from src.web.answers import MessagePage, ThreadPage
from src.web.auth import authenticated
from src.web.bodies import NewThread, RenameThread, read_json
from src.web.openapi import Operation, Param, documented
from src.web.paging import (
    MAX_MESSAGES_PAGE,
    MAX_THREADS_PAGE,
    MESSAGES_PAGE,
    THREADS_PAGE,
    cursor,
    page_query,
)
from src.web.requests import json_response, settings_of, threads_of

PAGE_PARAMS = (
    Param("limit", "query", "items per page", {"type": "integer", "minimum": 1}),
    Param("cursor", "query", "next_cursor of the page before"),
)


@documented(Operation("Create a thread", {201: ThreadJSON}, body=NewThread))
async def create_thread(request: Request) -> Response:
    caller = await authenticated(request)
    max_bytes = settings_of(request).max_body_bytes
    body = await read_json(request, NewThread, max_bytes=max_bytes, empty_ok=True)
    thread = await threads_of(request).create_thread(user_id=caller.user_id, title=body.title)
    return json_response(thread.to_json(), 201)


@documented(
    Operation(
        "The user's threads, newest first, a page at a time",
        {200: ThreadPage},
        errors=("validation_error",),
        params=PAGE_PARAMS,
    )
)
async def list_threads(request: Request) -> Response:
    caller = await authenticated(request)
    limit, after = page_query(request, default=THREADS_PAGE, maximum=MAX_THREADS_PAGE)
    page = await threads_of(request).list_threads(user_id=caller.user_id, limit=limit, after=after)
    answer: ThreadPage = {"threads": [t.to_json() for t in page.items], "next_cursor": cursor(page)}
    return json_response(answer)


@documented(Operation("A thread", {200: ThreadJSON}))
async def get_thread(request: Request) -> Response:
    caller = await authenticated(request)
    thread = await threads_of(request).get_thread(
        user_id=caller.user_id, thread_id=request.path_params["id"]
    )
    return json_response(thread.to_json())


@documented(Operation("Rename a thread", {200: ThreadJSON}, body=RenameThread))
async def rename_thread(request: Request) -> Response:
    caller = await authenticated(request)
    body = await read_json(request, RenameThread, max_bytes=settings_of(request).max_body_bytes)
    thread = await threads_of(request).rename_thread(
        user_id=caller.user_id, thread_id=request.path_params["id"], title=body.title
    )
    return json_response(thread.to_json())


@documented(
    Operation(
        "Delete a thread with its messages, runs and events (a running run cancelled first)",
        {204: None},
        errors=("run_in_progress",),
    )
)
async def delete_thread(request: Request) -> Response:
    caller = await authenticated(request)
    await threads_of(request).delete_thread(
        user_id=caller.user_id, thread_id=request.path_params["id"]
    )
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
    caller = await authenticated(request)
    limit, after = page_query(request, default=MESSAGES_PAGE, maximum=MAX_MESSAGES_PAGE)
    page = await threads_of(request).list_messages(
        user_id=caller.user_id, thread_id=request.path_params["id"], limit=limit, after=after
    )
    answer: MessagePage = {
        "messages": [m.to_json() for m in page.items],
        "next_cursor": cursor(page),
    }
    return json_response(answer)
