"""Runs that do not belong to the request that started them: a background run
(``POST /api/threads/{id}/runs``), a run streamed as server-sent events, and a run a decision
resumed. Each runs in a request scope of its own (``in_a_scope_of_its_own``, as does a queued
run that the end of the run ahead of it started), so the caller's request may end, or its
client go away, while the run goes on."""

from __future__ import annotations

import asyncio

from src.container import AppContainer, in_a_scope_of_its_own
from src.runs.approvals import Resumed
from src.runs.domain import Multitask, Run
from src.services.auth import Caller


async def start_detached(
    container: AppContainer,
    *,
    caller: Caller,
    thread_id: str,
    content: str,
    request_id: str,
    multitask: Multitask | None = None,
) -> tuple[Run, asyncio.Task[None]]:
    """The run, once stored (``running``, or ``queued``), and the task that owns it until it
    ends: cancelling that task cancels the run. What refused it (404, 409, 429, 503) is
    raised here instead."""
    started: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
    task = in_a_scope_of_its_own(
        container,
        lambda: container.request.chat().send_message(
            caller=caller,
            thread_id=thread_id,
            content=content,
            request_id=request_id,
            multitask=multitask,
            on_started=started.set_result,
        ),
        request_id=request_id,
    )
    await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        return started.result(), task
    task.result()  # it ended before the run was stored: raise why
    raise AssertionError("a run that stored nothing ended without an error")


def resume_detached(container: AppContainer, resumed: Resumed) -> None:
    """Go on with the run the last decision resumed, in a request scope of its own."""
    in_a_scope_of_its_own(
        container,
        lambda: container.request.chat().resume_run(resumed),
        request_id=resumed.context.request_id,
    )
