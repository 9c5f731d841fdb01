"""Every run ends exactly once: across processes sharing one database (leases), while the
database holds a write lock at the run's end, and when a cancel races the run's completion."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers
from sqlalchemy import select

from src.container import AppContainer, build_container, shutdown
from src.runs.ender import Outcome, RunEnder
from src.runs.ledger import Ended
from src.services.database.migrations import upgrade_to_head
from src.services.database.models import RunRow
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import Gate, hold_triage
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send, stored_events, wait_for_run

WAIT_S = 60.0  # only guards against a hang


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds (the server gives no event to wait on from outside)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def renewed(container: AppContainer, run_id: str, since: datetime) -> bool:
    return await lease_of(container, run_id) > since


async def swept(container: AppContainer) -> bool:
    return await container.lease_keeper().sweep() > 0


async def retried(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.getMessage().startswith("the end of run") for r in caplog.records)


async def within(awaitable: Any) -> Any:
    async with asyncio.timeout(WAIT_S):
        return await awaitable


def runs_total(container: AppContainer, status: str) -> float:
    return container.metrics().value("isochat_runs_total", {"status": status})


def status_of(db_file: Path, run_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(db_file) as db:
        status, code = db.execute(
            "SELECT status, error_code FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    return str(status), code


# two processes on one database, as two containers in one test process


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "isochat.db"


def host_settings(db_file: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{db_file}",
        "run_timeout_s": 600.0,
        "run_lease_s": 1.0,
        "_env_file": None,
    }
    return Settings(**(values | overrides))


@asynccontextmanager
async def two_hosts(
    db_file: Path, *, lease_s: float
) -> AsyncIterator[tuple[AppContainer, AppContainer, httpx.AsyncClient]]:
    """Two serving processes' containers (A and B) on one SQLite file, and a client of A."""
    settings = host_settings(db_file, run_lease_s=lease_s)
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    a, b = build_container(settings), build_container(settings)
    transport = httpx.ASGITransport(app=create_app(a))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://a.test") as client:
            yield a, b, client
    finally:
        for container in (a, b):
            await shutdown(container)


async def lease_of(container: AppContainer, run_id: str) -> datetime:
    async with container.database().engine.connect() as conn:
        lease = await conn.scalar(select(RunRow.lease_expires_at).where(RunRow.id == run_id))
    assert lease is not None
    return lease


async def test_a_sweep_never_touches_a_run_whose_owner_is_alive(db_file: Path) -> None:
    """Host B sweeps at a time when the run's first lease has run out, but host A is alive and
    has renewed it: A's run goes on and ends as A decides, never `interrupted`."""
    async with two_hosts(db_file, lease_s=30.0) as (a, b, client_a):
        gate = hold_triage(a)
        headers = auth(a, "alice")
        thread_id = await new_thread(client_a, headers)
        sending = asyncio.create_task(send(client_a, headers, thread_id, "what is 2 + 2?"))
        await within(gate.reached.wait())
        run_id = await wait_for_run(client_a, headers, thread_id)
        first_lease = await lease_of(a, run_id)

        await a.lease_keeper().beat()  # A renews its lease (as it does every third of one)
        try:
            await until(lambda: renewed(a, run_id, first_lease))
            later = first_lease + timedelta(microseconds=1)
            assert await b.lease_keeper().sweep(now=later) == 0
            assert status_of(db_file, run_id) == ("running", None)
            gate.opened.set()
            body = await within(sending)
        finally:
            gate.opened.set()
        assert body["run"]["status"] == "completed", body
        assert [t for _, t in stored_events(db_file, run_id)].count("run_completed") == 1
        assert runs_total(a, "completed") == 1 and runs_total(b, "failed") == 0


async def test_a_run_whose_lease_expired_is_ended_once_by_another_process(db_file: Path) -> None:
    """Host A stops renewing (as a killed or stuck process does): host B's sweep ends its run
    `failed` / `interrupted` with one final event, counts it, and unlocks the thread; when A's
    run wakes up it writes nothing more, and A counts nothing."""
    async with two_hosts(db_file, lease_s=1.0) as (a, b, client_a):
        gate = hold_triage(a)
        headers = auth(a, "bob")
        thread_id = await new_thread(client_a, headers)
        sending = asyncio.create_task(send(client_a, headers, thread_id, "what is 2 + 2?"))
        await within(gate.reached.wait())
        run_id = await wait_for_run(client_a, headers, thread_id)

        # The lease runs out 1 s after the last event; B's sweep then ends the run.
        await until(lambda: swept(b))
        assert status_of(db_file, run_id) == ("failed", "interrupted")
        assert runs_total(b, "failed") == 1

        gate.opened.set()  # A's run goes on, finds its run ended, and stops
        body = await within(sending)
        assert body["run"]["status"] == "failed"
        assert body["run"]["error"]["code"] == "interrupted"
        assert body["message"] is None
        events = stored_events(db_file, run_id)
        assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
        finals = [t for _, t in events if t in ("run_completed", "run_failed", "run_cancelled")]
        assert finals == ["run_failed"]
        assert runs_total(a, "failed") == 0 and runs_total(a, "completed") == 0

        a.request.triage.reset_override()
        again = await send(client_a, headers, thread_id, "what is 3 + 3?")
        assert again["run"]["status"] == "completed"
        assert leaks(a) == NO_LEAKS


# the database holds a write lock when the run ends


async def test_the_end_of_a_run_is_written_once_a_held_write_lock_is_released(
    db_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another connection holds SQLite's write lock across the run's end: the run's writes
    fail after the database deadline, its terminal write is retried on fresh connections, and
    once the lock is released exactly one final event is stored, the run is counted once, and
    its thread takes messages again."""
    settings = host_settings(db_file, db_timeout_s=0.2, run_lease_s=120.0)
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    gate = hold_triage(container)
    transport = httpx.ASGITransport(app=create_app(container))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
            headers = auth(container, "carol")
            thread_id = await new_thread(client, headers)
            sending = asyncio.create_task(send(client, headers, thread_id, "what is 2 + 2?"))
            await within(gate.reached.wait())
            run_id = await wait_for_run(client, headers, thread_id)

            locker = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
            locker.execute("BEGIN IMMEDIATE")  # the write lock, until we commit
            try:
                with caplog.at_level(logging.WARNING, logger="src.runs"):
                    gate.opened.set()
                    await until(lambda: retried(caplog))
                status = locker.execute(
                    "SELECT status FROM runs WHERE id = ?", (run_id,)
                ).fetchone()
                assert status == ("running",)  # nothing half-written meanwhile
            finally:
                locker.execute("COMMIT")
                locker.close()

            body = await within(sending)
            assert body["run"]["status"] == "failed", body
            assert body["run"]["error"]["code"] == "database_error"
            events = stored_events(db_file, run_id)
            assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
            assert [t for _, t in events].count("run_failed") == 1
            assert runs_total(container, "failed") == 1

            container.request.triage.reset_override()
            again = await send(client, headers, thread_id, "what is 3 + 3?")
            assert again["run"]["status"] == "completed"
            assert leaks(container) == NO_LEAKS
    finally:
        await shutdown(container)


# a cancel races the run's completion


class LateCancelEnder(RunEnder):
    """Completes the run when a cancel arrives at the very end: the cancel lands while the
    completion is being stored, as it can in production (the ender's write is shielded, so it
    commits, and the cancel is delivered right after)."""

    gate: Gate

    async def end(self, *, outcome: Outcome, **run: Any) -> Ended | None:
        if outcome.status != "completed":
            return await super().end(outcome=outcome, **run)
        self.gate.reached.set()
        try:
            await asyncio.Event().wait()  # until the cancel arrives
        except asyncio.CancelledError:
            await super().end(outcome=outcome, **run)
            raise
        raise AssertionError("unreachable")


async def test_a_cancel_that_loses_the_race_with_completion_is_a_conflict(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """The run completes while its cancel is on the way: the cancel answers 409 `conflict`
    with the completed run, the message POST answers the stored answer, the run has one final
    event, and it is counted once, as completed."""
    gate = Gate()
    LateCancelEnder.gate = gate
    container.ender.override(
        providers.Singleton(
            LateCancelEnder,
            database=container.database,
            broker=container.broker,
            metrics=container.metrics,
            retry_for_s=1.0,
            lease=container.lease,
        )
    )
    headers = auth(container, "dave")
    thread_id = await new_thread(client, headers)
    sending = asyncio.create_task(send(client, headers, thread_id, "what is 6 * 7?"))
    await within(gate.reached.wait())
    run_id = await wait_for_run(client, headers, thread_id)

    cancel = await within(client.post(f"/api/runs/{run_id}/cancel", headers=headers))
    body = await within(sending)

    assert cancel.status_code == 409, cancel.text
    error = cancel.json()["error"]
    assert error["code"] == "conflict" and error["run"]["status"] == "completed"
    assert body["run"]["status"] == "completed"
    assert body["message"] is not None and body["message"]["content"].endswith("= 42")
    events = (await client.get(f"/api/runs/{run_id}/events", headers=headers)).json()["events"]
    finals = [e["type"] for e in events if e["type"] in ("run_completed", "run_cancelled")]
    assert finals == ["run_completed"]
    assert runs_total(container, "completed") == 1 and runs_total(container, "cancelled") == 0
    container.ender.reset_override()
    assert leaks(container) == NO_LEAKS
