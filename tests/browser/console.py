"""Every console error and uncaught exception of every page a browser test opens, so that the
test fails on them: a page that logs an error works by luck or not at all, whatever the test
saw. A test that provokes one on purpose says which with
``@pytest.mark.console_errors_expected("regex", ...)`` (no pattern: any error)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, WebError

MARKER = "console_errors_expected"
FLUSH_BOUND_S = 2.0


class ConsoleErrors:
    """What went wrong in the pages of one browser, in the order it came."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, browser: Browser, monkeypatch: pytest.MonkeyPatch) -> None:
        """Listen to every context ``browser`` makes: Playwright has no event for a new
        context, so its two ways of making one are wrapped (``new_page`` makes its own context
        without going through ``new_context``). A context's listeners hear all its pages, the
        tabs a test opens later with ``context.new_page()`` included."""
        new_context, new_page = browser.new_context, browser.new_page

        async def watched_context(*args: Any, **kwargs: Any) -> BrowserContext:
            context = await new_context(*args, **kwargs)
            self._listen(context)
            return context

        async def watched_page(*args: Any, **kwargs: Any) -> Page:
            page = await new_page(*args, **kwargs)  # about:blank: nothing logged yet
            self._listen(page.context)
            return page

        monkeypatch.setattr(browser, "new_context", watched_context)
        monkeypatch.setattr(browser, "new_page", watched_page)

    def _listen(self, context: BrowserContext) -> None:
        context.on("console", self._on_console)
        context.on("weberror", self._on_web_error)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            source = f" ({where['url']}:{where['lineNumber']})" if where.get("url") else ""
            self.errors.append(f"console error on {_url(message.page)}: {message.text}{source}")

    def _on_web_error(self, error: WebError) -> None:
        self.errors.append(
            f"uncaught exception on {_url(error.page)}: {error.error.name}: {error.error.message}"
        )

    async def flush(self, browser: Browser) -> None:
        """One round trip to each open page: what it logged before is heard by then (the
        protocol keeps a page's messages in order). A page stuck on a dialog or gone is
        passed over."""
        for context in browser.contexts:
            for page in context.pages:
                # Best effort: flushing is never what fails the test.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(page.evaluate("0"), FLUSH_BOUND_S)

    def check(self, marker: pytest.Mark | None) -> None:
        """Fail with every error the test did not say it expects."""
        if marker is not None and not marker.args:
            return
        expected = [re.compile(pattern) for pattern in marker.args] if marker else []
        unexpected = [e for e in self.errors if not any(p.search(e) for p in expected)]
        if unexpected:
            pytest.fail(
                f"{len(unexpected)} console error(s) in the browser (mark the test "
                f"@pytest.mark.{MARKER}(...) only if it provokes them on purpose):\n"
                + "\n".join(f"  {error}" for error in unexpected),
                pytrace=False,
            )


def _url(page: Page | None) -> str:
    return page.url if page is not None else "(no page)"
