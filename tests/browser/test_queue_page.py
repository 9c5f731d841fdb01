"""Messages sent while a run is going, on the chat page: they wait their turn under the run in
progress, marked as queued, each with its own Cancel; a cancelled one is never answered; the
others are answered one after another, in order, and a reload shows the same at every step.
An answer cut short by a newer message (``multitask: interrupt``) is marked as interrupted."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, expect

from src.container import AppContainer
from src.settings import Settings
from tests.browser.test_chat_page import WITHIN_MS, new_thread, send, signed_in
from tests.fakes import hold_triage
from tests.llm_server import settings_on_a_model_server

HELD = "[slow] what is 2 + 2?"


def watch_for_errors(page: Page) -> list[str]:
    """What the page reports as errors: uncaught exceptions and console errors (a request that
    failed, such as a 409, is one)."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    return errors


async def test_messages_sent_during_a_run_wait_their_turn_and_one_can_be_cancelled(
    browser: Browser, base_url: str, container: AppContainer
) -> None:
    """A run held in triage; two more messages sent meanwhile show under it as queued, in
    order, and the page offers Queue instead of Send. The first queued one is cancelled with
    the keyboard: it goes, also after a reload. Once the held run is let go, its answer comes,
    then the remaining queued message takes its place as the next question and is answered;
    the cancelled one never is. A reload reads the same conversation."""
    gate = hold_triage(container, only="[slow]")
    page = await signed_in(browser, base_url, "alice")
    errors = watch_for_errors(page)
    await new_thread(page)
    await send(page, HELD)
    await asyncio.wait_for(gate.reached.wait(), WITHIN_MS / 1000)
    await expect(page.locator("#run-state")).to_have_text("running", timeout=WITHIN_MS)
    await expect(page.locator("#queue")).to_be_visible()

    queued = page.locator("#messages li.queued")
    await send(page, "what is 5 + 5?")
    await expect(queued).to_have_count(1, timeout=WITHIN_MS)
    await send(page, "what is 3 + 3?")
    await expect(queued.locator(".queued-text")).to_have_text(
        ["what is 5 + 5?", "what is 3 + 3?"], timeout=WITHIN_MS
    )
    for item in await queued.all():
        await expect(item.locator(".badge")).to_have_text("Queued")
    # Under the run in progress: the question asked, its answer streaming, then the queue.
    await expect(page.locator("#messages li")).to_have_count(4)
    await expect(page.locator("#messages li").nth(0)).to_have_text(HELD)
    await expect(page.locator("#messages li").nth(1)).to_have_class("assistant streaming")
    await expect(page.locator("#messages li.user")).to_have_text([HELD])
    await expect(page.locator("#run-state")).to_have_text("running")

    # A phone-wide page does not scroll sideways with the queue shown.
    await page.set_viewport_size({"width": 375, "height": 800})
    wide = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert wide <= 0
    await page.set_viewport_size({"width": 1280, "height": 800})

    cancel = queued.nth(0).get_by_role("button", name="Cancel queued message")
    await cancel.focus()
    await page.keyboard.press("Enter")
    await expect(queued.locator(".queued-text")).to_have_text(["what is 3 + 3?"], timeout=WITHIN_MS)
    # The focus goes on to the Cancel button of the message that took its place.
    await expect(queued.get_by_role("button", name="Cancel queued message")).to_be_focused()
    await expect(page.locator("#messages")).not_to_contain_text("what is 5 + 5?")

    await page.reload()  # mid-queue: the same
    await expect(queued.locator(".queued-text")).to_have_text(["what is 3 + 3?"], timeout=WITHIN_MS)
    await expect(page.locator("#messages li.user")).to_have_text([HELD])
    await expect(page.locator("#messages li")).to_have_count(3)  # no trace of the cancelled one
    await expect(page.locator("#run-state")).to_have_text("running")

    gate.opened.set()

    conversation = [HELD, "2 + 2 = 4", "what is 3 + 3?", "3 + 3 = 6"]
    await expect(page.locator("#messages li")).to_have_text(conversation, timeout=WITHIN_MS)
    await expect(queued).to_have_count(0)
    await expect(page.locator("#run-state")).to_have_text("completed")
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#queue")).to_be_hidden()
    await expect(page.locator("#chat-error")).to_be_empty()  # nothing was refused
    await page.reload()
    await expect(page.locator("#messages li")).to_have_text(conversation, timeout=WITHIN_MS)
    await expect(page.locator("#run-state")).to_have_text("completed")
    assert errors == []


class TestAnInterruptedAnswer:
    """A model that streams the first sentence of its answer, then stalls."""

    @pytest.fixture
    async def settings(self, tmp_path: Path) -> AsyncIterator[Settings]:
        async with settings_on_a_model_server(tmp_path) as settings:
            yield settings

    async def test_is_marked_as_interrupted(self, browser: Browser, base_url: str) -> None:
        """Another client sends a message that interrupts the run in progress: the answer so
        far stays, marked as interrupted, before the new question and its answer; so too after
        a reload."""
        page = await signed_in(browser, base_url, "alice")
        errors = watch_for_errors(page)
        await new_thread(page)
        await send(page, "[answer:stall] [text:story]")
        streaming = page.locator("#messages li.assistant.streaming")
        await expect(streaming).to_have_text("Once.", timeout=WITHIN_MS)

        token = await page.evaluate("localStorage.getItem('isochat.token')")
        thread_id = page.url.split("#", 1)[1]
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.post(
                f"/api/threads/{thread_id}/runs",
                json={"content": "a short one, please", "multitask": "interrupt"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert response.status_code == 202, response.text

        conversation: list[str | re.Pattern[str]] = [
            "[answer:stall] [text:story]",
            re.compile(r"^Once\.\s*interrupted$"),
            "a short one, please",
            "Model says: a short one, please",
        ]
        for _ in range(2):
            await expect(page.locator("#messages li")).to_have_text(conversation, timeout=WITHIN_MS)
            interrupted = page.locator("#messages li.assistant.interrupted")
            await expect(interrupted.locator(".mark")).to_have_text("interrupted")
            await expect(page.locator("#run-state")).to_have_text("completed")
            await page.reload()
        assert errors == []
