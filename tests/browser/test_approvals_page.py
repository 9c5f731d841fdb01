"""Approvals on the chat page: a calculator call that waits for a person shows in the
conversation with its input, survives a reload, shows in every tab, and is approved, rejected
with a reason, or run with an edited input; its controls go in every tab once it is decided."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from src.settings import Settings
from tests.browser.test_chat_page import WITHIN_MS, new_thread, send, signed_in
from tests.llm_server import settings_on_a_model_server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """As the suite's, with every calculator call waiting for approval."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        run_timeout_s=600.0,
        approval_tools="calculator",
        _env_file=None,
    )


async def waiting(page: Page, content: str) -> None:
    """Ask ``content`` in a new thread and see its run wait for approval."""
    await new_thread(page)
    await send(page, content)
    await expect(page.locator("#run-state")).to_have_text(
        "waiting for your approval", timeout=WITHIN_MS
    )


async def test_a_waiting_call_survives_a_reload_shows_in_every_tab_and_is_approved(
    browser: Browser, base_url: str
) -> None:
    """The calculator call waits: its input is shown with Approve and Reject, the thread is
    busy (no Send, Cancel offered); after a reload it is there again, and in a second tab;
    approved in one tab, its controls go in both and the answer arrives in both."""
    page = await signed_in(browser, base_url, "alice")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await waiting(page, "what is 6 * 7?")
    card = page.locator("#messages li.approval")
    await expect(card).to_have_count(1)
    await expect(card.get_by_role("heading")).to_have_text("calculator waits for your approval")
    await expect(card.locator("pre")).to_have_text('{\n  "expression": "6 * 7"\n}')
    await expect(page.locator("#send")).to_be_disabled()
    await expect(page.locator("#cancel")).to_be_visible()
    await expect(page.locator("#timeline")).to_contain_text("calculator waits for approval")

    await page.reload()
    await expect(card.locator("pre")).to_contain_text('"expression": "6 * 7"', timeout=WITHIN_MS)
    await expect(page.locator("#run-state")).to_have_text("waiting for your approval")
    other_tab = await page.context.new_page()
    await other_tab.goto(page.url)
    other_card = other_tab.locator("#messages li.approval")
    await expect(other_card.locator("pre")).to_contain_text("6 * 7", timeout=WITHIN_MS)

    await card.get_by_role("button", name="Approve").click()

    for tab in (page, other_tab):
        await expect(tab.locator("#messages li.assistant")).to_have_text(
            "6 * 7 = 42", timeout=WITHIN_MS
        )
        await expect(tab.locator("#messages li.approval")).to_have_count(0)
        await expect(tab.locator("#run-state")).to_have_text("completed")
        await expect(tab.locator("#timeline")).to_contain_text("calculator approved")
        await expect(tab.locator("#send")).to_be_enabled()
    await expect(page.locator("#content")).to_be_focused()  # where the next question goes
    assert errors == []


async def test_a_rejected_call_is_answered_with_the_reason(browser: Browser, base_url: str) -> None:
    """Reject opens a field for the reason; confirmed, the model is told it and says the
    calculation was declined."""
    page = await signed_in(browser, base_url, "alice")
    await waiting(page, "what is 6 * 7?")
    card = page.locator("#messages li.approval")
    reject = card.get_by_role("button", name="Reject", exact=True)
    await reject.click()
    await expect(reject).to_have_attribute("aria-expanded", "true")
    reason = card.get_by_label("Why?")
    await expect(reason).to_be_focused()
    await reason.fill("not now")
    await reason.press("Enter")

    await expect(page.locator("#messages li.assistant")).to_have_text(
        "I did not calculate that: it was declined (not now).", timeout=WITHIN_MS
    )
    await expect(page.locator("#timeline")).to_contain_text("calculator rejected")


@pytest.mark.console_errors_expected(r"status of 422")  # the server's refusal of a bad edit
async def test_an_edited_input_is_checked_on_the_page_then_by_the_server_then_run(
    browser: Browser, base_url: str
) -> None:
    """Edit: JSON that does not parse is refused before anything is sent; arguments the
    calculator does not take are refused by the server (validation_error, shown on the card,
    nothing decided); a good edit runs instead of the asked-for input."""
    page = await signed_in(browser, base_url, "alice")
    decisions: list[str] = []
    page.on("request", lambda r: decisions.append(r.url) if "/approvals" in r.url else None)
    await waiting(page, "what is 6 * 7?")
    card = page.locator("#messages li.approval")
    await card.get_by_role("button", name="Edit input").click()
    field = card.get_by_label("Input for calculator (JSON)")
    run = card.get_by_role("button", name="Run with this input")

    await field.fill('{"expression": "6 * 8"')
    await run.click()
    await expect(card.get_by_role("alert")).to_contain_text("Not valid JSON")
    assert decisions == []

    await field.fill('{"expr": "6 * 8"}')
    await run.click()
    await expect(card.get_by_role("alert")).to_contain_text(
        re.compile(r"validation_error: decisions\.0\.input: .*expression"), timeout=WITHIN_MS
    )
    assert len(decisions) == 1
    await expect(page.locator("#run-state")).to_have_text("waiting for your approval")

    await field.fill('{"expression": "6 * 8"}')
    await run.click()
    await expect(page.locator("#messages li.assistant")).to_have_text(
        "6 * 8 = 48", timeout=WITHIN_MS
    )
    await expect(page.locator("#timeline")).to_contain_text("calculator approved with an edited")


async def test_a_waiting_run_is_cancelled_with_the_cancel_button(
    browser: Browser, base_url: str
) -> None:
    """Cancel run works on a waiting run: it ends `cancelled` and its call's controls go."""
    page = await signed_in(browser, base_url, "alice")
    await waiting(page, "what is 6 * 7?")
    await page.click("#cancel")
    await expect(page.locator("#run-state")).to_have_text("cancelled", timeout=WITHIN_MS)
    await expect(page.locator("#messages li.approval")).to_have_count(0)
    await expect(page.locator("#send")).to_be_enabled()


class TestTwoCallsInOneTurn:
    """A model that calls the calculator twice in one turn."""

    @pytest.fixture
    async def settings(self, tmp_path: Path) -> AsyncIterator[Settings]:
        async with settings_on_a_model_server(tmp_path, approval_tools="calculator") as settings:
            yield settings

    async def test_each_call_is_decided_on_its_own(self, browser: Browser, base_url: str) -> None:
        """Two cards; the first approved goes while the run still waits and the focus moves
        to the second; rejecting that one resumes the run."""
        page = await signed_in(browser, base_url, "alice")
        await waiting(
            page,
            '[route:math] [calls:calculator={"expression": "1+1"};'
            'calculator={"expression": "2+2"}]',
        )
        cards = page.locator("#messages li.approval")
        await expect(cards).to_have_count(2)
        await expect(cards.nth(0).locator("pre")).to_contain_text("1+1")
        await expect(cards.nth(1).locator("pre")).to_contain_text("2+2")

        await cards.nth(0).get_by_role("button", name="Approve").click()
        await expect(cards).to_have_count(1, timeout=WITHIN_MS)
        await expect(cards.locator("pre")).to_contain_text("2+2")
        await expect(page.locator("#run-state")).to_have_text("waiting for your approval")
        await expect(cards.get_by_role("button", name="Approve")).to_be_focused()

        await cards.get_by_role("button", name="Reject", exact=True).click()
        await cards.get_by_role("button", name="Confirm rejection").click()
        await expect(page.locator("#messages li.assistant")).to_contain_text(
            "Model says: 2 | ", timeout=WITHIN_MS
        )
        await expect(cards).to_have_count(0)
