"""``isochat serve | migrate | token USER_ID``."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from src.logs import logging_config
from src.services.auth import TokenService
from src.services.database.migrations import upgrade_to_head
from src.settings import Settings

log = logging.getLogger("isochat")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isochat", description="isochat chat backend")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="apply pending migrations, then serve HTTP")
    commands.add_parser("migrate", help="apply pending migrations only")
    token = commands.add_parser("token", help="print a bearer token for a user")
    token.add_argument("user_id")
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except ValidationError as exc:
        messages = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        print(f"isochat: invalid settings: {messages}", file=sys.stderr)
        return 2
    log_config = logging_config(level=settings.log_level, fmt=settings.log_format)
    logging.config.dictConfig(log_config)

    if args.command == "token":
        tokens = TokenService(secret=settings.auth_secret, ttl_s=settings.token_ttl_s)
        try:
            print(tokens.issue(args.user_id))
        except ValueError as exc:
            print(f"isochat: {exc}", file=sys.stderr)
            return 2
        return 0

    upgrade_to_head(settings.database_url)
    if args.command == "serve":
        # Runs a stopped server left `running` are ended by each worker's lease sweep once
        # their leases expire; live runs of other hosts are never touched.
        serve(settings, log_config=log_config)
    return 0


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
