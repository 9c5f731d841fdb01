"""The chat page on a long thread, in headless Chromium: how long a thread of 1,000 messages
takes to open, and what the page's rendering costs while an answer streams into it.

A real ``isochat serve`` (its own process, a fresh SQLite file, the offline model, dev-login
on, rate limits raised) gets one user's thread of ``--pairs`` question/answer runs (500 by
default: 1,000 messages), written through the API one run after the other (the offline model
answers at once: a few seconds); every other question is arithmetic, the others plain text
with some Markdown in it. A second, empty thread is made after it, so that the long one is not
the newest (a page that opens the newest thread by itself does not open it before the clock
starts). Then, in Chromium (Debian's, driven by Playwright: nothing is downloaded):

- sign in with dev-login (the user id typed, Enter);
- ``open_ms``: click the long thread's title in the thread list; from the click (the page's own
  clock, a capturing listener) until the thread's last answer is in ``#messages`` and two
  frames have been drawn since;
- send ``summarise our conversation so far`` (the offline model's history answer: the thread's
  last 10 messages; the model streams it word by word at once, and the server sends what came
  meanwhile as one event, so about a dozen events with the run's others) and, from the Enter
  until the run's final event has arrived and the page has not changed for ``QUIET_MS``:
  ``longtasks`` and ``longtask_ms`` (PerformanceObserver ``longtask`` entries: main-thread tasks
  over 50 ms, a user's input waits behind each), ``mutations_per_event`` (the nodes the page
  touched per event of the run that reached it: added and removed nodes with the elements
  under the added ones, and each text or attribute change, counted by a MutationObserver on
  the whole page; a page that renders incrementally touches a few, one that rebuilds the
  thread touches all of it), and Chromium's own counts of main-thread time per event
  (``Performance.getMetrics``: script, and style plus layout).

Nothing here is asserted on timing: it prints figures to compare before and after a change of
the page, on the same machine. It relies only on what the page keeps: ``#messages`` with
``li.user`` and ``li.assistant``, ``#content`` (Enter sends), the thread list showing titles
(``#thread-list``), and the sign-in form's user id field.

    .venv/bin/python bench/page_thread.py [--pairs N] [--chromium PATH]

The last line is machine-readable; the exit code is 1 when something did not happen (the
thread did not open, the answer did not stream). Without Chromium it says so and does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import CDPSession, Locator, Page, WebSocket, async_playwright
from ws_load import (
    HOST,
    ISOCHAT,
    Server,
    free_port,
    log_tail,
    server_environment,
    stop,
    wait_until_live,
)

from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS

USER = "bench-page"
TITLE = "bench: a long thread"
OTHER_TITLE = "bench: an empty thread"
STREAMED = "summarise our conversation so far"
FINAL_EVENTS = {"run_completed", "run_failed", "run_cancelled"}
WITHIN_MS = 120_000  # liveness guards only: nothing is asserted on time
QUIET_MS = 500  # the page has finished with an event once it has not changed for this long

# Installed before the page's own scripts, on every document: long tasks are only reported to
# an observer that exists when they happen, and the click and the Enter are stamped on the
# page's clock, in the capturing phase, before the page's handlers run.
PROBE = """
window.__bench = { longtasks: [], inputAt: null };
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    window.__bench.longtasks.push({ start: entry.startTime, duration: entry.duration });
  }
}).observe({ type: "longtask" });
for (const type of ["click", "keydown"]) {
  document.addEventListener(type, (event) => {
    if (type === "click" || event.key === "Enter") window.__bench.inputAt = performance.now();
  }, true);
}
"""

# Until the thread's last answer is in #messages (white space aside: the page may render it
# as Markdown), then two frames: the time from the click.
OPENED = """async (expected) => {
  const squash = (text) => text.replace(/\\s+/g, "");
  const shown = () => {
    const answers = document.querySelectorAll("#messages li.assistant");
    const last = answers[answers.length - 1];
    return last !== undefined && squash(last.textContent).includes(squash(expected));
  };
  await new Promise((resolve) => {
    if (shown()) return resolve();
    const observer = new MutationObserver(() => {
      if (shown()) { observer.disconnect(); resolve(); }
    });
    observer.observe(document.body, { childList: true, subtree: true, characterData: true });
  });
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  return {
    clickAt: window.__bench.inputAt,
    openMs: performance.now() - window.__bench.inputAt,
    users: document.querySelectorAll("#messages li.user").length,
    assistants: document.querySelectorAll("#messages li.assistant").length,
  };
}"""

# Counts what the page touches from now on (a new count each time): cheap work, as the
# observer's own time is the page's time too.
WATCH = """() => {
  const counts = { all: 0, messages: 0, lastChange: performance.now() };
  const inMessages = (node) => {
    const element = node.nodeType === Node.ELEMENT_NODE ? node : node.parentElement;
    return element !== null && element.closest("#messages") !== null;
  };
  window.__bench.observer?.disconnect();
  window.__bench.observer = new MutationObserver((records) => {
    for (const record of records) {
      let touched = 1;
      if (record.type === "childList") {
        touched = record.removedNodes.length;
        for (const node of record.addedNodes) {
          touched += 1;
          if (node.nodeType === Node.ELEMENT_NODE) touched += node.getElementsByTagName("*").length;
        }
      }
      counts.all += touched;
      if (inMessages(record.target)) counts.messages += touched;
    }
    counts.lastChange = performance.now();
  });
  window.__bench.observer.observe(document.body, {
    childList: true, subtree: true, characterData: true, attributes: true,
  });
  window.__bench.mutations = counts;
}"""

# Until the page has not changed for quietMs (a page that never stops, a ticking clock say,
# is taken as it is after the liveness guard).
QUIET = """async ([quietMs, boundMs]) => {
  const counts = window.__bench.mutations;
  const until = performance.now() + boundMs;
  while (performance.now() - counts.lastChange < quietMs && performance.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, quietMs / 5));
  }
  return { ...counts, now: performance.now() };
}"""


class Failed(Exception):
    pass


# --- the server ---------------------------------------------------------------------------------


def start(directory: Path) -> Server:
    """``isochat serve`` on a free port; returns at once, without waiting for it."""
    port = free_port()
    env = server_environment(directory, port) | {
        "ISOCHAT_ENV": "development",  # dev-login
        # One user writes the thread and then reads it: its requests are the whole load.
        "ISOCHAT_RATE_LIMIT_PER_MINUTE": "6000000",
        "ISOCHAT_RATE_LIMIT_BURST": "100000",
    }
    log = directory / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ISOCHAT, "serve"],
            env=env,
            cwd=directory,  # no .env of the caller's directory is read
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the server ourselves
        )
    return Server(url=f"http://{HOST}:{port}", process=process, log=log)


@contextlib.asynccontextmanager
async def serving(directory: Path) -> AsyncIterator[Server]:
    """The server, ready; stopped on the way out."""
    server = start(directory)
    try:
        try:
            await asyncio.to_thread(wait_until_live, server)
        except RuntimeError as exc:
            raise Failed(f"{exc}:\n{log_tail(server.log)}") from None
        yield server
    finally:
        await asyncio.to_thread(stop, server.process)


# --- the thread ---------------------------------------------------------------------------------


def question(i: int) -> str:
    """Arithmetic (a calculator run) for odd ``i``, the last one included, so that the last
    answer is plain text; Markdown in the others, for a page that renders it."""
    if i % 2:
        return f"what is {i} + {i + 1}?"
    return (
        f"tell me about **item {i}**: a `code` span, a [link](https://example.com/{i}) and\n"
        "- a list"
    )


@dataclass(frozen=True, slots=True)
class Seeded:
    thread_id: str
    last_answer: str
    seconds: float


async def seed(http: httpx.AsyncClient, pairs: int) -> Seeded:
    """The long thread, through the API, then an empty one after it."""
    thread = (await http.post("/api/threads", json={"title": TITLE})).raise_for_status().json()
    started = time.perf_counter()
    answer = ""
    for i in range(pairs):
        response = await http.post(
            f"/api/threads/{thread['id']}/messages", json={"content": question(i)}
        )
        body = response.raise_for_status().json()
        if body["run"]["status"] != "completed" or body["message"] is None:
            raise Failed(f"run {i} of the thread ended {body['run']['status']}: {body['run']}")
        answer = body["message"]["content"]
    seconds = time.perf_counter() - started
    (await http.post("/api/threads", json={"title": OTHER_TITLE})).raise_for_status()
    return Seeded(thread_id=thread["id"], last_answer=answer, seconds=seconds)


# --- the page -----------------------------------------------------------------------------------


@dataclass  # not slots: Playwright marks the handlers it is given on their object
class Frames:
    """The run events the page's sockets received, as they came."""

    events: list[dict[str, Any]]
    final: asyncio.Event

    def hear(self, socket: WebSocket) -> None:
        socket.on("framereceived", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        with contextlib.suppress(ValueError, TypeError):
            frame = json.loads(payload)
            if isinstance(frame, dict) and "seq" in frame and "run_id" in frame:
                self.events.append(frame)
                if frame.get("type") in FINAL_EVENTS:
                    self.final.set()


async def first_present(*candidates: Locator) -> Locator:
    """The first of ``candidates`` the page has (its ids may change; its words less so)."""
    for candidate in candidates:
        if await candidate.count():
            return candidate
    return candidates[-1]


async def sign_in(page: Page, url: str) -> None:
    await page.goto(url)
    field = await first_present(
        page.locator("#user-id"), page.get_by_label(re.compile("user", re.I)).first
    )
    await field.fill(USER)
    await field.press("Enter")  # submits its form, whatever its button is called


def thread_titled(page: Page, title: str) -> Locator:
    return page.locator("#thread-list").get_by_text(title).first


@dataclass(frozen=True, slots=True)
class LongTasks:
    count: int
    ms: float


@dataclass(frozen=True, slots=True)
class Figures:
    open_ms: float  # the click to the last answer drawn
    settled_ms: float  # the click to the page's last change (what it does after showing it)
    shown_messages: int
    open_nodes: int
    open_longtasks: LongTasks
    events: int
    stream_ms: float
    stream_longtasks: LongTasks
    mutations_per_event: float
    messages_mutations_per_event: float
    script_ms_per_event: float
    layout_ms_per_event: float


def within(tasks: list[dict[str, float]], start: float, end: float) -> LongTasks:
    """The long tasks that began in [start, end] (the page's clock)."""
    chosen = [t for t in tasks if start <= t["start"] <= end]
    return LongTasks(len(chosen), sum(t["duration"] for t in chosen))


async def metrics(session: CDPSession) -> dict[str, float]:
    """Chromium's running totals for the page's main thread, in ms."""
    reply = await session.send("Performance.getMetrics")
    return {m["name"]: m["value"] * 1000 for m in reply["metrics"]}


async def measure(page: Page, url: str, seeded: Seeded, frames: Frames) -> Figures:
    await sign_in(page, url)
    link = thread_titled(page, TITLE)
    await link.wait_for(timeout=WITHIN_MS)
    await page.wait_for_timeout(QUIET_MS)  # the page's own start has settled

    await page.evaluate(WATCH)
    await link.click()
    opened = await page.evaluate(OPENED, seeded.last_answer)
    settled = await page.evaluate(QUIET, [QUIET_MS, WITHIN_MS])

    composer = page.locator("#content")
    await page.wait_for_function(
        "() => document.querySelector('#content')?.disabled === false", timeout=WITHIN_MS
    )
    session = await page.context.new_cdp_session(page)
    await session.send("Performance.enable")
    await composer.fill(STREAMED)
    await page.evaluate(QUIET, [QUIET_MS, WITHIN_MS])
    await page.evaluate(WATCH)
    heard_before = len(frames.events)
    before = await metrics(session)
    await composer.press("Enter")
    await asyncio.wait_for(frames.final.wait(), WITHIN_MS / 1000)
    streamed = await page.evaluate(QUIET, [QUIET_MS, WITHIN_MS])
    after = await metrics(session)
    probe = await page.evaluate(
        "({ longtasks: window.__bench.longtasks, at: window.__bench.inputAt })"
    )
    longtasks, stream_from = probe["longtasks"], probe["at"]
    heard = frames.events[heard_before:]
    runs = {e["run_id"] for e in heard if e.get("thread_id") == seeded.thread_id}
    if len(runs) != 1:
        raise Failed(f"expected the events of one run on the thread, heard of {len(runs)}")
    events = sum(1 for e in heard if e["run_id"] in runs)

    def per_event(name: str) -> float:
        return (after[name] - before[name]) / events

    return Figures(
        open_ms=opened["openMs"],
        settled_ms=settled["lastChange"] - opened["clickAt"],
        shown_messages=opened["users"] + opened["assistants"],
        open_nodes=settled["all"],
        open_longtasks=within(longtasks, opened["clickAt"], settled["lastChange"]),
        events=events,
        stream_ms=streamed["lastChange"] - stream_from,
        stream_longtasks=within(longtasks, stream_from, streamed["lastChange"]),
        mutations_per_event=streamed["all"] / events,
        messages_mutations_per_event=streamed["messages"] / events,
        script_ms_per_event=per_event("ScriptDuration"),
        layout_ms_per_event=per_event("LayoutDuration") + per_event("RecalcStyleDuration"),
    )


async def bench(options: argparse.Namespace) -> tuple[Seeded, Figures]:
    with tempfile.TemporaryDirectory(prefix="isochat-bench-page-") as scratch:
        async with serving(Path(scratch)) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                login = await http.post("/api/auth/dev-login", json={"user_id": USER})
                token = login.raise_for_status().json()["token"]
                http.headers["Authorization"] = f"Bearer {token}"
                seeded = await seed(http, options.pairs)
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=options.chromium, args=CHROMIUM_ARGS
                )
                try:
                    context = await browser.new_context(viewport={"width": 1280, "height": 800})
                    await context.add_init_script(PROBE)
                    page = await context.new_page()
                    frames = Frames(events=[], final=asyncio.Event())
                    page.on("websocket", frames.hear)
                    figures = await measure(page, server.url, seeded, frames)
                finally:
                    await browser.close()
    return seeded, figures


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=500, help="question/answer runs (500)")
    parser.add_argument(
        "--chromium",
        default=CHROMIUM,
        help="the Chromium to drive (Debian's by default)",
    )
    return parser.parse_args(argv)


def main() -> int:
    options = parse()
    if shutil.which(options.chromium) is None:
        print(f"page_thread: skipped: no Chromium at {options.chromium} (make browser installs it)")
        return 0
    try:
        seeded, f = asyncio.run(bench(options))
    except KeyboardInterrupt:
        print("page_thread: interrupted; the server was stopped", file=sys.stderr)
        return 130
    except (Failed, httpx.HTTPError, TimeoutError) as exc:
        print(f"page_thread: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"thread: {2 * options.pairs} messages written through the API in {seeded.seconds:.1f} s")
    print(
        f"open: {f.open_ms:.0f} ms to the last answer drawn, {f.settled_ms:.0f} ms to the "
        f"page's last change; {f.shown_messages} messages shown, {f.open_nodes} nodes touched, "
        f"{f.open_longtasks.count} long tasks ({f.open_longtasks.ms:.0f} ms)"
    )
    print(
        f"stream: {f.events} events in {f.stream_ms:.0f} ms, {f.stream_longtasks.count} long "
        f"tasks ({f.stream_longtasks.ms:.0f} ms); per event: {f.mutations_per_event:.1f} nodes "
        f"touched ({f.messages_mutations_per_event:.1f} in #messages), script "
        f"{f.script_ms_per_event:.2f} ms, style and layout {f.layout_ms_per_event:.2f} ms"
    )
    print(
        f"page_thread: open_ms {f.open_ms:.0f} longtasks {f.stream_longtasks.count} "
        f"longtask_ms {f.stream_longtasks.ms:.0f} mutations_per_event {f.mutations_per_event:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
