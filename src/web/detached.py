"""Runs that do not belong to the request that started them: a background run
(``POST /api/threads/{id}/runs``), a run streamed as server-sent events, and a run a decision
resumed. Each runs in a request scope of its own (``in_a_scope_of_its_own``, as does a queued
run that the end of the run ahead of it started), so the caller's request may end, or its
client go away, while the run goes on."""

from __future__ import annotations

import asyncio
import logging

from src.container import AppContainer, in_a_scope_of_its_own
from src.logs import log_failure
from src.runs.approvals import Resumed
from src.runs.domain import Multitask, Run
from src.runs.starting import Opening
from src.services.auth import Caller

log = logging.getLogger(__name__)


async def start_detached(
    container: AppContainer,
    *,
    caller: Caller,
    thread_id: str,
    content: str,
    request_id: str,
    multitask: Multitask | None = None,
    route: str | None = None,
    opening: Opening | None = None,
) -> Run:
    """The run, once stored: ``running`` (in a task of its own here), or ``queued`` (started
    by whichever process ends the run ahead of it). What refused it (404, 409, 429, 503) is
    raised here instead. ``route`` and ``opening``: as for ``ChatService.send_message``."""
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
            wait_queued=False,
            route=route,
            opening=opening,
        ),
        request_id=request_id,
    )
    await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        task.add_done_callback(_log_failure)
        return started.result()
    task.result()  # it ended before the run was stored: raise why
    raise AssertionError("a run that stored nothing ended without an error")


def resume_detached(container: AppContainer, resumed: Resumed) -> None:
    """Go on with the run the last decision resumed, in a request scope of its own."""
    in_a_scope_of_its_own(
        container,
        lambda: container.request.chat().resume_run(resumed),
        request_id=resumed.context.request_id,
    )


def cancel_detached(container: AppContainer, run: Run) -> None:
    """Cancel a run ``start_detached`` started, whose client went away: its task, when it was
    started here; else (it was queued) wherever it is by now."""
    if run.status == "running":
        container.runs().cancel(run.id)
        return

    async def cancel() -> None:
        try:
            await container.canceller().cancel(run)
        except Exception as exc:
            log_failure(log, "the abandoned run %s could not be cancelled", run.id, exc=exc)

    container.runs().adopt(asyncio.create_task(cancel()))


def _log_failure(task: asyncio.Task[None]) -> None:
    """A run's task that failed after its run was stored: logged (its client has its 202)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log_failure(log, "a background run's request failed", exc=exc)
