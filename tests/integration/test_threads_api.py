"""Threads as a client manages them: the running run is discoverable, a thread is renamed and
deleted (a running run cancelled first, everything of it removed), and lists come a page at a
time with documented bounds. Another user's thread is 404 for every one of them."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from src.container import AppContainer
from src.services.database.models import MessageRow, RunEventRow, RunRow
from src.web.paging import MAX_MESSAGES_PAGE, MAX_THREADS_PAGE, THREADS_PAGE
from tests.fakes import hold_triage
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send, wait_for_run


async def counts(container: AppContainer) -> dict[str, int]:
    async with container.database().engine.connect() as conn:
        return {
            table.__tablename__: int(
                await conn.scalar(select(func.count()).select_from(table)) or 0
            )
            for table in (MessageRow, RunRow, RunEventRow)
        }


async def test_a_thread_is_renamed(container: AppContainer, client: httpx.AsyncClient) -> None:
    """PATCH sets the title (trimmed) and answers the Thread; an empty or overlong title is
    a validation error; another user's thread is 404."""
    alice, bob = auth(container, "alice"), auth(container, "bob")
    thread_id = await new_thread(client, alice, "old")

    renamed = await client.patch(
        f"/api/threads/{thread_id}", json={"title": "  new  "}, headers=alice
    )

    assert renamed.status_code == 200
    assert renamed.json()["title"] == "new" and renamed.json()["id"] == thread_id
    assert (await client.get(f"/api/threads/{thread_id}", headers=alice)).json()["title"] == "new"
    for bad in ({"title": ""}, {"title": "x" * 201}, {}, {"title": 3}, {"title": "a\u0000b"}):
        response = await client.patch(f"/api/threads/{thread_id}", json=bad, headers=alice)
        assert response.status_code == 422, bad
        assert response.json()["error"]["code"] == "validation_error"
    mallory = await client.patch(f"/api/threads/{thread_id}", json={"title": "x"}, headers=bob)
    assert mallory.status_code == 404
    assert (await client.get(f"/api/threads/{thread_id}", headers=alice)).json()["title"] == "new"


async def test_deleting_a_thread_cancels_its_run_and_removes_everything(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """DELETE with a run in progress: the run ends `cancelled` (its request answers so), then
    the thread, its messages, runs and events are gone; 404 after. Other threads keep theirs."""
    gate = hold_triage(container, only="[hold]")
    headers = auth(container, "alice")
    kept, doomed = await new_thread(client, headers), await new_thread(client, headers)
    await send(client, headers, kept, "what is 1 + 1?")
    await send(client, headers, doomed, "what is 2 + 2?")
    before = await counts(container)
    running = asyncio.create_task(send(client, headers, doomed, "[hold] what is 3 + 3?"))
    await gate.reached.wait()
    run_id = await wait_for_run(client, headers, doomed)

    deleted = await client.delete(f"/api/threads/{doomed}", headers=headers)

    assert deleted.status_code == 204 and deleted.content == b""
    assert (await running)["run"]["status"] == "cancelled"
    for path in (
        f"/api/threads/{doomed}",
        f"/api/threads/{doomed}/messages",
        f"/api/runs/{run_id}",
    ):
        assert (await client.get(path, headers=headers)).status_code == 404
    assert (await client.delete(f"/api/threads/{doomed}", headers=headers)).status_code == 404
    after = await counts(container)
    # What stays is exactly the kept thread's: 2 messages, 1 run and its events.
    assert after["messages"] == 2 and after["runs"] == 1
    assert after["run_events"] == before["run_events"] // 2
    threads = (await client.get("/api/threads", headers=headers)).json()["threads"]
    assert [t["id"] for t in threads] == [kept]
    assert leaks(container) == NO_LEAKS


async def test_another_users_thread_cannot_be_deleted(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """404, and the owner's thread and messages stay."""
    alice, bob = auth(container, "alice"), auth(container, "bob")
    thread_id = await new_thread(client, alice)
    await send(client, alice, thread_id, "what is 1 + 1?")

    assert (await client.delete(f"/api/threads/{thread_id}", headers=bob)).status_code == 404
    assert (await client.delete(f"/api/threads/{uuid.uuid4()}", headers=bob)).status_code == 404
    assert (await client.delete("/api/threads/not-a-uuid", headers=bob)).status_code == 404
    messages = (await client.get(f"/api/threads/{thread_id}/messages", headers=alice)).json()
    assert len(messages["messages"]) == 2


async def test_threads_come_a_page_at_a_time(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Newest first, `limit` per page, `next_cursor` to the next page and null on the last;
    every thread exactly once, also when a thread is created between two pages."""
    headers = auth(container, "alice")
    created = [await new_thread(client, headers, f"t{i}") for i in range(7)]

    seen: list[str] = []
    url = "/api/threads?limit=3"
    pages = 0
    while url:
        page = (await client.get(url, headers=headers)).json()
        assert len(page["threads"]) <= 3
        seen += [t["id"] for t in page["threads"]]
        pages += 1
        if pages == 1:
            await new_thread(client, headers, "newer")  # lands before the cursor: not seen
        url = f"/api/threads?limit=3&cursor={page['next_cursor']}" if page["next_cursor"] else ""

    assert seen == created[::-1]
    assert pages == 3
    default = (await client.get("/api/threads", headers=headers)).json()
    assert len(default["threads"]) == 8 <= THREADS_PAGE and default["next_cursor"] is None


async def test_messages_come_a_page_at_a_time_oldest_first(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A page ending exactly at the last message says so (null cursor)."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    for i in range(3):
        await send(client, headers, thread_id, f"what is {i} + 1?")

    first = (await client.get(f"/api/threads/{thread_id}/messages?limit=4", headers=headers)).json()
    rest = (
        await client.get(
            f"/api/threads/{thread_id}/messages?limit=2&cursor={first['next_cursor']}",
            headers=headers,
        )
    ).json()

    contents = [m["content"] for m in first["messages"] + rest["messages"]]
    assert contents == [
        "what is 0 + 1?", "0 + 1 = 1", "what is 1 + 1?", "1 + 1 = 2", "what is 2 + 1?", "2 + 1 = 3",
    ]  # fmt: skip
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("limit=0", "limit: must be a whole number from 1 to"),
        ("limit=-1", "limit:"),
        ("limit=abc", "limit:"),
        ("limit=\u00b2", "limit:"),
        (f"limit={MAX_MESSAGES_PAGE + 1}", "from 1 to"),
        ("cursor=nonsense", "cursor: not a cursor this server gave"),
        ("cursor=WzEsIDJd", "cursor:"),  # [1, 2]
        ("cursor=" + "A" * 300, "cursor:"),
    ],
)
async def test_bad_page_parameters_are_validation_errors(
    container: AppContainer, client: httpx.AsyncClient, query: str, says: str
) -> None:
    """Out of bounds or not ours: 422 naming the parameter, on both lists."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    for path in ("/api/threads", f"/api/threads/{thread_id}/messages"):
        response = await client.get(f"{path}?{query}", headers=headers)
        assert response.status_code == 422, (path, response.text)
        assert says in response.json()["error"]["message"]
    most = await client.get(
        f"/api/threads/{thread_id}/messages?limit={MAX_MESSAGES_PAGE}", headers=headers
    )
    assert most.status_code == 200
    threads = await client.get(f"/api/threads?limit={MAX_THREADS_PAGE + 1}", headers=headers)
    assert threads.json()["error"]["message"] == (
        f"limit: must be a whole number from 1 to {MAX_THREADS_PAGE}"
    )
