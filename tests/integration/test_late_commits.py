"""A write that commits after its step deadline: SQLite's writer thread finishes the transaction
after its caller stopped waiting for it. What is stored decides what happened: the event, or
the end, is published once and counted once, and no follower sees a gap."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection, ExecutionContext

from src.container import AppContainer, build_container, shutdown
from src.runs.domain import FINAL_EVENT_TYPES
from src.services.database.migrations import upgrade_to_head
from src.services.database.writers import SQLiteWriter
from src.settings import Settings
from src.web.app import create_app
from tests.helpers import NO_LEAKS, leaks, new_thread, stored_events
from tests.ws import AsgiSocket, Frame

WITHIN_S = 60.0  # only guards against a hang


class CommitHold:
    """Holds, in SQLite's writer thread, the commit of the first transaction that stores an
    event of ``event_type``, until ``release`` is set: a real late commit, not a patched one."""

    def __init__(self, container: AppContainer, event_type: str) -> None:
        writer = container.database().writer
        assert isinstance(writer, SQLiteWriter)
        self._type = event_type
        self.held = threading.Event()
        self.release = threading.Event()
        event.listen(writer.engine, "before_cursor_execute", self._mark)
        event.listen(writer.engine, "commit", self._hold)

    def _mark(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if self.held.is_set() or context is None or not statement.startswith("INSERT INTO run_e"):
            return
        compiled: list[dict[str, Any]] = getattr(context, "compiled_parameters", [{}])
        if compiled[0].get("type") == self._type:
            conn.info["isochat_hold"] = True

    def _hold(self, conn: Connection) -> None:
        if conn.info.pop("isochat_hold", False):
            self.held.set()
            self.release.wait(WITHIN_S)


class ReleaseWhenLogged(logging.Handler):
    """Releases a hold once the writer in doubt says so: its caller has given up waiting."""

    def __init__(self, hold: CommitHold, starts: str) -> None:
        super().__init__()
        self._hold = hold
        self._starts = starts
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self._starts):
            self.seen = True
            self._hold.release.set()


@dataclass
class Host:
    container: AppContainer
    client: httpx.AsyncClient
    socket: AsgiSocket
    db_file: Path


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    """A host whose database steps give up after a second (``db_timeout_s`` 0.5), with a
    socket of alice's open."""
    db_file = tmp_path / "isochat.db"
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{db_file}",
        db_timeout_s=0.5,
        run_timeout_s=600.0,
        _env_file=None,
    )
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    app = create_app(container)
    transport = httpx.ASGITransport(app=app)
    token = container.tokens().issue("alice")
    try:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://late.test") as client,
            AsgiSocket(app, token=token) as socket,
        ):
            yield Host(container, client, socket, db_file)
    finally:
        await shutdown(container)


async def chat_to_the_end(host: Host, content: str) -> list[Frame]:
    """Send ``content`` over the socket; the run's frames, up to its final event."""
    headers = {"Authorization": f"Bearer {host.container.tokens().issue('alice')}"}
    thread_id = await new_thread(host.client, headers)
    await host.socket.send(
        f'{{"type": "chat", "thread_id": "{thread_id}", "content": "{content}"}}'
    )
    frames: list[Frame] = []
    async with asyncio.timeout(WITHIN_S):
        while not frames or frames[-1]["type"] not in FINAL_EVENT_TYPES:
            frame = await host.socket.recv()
            assert frame["type"] != "gap", frame
            if "seq" in frame:
                frames.append(frame)
    return frames


def runs_total(container: AppContainer, status: str) -> float:
    return container.metrics().value("isochat_runs_total", {"status": status})


async def chat_with_a_late_commit(host: Host, *, held: str, logged: str) -> list[Frame]:
    """A run whose first transaction storing a ``held`` event commits only after the writer in
    doubt has said so (its log line starting ``logged``): the run's frames on the socket, which
    must hold every stored event once, in seq order."""
    hold = CommitHold(host.container, held)
    release = ReleaseWhenLogged(hold, logged)
    logging.getLogger("src.runs").addHandler(release)
    try:
        frames = await chat_to_the_end(host, "what is 6 * 7?")
    finally:
        logging.getLogger("src.runs").removeHandler(release)
        hold.release.set()
    assert hold.held.is_set() and release.seen  # the commit really came after the deadline
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert [(f["seq"], f["type"]) for f in frames] == stored_events(
        host.db_file, frames[0]["run_id"]
    )
    assert frames[-1]["type"] == "run_completed"
    assert frames[-1]["data"]["message"]["content"] == "6 * 7 = 42"
    assert runs_total(host.container, "completed") == 1
    assert runs_total(host.container, "failed") == 0
    assert leaks(host.container) == NO_LEAKS
    return frames


async def test_an_end_that_commits_after_its_deadline_is_published_and_counted_once(
    host: Host,
) -> None:
    """The run's terminal transaction is held in the writer thread past the step deadline, then
    commits: the ender reads back what is stored, finds its own end, and the socket receives
    `run_completed` once; the run is counted once, as completed."""
    await chat_with_a_late_commit(host, held="run_completed", logged="the end of run")


async def test_an_event_that_commits_after_its_deadline_is_published_and_the_run_goes_on(
    host: Host,
) -> None:
    """An event's transaction (triage's `agent_completed`) is held past the step deadline, then
    commits: the emitter reads it back, publishes it, and the run goes on to complete. The
    socket receives every seq once, in order, as stored: no gap live or stored."""
    frames = await chat_with_a_late_commit(host, held="agent_completed", logged="an event of run")
    assert [f["type"] for f in frames].count("agent_completed") == 2  # triage's and math's
