"""Answers as Markdown on the chat page: headings, lists and code blocks (each with a Copy
button that the keyboard reaches), links that open apart from the page; questions as typed;
and an answer written to attack the page (scripts, handlers, `javascript:` links, a remote
image, a frame, a form) shown inert: nothing runs, nothing loads from elsewhere."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Request, expect

from src.settings import Settings
from tests.browser.axe import assert_accessible
from tests.browser.test_chat_page import WITHIN_MS, send, signed_in
from tests.llm_server import settings_on_a_model_server


@pytest.fixture
async def settings(tmp_path: Path) -> AsyncIterator[Settings]:
    """A model that answers with the text a marker names (tests/llm_server.py)."""
    async with settings_on_a_model_server(tmp_path) as settings:
        yield settings


async def test_a_markdown_answer_is_rendered_and_its_code_copied(
    browser: Browser, base_url: str
) -> None:
    """The answer shows a heading, a numbered and a bulleted list, bold text and a code block
    with a Copy button, reached and pressed with the keyboard, which puts the code on the
    clipboard; its link opens in a new tab without the page as opener or referrer. The
    question, though it is Markdown too, is shown as typed."""
    page = await signed_in(browser, base_url, "alice")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    question = "**Please** answer in [text:markdown]"
    await send(page, question)

    answer = page.locator("#messages > li.assistant")
    await expect(answer.locator("h2")).to_have_text("Adding up", timeout=WITHIN_MS)
    await expect(page.locator("#run-state")).to_have_text("completed", timeout=WITHIN_MS)
    await expect(answer.locator("ol > li")).to_have_text(["Add the numbers.", "Check the sum."])
    await expect(answer.locator("ol strong")).to_have_text("numbers")
    await expect(answer.locator("ul > li")).to_have_text(["one", "two"])
    await expect(answer.locator("pre code")).to_have_text("print(1 + 2)")
    await expect(answer.locator("pre code")).to_have_class("language-python")
    link = answer.get_by_role("link", name="the guide")
    await expect(link).to_have_attribute("href", "https://example.com/guide")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    user = page.locator("#messages > li.user")
    await expect(user).to_have_text(question)
    await expect(user.locator("strong")).to_have_count(0)

    copy = answer.get_by_role("button", name="Copy code")
    await page.focus("#content")
    for _ in range(10):  # from the message box back up to the answer's button
        if await copy.evaluate("(button) => button === document.activeElement"):
            break
        await page.keyboard.press("Shift+Tab")
    await expect(copy).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(answer.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == "print(1 + 2)\n"


async def test_an_answer_is_markdown_while_it_streams_and_fits_a_phone(
    browser: Browser, base_url: str
) -> None:
    """The first piece of an answer, `**Once.**`, is shown in bold while the rest has not come
    (the model stalls); the conversation is busy meanwhile, for screen readers to wait for the
    whole answer. A Markdown answer on a phone-wide page does not scroll sideways and passes
    axe."""
    page = await signed_in(browser, base_url, "alice")
    await send(page, "[answer:stall] [text:bold]")
    streaming = page.locator("#messages > li.assistant.streaming")
    await expect(streaming.locator("strong")).to_have_text("Once.", timeout=WITHIN_MS)
    await expect(page.locator("#messages")).to_have_attribute("aria-busy", "true")
    await expect(page.locator("#run-state")).to_have_text("running")

    await page.click("#new-thread")
    await send(page, "[text:markdown]")
    await expect(page.locator("#messages > li.assistant h2")).to_have_text(
        "Adding up", timeout=WITHIN_MS
    )
    await expect(page.locator("#messages")).to_have_attribute("aria-busy", "false")
    await assert_accessible(page, "a Markdown answer")
    await page.set_viewport_size({"width": 375, "height": 812})
    assert await page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    await assert_accessible(page, "a Markdown answer on a phone")


async def test_a_hostile_answer_is_inert(browser: Browser, base_url: str) -> None:
    """Raw HTML with a script, an image whose onerror would run, `javascript:` links in
    Markdown and in HTML, a remote image, a frame, a form, a styled paragraph with a handler,
    a script inside SVG: the HTML is shown as text, and none of it runs (window.pwned stays
    unset, also when the links and the paragraphs are pointed at), no element has an on*
    attribute, a style or a `javascript:` target, no frame, form or script is there, and no
    request leaves for another host."""
    page = await signed_in(browser, base_url, "alice")
    requests: list[str] = []

    def record(request: Request) -> None:
        requests.append(request.url)

    page.on("request", record)
    await send(page, "[text:hostile]")
    answer = page.locator("#messages > li.assistant")
    await expect(answer).to_contain_text("Still here.", timeout=WITHIN_MS)
    await expect(page.locator("#run-state")).to_have_text("completed", timeout=WITHIN_MS)

    for text in ("styled", "click me"):
        await answer.get_by_text(text).hover()
    dead_link = answer.locator("a", has_text="x")  # [x](javascript:...), its target dropped
    await expect(dead_link).not_to_have_attribute("href", re.compile(".*"))
    await dead_link.click()
    await page.wait_for_timeout(200)
    assert await page.evaluate("typeof window.pwned") == "undefined"

    found = await answer.evaluate(
        """(answer) => {
          const all = [...answer.querySelectorAll("*")];
          return {
            handlers: all.flatMap((node) => [...node.attributes].map((a) => a.name))
              .filter((name) => name.startsWith("on")),
            styled: all.filter((node) => node.hasAttribute("style")).length,
            scripted: [...answer.querySelectorAll("[href], [src], [action]")]
              .map((node) => node.getAttribute("href") || node.getAttribute("src") || "")
              .filter((url) => /^\\s*javascript:/i.test(url)),
            banned: [...answer.querySelectorAll("script, iframe, form, input, svg, style, img")]
              .map((node) => node.localName),
            links: [...answer.querySelectorAll("a[href]")].map((a) => a.getAttribute("href")),
          };
        }"""
    )
    assert found == {
        "handlers": [],
        "styled": 0,
        "scripted": [],
        "banned": [],
        # The remote image, as a link to it that nothing follows unless it is clicked.
        "links": ["http://example.com/x.png"],
    }
    await expect(answer.get_by_role("link", name="[image: a]")).to_be_visible()
    # What was written as HTML is shown as the text it is.
    await expect(answer.locator("p").first).to_have_text("<script>window.pwned = 'script'</script>")
    origin = urlsplit(base_url).netloc
    assert requests and all(urlsplit(url).netloc == origin for url in requests), requests
