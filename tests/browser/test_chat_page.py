"""The chat page as a person uses it: sign in, chat, watch the run's timeline, reload mid-run
without losing or doubling anything, cancel, see a failure in words beside a run that
completes, and never see another user's runs."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from dependency_injector import providers
from playwright.async_api import Browser, Page, expect

from src.agents.tool import Tool
from src.agents.tools import Calculator, CalculatorInput
from src.container import AppContainer
from tests.fakes import hold_triage

SCREENSHOT = Path(__file__).parents[2] / "docs" / "chat-page.png"
WITHIN_MS = 20_000  # a liveness guard only


async def signed_in(browser: Browser, base_url: str, user: str) -> Page:
    """A page in a browser profile of its own, signed in as ``user`` with dev-login."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(base_url)
    await page.fill("#user-id", user)
    await page.click("#dev-login button")
    await expect(page.locator("#chat")).to_be_visible(timeout=WITHIN_MS)
    return page


async def new_thread(page: Page) -> None:
    """New: a new conversation, stored (titled from it) with its first message."""
    await page.click("#new-thread")
    await expect(page.locator("#thread-title")).to_have_text("New conversation")
    await expect(page.locator("#send")).to_be_enabled(timeout=WITHIN_MS)


async def send(page: Page, content: str) -> None:
    await page.fill("#content", content)
    await page.press("#content", "Enter")  # the keyboard is enough


async def test_a_question_gets_its_answer_and_the_calculator_step_in_the_timeline(
    browser: Browser, base_url: str
) -> None:
    """Signed in with dev-login, a new thread, Enter: the answer appears, and the timeline shows
    the route, the calculator's input and output, and the run's end."""
    page = await signed_in(browser, base_url, "alice")
    await new_thread(page)
    await send(page, "what is (12 + 3) * 4?")

    answer = page.locator("#messages li.assistant")
    await expect(answer).to_have_text("(12 + 3) * 4 = 60", timeout=WITHIN_MS)
    await expect(page.locator("#messages li.user")).to_have_text("what is (12 + 3) * 4?")
    timeline = page.locator("#timeline")
    await expect(page.locator("#run-state")).to_have_text("completed", timeout=WITHIN_MS)
    await expect(timeline).to_contain_text("route: math")
    await expect(timeline).to_contain_text("calculator called")
    await expect(timeline).to_contain_text('{"expression": "(12 + 3) * 4"}')
    await expect(timeline).to_contain_text(re.compile(r"calculator answered in \d+ ms"))
    await expect(timeline).to_contain_text(re.compile(r"completed in \d+ ms"))
    assert "token" not in page.url and "eyJ" not in page.url


async def test_a_reload_mid_run_loses_nothing_and_doubles_nothing(
    browser: Browser, base_url: str, container: AppContainer
) -> None:
    """A run held mid-way (its model call is slow): the page is reloaded; it finds the running
    run, replays it and follows it live; a second tab on the thread follows it too. The answer
    arrives once in each; the stored thread has the question and one answer."""
    gate = hold_triage(container, only="[slow]")
    page = await signed_in(browser, base_url, "alice")
    await new_thread(page)
    await send(page, "[slow] what is 2 + 2?")
    await asyncio.wait_for(gate.reached.wait(), WITHIN_MS / 1000)
    await expect(page.locator("#run-state")).to_have_text("running", timeout=WITHIN_MS)
    await expect(page.locator("#timeline")).to_contain_text("triage started", timeout=WITHIN_MS)
    await expect(page.locator("#cancel")).to_be_visible()
    await expect(page.locator("#send")).to_be_disabled()

    other_tab = await page.context.new_page()
    await other_tab.goto(page.url)
    await page.reload()
    for tab in (page, other_tab):
        await expect(tab.locator("#run-state")).to_have_text("running", timeout=WITHIN_MS)
        await expect(tab.locator("#messages li.user")).to_have_text("[slow] what is 2 + 2?")
    gate.opened.set()

    for tab in (page, other_tab):
        await expect(tab.locator("#run-state")).to_have_text("completed", timeout=WITHIN_MS)
        await expect(tab.locator("#messages li")).to_have_text(
            ["[slow] what is 2 + 2?", "2 + 2 = 4"], timeout=WITHIN_MS
        )
        await expect(tab.locator("#timeline li", has_text="run started")).to_have_count(1)
        await expect(tab.locator("#timeline li", has_text="completed in")).to_have_count(1)
    await page.reload()  # what is stored is what was shown
    await expect(page.locator("#messages li")).to_have_text(
        ["[slow] what is 2 + 2?", "2 + 2 = 4"], timeout=WITHIN_MS
    )


async def test_the_cancel_button_cancels_the_run(
    browser: Browser, base_url: str, container: AppContainer
) -> None:
    """While a run is in progress the page offers to cancel it; the run ends `cancelled`."""
    gate = hold_triage(container, only="[slow]")
    page = await signed_in(browser, base_url, "alice")
    await new_thread(page)
    await send(page, "[slow] tell me a story")
    await asyncio.wait_for(gate.reached.wait(), WITHIN_MS / 1000)

    await page.click("#cancel")

    await expect(page.locator("#run-state")).to_have_text("cancelled", timeout=WITHIN_MS)
    await expect(page.locator("#messages li.assistant")).to_have_text("(cancelled)")
    await expect(page.locator("#timeline")).to_contain_text("cancelled after")
    await expect(page.locator("#cancel")).to_be_hidden()
    await expect(page.locator("#send")).to_be_enabled()


async def test_a_failing_run_shows_its_error_while_another_tabs_run_completes(
    browser: Browser, base_url: str
) -> None:
    """One tab's run fails (the calculator refuses 1/0): the error in words, with the request
    id; the same user's second tab, on another thread, gets its answer."""
    page = await signed_in(browser, base_url, "alice")
    await new_thread(page)
    second = await page.context.new_page()
    await second.goto(base_url)
    await expect(second.locator("#chat")).to_be_visible(timeout=WITHIN_MS)
    await new_thread(second)

    await send(page, "what is 1/0?")
    await send(second, "what is 6 * 7?")

    failed = page.locator("#messages li.assistant.failed")
    await expect(failed).to_contain_text(
        re.compile(r"The run failed: tool_error: division by zero \(request [0-9a-f-]{36}\)"),
        timeout=WITHIN_MS,
    )
    await expect(page.locator("#run-state")).to_have_text("failed")
    await expect(page.locator("#timeline")).to_contain_text("tool_error: division by zero")
    await expect(second.locator("#messages li.assistant")).to_have_text(
        "6 * 7 = 42", timeout=WITHIN_MS
    )
    await expect(second.locator("#run-state")).to_have_text("completed")


async def test_another_users_page_shows_none_of_it(
    browser: Browser, base_url: str, container: AppContainer
) -> None:
    """Bob, signed in beside Alice while her run goes on, has no threads, no messages and no
    run in his timeline, before and after it ends."""
    gate = hold_triage(container, only="[slow]")
    alice = await signed_in(browser, base_url, "alice")
    bob = await signed_in(browser, base_url, "bob")
    await new_thread(alice)
    await send(alice, "[slow] what is 5 + 5?")
    await asyncio.wait_for(gate.reached.wait(), WITHIN_MS / 1000)
    await expect(bob.locator("#thread-list li")).to_have_count(0)
    gate.opened.set()
    await expect(alice.locator("#messages li.assistant")).to_have_text(
        "5 + 5 = 10", timeout=WITHIN_MS
    )

    await bob.reload()
    await expect(bob.locator("#chat")).to_be_visible(timeout=WITHIN_MS)
    await expect(bob.locator("#thread-list li")).to_have_count(0)
    await expect(bob.locator("#messages li")).to_have_count(0)
    await expect(bob.locator("#run-state")).to_have_text("No run yet")


class HeldCalculator(Tool[CalculatorInput]):
    """The calculator, waiting for the test before it answers ``2 ** 10``."""

    name = "calculator"
    description = "the calculator, held"
    held = asyncio.Event()

    async def run(self, params: CalculatorInput) -> str:
        if params.expression == "2 ** 10":
            await self.held.wait()
        return await Calculator().run(params)


async def test_a_screenshot_mid_run(
    browser: Browser, base_url: str, container: AppContainer, tmp_path: Path
) -> None:
    """The picture in README: an answered question, and a run held in its tool call, the
    timeline showing the route and the call's input. (ISOCHAT_UPDATE_SCREENSHOT=1 writes it
    to docs/.)"""
    HeldCalculator.held = asyncio.Event()
    container.request.calculator.override(providers.Factory(HeldCalculator))
    page = await signed_in(browser, base_url, "alice")
    await new_thread(page)
    await send(page, "what is (12 + 3) * 4?")
    await expect(page.locator("#run-state")).to_have_text("completed", timeout=WITHIN_MS)
    await send(page, "and what is 2 to the power of 10?")
    await expect(page.locator("#timeline")).to_contain_text("calculator called", timeout=WITHIN_MS)
    await expect(page.locator("#run-state")).to_have_text("running")

    shot = tmp_path / "chat-page.png"
    await page.screenshot(path=str(shot))
    if os.environ.get("ISOCHAT_UPDATE_SCREENSHOT"):
        shutil.copy(shot, SCREENSHOT)
    HeldCalculator.held.set()
    await expect(page.locator("#messages li.assistant").last).to_have_text(
        "2 ** 10 = 1024", timeout=WITHIN_MS
    )
    assert shot.stat().st_size > 10_000


async def test_the_page_fits_a_phone_and_keeps_the_token_out_of_urls(
    browser: Browser, base_url: str
) -> None:
    """At 390 px wide nothing scrolls sideways; no request the page makes carries the token
    in its URL (the socket opens with a single-use ticket)."""
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    page = await context.new_page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", lambda socket: urls.append(socket.url))
    await page.goto(base_url)
    await page.fill("#user-id", "carol")
    await page.click("#dev-login button")
    await expect(page.locator("#chat")).to_be_visible(timeout=WITHIN_MS)
    await send(page, "what is 2 + 2?")
    await expect(page.locator("#messages li.assistant")).to_have_text(
        "2 + 2 = 4", timeout=WITHIN_MS
    )

    wide = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert wide <= 0
    token = await page.evaluate("localStorage.getItem('isochat.token')")
    assert token and all(token not in url for url in urls)
    assert any("/ws?ticket=" in url for url in urls)
