"""``isochat drill``'s command line: its arguments, checked before anything is touched, and
``main``, which runs the drill and turns its report into an exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from rich.console import Console

from src.drill.client import DrillAborted
from src.drill.faults import DrillClaim
from src.drill.plan import EXPECTED, HEALTHY, KINDS, MAX_USERS
from src.drill.progress import DrillProgress
from src.drill.steps import Drill, DrillTokens, Options
from src.services.auth import TokenService

EXIT_CONTAINED = 0
EXIT_NOT_CONTAINED = 1
EXIT_BAD_OPTIONS = 2
EXIT_CANNOT_DRILL = 3
TOKEN_SPARE_S = 600  # drill users' tokens outlive the drill by this much, no more


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", action="append", required=True, dest="urls", metavar="URL",
        help="the deployment (repeat for each host; users are spread over them)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-url", action="append", default=[], dest="metrics_urls", metavar="URL",
        help="each host's /metrics, when the --url is a load balancer (default: URL/metrics)",
    )  # fmt: skip
    parser.add_argument("--users", type=int, default=20, help="users in all (default 20)")
    parser.add_argument(
        "--faulty", type=float, default=0.2, help="share of them that are drill users (0.2)"
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"faults, comma-separated ({','.join(KINDS)})"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase (20)")
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between a user's messages (0.5)"
    )
    parser.add_argument(
        "--run-timeout", type=float, default=120.0,
        help="the deployment's ISOCHAT_RUN_TIMEOUT_S: how long a hung run may take (120)",
    )  # fmt: skip
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds for the gauges to come back (30)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none when not a terminal)"
    )


def options_from(args: argparse.Namespace) -> Options:
    """``ValueError`` saying which option is wrong."""
    urls = [u.rstrip("/") for u in args.urls]
    for url in [*urls, *args.metrics_urls]:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--url and --metrics-url take http(s)://host:port, got {url!r}")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in EXPECTED or k == HEALTHY]
    if unknown or not kinds:
        raise ValueError(f"--kinds takes some of {','.join(KINDS)}, got {args.kinds!r}")
    if not 2 <= args.users <= MAX_USERS:
        raise ValueError(f"--users takes 2 to {MAX_USERS}")
    if not 0 < args.faulty < 1:
        raise ValueError("--faulty takes a share between 0 and 1, such as 0.2")
    for name in ("duration", "interval", "run_timeout"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} takes a number of seconds above 0")
    if args.settle < 0:
        raise ValueError("--settle takes a number of seconds, 0 or more")
    return Options(
        urls=urls,
        metrics_urls=args.metrics_urls or [f"{u}/metrics" for u in urls],
        users=args.users,
        faulty=args.faulty,
        kinds=kinds,
        duration_s=args.duration,
        interval_s=args.interval,
        run_timeout_s=args.run_timeout,
        settle_s=args.settle,
    )


def main(args: argparse.Namespace, *, auth_secret: str, drill_secret: str | None) -> int:
    """Run the drill ``args`` describe; the exit code (0 contained, 1 not, 2 bad options,
    3 the drill could not run)."""
    if drill_secret is None:
        print(
            "isochat: isochat drill needs ISOCHAT_DRILL_SECRET, set to the deployment's",
            file=sys.stderr,
        )
        return EXIT_BAD_OPTIONS
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"isochat: {exc}", file=sys.stderr)
        return EXIT_BAD_OPTIONS
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    tokens = DrillTokens(
        TokenService(secret=auth_secret, ttl_s=int(options.longest_s) + TOKEN_SPARE_S),
        DrillClaim(drill_secret),
    )
    progress = DrillProgress(Console(stderr=True), wanted=not args.no_progress)
    try:
        report = asyncio.run(Drill(options, tokens, progress=progress).run())
    except DrillAborted as exc:
        print(f"isochat: the drill could not run: {exc}", file=sys.stderr)
        return EXIT_CANNOT_DRILL
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        report.render(Console())
    return EXIT_CONTAINED if report.ok else EXIT_NOT_CONTAINED
