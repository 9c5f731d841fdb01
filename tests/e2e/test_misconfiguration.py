"""The real `isochat` command, misconfigured: each mistake is one line on stderr that names what
to fix, with the documented exit code and no traceback; a PostgreSQL URL written as people write
it (``postgresql://``) just works."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.test_server import ISOCHAT, environment, free_port
from tests.helpers import asyncpg_url, fresh_postgres_database

pytestmark = pytest.mark.e2e

# Guards against a hang only; every command here ends on its own long before.
HANG_GUARD_S = 60

UNREACHABLE_URL = "postgresql://u:secret@127.0.0.1:1/db"


def isochat(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``isochat ARGS`` in its own process, with ``env`` on top of the e2e defaults (SQLite
    under ``tmp_path``, a free port)."""
    return subprocess.run(
        [ISOCHAT, *args],
        env=environment(tmp_path, free_port()) | env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
        cwd=tmp_path,  # no .env of the developer's is read
    )


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_port_that_is_not_a_number_is_refused_in_one_line(tmp_path: Path, command: str) -> None:
    """ISOCHAT_PORT=abc: exit 2 with one line naming the variable and what it takes, before
    anything touches the database."""
    done = isochat(tmp_path, command, ISOCHAT_PORT="abc")

    assert done.returncode == 2
    assert done.stderr == (
        "isochat: ISOCHAT_PORT: expected a whole number from 0 to 65535, got 'abc'\n"
    )
    assert done.stdout == ""
    assert not (tmp_path / "var").exists()


def test_an_unknown_database_scheme_is_refused_in_one_line(tmp_path: Path) -> None:
    """A database isochat has no driver for is a setting to fix (exit 2), not a traceback
    from a driver import; the password is not repeated."""
    done = isochat(tmp_path, "migrate", ISOCHAT_DATABASE_URL="mysql://app:secret@db/app")

    assert done.returncode == 2
    assert done.stderr == (
        "isochat: ISOCHAT_DATABASE_URL: expected a URL starting with postgresql://, "
        "postgres://, postgresql+asyncpg://, sqlite:// or sqlite+aiosqlite://, "
        "got 'mysql://app:***@db/app'\n"
    )


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unreachable_database_is_one_line_without_its_password(
    tmp_path: Path, command: str
) -> None:
    """Nothing listens at the database's address: exit 1 with one line saying where (the URL
    without its password) and why; the password appears nowhere in the output."""
    done = isochat(tmp_path, command, ISOCHAT_DATABASE_URL=UNREACHABLE_URL)

    assert done.returncode == 1
    assert done.stderr == (
        "isochat: cannot reach the database at postgresql+asyncpg://u:***@127.0.0.1:1/db: "
        "connection refused\n"
    )
    assert "secret" not in done.stdout + done.stderr


def test_a_plugin_that_cannot_be_imported_is_refused_in_one_line(tmp_path: Path) -> None:
    """ISOCHAT_PLUGINS naming a module that is not there: exit 2, one line, nothing touched."""
    done = isochat(tmp_path, "serve", ISOCHAT_PLUGINS="team.nowhere:Plugin")

    assert done.returncode == 2
    assert done.stderr == (
        "isochat: ISOCHAT_PLUGINS: cannot import 'team.nowhere:Plugin': No module named 'team'\n"
    )
    assert not (tmp_path / "var").exists()


def test_mcp_servers_are_refused_one_line_per_mistake(tmp_path: Path) -> None:
    """ISOCHAT_MCP_SERVERS with two mistakes in one server: a line for each, exit 2."""
    done = isochat(
        tmp_path, "serve", ISOCHAT_MCP_SERVERS='{"crm": {"url": "ftp://crm", "routes": "all"}}'
    )
    assert done.returncode == 2
    assert done.stderr == (
        "isochat: ISOCHAT_MCP_SERVERS: server 'crm': url must start with http:// or https://, "
        "got 'ftp://crm'\n"
        "isochat: ISOCHAT_MCP_SERVERS: server 'crm': routes must be a list of route names, e.g. "
        '["general"]\n'
    )
    assert not (tmp_path / "var").exists()


def test_an_mcp_server_for_a_route_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    """A route no container declares (here a typo): exit 2 before anything is touched."""
    servers = '{"crm": {"url": "http://127.0.0.1:9/mcp", "routes": ["maths"]}}'
    done = isochat(tmp_path, "serve", ISOCHAT_MCP_SERVERS=servers)
    assert done.returncode == 2
    assert done.stderr == (
        "isochat: ISOCHAT_MCP_SERVERS: server 'crm': no route 'maths' (routes: general, "
        "history, math)\n"
    )
    assert not (tmp_path / "var").exists()


def test_a_token_needs_no_database(tmp_path: Path) -> None:
    """`isochat token` only signs: it works while the database is away."""
    done = isochat(tmp_path, "token", "alice", ISOCHAT_DATABASE_URL=UNREACHABLE_URL)

    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2  # header.payload.signature
    assert done.stderr == ""


@pytest.fixture
async def fresh_database_url() -> AsyncIterator[str]:
    async with fresh_postgres_database("isochat_cfg") as url:
        yield url


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_a_postgresql_url_as_people_write_it_is_migrated(
    tmp_path: Path, fresh_database_url: str, scheme: str
) -> None:
    """ISOCHAT_DATABASE_URL=postgresql://... (or postgres://...), without SQLAlchemy's
    ``+asyncpg``: `isochat migrate` runs on asyncpg and brings the schema to head."""
    url = asyncpg_url(fresh_database_url).replace("postgresql://", f"{scheme}://", 1)

    done = await asyncio.to_thread(isochat, tmp_path, "migrate", ISOCHAT_DATABASE_URL=url)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    connection = await asyncpg.connect(asyncpg_url(fresh_database_url))
    try:
        revision = await connection.fetchval("SELECT version_num FROM alembic_version")
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    finally:
        await connection.close()
    assert revision
    assert {"threads", "messages", "runs", "run_events"} <= {t["tablename"] for t in tables}
