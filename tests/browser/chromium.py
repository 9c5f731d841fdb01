"""The Chromium the browser tests and bench/page_thread.py drive: Debian's ``chromium`` (nothing
is downloaded), and how it is started."""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("ISOCHAT_TEST_CHROMIUM", "/usr/bin/chromium")
# As root (tests run as root) Chromium needs --no-sandbox; the rest keeps it off the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
