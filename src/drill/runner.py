"""``isochat drill``: the drill's steps against a live deployment, in order.

1. Every host answers ``/health/ready`` and ``/metrics`` (gauges and memory, before).
2. Each user gets a token (drill users' carry the drill claim) and a thread; one drill user's
   message asks for an agent fault, to be sure the deployment takes drill faults at all.
3. Baseline: the healthy users alone, each sending a question every ``interval`` for
   ``duration``, over its own WebSocket.
4. Drill: the same healthy users again, beside the faulty users, whose runs fail in the chosen
   ways in turn (the server injects the fault, or the drill drops the socket or cancels).
5. The faulty runs' stored events are read; the runs still ``running`` counted; every drill
   thread deleted (the users' tokens expire soon after); the hosts' gauges read again until
   they are back where they were (or ``settle`` runs out).

Each step is bounded: a run is waited for at most the deployment's run timeout plus a grace,
and nothing is sent once a phase's duration is over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from src.drill.client import DrillAborted, RunRecord, UserClient
from src.drill.faults import DrillClaim, marker
from src.drill.hosts import HostReading, read_host
from src.drill.plan import EXPECTED, HEALTHY, KINDS, MAX_USERS, make_users, question
from src.drill.report import Findings, HostFigures, Report, build_report
from src.services.auth import TokenService

EXIT_CONTAINED = 0
EXIT_NOT_CONTAINED = 1
EXIT_CANNOT_DRILL = 3
END_GRACE_S = 15.0  # past the run timeout, for a run's end to be written and delivered
HTTP_TIMEOUT_S = 30.0
SETUP_CONCURRENCY = 20
SETTLE_POLL_S = 0.25
TOKEN_SPARE_S = 600  # drill users' tokens outlive the drill by this much, no more
RATE_LIMITED_PAUSE_S = 1.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Options:
    urls: list[str]
    metrics_urls: list[str]
    users: int = 20
    faulty: float = 0.2
    kinds: tuple[str, ...] = KINDS
    duration_s: float = 20.0
    interval_s: float = 0.5
    run_timeout_s: float = 120.0
    settle_s: float = 30.0

    @property
    def run_wait_s(self) -> float:
        return self.run_timeout_s + END_GRACE_S

    @property
    def longest_s(self) -> float:
        """About the longest the drill can take (each phase, its last runs, the settling)."""
        return 2 * (self.duration_s + self.run_wait_s) + self.settle_s + 60


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
        return 2
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"isochat: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    tokens = DrillTokens(
        TokenService(secret=auth_secret, ttl_s=int(options.longest_s) + TOKEN_SPARE_S),
        DrillClaim(drill_secret),
    )
    errors = Console(stderr=True)
    show = not args.no_progress and errors.is_terminal
    try:
        report = asyncio.run(Drill(options, tokens, console=errors, progress=show).run())
    except DrillAborted as exc:
        print(f"isochat: the drill could not run: {exc}", file=sys.stderr)
        return EXIT_CANNOT_DRILL
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        report.render(Console())
    return EXIT_CONTAINED if report.ok else EXIT_NOT_CONTAINED


class DrillTokens:
    """The drill users' tokens: a drill user's carries the claim only the drill secret makes."""

    def __init__(self, tokens: TokenService, claim: DrillClaim) -> None:
        self._tokens = tokens
        self._claim = claim

    def issue(self, user_id: str, *, drill: bool) -> str:
        return self._tokens.issue(user_id, extend=self._claim.add_to if drill else None)


class Drill:
    def __init__(
        self, options: Options, tokens: DrillTokens, *, console: Console, progress: bool
    ) -> None:
        self._options = options
        self._tokens = tokens
        self._http: dict[str, httpx.AsyncClient] = {}
        users = make_users(options.urls, users=options.users, faulty_share=options.faulty)
        self._clients = [UserClient(user, self._http) for user in users]
        self._problems: list[str] = []
        self._rate_limited = 0  # messages the rate limit refused, sent again
        self._counts: dict[TaskID, tuple[int, int]] = {}  # runs ended, not as expected
        self._threads_deleted = False
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[runs]} runs, {task.fields[off]} not as expected"),
            console=console,
            disable=not progress,
        )

    @property
    def _healthy(self) -> list[UserClient]:
        return [c for c in self._clients if not c.user.faulty]

    async def run(self) -> Report:
        started = time.monotonic()
        limits = httpx.Limits(max_connections=SETUP_CONCURRENCY * 2)
        for url in {*self._options.urls, *self._options.metrics_urls}:
            self._http[url] = httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, limits=limits)
        try:
            with self._progress:
                before = await self._ready()
                await self._prepare()
                await self._phase("baseline", self._healthy)
                await self._phase("drill", self._clients)
                await self._close_sockets()
                self._note_lost_sockets()
                stored = await self._stored_events()
                running = await self._runs_left_running()
                threads_left = await self._delete_threads()
                after = await self._settle(before)
        finally:
            await self._close_sockets()
            if not self._threads_deleted:  # stopped early (an error, Ctrl-C): still tidy up
                with contextlib.suppress(Exception):
                    await self._delete_threads()
            for client in self._http.values():
                await client.aclose()
        return build_report(
            Findings(
                clients=self._clients,
                kinds=self._options.kinds,
                stored_events=stored,
                runs_left_running=running,
                threads_left=threads_left,
                hosts=[
                    HostFigures(url, before[url], after[url]) for url in self._options.metrics_urls
                ],
                problems=self._problems,
                rate_limited=self._rate_limited,
                seconds=time.monotonic() - started,
            )
        )

    # 1-2: before the load

    async def _ready(self) -> dict[str, HostReading]:
        for url in self._options.urls:
            try:
                ready = await self._http[url].get("/health/ready")
            except httpx.HTTPError as exc:
                raise DrillAborted(f"{url} cannot be reached: {exc!r}") from None
            if ready.status_code != 200:
                raise DrillAborted(f"{url}/health/ready answered {ready.status_code}: {ready.text}")
        return await self._read_hosts()

    async def _read_hosts(self) -> dict[str, HostReading]:
        readings: dict[str, HostReading] = {}
        for url in self._options.metrics_urls:
            try:
                readings[url] = await read_host(self._http[url], url)
            except (httpx.HTTPError, ValueError) as exc:
                raise DrillAborted(f"cannot read {url}: {exc}") from None
        return readings

    async def _prepare(self) -> None:
        for client in self._clients:
            client.user.token = self._tokens.issue(client.user.user_id, drill=client.user.faulty)
        await _bounded(client.create_thread() for client in self._clients)
        await self._check_drills_on(next(c for c in self._clients if c.user.faulty))

    async def _check_drills_on(self, client: UserClient) -> None:
        """One drill user's message that asks for an agent fault must fail with it: otherwise
        the deployment does not take drill faults, and every figure would be about nothing."""
        body = {"content": question(client.user.next_operand(), "agent")}
        response = await client.request(
            "POST", f"/api/threads/{client.user.thread_id}/messages", body=body
        )
        run = response.json().get("run") if response.status_code == 200 else None
        if not run or (run.get("error") or {}).get("code") != "agent_error":
            raise DrillAborted(
                f"{client.user.host} does not take drill faults ({marker('agent')} answered "
                f"{response.status_code}, run {run and run.get('status')}): is "
                "ISOCHAT_DRILL_SECRET set there, to the same value as here?"
            )

    # 3-4: the phases

    async def _phase(self, name: str, clients: Sequence[UserClient]) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(c.main_socket() for c in clients if c.main is None))
        task = self._progress.add_task(f"{name:8}", total=self._options.duration_s, runs=0, off=0)
        until = loop.time() + self._options.duration_s
        kinds = itertools.cycle(self._options.kinds)  # faulty users take the faults in turn

        async def tick() -> None:
            while (left := until - loop.time()) > 0:
                self._progress.update(task, completed=self._options.duration_s - left)
                await asyncio.sleep(0.2)

        ticker = asyncio.create_task(tick())
        try:
            await asyncio.gather(*(self._user(c, name, until, kinds, task) for c in clients))
        finally:
            ticker.cancel()
        self._progress.update(task, completed=self._options.duration_s)

    async def _user(
        self, client: UserClient, phase: str, until: float, kinds: Iterator[str], task: TaskID
    ) -> None:
        loop = asyncio.get_running_loop()
        while (started := loop.time()) < until:
            kind = next(kinds) if client.user.faulty else HEALTHY
            record = client.new_record(kind, phase)
            await self._one_run(client, record)
            if record.run_id is None and record.code == "rate_limited":
                # The drill's own pace is over the user's limit: not the deployment's failure.
                client.forget(record)
                self._rate_limited += 1
                await asyncio.sleep(RATE_LIMITED_PAUSE_S)
                continue
            self._count(task, record)
            await asyncio.sleep(max(0.0, started + self._options.interval_s - loop.time()))

    async def _one_run(self, client: UserClient, record: RunRecord) -> None:
        wait_s = self._options.run_wait_s
        try:
            async with asyncio.timeout(wait_s):
                if record.kind == "disconnect":
                    socket = await client.open_socket(client.user.other_host, main=False)
                    await client.chat(socket, record)
                    await _first(record.working, record.ended)
                    socket.drop()
                else:
                    await client.chat(await client.main_socket(), record)
                    if record.kind == "cancel":
                        await _first(record.working, record.ended)
                        await self._cancel(client, record)
                await record.ended.wait()
        except TimeoutError:
            record.problem = f"no final event within {wait_s:g} s"
        except DrillAborted as exc:
            record.problem = str(exc)
            record.end(status=None, code=None)

    async def _cancel(self, client: UserClient, record: RunRecord) -> None:
        """Cancel from the user's other host: the cancel must reach the run wherever it runs."""
        if record.ended.is_set() or record.run_id is None:
            return
        path = f"/api/runs/{record.run_id}/cancel"
        response = await client.request("POST", path, host=client.user.other_host)
        if response.status_code not in (202, 409):  # 409: it ended first
            record.problem = f"POST {path} answered {response.status_code}"

    def _count(self, task: TaskID, record: RunRecord) -> None:
        runs, off = self._counts.get(task, (0, 0))
        runs, off = runs + 1, off + ((record.status, record.code) != EXPECTED[record.kind])
        self._counts[task] = (runs, off)
        self._progress.update(task, runs=runs, off=off)

    # 5: after the load

    async def _close_sockets(self) -> None:
        sockets = [s for c in self._clients for s in c.sockets if s.closed_at is None]
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)

    def _note_lost_sockets(self) -> None:
        for client in self._clients:
            for socket in client.sockets:
                if socket.main and socket.close_code not in (None, 1000):
                    self._note(f"{client.user.user_id}: the server closed its socket "
                               f"({socket.close_code})")  # fmt: skip

    async def _stored_events(self) -> dict[str, list[dict[str, object]]]:
        """The stored events of every faulty run, and of each run whose end was not seen live
        (whose stored state then says how it ended)."""
        stored: dict[str, list[dict[str, object]]] = {}

        async def read(client: UserClient, record: RunRecord) -> None:
            assert record.run_id is not None
            response = await client.request("GET", f"/api/runs/{record.run_id}/events")
            if response.status_code != 200:
                self._note(f"run {record.run_id}: its events answered {response.status_code}")
                return
            stored[record.run_id] = response.json()["events"]
            if record.status is None:
                run = (await client.request("GET", f"/api/runs/{record.run_id}")).json()
                if run.get("status") != "running":
                    record.status = run.get("status")
                    record.code = (run.get("error") or {}).get("code")
                self._note(f"run {record.run_id} ({record.kind}): {record.problem}")

        await _bounded(
            read(client, record)
            for client in self._clients
            for record in client.records
            if record.run_id is not None and (record.kind != HEALTHY or record.status is None)
        )
        for client in self._clients:
            for record in client.records:
                if record.run_id is None:
                    self._note(f"{record.kind} message of {client.user.user_id}: {record.problem}")
        return stored

    async def _runs_left_running(self) -> int:
        async def running(client: UserClient) -> bool:
            thread = await client.request("GET", f"/api/threads/{client.user.thread_id}")
            return thread.status_code == 200 and bool(thread.json().get("active_run_id"))

        return sum(await _bounded(running(client) for client in self._clients))

    async def _delete_threads(self) -> int:
        """Delete every drill thread; how many are left (each user lists their own)."""
        self._threads_deleted = True

        async def delete(client: UserClient) -> int:
            if client.user.thread_id:
                await client.request("DELETE", f"/api/threads/{client.user.thread_id}")
            listed = await client.request("GET", "/api/threads")
            return len(listed.json().get("threads", [])) if listed.status_code == 200 else 1

        return sum(await _bounded(delete(client) for client in self._clients))

    async def _settle(self, before: dict[str, HostReading]) -> dict[str, HostReading]:
        """The hosts' readings once every gauge is back where it was, or when ``settle`` is
        over (polling: nothing outside a server can wait for its teardown)."""
        task = self._progress.add_task("settling", total=None, runs="-", off="-")
        deadline = time.monotonic() + self._options.settle_s
        while True:
            after = await self._read_hosts()
            if all(after[u].settled_since(before[u]) for u in after) or (
                time.monotonic() >= deadline
            ):
                self._progress.update(task, total=1, completed=1)
                return after
            await asyncio.sleep(SETTLE_POLL_S)

    def _note(self, problem: str) -> None:
        self._problems.append(problem)


async def _bounded(work: Iterable[Awaitable[T]]) -> list[T]:
    """``work``'s results, at most ``SETUP_CONCURRENCY`` of it in flight at once."""
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one(awaitable: Awaitable[T]) -> T:
        async with gate:
            return await awaitable

    return await asyncio.gather(*(one(a) for a in work))


async def _first(*events: asyncio.Event) -> None:
    """Until one of ``events`` is set."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
