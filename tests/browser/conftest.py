"""The chat page in headless Chromium (Debian's ``chromium``, driven by Playwright; nothing is
downloaded), against the real app served by uvicorn on a loopback port."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.browser.console import MARKER, ConsoleErrors

# Every expectation's wait is a liveness guard, not a measure (timing is bench/page_thread.py's):
# Playwright's default of 5 s failed a drawing step on a machine busy with other work.
expect.set_options(timeout=20_000)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            if shutil.which(CHROMIUM) is None:
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"no Chromium at {CHROMIUM} (make test installs Debian's chromium "
                        "where apt-get can)"
                    )
                )


@pytest.fixture
async def browser(
    live_server: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Browser]:
    """Chromium, started after the server and closed before it (fixtures end in reverse):
    its pages' sockets and streams are gone before the server stops. Every console error and
    uncaught exception of its pages fails the test at its end (tests/browser/console.py)."""
    errors = ConsoleErrors()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        errors.watch(browser, monkeypatch)
        try:
            yield browser
            await errors.flush(browser)
        finally:
            await browser.close()
    errors.check(request.node.get_closest_marker(MARKER))


@pytest.fixture
def base_url(live_server: str) -> str:
    return f"http://{live_server}"
