"""The accessibility check (tests/browser/axe.py) can fail: a page with known serious
violations is refused with each of them named, a clean one passes, and it works inside the
chat page as served, whose policy refuses inline scripts."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.browser.axe import assert_accessible

WITHIN_MS = 20_000  # a liveness guard only
# A 1 x 1 image in the page itself: no request, so nothing to log.
PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def page_of(body: str) -> str:
    return f'<!doctype html><html lang="en"><head><title>t</title></head><body>{body}</body></html>'


async def test_a_page_with_serious_violations_fails_naming_each(browser: Browser) -> None:
    """An image without alternative text and a button without a name (both critical)."""
    page = await browser.new_page()
    await page.set_content(
        page_of(f'<main><img id="logo" src="{PIXEL}"><button id="go"></button></main>')
    )

    with pytest.raises(AssertionError) as refused:
        await assert_accessible(page, "a bad page")

    report = str(refused.value)
    assert "a bad page" in report
    assert "image-alt (critical)" in report and "#logo" in report
    assert "button-name (critical)" in report and "#go" in report


async def test_a_clean_page_passes(browser: Browser) -> None:
    page = await browser.new_page()
    await page.set_content(
        page_of(
            f'<main><h1>Hello</h1><img src="{PIXEL}" alt="a dot">'
            '<button type="button">Go</button></main>'
        )
    )

    await assert_accessible(page, "a clean page")


async def test_it_checks_the_chat_page_as_served(browser: Browser, base_url: str) -> None:
    """Under the page's own policy (no inline script, no eval for the page's scripts): a
    button without a name, added to the sign-in form, is found."""
    page = await browser.new_page()
    await page.goto(base_url)
    await expect(page.locator("#sign-in")).to_be_visible(timeout=WITHIN_MS)
    await page.evaluate(
        """() => {
          const button = document.createElement("button");
          button.id = "nameless";
          document.querySelector("#dev-login").append(button);
        }"""
    )

    with pytest.raises(AssertionError) as refused:
        await assert_accessible(page, "signed out")

    assert "button-name (critical)" in str(refused.value) and "#nameless" in str(refused.value)
