"""Shared fixtures: a real container on a real SQLite file, the real app over ASGI."""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from src.container import AppContainer, build_container, shutdown
from src.services.database.migrations import upgrade_to_head
from src.settings import Settings
from src.web.app import create_app
from tests.helpers import serving
from tests.mcp_servers.fixtures import (
    garbage_mcp,
    mcp1,
    mcp1_process,
    mcp1_python,
    mcp2,
    mcp2_process,
)

# The real MCP servers' fixtures, for every test (src: tests/mcp_servers/fixtures.py).
__all__ = ["garbage_mcp", "mcp1", "mcp1_process", "mcp1_python", "mcp2", "mcp2_process"]

# One Redis may serve several test runs at once (two `make test` side by side): each run's
# channels and keys get a prefix of their own, in this process and the servers it starts.
_PREFIX = os.environ.setdefault("ISOCHAT_REDIS_PREFIX", f"isochat-test-{uuid.uuid4().hex[:8]}:")
# pytest-xdist's workers inherit the run's prefix: each worker's tests get one of their own.
if _WORKER := os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["ISOCHAT_REDIS_PREFIX"] = f"{_PREFIX.removesuffix(':')}-{_WORKER}:"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        run_timeout_s=600.0,  # a test that needs a run cut off sets its own
        _env_file=None,
    )


@pytest.fixture
async def container(settings: Settings) -> AsyncIterator[AppContainer]:
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    yield container
    await shutdown(container)
    gc.collect()


@pytest.fixture
def app(container: AppContainer) -> Starlette:
    return create_app(container)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isochat.test") as client:
        yield client


@pytest.fixture
async def live_server(app: Starlette) -> AsyncIterator[str]:
    """The app served by a real uvicorn on a free loopback port: ``host:port``."""
    async with serving(app) as address:
        yield address
