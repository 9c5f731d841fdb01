"""The thread use cases: create, list, read, rename and delete a user's threads, and read their
messages. Each transaction is one short call of ``Transactions``."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from src.runs.cancel import RunCanceller
from src.runs.domain import Message, Thread, ThreadOrigin, utcnow
from src.services.database import repositories as repo
from src.services.database.engine import Transactions
from src.services.database.repositories import Page
from src.services.errors import Conflict, Invalid, NotFound, RunInProgress

DEFAULT_TITLE = "New chat"
# A title made from a question: its first line, at most this long.
TITLE_CHARS = 60
# Pages read at a time for a thread's whole state.
ALL_MESSAGES_PAGE = 500
# Rounds of cancel-then-delete before a thread whose runs keep running is refused.
DELETE_ATTEMPTS = 3


def title_from(question: str) -> str:
    """A thread's title from its first question: the first line that is not blank, cut to
    ``TITLE_CHARS`` at a word where it can be."""
    line = next((line.strip() for line in question.splitlines() if line.strip()), "")
    if len(line) <= TITLE_CHARS:
        return line or DEFAULT_TITLE
    cut = line[: TITLE_CHARS - 1]
    if " " in cut[TITLE_CHARS // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


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

    async def create_thread(
        self,
        *,
        user_id: str,
        title: str | None,
        origin: ThreadOrigin = "api",
        metadata: str | None = None,
        thread_id: str | None = None,
    ) -> Thread:
        """A new thread; ``thread_id`` is one its client chose (a UUID): ``Conflict`` when a
        thread has it already."""
        thread = new_thread(
            user_id=user_id, title=title, origin=origin, metadata=metadata, thread_id=thread_id
        )
        try:
            await self._tx.write(repo.add_thread, thread)
        except IntegrityError:
            if thread_id is None:
                raise
            raise Conflict("a thread with this id exists") from None
        return thread

    async def chat_thread(
        self, *, user_id: str, client_key: str, title: str, origin: ThreadOrigin
    ) -> tuple[Thread, bool]:
        """The user's thread its client names ``client_key`` (the AI SDK's chat id), made on
        first use; and whether it was made now. Keys are per user: another user's same key is
        another thread."""
        found = await self.find_chat_thread(user_id=user_id, client_key=client_key)
        if found is not None:
            return found, False
        thread = new_thread(user_id=user_id, title=title, origin=origin)
        try:
            await self._tx.write(repo.add_thread, thread, client_key=client_key)
        except IntegrityError:  # the same chat's first two requests at once: the other won
            found = await self.find_chat_thread(user_id=user_id, client_key=client_key)
            if found is None:
                raise
            return found, False
        return thread, True

    async def find_chat_thread(self, *, user_id: str, client_key: str) -> Thread | None:
        """The user's thread its client names ``client_key``, if one was made for it (a
        client resuming a chat, or answering an approval, must not make one)."""
        found: Thread | None = await self._tx.read(
            repo.thread_by_key, user_id=user_id, client_key=client_key
        )
        return found

    async def set_metadata(self, *, user_id: str, thread_id: str, metadata: str) -> Thread:
        """Replace what the thread's client attached to it (JSON text)."""
        changed = is_uuid(thread_id) and await self._tx.write(
            repo.set_thread_metadata, thread_id=thread_id, user_id=user_id, metadata=metadata
        )
        if not changed:
            raise NotFound("thread not found")
        return await self.get_thread(user_id=user_id, thread_id=thread_id)

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

    async def all_messages(self, *, user_id: str, thread_id: str) -> list[Message]:
        """The thread's messages, oldest first, every page of them (a client that is shown a
        thread's whole state: the Agent Protocol's ``values``)."""
        messages: list[Message] = []
        after = None
        while True:
            page = await self.list_messages(
                user_id=user_id, thread_id=thread_id, limit=ALL_MESSAGES_PAGE, after=after
            )
            messages += page.items
            if page.next_after is None:
                return messages
            after = page.next_after

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


def new_thread(
    *,
    user_id: str,
    title: str | None,
    origin: ThreadOrigin = "api",
    metadata: str | None = None,
    thread_id: str | None = None,
) -> Thread:
    """A thread not yet stored (``thread_id``, when given, must be a UUID)."""
    if thread_id is not None and not is_uuid(thread_id):
        raise Invalid("thread_id: must be a UUID")
    return Thread(
        id=thread_id or str(uuid.uuid4()),
        user_id=user_id,
        title=title or DEFAULT_TITLE,
        created_at=utcnow(),
        origin=origin,
        metadata=metadata,
    )
