"""What tests do over and over: log in, open a thread, send a message, read the gauges."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import insert
from starlette.types import ASGIApp

from src.container import AppContainer
from src.runs.domain import utcnow
from src.services.database.models import RunEventRow, RunRow
from src.settings import Settings


def auth(container: AppContainer, user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {container.tokens().issue(user_id)}"}


async def new_thread(client: httpx.AsyncClient, headers: dict[str, str], title: str = "t") -> str:
    response = await client.post("/api/threads", json={"title": title}, headers=headers)
    assert response.status_code == 201, response.text
    thread_id: str = response.json()["id"]
    return thread_id


async def send(
    client: httpx.AsyncClient, headers: dict[str, str], thread_id: str, content: str
) -> dict[str, Any]:
    response = await client.post(
        f"/api/threads/{thread_id}/messages", json={"content": content}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for_run(client: httpx.AsyncClient, headers: dict[str, str], thread_id: str) -> str:
    """The id of the run a message sent to ``thread_id`` started, once its message is stored."""
    for _ in range(500):
        messages = (await client.get(f"/api/threads/{thread_id}/messages", headers=headers)).json()
        if messages["messages"]:
            run_id: str = messages["messages"][-1]["run_id"]
            return run_id
        await asyncio.sleep(0.01)
    raise AssertionError("the run never started")


def stored_events(db_file: Path, run_id: str) -> list[tuple[int, str]]:
    """The run's stored events, ``(seq, type)`` in seq order, read straight from its SQLite
    file."""
    with sqlite3.connect(db_file) as db:
        rows = db.execute(
            "SELECT seq, type FROM run_events WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
    return [(int(seq), str(kind)) for seq, kind in rows]


def leaks(container: AppContainer) -> dict[str, float]:
    """Everything that must be back to zero once traffic stops (after a garbage collection)."""
    gc.collect()
    metrics = container.metrics()
    return {
        "scopes_open": metrics.value("isochat_request_scopes_open"),
        "agents_live": metrics.value("isochat_agent_instances_live"),
        "sessions_open": metrics.value("isochat_db_sessions_open"),
        "mcp_sessions_open": metrics.value("isochat_mcp_sessions_open"),
        "connections_checked_out": container.database().checked_out_connections(),
        "runs_executing": len(container.runs()),
    }


NO_LEAKS = {
    "scopes_open": 0,
    "agents_live": 0,
    "sessions_open": 0,
    "mcp_sessions_open": 0,
    "connections_checked_out": 0,
    "runs_executing": 0,
}


async def leaks_once_settled(
    container: AppContainer, *, within_s: float = 10.0
) -> dict[str, float]:
    """``leaks`` once the server has finished tearing down what a client just closed (a socket's
    runs and scopes are released after the client sees the close, not before)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    settled = NO_LEAKS | {"ws_connections": 0}
    # Polling: the teardown has no event to wait on from outside the server.
    while (found := leaks(container) | ws_connections(container)) != settled:
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.02)
    return found


def ws_connections(container: AppContainer) -> dict[str, float]:
    return {"ws_connections": container.metrics().value("isochat_ws_connections")}


# How long a test server waits for its open responses when it stops.
GRACEFUL_SHUTDOWN_S = 5


@asynccontextmanager
async def serving(app: ASGIApp, config: uvicorn.Config | None = None) -> AsyncIterator[str]:
    """``app`` on a real uvicorn on a free loopback port, for the block: its ``host:port``.
    ``config`` (for ``app``, on 127.0.0.1 port 0) replaces the quiet default."""
    if config is None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            # A client still holding a stream (a browser's page) must not hold the teardown:
            # uvicorn waits for open responses, for ever unless told how long.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    server = uvicorn.Server(config)
    running = asyncio.create_task(server.serve())
    while not server.started:
        if running.done():
            running.result()  # it failed to start: say why
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await running


async def orphan_run(
    container: AppContainer, *, thread_id: str, user_id: str, events: int = 0
) -> str:
    """A run left `running` by a process that died: in the database with ``events`` stored
    events (``run_started``) and no lease, run by no task."""
    run_id = str(uuid.uuid4())
    async with container.database().engine.begin() as conn:
        await conn.execute(
            insert(RunRow).values(
                id=run_id, thread_id=thread_id, user_id=user_id, status="running",
                created_at=utcnow(), last_seq=events,
            )
        )  # fmt: skip
        for seq in range(1, events + 1):
            await conn.execute(
                insert(RunEventRow).values(
                    run_id=run_id, seq=seq, type="run_started", data="{}", ts=utcnow()
                )
            )
    return run_id


# What the application waits for one Redis call unless ISOCHAT_REDIS_TIMEOUT_S says otherwise.
REDIS_TIMEOUT_S: float = Settings.model_fields["redis_timeout_s"].default


async def reachable_redis() -> str:
    """The test Redis (``ISOCHAT_TEST_REDIS_URL``, default the local one); skips the test,
    saying why, when it cannot be reached."""
    url = os.environ.get("ISOCHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    probe = Redis.from_url(url, socket_connect_timeout=2)
    try:
        await probe.ping()
    except (RedisError, OSError) as exc:
        pytest.skip(f"Redis is not reachable at {url}: {exc}")
    finally:
        await probe.aclose()
    return url


# The test PostgreSQL server: a database to connect to; tests create databases of their own.
POSTGRES_ADMIN_URL = os.environ.get(
    "ISOCHAT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@asynccontextmanager
async def postgres_admin() -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test PostgreSQL server; skips the test, saying why, when it cannot
    be reached."""
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    try:
        yield admin
    finally:
        await admin.close()


@asynccontextmanager
async def fresh_postgres_database(prefix: str) -> AsyncIterator[str]:
    """A new, empty database named ``<prefix>_<hex>`` as a ``postgresql+asyncpg://`` URL,
    dropped afterwards even if something is still connected to it."""
    async with postgres_admin() as admin:
        name = f"{prefix}_{uuid.uuid4().hex}"
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def asyncpg_url(database_url: str) -> str:
    """The URL asyncpg itself takes for a SQLAlchemy ``postgresql+asyncpg://`` one."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
