"""Conversations on the chat page: one asks at once after signing in, and the first message
makes the thread, titled from the question; New starts another without storing anything; a
thread of a thousand messages opens at once and streams without its old messages being drawn
again."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Dialog, expect
from sqlalchemy import insert

from src.container import AppContainer
from src.runs.domain import iso, utcnow
from src.services.database.models import MessageRow, RunEventRow, RunRow, ThreadRow
from src.settings import Settings
from tests.browser.test_chat_page import WITHIN_MS, send, signed_in
from tests.llm_server import settings_on_a_model_server

LONG_QUESTION = (
    "Could you tell me how the calculator of this chat rounds numbers when there are many "
    "decimal places?\nAnd a second line that is not part of the title."
)
LONG_TITLE = "Could you tell me how the calculator of this chat rounds\u2026"


async def test_one_asks_at_once_and_the_first_message_makes_the_thread(
    browser: Browser, base_url: str
) -> None:
    """Signed in, the message box has the focus and takes a question without New: the thread
    appears, titled from the question's first line (cut at a word, with an ellipsis), and is
    answered; it keeps its title after a reload and can be renamed. New clears the page to a
    new conversation, storing nothing; its first question makes a second thread."""
    page = await signed_in(browser, base_url, "alice")
    await expect(page.locator("#content")).to_be_focused()
    await expect(page.locator("#thread-title")).to_have_text("New conversation")
    await expect(page.locator("#thread-list li")).to_have_count(0)
    await expect(page.locator("#rename-thread")).to_be_disabled()

    await page.fill("#content", LONG_QUESTION)
    await page.press("#content", "Enter")
    threads = page.locator("#thread-list li button")
    await expect(threads).to_have_text([LONG_TITLE], timeout=WITHIN_MS)
    await expect(threads).to_have_attribute("aria-current", "true")
    await expect(page.locator("#thread-title")).to_have_text(LONG_TITLE)
    await expect(page.locator("#messages > li.user")).to_have_text(LONG_QUESTION)
    await expect(page.locator("#run-state")).to_have_text("completed", timeout=WITHIN_MS)
    await expect(page.locator("#content")).to_be_focused()
    thread_id = page.url.split("#", 1)[1]
    assert uuid.UUID(thread_id)

    await page.reload()
    await expect(page.locator("#thread-title")).to_have_text(LONG_TITLE, timeout=WITHIN_MS)
    await expect(page.locator("#messages > li")).to_have_count(2)

    async def rename(dialog: Dialog) -> None:
        assert dialog.default_value == LONG_TITLE
        await dialog.accept("Rounding")

    page.once("dialog", rename)
    await page.click("#rename-thread")
    await expect(threads).to_have_text(["Rounding"], timeout=WITHIN_MS)
    await expect(page.locator("#thread-title")).to_have_text("Rounding")

    await page.click("#new-thread")
    await expect(page.locator("#thread-title")).to_have_text("New conversation")
    await expect(page.locator("#messages > li")).to_have_count(0)
    await expect(page.locator("#run-state")).to_have_text("No run yet")
    await expect(page.locator("#content")).to_be_focused()
    assert "#" not in page.url
    await expect(threads).to_have_count(1)  # nothing stored yet

    await send(page, "  what is 2 + 2?  ")
    await expect(threads).to_have_text(["what is 2 + 2?", "Rounding"], timeout=WITHIN_MS)
    await expect(page.locator("#messages > li.assistant")).to_have_text(
        "2 + 2 = 4", timeout=WITHIN_MS
    )
    await threads.nth(1).click()
    await expect(page.locator("#messages > li.user")).to_have_text(LONG_QUESTION)
    assert page.url.endswith(f"#{thread_id}")


async def test_the_page_has_an_icon_and_a_valid_user_id_pattern(
    browser: Browser, base_url: str
) -> None:
    """The icon the page links is served, and so is /favicon.ico (the same SVG); the sign-in
    field's pattern compiles with the `v` flag browsers check it with. (Any console error on
    the way fails the test: tests/browser/console.py.)"""
    page = await browser.new_page()
    await page.goto(base_url)
    icon = await page.get_attribute("link[rel=icon]", "href")
    assert icon == "/static/favicon.svg"
    served = await page.request.get(f"{base_url}{icon}")
    fallback = await page.request.get(f"{base_url}/favicon.ico")
    for answer in (served, fallback):
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("image/svg+xml")
    assert await served.body() == await fallback.body()
    pattern = await page.get_attribute("#user-id", "pattern")
    assert await page.evaluate("(p) => new RegExp(`^(?:${p})$`, 'v').test('a.b_c@d-e')", pattern)
    await page.fill("#user-id", "not allowed!")
    assert not await page.evaluate("document.getElementById('user-id').validity.valid")


def long_thread_rows(user: str, pairs: int) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """A thread of ``pairs`` questions, each answered (in Markdown) by a completed run with its
    start and end events, as the server stores them."""
    thread_id = str(uuid.uuid4())
    start = utcnow() - timedelta(hours=1)
    rows: dict[str, list[dict[str, Any]]] = {"runs": [], "messages": [], "events": []}
    for i in range(pairs):
        run_id = str(uuid.uuid4())
        asked = start + timedelta(milliseconds=10 * i)
        answered = asked + timedelta(milliseconds=5)
        question = {"id": str(uuid.uuid4()), "role": "user", "content": f"question {i}"}
        answer = {
            "id": str(uuid.uuid4()),
            "role": "assistant",
            "content": f"**Answer {i}**: {i} + 1 = {i + 1}\n\n- checked with `calculator`",
        }
        rows["runs"].append({
            "id": run_id, "thread_id": thread_id, "user_id": user, "status": "completed",
            "route": "general", "created_at": asked, "finished_at": answered, "last_seq": 2,
        })  # fmt: skip
        for message, at in ((question, asked), (answer, answered)):
            rows["messages"].append(
                message | {"thread_id": thread_id, "run_id": run_id, "created_at": at}
            )
        message_json = answer | {
            "thread_id": thread_id,
            "run_id": run_id,
            "created_at": iso(answered),
        }
        for seq, kind, data, at in (
            (1, "run_started", {"request_id": str(uuid.uuid4())}, asked),
            (2, "run_completed", {"message": message_json, "usage": None}, answered),
        ):
            rows["events"].append(
                {"run_id": run_id, "seq": seq, "type": kind, "data": json.dumps(data), "ts": at}
            )
    return thread_id, rows


async def store_long_thread(container: AppContainer, user: str, pairs: int) -> str:
    thread_id, rows = long_thread_rows(user, pairs)
    async with container.database().engine.begin() as conn:
        await conn.execute(
            insert(ThreadRow).values(
                id=thread_id, user_id=user, title="A long thread", created_at=utcnow()
            )
        )
        await conn.execute(insert(RunRow), rows["runs"])
        await conn.execute(insert(MessageRow), rows["messages"])
        await conn.execute(insert(RunEventRow), rows["events"])
    return thread_id


# Every item of the conversation as it is now: the same elements must be there afterwards,
# none of them changed.
MARK_AND_WATCH = """() => {
  window.before = [...document.querySelectorAll("#messages > li")];
  window.touched = new Set();
  window.changes = new MutationObserver((records) => {
    for (const record of records) {
      const item = record.target.nodeType === 1 ? record.target.closest("#messages > li")
        : record.target.parentElement && record.target.parentElement.closest("#messages > li");
      if (item) window.touched.add(item);
    }
  });
  window.changes.observe(document.getElementById("messages"),
    { subtree: true, childList: true, characterData: true, attributes: true });
}"""
KEPT = """() => {
  const now = new Set(document.querySelectorAll("#messages > li"));
  const old = window.before.slice(0, -4);  // the newest ones may have been drawn near the view
  return {
    kept: old.filter((item) => now.has(item)).length,
    touched: old.filter((item) => window.touched.has(item)).length,
    old: old.length,
  };
}"""


class TestALongThread:
    """A model that streams its answers a word at a time (tests/llm_server.py)."""

    @pytest.fixture
    async def settings(self, tmp_path: Path) -> AsyncIterator[Settings]:
        async with settings_on_a_model_server(tmp_path) as settings:
            yield settings

    async def test_opens_at_once_and_streams_without_drawing_the_rest_again(
        self, browser: Browser, base_url: str, container: AppContainer
    ) -> None:
        """A thousand messages: the thread opens at its end; its older answers are drawn as
        Markdown once scrolled to. A new answer streams in while every earlier item stays the
        same element, untouched (how long it all takes: bench/page_thread.py)."""
        thread_id = await store_long_thread(container, "alice", 500)
        page = await signed_in(browser, base_url, "alice")
        await page.locator("#thread-list button").click()
        items = page.locator("#messages > li")
        await expect(items).to_have_count(1000, timeout=WITHIN_MS)
        await expect(items.last).to_contain_text("Answer 499: 499 + 1 = 500")
        await expect(items.last.locator("strong")).to_have_text("Answer 499")
        assert page.url.endswith(f"#{thread_id}")
        at_end = await page.evaluate(
            "(l => l.scrollHeight - l.scrollTop - l.clientHeight)"
            "(document.getElementById('messages'))"
        )
        assert at_end < 50
        await expect(items.nth(1).locator("strong")).to_have_count(0)  # not drawn yet
        await items.nth(1).scroll_into_view_if_needed()
        await expect(items.nth(1).locator("strong")).to_have_text("Answer 0")
        await page.evaluate(
            "(l => { l.scrollTop = l.scrollHeight; })(document.getElementById('messages'))"
        )
        await expect(items.nth(-2).locator("strong")).to_have_count(0)  # a question

        await page.evaluate(MARK_AND_WATCH)
        await send(page, "[text:markdown]")
        await expect(items.last.locator("h2")).to_have_text("Adding up", timeout=WITHIN_MS)
        await expect(page.locator("#run-state")).to_have_text("completed", timeout=WITHIN_MS)
        await expect(items).to_have_count(1002)
        kept = await page.evaluate(KEPT)
        assert kept == {"kept": kept["old"], "touched": 0, "old": 996}
