"""The same promises on PostgreSQL, the scale-out database.

Needs a PostgreSQL server: ``ISOCHAT_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) names a database to connect to; each test creates
and drops a database of its own. Skipped, saying why, when the server cannot be reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from src.container import AppContainer, build_container, shutdown
from src.services.database.migrations import upgrade_to_head
from src.services.database.models import Base
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import hold_triage, install_chaos
from tests.helpers import (
    NO_LEAKS,
    asyncpg_url,
    auth,
    fresh_postgres_database,
    leaks,
    new_thread,
    send,
    wait_for_run,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty database for this test, dropped afterwards."""
    async with fresh_postgres_database("isochat_test") as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, postgres_url: str) -> Settings:
    # A test that needs a run cut off sets its own run timeout.
    return Settings(database_url=postgres_url, run_timeout_s=600.0, _env_file=None)


async def test_migrations_and_models_agree_on_postgres(container: AppContainer) -> None:
    """`alembic upgrade head` (run by the fixture) builds exactly the models' schema."""
    async with container.database().engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    assert diff == []


async def test_a_chat_runs_and_replays_on_postgres(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A message runs the agents; events are stored 1..n; readiness sees the schema at head."""
    headers = auth(container, "pg")
    thread_id = await new_thread(client, headers)
    body = await send(client, headers, thread_id, "what is 6 * 7?")
    assert body["message"]["content"] == "6 * 7 = 42"
    events = (await client.get(f"/api/runs/{body['run']['id']}/events", headers=headers)).json()
    assert [e["seq"] for e in events["events"]] == list(range(1, len(events["events"]) + 1))
    ready = await client.get("/health/ready")
    assert ready.json()["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "broker": "ok",
        "model": "ok",
    }


async def test_postgres_refuses_a_second_running_run_on_a_thread(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Two messages racing on one thread: the database lets exactly one run start."""
    install_chaos(container)
    headers = auth(container, "pg")
    thread_id = await new_thread(client, headers)
    url = f"/api/threads/{thread_id}/messages"
    racing = [
        asyncio.create_task(client.post(url, json={"content": "[drill:hang]"}, headers=headers))
        for _ in range(5)
    ]
    run_id = await wait_for_run(client, headers, thread_id)
    refused = []
    async with asyncio.timeout(60):  # four answer at once; the fifth runs until cancelled
        for answer in asyncio.as_completed(racing):
            refused.append((await answer).json()["error"]["code"])
            if len(refused) == 4:
                break
    assert refused == ["run_in_progress"] * 4
    await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    [winner] = [task for task in racing if not task.done()] or [racing[0]]
    finished = [(await task).json() for task in racing]
    assert [b["run"]["status"] for b in finished if "run" in b] == ["cancelled"]
    assert winner in racing


async def test_concurrent_load_with_failures_on_postgres(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """100 concurrent requests, a fifth forced to fail: every other one gets its own answer,
    and nothing leaks."""
    install_chaos(container)
    users = [f"pg{i}" for i in range(100)]
    threads = [await new_thread(client, auth(container, u)) for u in users]

    def content(i: int) -> str:
        prefix = ("[drill:agent] ", "[drill:db] ")[i % 2] if i % 5 == 0 else ""
        return f"{prefix}what is {i} + {i}?"

    results = await asyncio.gather(
        *(send(client, auth(container, u), threads[i], content(i)) for i, u in enumerate(users))
    )
    for i, body in enumerate(results):
        if i % 5 == 0:
            assert body["run"]["status"] == "failed"
        else:
            assert body["message"]["content"] == f"{i} + {i} = {2 * i}"
    assert leaks(container) == NO_LEAKS


async def backend_waiting_on_a_lock(
    admin: asyncpg.Connection, database: str, *, not_pid: int, query: str = "UPDATE runs%"
) -> int:
    """The pid of the application's connection that waits on a row lock in a statement like
    ``query`` (polled: PostgreSQL has no event for it)."""
    async with asyncio.timeout(60):
        while True:
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
                " AND pid <> $2 AND pid <> pg_backend_pid() AND query LIKE $3",
                database,
                not_pid,
                query,
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.02)


async def test_the_end_of_a_run_survives_its_connection_being_killed(
    settings: Settings, postgres_url: str
) -> None:
    """The run's row is locked by another transaction when the run ends; its connections are
    killed with pg_terminate_backend while they wait, three times: in an event write, in the
    read-back that asks whether that write committed all the same, and in the terminal write.
    The terminal write is tried again on a fresh connection after reading back, and once the
    lock is released exactly one final event is stored and the run is counted once."""
    slow_settings = settings.model_copy(update={"db_timeout_s": 30.0})  # waits end by our kills
    await asyncio.to_thread(upgrade_to_head, postgres_url)
    container = build_container(slow_settings)
    gate = hold_triage(container)
    transport = httpx.ASGITransport(app=create_app(container))
    database = postgres_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(asyncpg_url(postgres_url))
    watcher = await asyncpg.connect(asyncpg_url(postgres_url))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://pg.test") as client:
            headers = auth(container, "pgkill")
            thread_id = await new_thread(client, headers)
            sending = asyncio.create_task(send(client, headers, thread_id, "what is 2 + 2?"))
            async with asyncio.timeout(60):
                await gate.reached.wait()
            run_id = await wait_for_run(client, headers, thread_id)

            locker = admin.transaction()
            await locker.start()
            await admin.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_id)
            gate.opened.set()  # the run's next write waits on our lock
            in_event = await backend_waiting_on_a_lock(watcher, database, not_pid=0)
            assert await watcher.fetchval("SELECT pg_terminate_backend($1)", in_event)
            reading_back = await backend_waiting_on_a_lock(
                watcher, database, not_pid=in_event, query="SELECT runs%FOR UPDATE"
            )
            assert await watcher.fetchval("SELECT pg_terminate_backend($1)", reading_back)
            in_end = await backend_waiting_on_a_lock(watcher, database, not_pid=in_event)
            assert await watcher.fetchval("SELECT pg_terminate_backend($1)", in_end)
            status = await admin.fetchval("SELECT status FROM runs WHERE id = $1", run_id)
            assert status == "running"
            await locker.commit()

            async with asyncio.timeout(60):
                body = await sending
            assert body["run"]["status"] == "failed", body
            assert body["run"]["error"]["code"] == "database_error"
            rows = await admin.fetch(
                "SELECT seq, type FROM run_events WHERE run_id = $1 ORDER BY seq", run_id
            )
            assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
            assert [r["type"] for r in rows].count("run_failed") == 1
            assert container.metrics().value("isochat_runs_total", {"status": "failed"}) == 1

            container.request.triage.reset_override()
            again = await send(client, headers, thread_id, "what is 3 + 3?")
            assert again["run"]["status"] == "completed"
            assert leaks(container) == NO_LEAKS
    finally:
        await watcher.close()
        await admin.close()
        await shutdown(container)
