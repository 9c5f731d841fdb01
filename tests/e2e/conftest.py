"""Fixtures of the e2e tests that start real servers: the fake model they share, a fresh
PostgreSQL database, and the hosts (``host_env`` is each module's own: what its hosts share)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.processes import Processes, processes
from tests.helpers import fresh_postgres_database
from tests.llm_server import FakeModelServer, served_model


@pytest.fixture
async def model() -> AsyncIterator[FakeModelServer]:
    async with served_model() as model:
        yield model


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_postgres_database("isochat_e2e") as url:
        yield url


@pytest.fixture
async def hosts(tmp_path: Path, host_env: dict[str, str]) -> AsyncIterator[Processes]:
    """Stopped (killed if need be) before the model server stops and the database is dropped."""
    async with processes(tmp_path) as started:
        yield started
