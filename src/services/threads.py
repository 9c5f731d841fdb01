"""The thread use cases: create, list, read, rename and delete a user's threads, and read their
messages. Each transaction is one short call of ``Transactions``."""

from __future__ import annotations

import uuid
from datetime import datetime

from src.runs.cancel import RunCanceller
from src.runs.domain import Message, Thread, utcnow
from src.services.database import repositories as repo
from src.services.database.engine import Transactions
from src.services.database.repositories import Page
from src.services.errors import NotFound, RunInProgress

DEFAULT_TITLE = "New chat"
# Rounds of cancel-then-delete before a thread whose runs keep running is refused.
DELETE_ATTEMPTS = 3


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class ThreadService:
    def __init__(self, *, transactions: Transactions, canceller: RunCanceller) -> None:
        self._tx = transactions
        self._canceller = canceller

    async def create_thread(self, *, user_id: str, title: str | None) -> Thread:
        thread = Thread(
            id=str(uuid.uuid4()), user_id=user_id, title=title or DEFAULT_TITLE, created_at=utcnow()
        )
        await self._tx.write(repo.add_thread, thread)
        return thread

    async def list_threads(
        self, *, user_id: str, limit: int, after: tuple[datetime, str] | None = None
    ) -> Page[Thread]:
        return await self._tx.read(repo.list_threads, user_id=user_id, limit=limit, after=after)

    async def get_thread(self, *, user_id: str, thread_id: str) -> Thread:
        thread = None
        if is_uuid(thread_id):
            thread = await self._tx.read(repo.get_thread, thread_id=thread_id, user_id=user_id)
        if thread is None:
            raise NotFound("thread not found")
        return thread

    async def rename_thread(self, *, user_id: str, thread_id: str, title: str) -> Thread:
        renamed = is_uuid(thread_id) and await self._tx.write(
            repo.rename_thread, thread_id=thread_id, user_id=user_id, title=title
        )
        if not renamed:
            raise NotFound("thread not found")
        return await self.get_thread(user_id=user_id, thread_id=thread_id)

    async def delete_thread(self, *, user_id: str, thread_id: str) -> None:
        """Cancel the thread's queued runs, then its running run, if any (so that its end
        starts none of them), then delete the thread with its messages, runs and events in one
        transaction. A run that starts in between is cancelled too; a run that will not end
        (its owner is alive but out of reach) is ``RunInProgress``."""
        for _ in range(DELETE_ATTEMPTS):
            thread = await self.get_thread(user_id=user_id, thread_id=thread_id)
            for run_id in [*thread.queued_run_ids, thread.active_run_id]:
                run = None
                if run_id is not None:
                    run = await self._tx.read(repo.get_run, run_id=run_id, user_id=user_id)
                if run is not None and not run.ended:
                    await self._canceller.cancel(run)
            deleted = await self._tx.write(
                repo.delete_idle_thread, thread_id=thread_id, user_id=user_id
            )
            if deleted is None:
                raise NotFound("thread not found")
            if deleted:
                return
        raise RunInProgress(
            "the thread's run could not be cancelled; retry later", run_id=thread.active_run_id
        )

    async def list_messages(
        self,
        *,
        user_id: str,
        thread_id: str,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> Page[Message]:
        page = None
        if is_uuid(thread_id):
            page = await self._tx.read(
                repo.thread_messages, thread_id=thread_id, user_id=user_id, limit=limit, after=after
            )
        if page is None:
            raise NotFound("thread not found")
        return page
