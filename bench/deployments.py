"""How ``bench/throughput.py`` deploys isochat, and what it reads from the services beside it.

- ``Deployment``: one ``isochat serve`` on a SQLite file (the default), or ``hosts`` of them,
  each with ``workers`` workers, on one fresh PostgreSQL database and one Redis broker, as the
  hosts of a deployment share them (README, "Running on several hosts"); each deployment its
  own database and its own Redis key prefix, removed on the way out.
- ``present_but_unused``: the settings of an isochat that has an MCP server, approvals and
  queued runs configured for what the benchmark's workload never does.
- ``Services``: the PostgreSQL and Redis servers on this machine, by process id (for their CPU
  time), and their counters (``pg_stat_database``, ``pg_stat_user_tables``, the WAL position,
  Redis's ``INFO commandstats``) for the writes and messages of a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis
from sqlalchemy.engine import URL, make_url

ADMIN_TIMEOUT_S = 10.0


# --- processes ----------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after ``(comm)`` (which may hold spaces): the first is
    field 3 of proc(5); OSError when the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


# --- the deployment -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where isochat keeps its state, and how many processes serve it."""

    postgres: str | None = None  # a server's URL: a fresh database is made there
    redis: str | None = None
    workers: int = 1
    hosts: int = 1

    def describe(self) -> str:
        database = "postgresql" if self.postgres else "sqlite"
        broker = "redis" if self.redis else "in-process"
        processes = f"{self.workers} worker(s)"
        if self.hosts > 1:
            processes = f"{self.hosts} hosts x {processes}"
        return f"isochat serve ({database}, {broker} broker, {processes})"

    def host_environment(
        self, home: Path, database_url: str | None, redis_prefix: str | None
    ) -> dict[str, str]:
        """The ``ISOCHAT_*`` settings of one host, whose files are under ``home``."""
        env: dict[str, str] = {}
        if database_url is not None:
            env["ISOCHAT_DATABASE_URL"] = database_url
        if self.redis is not None and redis_prefix is not None:
            env["ISOCHAT_BROKER_URL"] = self.redis
            env["ISOCHAT_REDIS_PREFIX"] = redis_prefix
        if self.workers > 1:
            env["ISOCHAT_WORKERS"] = str(self.workers)
            # Else `isochat serve` makes one under /tmp that nobody removes.
            metrics = home / "metrics"
            metrics.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
        return env


@dataclass(frozen=True, slots=True)
class SharedState:
    """What the hosts of one deployment share: its database and its Redis key prefix."""

    database_url: str | None  # isochat's SQLAlchemy URL; None: each host its SQLite file
    database_name: str | None
    redis_prefix: str | None


@contextlib.contextmanager
def shared_state(deployment: Deployment) -> Iterator[SharedState]:
    """A fresh PostgreSQL database and a fresh Redis key prefix for ``deployment`` (those it
    uses), both removed on the way out."""
    with contextlib.ExitStack() as stack:
        url = name = prefix = None
        if deployment.postgres is not None:
            url, name = stack.enter_context(fresh_postgres_database(deployment.postgres))
        if deployment.redis is not None:
            prefix = stack.enter_context(fresh_redis_prefix(deployment.redis))
        yield SharedState(database_url=url, database_name=name, redis_prefix=prefix)


@contextlib.contextmanager
def fresh_postgres_database(url: str) -> Iterator[tuple[str, str]]:
    """A new database ``isochat_bench_<hex>`` on the server of ``url``, dropped on the way out;
    yields its SQLAlchemy URL for isochat, and its name."""
    admin = make_url(url)
    name = f"isochat_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin_sql(admin, f'CREATE DATABASE "{name}"'))
    try:
        isochat_url = admin.set(drivername="postgresql+asyncpg", database=name)
        yield isochat_url.render_as_string(hide_password=False), name
    finally:
        # FORCE: a connection isochat's pool left behind must not keep the database alive.
        asyncio.run(_admin_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def fresh_redis_prefix(url: str) -> Iterator[str]:
    """A key prefix of its own on a Redis shared with others (tests, another deployment of the
    benchmark: they would get each other's events); its keys are deleted on the way out."""
    prefix = f"isochat-bench-{secrets.token_hex(4)}:"
    try:
        yield prefix
    finally:
        asyncio.run(_delete_keys(url, prefix))


async def _delete_keys(url: str, prefix: str) -> None:
    async with Redis.from_url(url, socket_timeout=ADMIN_TIMEOUT_S) as redis:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)


async def _connect(url: URL, database: str | None = None) -> Any:
    return await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=database or url.database or "postgres",
        timeout=ADMIN_TIMEOUT_S,
    )


async def _admin_sql(url: URL, sql: str) -> None:
    conn = await _connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --- present but unused -------------------------------------------------------------------------

# The workload goes to the `math` route and calls the calculator; these serve and ask for
# anything but that.
UNUSED_ROUTE = "general"
UNUSED_SERVER = "unused"


def present_but_unused(mcp_url: str) -> dict[str, str]:
    """Settings of an isochat with MCP, approvals and queued runs present: an MCP server for
    the `general` route only, approval for that server's `add` tool, and messages to a busy
    thread queued by default (each run of the benchmark is on a thread of its own)."""
    return {
        "ISOCHAT_MCP_SERVERS": json.dumps(
            {UNUSED_SERVER: {"url": mcp_url, "routes": [UNUSED_ROUTE]}}
        ),
        "ISOCHAT_APPROVAL_TOOLS": f"{UNUSED_SERVER}__add",
        "ISOCHAT_MULTITASK_DEFAULT": "enqueue",
    }


# --- the services beside isochat: CPU time and counters ----------------------------------------


@dataclass(frozen=True, slots=True)
class Services:
    """The PostgreSQL and Redis servers a deployment uses, on this machine."""

    postgres: URL | None
    database_name: str | None
    postmaster_pid: int | None
    redis_url: str | None
    redis_pid: int | None

    async def counters(self) -> dict[str, float]:
        """Cumulative counters: ``pg.<name>`` of the deployment's database (transactions, rows
        by table; PostgreSQL publishes a backend's counts when it has been idle a while, up to
        10 s late), ``pg.wal_bytes`` (the whole server's, at once), ``redis.<command>`` calls
        and ``redis.total`` (the whole server's, at once)."""
        found: dict[str, float] = {}
        if self.postgres is not None and self.database_name is not None:
            found |= await _postgres_counters(self.postgres, self.database_name)
        if self.redis_url is not None:
            found |= await _redis_counters(self.redis_url)
        return found


async def _postgres_counters(url: URL, name: str) -> dict[str, float]:
    conn = await _connect(url, name)
    try:
        db = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, sessions, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS wal_bytes "
            "FROM pg_stat_database WHERE datname = $1",
            name,
        )
        tables = await conn.fetch(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
        )
    finally:
        await conn.close()
    found = {f"pg.{key}": float(value) for key, value in db.items()}
    for table in tables:
        for kind, key in (
            ("inserted", "n_tup_ins"),
            ("updated", "n_tup_upd"),
            ("deleted", "n_tup_del"),
        ):
            found[f"pg.{kind}.{table['relname']}"] = float(table[key])
    return found


async def _redis_counters(url: str) -> dict[str, float]:
    async with Redis.from_url(url, socket_timeout=ADMIN_TIMEOUT_S) as redis:
        stats = await redis.info("stats")
        commands = await redis.info("commandstats")
    found = {"redis.total": float(stats["total_commands_processed"])}
    for key, value in commands.items():  # cmdstat_publish: {"calls": 9, ...}
        found[f"redis.{key.removeprefix('cmdstat_')}"] = float(value["calls"])
    return found


def find_services(
    postgres: str | None, database_name: str | None, redis_url: str | None
) -> Services:
    """The servers behind the URLs (on this machine: their process ids are this machine's)."""
    admin = make_url(postgres) if postgres is not None else None
    postmaster, redis_pid = asyncio.run(_server_pids(admin, redis_url))
    if redis_pid is not None and not Path(f"/proc/{redis_pid}").exists():
        redis_pid = None  # another machine's, or another namespace's
    return Services(admin, database_name, postmaster, redis_url, redis_pid)


async def _server_pids(admin: URL | None, redis_url: str | None) -> tuple[int | None, int | None]:
    """The PostgreSQL server's postmaster (the parent of a backend, read while it lives; None
    when it is not on this machine), and Redis's pid."""
    postmaster = redis_pid = None
    if admin is not None:
        conn = await _connect(admin)
        try:
            backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
            with contextlib.suppress(OSError):
                postmaster = int((await asyncio.to_thread(stat_fields, backend))[1])
        finally:
            await conn.close()
    if redis_url is not None:
        async with Redis.from_url(redis_url, socket_timeout=ADMIN_TIMEOUT_S) as redis:
            redis_pid = int((await redis.info("server"))["process_id"])
    return postmaster, redis_pid


def per_run(
    before: Mapping[str, float],
    after: Mapping[str, float],
    idle: Mapping[str, float],
    *,
    idle_share: float,
    runs: int,
) -> dict[str, float]:
    """``(after - before - idle_share * idle) / runs`` for each counter: ``idle`` is the change
    over a window of the same services left alone, ``idle_share`` the length of the measured
    window over the idle one's."""
    keys = set(before) | set(after)
    return {
        key: (after.get(key, 0.0) - before.get(key, 0.0) - idle_share * idle.get(key, 0.0)) / runs
        for key in sorted(keys)
    }


def changes(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    keys = set(before) | set(after)
    return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in keys}
