"""axe-core, the accessibility engine, run in a page of the browser tests:
``await assert_accessible(page, "signed in")`` fails the test with every serious or critical
violation of the page as it is at that moment, saying in which state it was.

The pinned axe-core (``tests/browser/axe/package.json`` and its lock) is installed once per
test run with ``npm ci`` under a file lock (xdist's workers, or two test runs, share the
checkout); a test that asks for the check is skipped, saying why, where Node or npm is missing
or the install fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock, Timeout
from playwright.async_api import Page

AXE = Path(__file__).parent / "axe"
SCRIPT = AXE / "node_modules" / "axe-core" / "axe.min.js"
INSTALL_LOCK = AXE / ".install.lock"
# Written last, naming the lock file it installed: a complete install from one cut short.
STAMP = AXE / "node_modules" / ".isochat-installed"
INSTALL_BOUND_S = 600.0
FAILING_IMPACTS = ("serious", "critical")

# Only what the report needs crosses back from the page: axe's results hold whole HTML
# snippets and rule metadata for every check.
RUN = """async () => {
  const results = await axe.run(document, { resultTypes: ["violations"] });
  return results.violations.map((v) => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    targets: v.nodes.map((node) => node.target.flat().join(" ")),
  }));
}"""

_script: str | None = None  # axe.min.js, once this process has it
_unavailable: str | None = None  # why it cannot have it: said once, not retried per test


async def assert_accessible(page: Page, state: str) -> None:
    """Raise AssertionError listing every serious or critical violation axe finds in ``page``
    (rule id, what it asks for, the elements' selectors); ``state`` names the moment checked."""
    script = await _axe_script()
    # Not page.add_script_tag: it inserts an inline <script>, which the page's policy
    # (default-src 'self', no 'unsafe-inline') refuses, logging a console error. Nor a context
    # with bypass_csp: the page checked would not be the page as served. page.evaluate runs
    # through the DevTools protocol, which the policy does not govern, in the page's own world
    # (window.axe is there for the next check), and leaves the page as it was.
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(script)
    violations: list[dict[str, Any]] = await page.evaluate(RUN)
    failing = [v for v in violations if v["impact"] in FAILING_IMPACTS]
    if failing:
        lines = [
            f"  {v['id']} ({v['impact']}): {v['help']}: {', '.join(v['targets'])}" for v in failing
        ]
        raise AssertionError(
            f"accessibility, {state}: {len(failing)} serious or critical violation(s) in "
            f"{page.url}\n" + "\n".join(lines)
        )


async def _axe_script() -> str:
    global _script, _unavailable
    if _script is None and _unavailable is None:
        _unavailable = await asyncio.to_thread(_install)
        if _unavailable is None:
            _script = SCRIPT.read_text(encoding="utf-8")
    if _script is None:
        pytest.skip(_unavailable or "axe-core is not installed")
    return _script


def _install() -> str | None:
    """Install the pinned axe-core unless this lock file's install is already there: None, or
    why it could not be installed."""
    stamp = hashlib.sha256((AXE / "package-lock.json").read_bytes()).hexdigest()
    try:
        with FileLock(INSTALL_LOCK, timeout=INSTALL_BOUND_S):
            if _stamped(stamp):
                return None
            npm = shutil.which("npm")
            if shutil.which("node") is None or npm is None:
                return "the accessibility check needs Node and npm (axe-core), and one is missing"
            STAMP.unlink(missing_ok=True)
            done = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=AXE,
                capture_output=True,
                text=True,
                timeout=INSTALL_BOUND_S,
                check=False,
            )
            if done.returncode != 0:
                return f"npm ci failed in {AXE}:\n{done.stderr[-2000:]}"
            STAMP.write_text(stamp)
            return None
    except Timeout:
        return f"another test run held {INSTALL_LOCK} for too long"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"axe-core could not be installed: {exc}"


def _stamped(stamp: str) -> bool:
    try:
        return STAMP.read_text() == stamp
    except FileNotFoundError:
        return False
