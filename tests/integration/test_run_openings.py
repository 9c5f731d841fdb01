"""What the adapters of existing clients start runs with: a specialist chosen by the caller
(triage skipped, also for a run that waits its turn), a thread and earlier messages stored with
the question in one transaction (a refused run leaves none of them), a thread found by a
client's key (per user; two first uses at once make one), and titles made from a question."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from src.container import AppContainer, request_scope
from src.runs.domain import Message, Run, Thread
from src.runs.starting import Earlier, Opening
from src.services.auth import Caller
from src.services.chat import ChatService
from src.services.errors import RateLimited
from src.services.threads import (
    DEFAULT_TITLE,
    TITLE_CHARS,
    ThreadService,
    new_thread,
    title_from,
)
from tests.fakes import hold_triage
from tests.integration.test_approvals import WITHIN_S


async def send(
    container: AppContainer, user: str, thread_id: str, content: str, **more: Any
) -> tuple[Run, Message | None]:
    """``ChatService.send_message`` in a request scope, as a handler calls it."""
    async with request_scope(container, request_id="opening-test"):
        chat: ChatService = container.request.chat()
        return await chat.send_message(
            caller=Caller(user), thread_id=thread_id, content=content, request_id=None, **more
        )


async def thread_of(container: AppContainer, user: str, thread_id: str) -> Thread:
    async with request_scope(container, request_id="opening-test"):
        threads: ThreadService = container.request.threads()
        return await threads.get_thread(user_id=user, thread_id=thread_id)


async def messages_of(container: AppContainer, user: str, thread_id: str) -> list[Message]:
    async with request_scope(container, request_id="opening-test"):
        threads: ThreadService = container.request.threads()
        return await threads.all_messages(user_id=user, thread_id=thread_id)


async def test_a_chosen_route_skips_triage(container: AppContainer) -> None:
    """A run that names its specialist is answered by it, with no triage event stored."""
    thread = new_thread(user_id="alice", title="t", origin="openai")
    run, answer = await send(
        container, "alice", thread.id, "what is 2 + 3?", route="math", opening=Opening(thread)
    )
    assert run.status == "completed" and run.route == "math"
    assert answer is not None and answer.content == "2 + 3 = 5"
    async with request_scope(container, request_id="opening-test"):
        events = await container.request.chat().list_events(user_id="alice", run_id=run.id, after=0)
    assert {event.agent for event in events} - {None} == {"math"}


async def test_a_queued_run_keeps_its_chosen_route(container: AppContainer) -> None:
    """A run queued behind a busy one starts with the specialist its caller chose."""
    gate = hold_triage(container, only="hold")
    thread = new_thread(user_id="alice", title="t")
    busy = asyncio.create_task(
        send(container, "alice", thread.id, "hold: a story", opening=Opening(thread))
    )
    await asyncio.wait_for(gate.reached.wait(), WITHIN_S)
    queued = asyncio.create_task(
        send(container, "alice", thread.id, "what is 4 + 4?", route="math", multitask="enqueue")
    )
    async with asyncio.timeout(WITHIN_S):  # the second message is stored behind the first
        while True:
            if (await thread_of(container, "alice", thread.id)).queued_run_ids:
                break
            await asyncio.sleep(0.02)
    gate.opened.set()
    first, _ = await asyncio.wait_for(busy, WITHIN_S)
    second, answer = await asyncio.wait_for(queued, WITHIN_S)
    assert first.status == second.status == "completed"
    assert second.route == "math" and answer is not None and answer.content == "4 + 4 = 8"


async def test_earlier_messages_come_before_the_question_in_order(
    container: AppContainer,
) -> None:
    """A new thread with the conversation its client holds: the earlier messages in their
    order, then the question and its answer."""
    thread = new_thread(user_id="alice", title=title_from("hello there"), origin="openai")
    earlier: tuple[Earlier, ...] = (("user", "hello there"), ("assistant", "hi, how can I help?"))
    opening = Opening(thread, earlier=earlier)
    run, _ = await send(container, "alice", thread.id, "what is 1 + 1?", opening=opening)
    stored = await messages_of(container, "alice", thread.id)
    assert [(m.role, m.content) for m in stored] == [
        *earlier,
        ("user", "what is 1 + 1?"),
        ("assistant", "1 + 1 = 2"),
    ]
    assert [m.run_id for m in stored] == [None, None, run.id, run.id]


async def test_a_refused_run_leaves_no_thread_and_no_earlier_message(
    container: AppContainer,
) -> None:
    """At the user's limit of running runs, the opening's thread is not stored either."""
    container.settings.override(
        container.settings().model_copy(update={"max_running_runs_per_user": 1})
    )
    gate = hold_triage(container, only="hold")
    held = new_thread(user_id="alice", title="held")
    busy = asyncio.create_task(send(container, "alice", held.id, "hold", opening=Opening(held)))
    await asyncio.wait_for(gate.reached.wait(), WITHIN_S)
    refused = new_thread(user_id="alice", title="refused")
    with pytest.raises(RateLimited):
        await send(
            container,
            "alice",
            refused.id,
            "what is 1 + 1?",
            opening=Opening(refused, earlier=(("user", "earlier"),)),
        )
    gate.opened.set()
    await asyncio.wait_for(busy, WITHIN_S)
    async with request_scope(container, request_id="opening-test"):
        page = await container.request.threads().list_threads(user_id="alice", limit=10)
    assert [t.id for t in page.items] == [held.id]


async def test_a_client_key_names_one_thread_per_user(container: AppContainer) -> None:
    """The same key: the same thread for its user (two first uses at once make one), another
    thread for another user."""

    async def chat_thread(user: str) -> tuple[str, bool]:
        async with request_scope(container, request_id="opening-test"):
            thread, made = await container.request.threads().chat_thread(
                user_id=user, client_key="chat-1", title="Hello", origin="ai_sdk"
            )
        return thread.id, made

    first, second = await asyncio.gather(chat_thread("alice"), chat_thread("alice"))
    assert first[0] == second[0] and sorted([first[1], second[1]]) == [False, True]
    assert (await chat_thread("alice")) == (first[0], False)
    bobs, made = await chat_thread("bob")
    assert made and bobs != first[0]


@pytest.mark.parametrize(
    ("question", "title"),
    [
        ("what is 2 + 3?", "what is 2 + 3?"),
        ("\n\n  first line  \nsecond", "first line"),
        ("   \n ", DEFAULT_TITLE),
        ("word " * 30, ("word " * 11).strip() + "…"),
        ("x" * 100, "x" * (TITLE_CHARS - 1) + "…"),
    ],
)
def test_a_title_is_the_questions_first_line_cut_at_a_word(question: str, title: str) -> None:
    """The first line that is not blank, at most TITLE_CHARS, cut at a word where it can be."""
    assert title_from(question) == title
    assert len(title_from(question)) <= TITLE_CHARS
