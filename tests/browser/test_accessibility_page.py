"""The chat page for everyone: no serious accessibility violation (axe-core) in any state it
can be in, everything done with the keyboard alone, and a phone-wide layout where the
conversation comes first and the threads and the run's timeline are behind toggle buttons.
The pictures in README are taken here (ISOCHAT_UPDATE_SCREENSHOT=1 writes them to docs/)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect

from src.container import AppContainer
from src.settings import Settings
from tests.browser.axe import assert_accessible
from tests.browser.test_chat_page import WITHIN_MS, send, signed_in
from tests.fakes import hold_triage

DOCS = Path(__file__).parents[2] / "docs"
PHONE: ViewportSize = {"width": 375, "height": 812}
# What the focus ring must be: visible to the eye, not just to a screen reader.
FOCUS_RING = """() => {
  const style = getComputedStyle(document.activeElement);
  return style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
}"""
SIDEWAYS = "document.documentElement.scrollWidth - window.innerWidth"


async def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """A picture of the page for README: taken every time, written to docs/ when asked."""
    shot = tmp_path / name
    await page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("ISOCHAT_UPDATE_SCREENSHOT"):
        shutil.copy(shot, DOCS / name)


async def test_every_state_of_the_page_passes_axe(
    browser: Browser, base_url: str, container: AppContainer
) -> None:
    """Signed out, a new conversation, a run answering, a completed answer, a failed run: no
    serious or critical violation in any of them."""
    gate = hold_triage(container, only="[slow]")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(base_url)
    await expect(page.locator("#sign-in")).to_be_visible(timeout=WITHIN_MS)
    await assert_accessible(page, "signed out")

    await page.fill("#user-id", "alice")
    await page.press("#user-id", "Enter")
    await expect(page.locator("#content")).to_be_focused(timeout=WITHIN_MS)
    await assert_accessible(page, "a new conversation")

    await send(page, "[slow] what is 2 + 2?")
    await asyncio.wait_for(gate.reached.wait(), WITHIN_MS / 1000)
    await expect(page.locator("#cancel")).to_be_visible(timeout=WITHIN_MS)
    await expect(page.locator("#messages")).to_have_attribute("aria-busy", "true")
    await assert_accessible(page, "answering")
    gate.opened.set()
    await expect(page.locator("#run-state")).to_have_text("completed", timeout=WITHIN_MS)
    await expect(page.locator("#messages")).to_have_attribute("aria-busy", "false")
    await assert_accessible(page, "answered")

    await send(page, "what is 1/0?")
    await expect(page.locator("#run-state")).to_have_text("failed", timeout=WITHIN_MS)
    await expect(page.locator("#messages > li.failed")).to_contain_text("The run failed")
    await assert_accessible(page, "a failed run")


class TestAnApprovalPending:
    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        """Every calculator call waits for approval."""
        return Settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
            run_timeout_s=600.0,
            approval_tools="calculator",
            _env_file=None,
        )

    async def test_passes_axe_and_is_pictured(
        self, browser: Browser, base_url: str, tmp_path: Path
    ) -> None:
        """A calculator call waiting for approval, its card in the conversation (then with its
        rejection form open): no serious violation; the picture in README."""
        page = await signed_in(browser, base_url, "alice")
        await send(page, "what is (12 + 3) * 4?")
        await expect(page.locator("#run-state")).to_have_text(
            "waiting for your approval", timeout=WITHIN_MS
        )
        card = page.locator("#messages > li.approval")
        await expect(card.locator("pre")).to_contain_text("(12 + 3) * 4")
        await assert_accessible(page, "an approval pending")
        await screenshot(page, "chat-page-approval.png", tmp_path)
        await card.get_by_role("button", name="Reject", exact=True).click()
        await expect(card.get_by_label("Why?")).to_be_focused()
        await assert_accessible(page, "an approval being rejected")


async def test_the_keyboard_alone_signs_in_asks_and_cancels(
    browser: Browser, base_url: str, container: AppContainer
) -> None:
    """Tab, typing, Enter and Space only: the user id field is the first stop; signed in, the
    focus is in the message box; a question is asked; Tab reaches Cancel run, with a visible
    focus ring at every stop; Space cancels; the focus is back in the message box."""
    gate = hold_triage(container, only="[slow]")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(base_url)
    await expect(page.locator("#sign-in")).to_be_visible(timeout=WITHIN_MS)
    await page.keyboard.press("Tab")
    await expect(page.locator("#user-id")).to_be_focused()
    assert await page.evaluate(FOCUS_RING)
    await page.keyboard.type("alice")
    await page.keyboard.press("Enter")
    await expect(page.locator("#content")).to_be_focused(timeout=WITHIN_MS)
    await expect(page.locator("#send")).to_be_enabled(timeout=WITHIN_MS)

    await page.keyboard.type("[slow] what is 2 + 2?")
    await page.keyboard.press("Enter")
    await asyncio.wait_for(gate.reached.wait(), WITHIN_MS / 1000)
    cancel = page.locator("#cancel")
    await expect(cancel).to_be_visible(timeout=WITHIN_MS)
    for _ in range(5):
        await page.keyboard.press("Tab")
        assert await page.evaluate(FOCUS_RING)
        if await cancel.evaluate("(button) => button === document.activeElement"):
            break
    await expect(cancel).to_be_focused()
    await page.keyboard.press("Space")

    await expect(page.locator("#run-state")).to_have_text("cancelled", timeout=WITHIN_MS)
    await expect(page.locator("#messages > li.assistant")).to_have_text("(cancelled)")
    await expect(page.locator("#content")).to_be_focused()
    gate.opened.set()


async def test_a_phone_shows_the_conversation_first_and_the_rest_behind_toggles(
    browser: Browser, base_url: str, tmp_path: Path
) -> None:
    """At 375 px: the conversation, with the threads and the timeline hidden behind their
    toggles (aria-expanded, aria-controls); nothing scrolls sideways, with the panels open or
    shut; a thread chosen closes its panel and the focus goes on to the message box; Escape
    closes the timeline. No serious accessibility violation; the picture in README."""
    context = await browser.new_context(viewport=PHONE)
    page = await context.new_page()
    await page.goto(base_url)
    await expect(page.locator("#sign-in")).to_be_visible(timeout=WITHIN_MS)
    assert await page.evaluate(SIDEWAYS) <= 0
    await page.fill("#user-id", "carol")
    await page.press("#user-id", "Enter")
    await expect(page.locator("#content")).to_be_focused(timeout=WITHIN_MS)
    threads, timeline = page.locator("#toggle-threads"), page.locator("#toggle-timeline")
    for toggle, panel in ((threads, "threads"), (timeline, "timeline-panel")):
        await expect(toggle).to_be_visible()
        await expect(toggle).to_have_attribute("aria-controls", panel)
        await expect(toggle).to_have_attribute("aria-expanded", "false")
        await expect(page.locator(f"#{panel}")).to_be_hidden()

    await send(page, "what is (12 + 3) * 4?")
    await expect(page.locator("#messages > li.assistant")).to_have_text(
        "(12 + 3) * 4 = 60", timeout=WITHIN_MS
    )
    await send(page, "and what is 2 to the power of 10?")
    await expect(page.locator("#messages > li.assistant").last).to_have_text(
        "2 ** 10 = 1024", timeout=WITHIN_MS
    )
    assert await page.evaluate(SIDEWAYS) <= 0
    await screenshot(page, "chat-page-phone.png", tmp_path)

    await threads.click()
    await expect(threads).to_have_attribute("aria-expanded", "true")
    await expect(page.locator("#threads")).to_be_visible()
    await timeline.click()
    await expect(timeline).to_have_attribute("aria-expanded", "true")
    await expect(page.locator("#timeline")).to_contain_text("calculator called")
    assert await page.evaluate(SIDEWAYS) <= 0
    await assert_accessible(page, "a phone, both panels open")

    await page.focus("#timeline-panel")
    await page.keyboard.press("Escape")
    await expect(timeline).to_have_attribute("aria-expanded", "false")
    await expect(page.locator("#timeline-panel")).to_be_hidden()
    await expect(timeline).to_be_focused()

    await page.locator("#thread-list button").first.click()
    await expect(threads).to_have_attribute("aria-expanded", "false")
    await expect(page.locator("#threads")).to_be_hidden()
    await expect(page.locator("#content")).to_be_focused()
    assert await page.evaluate(SIDEWAYS) <= 0
