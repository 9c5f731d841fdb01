"""``isochat serve | migrate | token USER_ID | drill --url URL ...``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from src.drill import cli as drill_cli
from src.logs import configured_secrets, logging_config
from src.plugins import BadPlugin, plugin_classes
from src.services.auth import TokenService
from src.services.database.engine import create_engine
from src.services.database.failures import DatabaseTimeout, unavailable
from src.services.database.migrations import MigrationLockTimeout, upgrade_to_head
from src.services.mcp.config import route_problems
from src.setting_errors import BadSettings, load_settings
from src.settings import Settings, redact_url

log = logging.getLogger("isochat")

# Exit codes: settings to fix (nothing was touched), and a database that could not be reached.
EXIT_BAD_SETTINGS = 2
EXIT_DATABASE_UNREACHABLE = 1
REASON_MAX_CHARS = 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isochat", description="isochat chat backend")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="apply pending migrations, then serve HTTP")
    commands.add_parser("migrate", help="apply pending migrations only")
    token = commands.add_parser("token", help="print a bearer token for a user")
    token.add_argument("user_id")
    drill = commands.add_parser(
        "drill",
        help="prove isolation on a live deployment: healthy users beside failing ones",
        description="Drive a deployment over its API and WebSocket: healthy users alone, then "
        "beside drill users whose runs fail on purpose; report what reached whom, how every "
        "run ended, and what was left behind. Exit 0 when everything was contained, 1 when "
        "not, 2 for bad options, 3 when the drill could not run.",
    )
    drill_cli.add_arguments(drill)
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
    except BadSettings as exc:
        # One line per bad variable, no traceback: the operator has a setting to fix, and
        # the line says which one and what it takes.
        for line in exc.problems:
            print(f"isochat: {line}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    log_config = logging_config(
        level=settings.log_level, fmt=settings.log_format, secrets=configured_secrets(settings)
    )
    logging.config.dictConfig(log_config)

    if args.command == "token":
        tokens = TokenService(secret=settings.auth_secret, ttl_s=settings.token_ttl_s)
        try:
            print(tokens.issue(args.user_id))
        except ValueError as exc:
            print(f"isochat: {exc}", file=sys.stderr)
            return 2
        return 0

    if args.command == "drill":
        # A client of the deployment: it signs its users' tokens, and touches no database.
        return drill_cli.main(
            args, auth_secret=settings.auth_secret, drill_secret=settings.drill_secret
        )

    if args.command == "serve":
        # Before anything is touched: a team's container that cannot be imported is a setting
        # to fix, said in one line, not a traceback in every worker.
        try:
            plugin_classes(settings.plugin_paths)
        except BadPlugin as exc:
            print(f"isochat: ISOCHAT_PLUGINS: {exc}", file=sys.stderr)
            return EXIT_BAD_SETTINGS
        # MCP servers' routes, once the teams' containers have added theirs.
        from src.container import build_container  # what serving needs, and only it

        request = build_container(settings).request
        problems = route_problems(request.mcp_servers(), request.routes())
        for line in problems:
            print(f"isochat: ISOCHAT_MCP_SERVERS: {line}", file=sys.stderr)
        if problems:
            return EXIT_BAD_SETTINGS

    problem = prepare_database(settings)
    if problem is not None:
        print(f"isochat: {problem}", file=sys.stderr)
        return EXIT_DATABASE_UNREACHABLE
    if args.command == "serve":
        # Runs a stopped server left `running` are ended by each worker's lease sweep once
        # their leases expire; live runs of other hosts are never touched.
        serve(settings, log_config=log_config)
    return 0


def prepare_database(settings: Settings) -> str | None:
    """Migrate the database to the newest revision; when it cannot be reached, one line that
    says where (without the password) and why, instead of a driver's traceback."""
    url = settings.database_url
    try:
        if make_url(url).get_backend_name() != "sqlite":
            # A network database is tried first within ISOCHAT_DB_TIMEOUT_S: the migration's
            # own connection would wait for the driver's default (a minute for asyncpg).
            asyncio.run(ping_database(url, timeout_s=settings.db_timeout_s))
        upgrade_to_head(url)
    except MigrationLockTimeout as exc:
        return str(exc)
    except Exception as exc:
        # Only failures to reach the database; a broken migration keeps its traceback.
        if not (unavailable(exc) or isinstance(exc, OSError | DBAPIError)):
            raise
        reason = unreachable_reason(exc, url=url, timeout_s=settings.db_timeout_s)
        return f"cannot reach the database at {redact_url(url)}: {reason}"
    return None


async def ping_database(url: str, *, timeout_s: float) -> None:
    """Connect to the database at ``url`` and run ``SELECT 1``, within about ``timeout_s``."""
    engine = create_engine(url, pool_size=1, max_overflow=0, timeout_s=timeout_s)
    try:
        # The driver bounds connecting and the statement; this bounds what it cannot (DNS).
        async with asyncio.timeout(2 * timeout_s):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except TimeoutError as exc:
        raise DatabaseTimeout(f"no answer within {timeout_s:g} s") from exc
    finally:
        await engine.dispose()


def unreachable_reason(exc: BaseException, *, url: str, timeout_s: float) -> str:
    """Why the database could not be reached, short, and never with the URL's password."""
    cause: BaseException = exc
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, BaseException):
        cause = exc.orig  # the driver's own words, without SQLAlchemy's statement and link
    if isinstance(cause, TimeoutError | DatabaseTimeout):
        reason = f"no answer within {timeout_s:g} s (ISOCHAT_DB_TIMEOUT_S)"
    elif isinstance(cause, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(cause, socket.gaierror):
        reason = f"unknown host ({cause.strerror})"
    else:
        lines = str(cause).strip().splitlines()
        reason = lines[0] if lines else type(cause).__name__
    password = make_url(url).password
    if password:
        for spelling in {str(password), unquote(str(password))}:
            reason = reason.replace(spelling, "***")
    if len(reason) > REASON_MAX_CHARS:
        reason = reason[:REASON_MAX_CHARS] + "..."
    return reason


def serve(settings: Settings, *, log_config: dict[str, Any]) -> None:
    if settings.workers > 1:
        prepare_multiprocess_metrics(settings.prometheus_multiproc_dir)
    uvicorn.run(
        "src.web.asgi:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=log_config,
        access_log=False,  # isochat logs each request itself, with its request id
        # A frame is a few hundred bytes of JSON: compressing each cost 7.6 % of the CPU of a
        # run at 500 users and saved a few hundred bytes.
        ws_per_message_deflate=False,
        lifespan="on",
        # On SIGTERM / Ctrl-C, requests in flight get this long; then their runs are cancelled
        # (stored as such). A second Ctrl-C exits at once.
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )


def prepare_multiprocess_metrics(directory: str | None) -> None:
    """Workers write their metrics to one directory, emptied first (prometheus-client's rule);
    a fresh one unless the operator chose it. Set before the workers start, which read it."""
    if directory is None:
        directory = tempfile.mkdtemp(prefix="isochat-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


if __name__ == "__main__":
    sys.exit(main())
