"""The same promises on PostgreSQL, the scale-out database.

Needs a PostgreSQL server: ``ISOCHAT_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) names a database to connect to; each test creates
and drops a database of its own. Skipped, saying why, when the server cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from src.container import AppContainer
from src.services.database.models import Base
from src.settings import Settings
from tests.fakes import install_chaos
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send, wait_for_run

pytestmark = pytest.mark.postgres

ADMIN_URL = os.environ.get("ISOCHAT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty database for this test, dropped afterwards."""
    try:
        admin = await asyncpg.connect(ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}")
    name = f"isochat_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


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
    assert ready.json()["checks"] == {"database": "ok", "migrations": "ok", "broker": "ok"}


async def test_postgres_refuses_a_second_running_run_on_a_thread(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Two messages racing on one thread: the database lets exactly one run start."""
    install_chaos(container)
    headers = auth(container, "pg")
    thread_id = await new_thread(client, headers)
    url = f"/api/threads/{thread_id}/messages"
    racing = [
        asyncio.create_task(client.post(url, json={"content": "[hang]"}, headers=headers))
        for _ in range(5)
    ]
    run_id = await wait_for_run(client, headers, thread_id)
    done, pending = await asyncio.wait(racing, timeout=5)
    assert len(pending) == 1  # the one that started is still running
    assert {task.result().json()["error"]["code"] for task in done} == {"run_in_progress"}
    await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    [winner] = pending
    assert (await winner).json()["run"]["status"] == "cancelled"


async def test_concurrent_load_with_failures_on_postgres(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """100 concurrent requests, a fifth forced to fail: every other one gets its own answer,
    and nothing leaks."""
    install_chaos(container)
    users = [f"pg{i}" for i in range(100)]
    threads = [await new_thread(client, auth(container, u)) for u in users]

    def content(i: int) -> str:
        prefix = ("[fail:agent] ", "[fail:db] ")[i % 2] if i % 5 == 0 else ""
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
