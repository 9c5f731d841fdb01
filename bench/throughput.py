"""Runs per second of a real ``isochat serve`` beside a hand-wired baseline doing the same durable
work, driven by the same client in the same run.

The two servers, each its own process on a free loopback port:

- ``isochat``: ``isochat serve`` on a fresh SQLite file (or, with ``--postgres``/``--redis``/
  ``--workers``, on a fresh PostgreSQL database, the Redis broker and N workers), offline model,
  rate and connection limits raised so that they never interfere;
- ``baseline``: ``bench/baseline_server.py`` (plain Starlette + one aiosqlite connection, no DI,
  no ORM, no agents) on its own SQLite file, always. Per run it does isochat's durable writes
  statement for statement (one transaction for the user's message and the run, one per event,
  one final one) on the same tables, and sends the same frames: before measuring, one run on
  each server is compared (event types, agents, frame and answer sizes) and a mismatch is
  reported.

The workload is ``what is (12 + 3) * 4?``: triage routes it to the math agent, whose model calls
the calculator, then answers (streamed as one ``agent_thinking``), 9 events in all. Each run is on
a thread of its own, created before its batch and not timed. A batch is C simulated users (C =
``--concurrency``), each with its own token, running their share of the batch's runs one after the
other, so that C runs are in flight at once:

- ``ws``: each user has one ``/ws`` socket (opened before the clock starts); a run is a ``chat``
  frame, done when its final event arrives;
- ``http``: each user has a client of its own with one keep-alive connection (opened before the
  clock starts); a run is ``POST /api/threads/{id}/messages``, done when its answer arrives.

For each batch: runs/s (runs / wall time), p50 and p99 latency (send to final event or answer),
the server's CPU time per run (user + system time of the server's processes, from
``/proc/<pid>/stat``, read just before and after the batch: with several workers, the sum over
the serving process and its children), its resident memory after the batch, the client's own
CPU time and how busy the machine's cores were (``/proc/stat``). The systems
alternate batch by batch (isochat, baseline, isochat, ...) and the whole sweep is repeated;
the table shows medians over the repetitions (runs/s also its min-max), after a warm-up batch
of each transport on each server that is not counted.

Reading the result: ``ratio`` is isochat / baseline. Runs/s below 1 and CPU per run above 1 are
what isochat's machinery (DI scopes, SQLAlchemy, agents, broker, rate limits, leases) costs over
the floor of the same durable work. The client runs on the same machine and shares its cores:
``client cpu`` is the share of a core it used during the batch; near 100 % the client, not the
server, set the pace; ``host busy`` near 100 % means the machine was out of cores.
PostgreSQL's and Redis's own CPU is not in ``cpu ms/run`` (it is in ``host busy``).

    .venv/bin/python bench/throughput.py [--quick] [--concurrency 1,10,50,200] [--repeats 3]
        [--transport ws,http] [--runs N] [--isochat-only | --baseline-only]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres --redis redis://127.0.0.1:6379/0
         --workers 2]

The last line is machine-readable (ratios at C=50 over ``/ws``, p99 at C=10); the exit code is 1
when a run failed or the servers' frames differ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx
from sqlalchemy.engine import URL, make_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from ws_load import (
    HOST,
    ISOCHAT,
    Server,
    free_port,
    log_tail,
    log_trouble,
    percentile,
    raise_fd_limit,
    raise_server_fd_limit,
    rss_mb,
    server_environment,
    stop,
    wait_until_live,
)

BASELINE = Path(__file__).with_name("baseline_server.py")
WORKLOAD = "what is (12 + 3) * 4?"
ANSWER = "(12 + 3) * 4 = 60"
FINAL_EVENTS = frozenset({"run_completed", "run_failed", "run_cancelled"})
SYSTEMS = ("isochat", "baseline")
TRANSPORTS = ("ws", "http")

DEFAULT_CONCURRENCY = (1, 10, 50, 200)
DEFAULT_REPEATS = 3
DEFAULT_RUNS = 120
QUICK_CONCURRENCY = (10, 50)
QUICK_REPEATS = 2
QUICK_RUNS = 100
# At high C each user still runs at least two runs in a row, so that the batch is not only C runs
# starting together and finishing together.
MIN_RUNS_PER_USER = 2
WARMUP_CONCURRENCY = 10
WARMUP_RUNS = 50

PREPARE_CONCURRENCY = 50
OPEN_TIMEOUT_S = 60.0
BATCH_TIMEOUT_S = 120.0
TOTAL_TIMEOUT_S = 900.0  # the whole measurement, whatever the flags: it stops by itself
SETTLE_S = 0.3  # after a batch, so the sockets' teardown is not billed to the next batch
FD_HEADROOM = 200
MAX_PROBLEMS_SHOWN = 10
LOG_TAIL_LINES = 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Limits far beyond what a run of this benchmark reaches. The rate limit is a moving window of
# BURST hits in ceil(60 * BURST / PER_MINUTE) s = 1 s: the window, and so what the limiter
# keeps per user, stays short.
RAISED_LIMITS = {
    "ISOCHAT_RATE_LIMIT_PER_MINUTE": "6000000",
    "ISOCHAT_RATE_LIMIT_BURST": "100000",
    "ISOCHAT_MAX_RUNNING_RUNS_PER_USER": "100000",
    "ISOCHAT_MAX_WS_CONNECTIONS_PER_USER": "100000",
}
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

T = TypeVar("T")


# --- the servers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    concurrency: tuple[int, ...]
    repeats: int
    runs: int
    transports: tuple[str, ...]
    systems: tuple[str, ...]
    postgres: str | None
    redis: str | None
    workers: int


@dataclass(frozen=True, slots=True)
class System:
    name: str
    server: Server
    description: str

    @property
    def pid(self) -> int:
        return self.server.process.pid


@contextlib.contextmanager
def started(
    command: list[str], *, env: dict[str, str], tmpdir: Path, name: str
) -> Iterator[Server]:
    """``command`` serving on a free port (``{port}`` in it is replaced); always stopped on the
    way out. Like ``ws_load.running_server``, for any command and environment."""
    port = free_port()
    log = tmpdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command],
            env={k: v.replace("{port}", str(port)) for k, v in env.items()},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_server_fd_limit,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the servers ourselves
        )
    try:
        yield Server(url=f"http://{HOST}:{port}", process=process, log=log)
    finally:
        stop(process)


def isochat_environment(tmpdir: Path, options: Options, database_url: str | None) -> dict[str, str]:
    home = tmpdir / "isochat"
    home.mkdir()
    env = server_environment(home, 0) | RAISED_LIMITS | {"ISOCHAT_PORT": "{port}"}
    if database_url is not None:
        env["ISOCHAT_DATABASE_URL"] = database_url
    if options.redis is not None:
        env["ISOCHAT_BROKER_URL"] = options.redis
    if options.workers > 1:
        env["ISOCHAT_WORKERS"] = str(options.workers)
        # Else `isochat serve` makes one under /tmp that nobody removes.
        metrics = home / "metrics"
        metrics.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    return env


def describe_isochat(options: Options) -> str:
    database = "postgresql" if options.postgres else "sqlite"
    broker = "redis" if options.redis else "in-process"
    return f"isochat serve ({database}, {broker} broker, {options.workers} worker(s))"


@contextlib.contextmanager
def fresh_postgres_database(url: str) -> Iterator[str]:
    """A new database ``isochat_bench_<hex>`` on the server of ``url``, dropped on the way out;
    yields its SQLAlchemy URL for isochat."""
    admin = make_url(url)
    name = f"isochat_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin_sql(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        # FORCE: a connection isochat's pool left behind must not keep the database alive.
        asyncio.run(_admin_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin_sql(url: URL, sql: str) -> None:
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
        timeout=10,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def running_systems(tmpdir: Path, options: Options) -> Iterator[list[System]]:
    with contextlib.ExitStack() as stack:
        systems: list[System] = []
        if "isochat" in options.systems:
            database_url = None
            if options.postgres is not None:
                database_url = stack.enter_context(fresh_postgres_database(options.postgres))
            env = isochat_environment(tmpdir, options, database_url)
            server = stack.enter_context(
                started([ISOCHAT, "serve"], env=env, tmpdir=tmpdir, name="isochat")
            )
            systems.append(System("isochat", server, describe_isochat(options)))
        if "baseline" in options.systems:
            env = {k: v for k, v in os.environ.items() if not k.startswith("ISOCHAT_")}
            command = [sys.executable, str(BASELINE), "--database", str(tmpdir / "baseline.db")]
            server = stack.enter_context(
                started([*command, "--port", "{port}"], env=env, tmpdir=tmpdir, name="baseline")
            )
            description = "bench/baseline_server.py (sqlite, aiosqlite, 1 process)"
            systems.append(System("baseline", server, description))
        for system in systems:
            wait_until_live(system.server)
        yield systems


# --- the server's processes: CPU time and memory ------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (uvicorn's workers are children of ``isochat serve``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rpartition(")")[2].split()[1])  # after "(comm)", which may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` (all their threads: aiosqlite's too)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat
    return ticks / CLOCK_TICKS


def host_cpu_ticks() -> tuple[int, int]:
    """Busy and total ticks of all the machine's cores since boot (the ``cpu`` line of
    /proc/stat): the client, the servers, PostgreSQL and Redis, and anyone else's work."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    total = sum(ticks[:8])  # guest time is already counted in user time
    return total - idle, total


def tree_rss_mb(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_mb(pid)
    return total


# --- users and threads (not timed) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def bounded(jobs: Sequence[Awaitable[T]], limit: int) -> list[T]:
    """``jobs`` (not started yet), at most ``limit`` at once."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return await asyncio.gather(*(one(job) for job in jobs))


def setup_client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=PREPARE_CONCURRENCY)
    return httpx.AsyncClient(base_url=url, timeout=60, limits=limits)


async def login(url: str, names: Sequence[str]) -> list[User]:
    async def one(http: httpx.AsyncClient, name: str) -> User:
        answer = await http.post("/api/auth/dev-login", json={"user_id": name})
        answer.raise_for_status()
        return User(name=name, token=answer.json()["token"])

    async with setup_client(url) as http:
        return await bounded([one(http, n) for n in names], PREPARE_CONCURRENCY)


async def new_threads(url: str, users: Sequence[User], per_user: int) -> list[list[str]]:
    """``per_user`` fresh threads for each user, one per run."""

    async def one(http: httpx.AsyncClient, user: User) -> str:
        answer = await http.post("/api/threads", json={"title": "bench"}, headers=user.headers)
        answer.raise_for_status()
        thread_id: str = answer.json()["id"]
        return thread_id

    async with setup_client(url) as http:
        jobs = [one(http, u) for u in users for _ in range(per_user)]
        flat = await bounded(jobs, PREPARE_CONCURRENCY)
    return [flat[i * per_user : (i + 1) * per_user] for i in range(len(users))]


# --- one user's runs ----------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What the users of one batch saw."""

    latencies_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # (type, agent, characters) of each frame of the first run, for the comparison of servers.
    frames: list[tuple[str, str | None, int]] = field(default_factory=list)
    answer_chars: int = 0


async def ws_runs(
    ws: ClientConnection, threads: Sequence[str], tally: Tally, *, record: bool
) -> None:
    for done, thread_id in enumerate(threads):
        chat = {"type": "chat", "thread_id": thread_id, "content": WORKLOAD}
        seen: list[tuple[str, str | None, int]] = []
        start = time.perf_counter()
        try:
            await ws.send(json.dumps(chat))
            while True:
                raw = await ws.recv()
                frame = json.loads(raw)
                kind = frame.get("type")
                seen.append((kind, frame.get("agent"), len(raw)))
                if kind in FINAL_EVENTS or kind == "error":
                    break
        except (OSError, ValueError, WebSocketException) as exc:
            # The socket is gone: this user's remaining runs cannot happen.
            tally.problems.append(f"ws: {type(exc).__name__}: {exc} ({len(threads) - done} runs)")
            return
        tally.latencies_s.append(time.perf_counter() - start)
        content = ((frame.get("data") or {}).get("message") or {}).get("content")
        if kind != "run_completed" or content != ANSWER or frame.get("seq") != len(seen):
            tally.problems.append(f"ws: ended with {json.dumps(frame)[:300]} after {len(seen)}")
        if record and not tally.frames:
            tally.frames = seen


async def http_runs(
    http: httpx.AsyncClient, user: User, threads: Sequence[str], tally: Tally, *, record: bool
) -> None:
    for thread_id in threads:
        start = time.perf_counter()
        try:
            answer = await http.post(
                f"/api/threads/{thread_id}/messages",
                json={"content": WORKLOAD},
                headers=user.headers,
            )
        except httpx.TransportError as exc:
            tally.problems.append(f"http: {type(exc).__name__}: {exc}")
            continue
        tally.latencies_s.append(time.perf_counter() - start)
        body = answer.json() if answer.status_code == 200 else {}
        run, message = body.get("run") or {}, body.get("message") or {}
        if run.get("status") != "completed" or message.get("content") != ANSWER:
            tally.problems.append(f"http: {answer.status_code} {answer.text[:300]}")
        if record and not tally.answer_chars:
            tally.answer_chars = len(answer.text)


# --- batches ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Numbers:
    """One batch, as measured around it (seconds; host_busy: the share of all cores busy)."""

    wall_s: float
    server_cpu_s: float
    client_cpu_s: float
    host_busy: float
    rss_mb: float


@dataclass(frozen=True, slots=True)
class Batch:
    system: str
    transport: str
    concurrency: int
    runs: int
    latencies_ms: list[float]  # sorted
    numbers: Numbers
    tally: Tally

    @property
    def wall_s(self) -> float:
        return self.numbers.wall_s

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.wall_s

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    @property
    def cpu_ms_per_run(self) -> float:
        return 1000 * self.numbers.server_cpu_s / self.runs

    @property
    def client_cpu_share(self) -> float:
        return self.numbers.client_cpu_s / self.wall_s


Load = Callable[[], Coroutine[Any, Any, None]]


async def measured(system: System, load: Load) -> Numbers:
    """Run ``load`` (bounded by ``BATCH_TIMEOUT_S``) and measure it."""
    pids = process_tree(system.pid)
    gc.collect()  # the client's garbage from setting up, collected outside the clock
    host0, server0 = host_cpu_ticks(), cpu_seconds(pids)
    client0, start = time.process_time(), time.perf_counter()
    async with asyncio.timeout(BATCH_TIMEOUT_S):
        await load()
    wall = time.perf_counter() - start
    client1, server1, host1 = time.process_time(), cpu_seconds(pids), host_cpu_ticks()
    return Numbers(
        wall_s=wall,
        server_cpu_s=server1 - server0,
        client_cpu_s=client1 - client0,
        host_busy=ratio(host1[0] - host0[0], host1[1] - host0[1]),
        rss_mb=tree_rss_mb(pids),
    )


async def ws_batch(
    system: System, users: Sequence[User], threads: Sequence[Sequence[str]], *, record: bool
) -> tuple[Tally, Numbers]:
    tally = Tally()
    url = "ws" + system.server.url.removeprefix("http")
    async with contextlib.AsyncExitStack() as stack:
        opened = await asyncio.gather(
            *(connect(f"{url}/ws?token={u.token}", open_timeout=OPEN_TIMEOUT_S) for u in users)
        )
        for ws in opened:
            stack.push_async_callback(ws.close)

        async def load() -> None:
            await asyncio.gather(
                *(
                    ws_runs(ws, mine, tally, record=record)
                    for ws, mine in zip(opened, threads, strict=True)
                )
            )

        numbers = await measured(system, load)
    return tally, numbers


async def http_batch(
    system: System, users: Sequence[User], threads: Sequence[Sequence[str]], *, record: bool
) -> tuple[Tally, Numbers]:
    tally = Tally()
    # One client, hence one keep-alive connection, per user, as each browser has its own: one
    # client with a pool of C connections spends O(C) per request on the pool (at C=200 it,
    # not the server, would set the pace).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=system.server.url, timeout=BATCH_TIMEOUT_S, limits=limits
                )
            )
            for _ in users
        ]
        # Connections opened before the clock starts.
        await asyncio.gather(*(http.get("/health/live") for http in clients))

        async def load() -> None:
            await asyncio.gather(
                *(
                    http_runs(http, user, mine, tally, record=record)
                    for http, user, mine in zip(clients, users, threads, strict=True)
                )
            )

        numbers = await measured(system, load)
    return tally, numbers


async def batch(
    system: System,
    users: Sequence[User],
    *,
    transport: str,
    concurrency: int,
    runs: int,
    record: bool = False,
    min_per_user: int = MIN_RUNS_PER_USER,
) -> Batch:
    """``concurrency`` users of ``users`` doing ``runs`` runs between them (rounded up so that
    each does the same number, at least ``min_per_user``), each on a fresh thread."""
    per_user = max(min_per_user, math.ceil(runs / concurrency))
    mine = users[:concurrency]
    threads = await new_threads(system.server.url, mine, per_user)
    run = ws_batch if transport == "ws" else http_batch
    tally, numbers = await run(system, mine, threads, record=record)
    await asyncio.sleep(SETTLE_S)
    return Batch(
        system=system.name,
        transport=transport,
        concurrency=concurrency,
        runs=per_user * concurrency,
        latencies_ms=sorted(1000 * s for s in tally.latencies_s),
        numbers=numbers,
        tally=tally,
    )


# --- the sweep ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Sweep:
    systems: list[System]
    options: Options
    batches: list[Batch] = field(default_factory=list)
    # transport -> system -> what one run sent: frames (ws) and the answer's size (http).
    shapes: dict[str, dict[str, Tally]] = field(default_factory=dict)
    stopped_early: bool = False  # at TOTAL_TIMEOUT_S, with what was measured until then


async def sweep(systems: list[System], options: Options) -> Sweep:
    result = Sweep(systems, options)
    # Unique per benchmark run: a shared Redis keeps per-user counters of earlier runs.
    prefix = f"bench-{secrets.token_hex(3)}"
    names = [f"{prefix}-{i}" for i in range(max(*options.concurrency, WARMUP_CONCURRENCY))]
    users = {s.name: await login(s.server.url, names) for s in systems}
    for transport in options.transports:
        for system in systems:
            # One run whose frames are compared between the servers, then a warm-up batch
            # (discarded): imports, caches, pools and the allocator settle.
            shape = await batch(
                system,
                users[system.name],
                transport=transport,
                concurrency=1,
                runs=1,
                record=True,
                min_per_user=1,
            )
            result.shapes.setdefault(transport, {})[system.name] = shape.tally
            await batch(
                system,
                users[system.name],
                transport=transport,
                concurrency=WARMUP_CONCURRENCY,
                runs=WARMUP_RUNS,
            )
    # Past the deadline no batch starts: what was measured is reported, marked as cut short.
    deadline = time.monotonic() + TOTAL_TIMEOUT_S
    for _ in range(options.repeats):
        for transport in options.transports:
            for concurrency in options.concurrency:
                for system in systems:  # alternating: drift on the machine hits both
                    if time.monotonic() > deadline:
                        result.stopped_early = True
                        return result
                    measured_batch = await batch(
                        system,
                        users[system.name],
                        transport=transport,
                        concurrency=concurrency,
                        runs=options.runs,
                    )
                    result.batches.append(measured_batch)
    return result


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when there is one (uvicorn's own loop, in both servers): the
    client's own overhead is then as small as it gets, on the cores it shares with them."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work)


# --- reporting ----------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) else math.nan


@dataclass(frozen=True, slots=True)
class Cell:
    """Medians over the repetitions of one system at one transport and concurrency."""

    runs_per_s: float
    runs_per_s_min: float
    runs_per_s_max: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_run: float
    rss_mb: float
    client_cpu_share: float
    host_busy: float


def cell(batches: Sequence[Batch]) -> Cell | None:
    if not batches:
        return None
    rates = [b.runs_per_s for b in batches]
    return Cell(
        runs_per_s=statistics.median(rates),
        runs_per_s_min=min(rates),
        runs_per_s_max=max(rates),
        p50_ms=statistics.median(b.p50_ms for b in batches),
        p99_ms=statistics.median(b.p99_ms for b in batches),
        cpu_ms_per_run=statistics.median(b.cpu_ms_per_run for b in batches),
        rss_mb=statistics.median(b.numbers.rss_mb for b in batches),
        client_cpu_share=statistics.median(b.client_cpu_share for b in batches),
        host_busy=statistics.median(b.numbers.host_busy for b in batches),
    )


def cells(result: Sweep) -> dict[tuple[str, int, str], Cell]:
    found: dict[tuple[str, int, str], Cell] = {}
    for transport in result.options.transports:
        for concurrency in result.options.concurrency:
            for system in result.systems:
                picked = [
                    b
                    for b in result.batches
                    if (b.transport, b.concurrency, b.system)
                    == (transport, concurrency, system.name)
                ]
                if (c := cell(picked)) is not None:
                    found[transport, concurrency, system.name] = c
    return found


HEADER = (
    f"{'':<4} {'C':>4}  {'':<9} {'runs/s':>8} {'(min-max)':<15} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'cpu ms/run':>10} {'rss MB':>7} {'client cpu':>10} {'host busy':>9}"
)


def row(transport: str, concurrency: int, name: str, c: Cell) -> str:
    spread = f"({c.runs_per_s_min:.0f}-{c.runs_per_s_max:.0f})"
    return (
        f"{transport:<4} {concurrency:>4}  {name:<9} {c.runs_per_s:>8.1f} {spread:<15} "
        f"{c.p50_ms:>8.1f} {c.p99_ms:>8.1f} {c.cpu_ms_per_run:>10.2f} {c.rss_mb:>7.1f} "
        f"{100 * c.client_cpu_share:>9.0f}% {100 * c.host_busy:>8.0f}%"
    )


def ratio_row(transport: str, concurrency: int, a: Cell, b: Cell) -> str:
    return (
        f"{transport:<4} {concurrency:>4}  {'ratio':<9} {ratio(a.runs_per_s, b.runs_per_s):>8.2f} "
        f"{'':<15} {ratio(a.p50_ms, b.p50_ms):>8.2f} {ratio(a.p99_ms, b.p99_ms):>8.2f} "
        f"{ratio(a.cpu_ms_per_run, b.cpu_ms_per_run):>10.2f} {ratio(a.rss_mb, b.rss_mb):>7.2f}"
    )


def table(result: Sweep) -> list[str]:
    found = cells(result)
    lines = [HEADER]
    for transport in result.options.transports:
        for concurrency in result.options.concurrency:
            for system in result.systems:
                if (c := found.get((transport, concurrency, system.name))) is not None:
                    lines.append(row(transport, concurrency, system.name, c))
            a = found.get((transport, concurrency, "isochat"))
            b = found.get((transport, concurrency, "baseline"))
            if a is not None and b is not None:
                lines.append(ratio_row(transport, concurrency, a, b))
    return lines


def describe_frames(tally: Tally) -> str:
    kinds = ", ".join(f"{t}/{a}" if a else t for t, a, _ in tally.frames)
    return f"{len(tally.frames)} frames, {sum(n for *_, n in tally.frames)} chars ({kinds})"


def shape_lines(result: Sweep) -> tuple[list[str], list[str]]:
    """What one run sent on each server, and every difference between them."""
    lines: list[str] = []
    differences: list[str] = []
    for transport, by_system in result.shapes.items():
        for name, tally in by_system.items():
            what = describe_frames(tally) if transport == "ws" else f"{tally.answer_chars} chars"
            lines.append(f"one run over {transport} on {name}: {what}")
        if set(by_system) == set(SYSTEMS):
            a, b = by_system["isochat"], by_system["baseline"]
            if (a.frames, a.answer_chars) != (b.frames, b.answer_chars):
                differences.append(f"the servers' {transport} frames differ: update the baseline")
    return lines, differences


def final_line(result: Sweep) -> str:
    found = cells(result)
    a, b = found.get(("ws", 50, "isochat")), found.get(("ws", 50, "baseline"))
    a10, b10 = found.get(("ws", 10, "isochat")), found.get(("ws", 10, "baseline"))
    nan = math.nan
    rate_a, rate_b = (a.runs_per_s if a else nan), (b.runs_per_s if b else nan)
    cpu = ratio(a.cpu_ms_per_run, b.cpu_ms_per_run) if a and b else nan
    p99 = ratio(a10.p99_ms, b10.p99_ms) if a10 and b10 else nan
    return (
        f"throughput: c=50 isochat {rate_a:.1f} baseline {rate_b:.1f} "
        f"ratio {ratio(rate_a, rate_b):.2f} cpu_ratio {cpu:.2f} p99_c10_ratio {p99:.2f}"
    )


def report(result: Sweep) -> tuple[list[str], list[str]]:
    """The printed report, and every reason for a non-zero exit."""
    options = result.options
    shapes, problems = shape_lines(result)
    runs = result.batches
    if result.stopped_early:
        problems.append(f"stopped after {TOTAL_TIMEOUT_S:.0f} s, {len(runs)} batches measured")
    failed = [p for b in runs for p in b.tally.problems]
    if failed:
        problems.append(f"{len(failed)} run(s) failed, the first {MAX_PROBLEMS_SHOWN}:")
        problems += [f"  {p}" for p in failed[:MAX_PROBLEMS_SHOWN]]
    lines = [
        f"workload: {WORKLOAD!r}; {options.repeats} repetition(s); at least {options.runs} runs "
        f"per batch ({MIN_RUNS_PER_USER} per user); {len(runs)} batches, "
        f"{sum(b.runs for b in runs)} measured runs",
        *shapes,
        "",
        *table(result),
        "",
        "ratio = isochat / baseline; medians over the repetitions; cpu ms/run = the server's CPU "
        "time per run; client cpu = the client's share of one core during the batch; host busy "
        f"= the share of all {os.cpu_count()} cores busy during the batch (everything on the "
        "machine)",
    ]
    return lines, problems


# --- main ---------------------------------------------------------------------------------------


def int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive whole numbers, e.g. 1,10,50")
    return values


def name_list(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"expected some of {','.join(allowed)}")
        return values

    return parse


def parse_args() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="about a minute: C=10,50, 2 reps")
    parser.add_argument("--concurrency", type=int_list, help="default 1,10,50,200")
    parser.add_argument("--repeats", type=int, help="default 3")
    parser.add_argument("--runs", type=int, help="runs per batch at least (default 120)")
    parser.add_argument("--transport", type=name_list(TRANSPORTS), default=TRANSPORTS)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--isochat-only", action="store_true")
    only.add_argument("--baseline-only", action="store_true")
    parser.add_argument("--postgres", metavar="URL", help="isochat on a fresh database there")
    parser.add_argument("--redis", metavar="URL", help="isochat's broker")
    parser.add_argument("--workers", type=int, default=1, help="isochat's workers")
    args = parser.parse_args()
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if repeats < 1 or runs < 1:
        parser.error("--repeats and --runs must be at least 1")
    if args.workers < 1 or (args.workers > 1 and not args.redis):
        parser.error("--workers must be at least 1, and more than 1 needs --redis")
    for url in (args.postgres, args.redis):
        if url is not None and urlsplit(url).hostname not in LOOPBACK:
            parser.error(f"only servers on this machine (127.0.0.1) are used, not {url!r}")
    systems = (
        ("isochat",) if args.isochat_only else ("baseline",) if args.baseline_only else SYSTEMS
    )
    return Options(
        concurrency=args.concurrency or (QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY),
        repeats=repeats,
        runs=runs,
        transports=args.transport,
        systems=systems,
        postgres=args.postgres,
        redis=args.redis,
        workers=args.workers,
    )


def main() -> int:
    options = parse_args()
    # The client holds one socket per user, twice at most (closing ones and new ones).
    raise_fd_limit(2 * max(*options.concurrency, WARMUP_CONCURRENCY) + FD_HEADROOM)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="throughput-") as tmpdir,
            running_systems(Path(tmpdir), options) as systems,
        ):
            # Printed at once: the pids are for a profiler (py-spy) to attach to meanwhile.
            for s in systems:
                print(f"{s.name}: {s.description}, pid {s.pid}, {s.server.url}", flush=True)
            try:
                result = run_async(sweep(systems, options))
            except (OSError, TimeoutError, httpx.HTTPError, WebSocketException) as exc:
                print(f"throughput: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                for s in systems:
                    print(f"--- {s.name} log tail ---\n{log_tail(s.server.log)}", file=sys.stderr)
                return 1
            lines, problems = report(result)
            for s in systems:
                if trouble := log_trouble(s.server.log):
                    problems.append(f"{s.name}'s log has {trouble} line(s) with errors")
                    problems.append(log_tail(s.server.log, LOG_TAIL_LINES))
    except KeyboardInterrupt:
        print("throughput: interrupted; the servers were stopped", file=sys.stderr)
        return 130
    print("\n".join(lines))
    if problems:
        print("FAILED:\n" + "\n".join(problems))
    print(final_line(result))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
