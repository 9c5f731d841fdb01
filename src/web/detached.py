"""Runs that do not belong to the request that started them: a background run
(``POST /api/threads/{id}/runs``), a run streamed as server-sent events, and a run a decision
resumed. Each runs in a request scope of its own, in a task the run registry keeps (and
shutdown ends), so the caller's request may end, or its client go away, while the run goes
on."""

from __future__ import annotations

import asyncio

from src.container import AppContainer, request_scope
from src.logs import bind
from src.runs.approvals import Resumed
from src.runs.domain import Run
from src.services.auth import Caller


async def start_detached(
    container: AppContainer, *, caller: Caller, thread_id: str, content: str, request_id: str
) -> Run:
    """The run, once stored; what refused it (404, 409, 429, 503) is raised here instead."""
    started: asyncio.Future[Run] = asyncio.get_running_loop().create_future()

    async def run() -> None:
        bind(request_id=request_id)  # the run's log lines carry the request that started it
        async with request_scope(container, request_id=request_id):
            await container.request.chat().send_message(
                caller=caller,
                thread_id=thread_id,
                content=content,
                request_id=request_id,
                on_started=started.set_result,
            )

    # The task runs in a copy of this context, where it opens the run's own scope.
    task = asyncio.create_task(run())
    container.runs().adopt(task)
    await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        return started.result()
    task.result()  # it ended before the run was stored: raise why
    raise AssertionError("a run that stored nothing ended without an error")


def resume_detached(container: AppContainer, resumed: Resumed) -> None:
    """Go on with the run the last decision resumed, in a request scope of its own."""
    request_id = resumed.context.request_id

    async def run() -> None:
        bind(request_id=request_id)
        async with request_scope(container, request_id=request_id):
            await container.request.chat().resume_run(resumed)

    container.runs().adopt(asyncio.create_task(run()))
