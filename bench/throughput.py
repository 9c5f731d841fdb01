"""Runs per second of a real ``isochat serve`` beside a hand-wired baseline doing the same durable
work, driven by the same client in the same run.

The servers, each its own process on a free loopback port:

- ``isochat``: ``isochat serve`` on a fresh SQLite file, offline model, rate and connection
  limits raised so that they never interfere. With ``--postgres``/``--redis`` on a fresh
  PostgreSQL database and the Redis broker (a key prefix of its own), with ``--workers N``
  workers, and with ``--hosts N`` as N hosts of one deployment: N ``isochat serve`` processes
  on this machine, each on its own port, sharing the database and the broker (the users go
  round-robin: each user's socket or HTTP client is on one host). ``bench/deployments.py``
  sets these up;
- ``present`` (with ``--mcp-unused``): a second isochat, deployed the same way on state of its
  own, with an MCP server (``tests/mcp_servers/server2.py``, a real one, started beside it),
  approvals and queued runs configured for what the workload never does: the server serves
  only the ``general`` route, its ``add`` tool needs approval, and a message to a busy thread
  is queued by default. The two alternate batch by batch like the baseline; ``present/iso``
  is what having them costs, and the report says how many requests the MCP server got;
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
``/proc/<pid>/stat``, read just before and after the batch: the sum over every host's serving
process and its children, the workers), its resident memory after the batch (summed the same
way), the client's own CPU time and how busy the machine's cores were (``/proc/stat``); with
PostgreSQL or Redis, also their CPU time per run (``pg``, ``redis ms/run``: the whole servers',
every PostgreSQL process including the backends that exited meanwhile). The systems
alternate batch by batch (isochat, present, baseline, isochat, ...) and the whole sweep is
repeated; the table shows medians over the repetitions (runs/s also its min-max), after a
warm-up batch of each transport on each server that is not counted.

With PostgreSQL or Redis, one more batch on ``isochat`` (C=10, ``--runs`` runs, first transport)
counts what a run costs them: PostgreSQL's transactions and rows inserted, updated and deleted
(by table) in isochat's database (``pg_stat_database``, ``pg_stat_user_tables``) and the WAL
written, Redis's commands by name (``INFO commandstats``); what they did over a window as long
with nobody running is subtracted. PostgreSQL publishes its counts up to 10 s late, so this
batch takes about 35 s more.

Reading the result: ``ratio`` is isochat / baseline. Runs/s below 1 and CPU per run above 1 are
what isochat's machinery (DI scopes, SQLAlchemy, agents, broker, rate limits, leases) costs over
the floor of the same durable work. The client runs on the same machine and shares its cores:
``client cpu`` is the share of a core it used during the batch; near 100 % the client, not the
server, set the pace; ``host busy`` near 100 % means the machine was out of cores.
PostgreSQL's and Redis's own CPU is not in ``cpu ms/run`` (it is in ``host busy``, and in their
columns). Anyone else's use of the machine, the PostgreSQL server or Redis meanwhile is in
``host busy``, their CPU columns, the WAL and Redis's counts: measure on a quiet machine.

    .venv/bin/python bench/throughput.py [--quick] [--concurrency 1,10,50,200] [--repeats 3]
        [--transport ws,http] [--runs N] [--isochat-only | --baseline-only] [--mcp-unused]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres --redis redis://127.0.0.1:6379/0
         [--workers 2] [--hosts 2]]

The last line is machine-readable (ratios at C=50 over ``/ws``, p99 at C=10; with
``--mcp-unused`` also present / isochat in runs/s and CPU per run); the exit code is 1 when a
run failed or the servers' frames differ.
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

import httpx
from deployments import (
    Deployment,
    Services,
    changes,
    find_services,
    per_run,
    present_but_unused,
    shared_state,
    stat_fields,
)
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

from tests.mcp_servers.fixtures import McpServerProcess, mcp2_server

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
# PostgreSQL's backends publish their counts when idle, at most 10 s after their last flush.
COUNT_SETTLE_S = 11.0
COUNT_CONCURRENCY = 10
BUSY_WINDOW_S = 3.0  # the machine's idle business, before the first batch
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
    deployment: Deployment


@dataclass(frozen=True, slots=True)
class System:
    name: str
    server: Server  # the first host (the only one, unless --hosts)
    description: str
    hosts: tuple[Server, ...] = ()  # every host, when there are several
    services: Services | None = None  # the PostgreSQL and Redis it uses, if it does

    @property
    def pid(self) -> int:
        return self.server.process.pid

    @property
    def servers(self) -> tuple[Server, ...]:
        return self.hosts or (self.server,)

    def server_of(self, user: int) -> Server:
        """The host of the ``user``-th user of a batch: the users go round-robin."""
        return self.servers[user % len(self.servers)]


@dataclass(frozen=True, slots=True)
class Running:
    systems: list[System]
    unused_mcp: McpServerProcess | None  # the MCP server of `present`, to ask what it was asked


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


@contextlib.contextmanager
def deployed(
    tmpdir: Path, name: str, deployment: Deployment, extra: dict[str, str]
) -> Iterator[System]:
    """``deployment``'s hosts, each ``isochat serve`` with the settings ``extra`` too, on state
    of their own (a fresh database, a fresh Redis prefix); stopped, and their state removed, on
    the way out."""
    with contextlib.ExitStack() as stack:
        state = stack.enter_context(shared_state(deployment))
        servers: list[Server] = []
        for host in range(deployment.hosts):
            label = name if deployment.hosts == 1 else f"{name}-{host + 1}"
            home = tmpdir / label
            home.mkdir()
            env = server_environment(home, 0) | RAISED_LIMITS | {"ISOCHAT_PORT": "{port}"}
            env |= deployment.host_environment(home, state.database_url, state.redis_prefix)
            env |= extra
            command = [ISOCHAT, "serve"]
            servers.append(
                stack.enter_context(started(command, env=env, tmpdir=tmpdir, name=label))
            )
        for server in servers:  # started together: they migrate under a lock, one at a time
            wait_until_live(server)
        services = None
        if deployment.postgres is not None or deployment.redis is not None:
            services = find_services(deployment.postgres, state.database_name, deployment.redis)
        description = deployment.describe()
        if extra:
            description += ", with MCP, approvals and queued runs present but unused"
        hosts = tuple(servers) if len(servers) > 1 else ()
        yield System(name, servers[0], description, hosts, services)


@contextlib.contextmanager
def baseline(tmpdir: Path) -> Iterator[System]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISOCHAT_")}
    command = [sys.executable, str(BASELINE), "--database", str(tmpdir / "baseline.db")]
    with started([*command, "--port", "{port}"], env=env, tmpdir=tmpdir, name="baseline") as s:
        wait_until_live(s)
        yield System("baseline", s, "bench/baseline_server.py (sqlite, aiosqlite, 1 process)")


@contextlib.contextmanager
def running_systems(tmpdir: Path, options: Options) -> Iterator[Running]:
    with contextlib.ExitStack() as stack:
        systems: list[System] = []
        unused_mcp = None
        for name in options.systems:
            if name == "baseline":
                systems.append(stack.enter_context(baseline(tmpdir)))
                continue
            extra: dict[str, str] = {}
            if name == "present":
                unused_mcp = stack.enter_context(mcp2_server(tmpdir / "unused-mcp.log"))
                extra = present_but_unused(unused_mcp.url)
            system = deployed(tmpdir, name, options.deployment, extra)
            systems.append(stack.enter_context(system))
        yield Running(systems, unused_mcp)


# --- the server's processes: CPU time and memory ------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (uvicorn's workers are children of ``isochat serve``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(stat_fields(int(entry.name))[1])
        except OSError:
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(pids: Sequence[int], *, reaped_of: int | None = None) -> float:
    """User + system CPU time of ``pids`` (all their threads: aiosqlite's too), and with
    ``reaped_of`` also the time of that process's children that have exited and been waited
    for (PostgreSQL's backends come and go; the postmaster reaps them)."""
    ticks = 0
    for pid in pids:
        try:
            fields = stat_fields(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat
        if pid == reaped_of:
            ticks += int(fields[13]) + int(fields[14])  # cutime and cstime, fields 16 and 17
    return ticks / CLOCK_TICKS


def services_cpu(system: System) -> tuple[float, float]:
    """CPU time of the PostgreSQL server (all its processes, including the backends that have
    exited) and of Redis, since they started; NaN for what the system does not use. The whole
    servers': anyone else's use of them meanwhile is in it too."""
    services = system.services
    database = broker = math.nan
    if services is not None and services.postmaster_pid is not None:
        postmaster = services.postmaster_pid
        database = cpu_seconds(process_tree(postmaster), reaped_of=postmaster)
    if services is not None and services.redis_pid is not None:
        broker = cpu_seconds([services.redis_pid])
    return database, broker


def host_cpu_ticks() -> tuple[int, int]:
    """Busy and total ticks of all the machine's cores since boot (the ``cpu`` line of
    /proc/stat): the client, the servers, PostgreSQL and Redis, and anyone else's work."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    total = sum(ticks[:8])  # guest time is already counted in user time
    return total - idle, total


async def machine_busy(seconds: float) -> float:
    """The share of the machine's cores busy over ``seconds``: while the benchmark waits, the
    work of others (and of the servers' own timers)."""
    busy0, total0 = host_cpu_ticks()
    await asyncio.sleep(seconds)
    busy1, total1 = host_cpu_ticks()
    return ratio(busy1 - busy0, total1 - total0)


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


def round_robin(system: System, items: Sequence[T]) -> list[tuple[Server, list[T]]]:
    """``items`` (users, names) spread over the system's hosts: the i-th to host i mod N."""
    hosts = system.servers
    return [(host, list(items[i :: len(hosts)])) for i, host in enumerate(hosts)]


def interleaved(groups: Sequence[Sequence[T]]) -> list[T]:
    """The inverse of ``round_robin``: the groups' items back in their first order."""
    n = len(groups)
    return [groups[i % n][i // n] for i in range(sum(len(g) for g in groups))]


async def users_of(system: System, names: Sequence[str]) -> list[User]:
    """Each user logged in on its own host (any host's token is good on every host)."""
    spread = round_robin(system, names)
    return interleaved(await asyncio.gather(*(login(h.url, mine) for h, mine in spread)))


async def threads_of(system: System, users: Sequence[User], per_user: int) -> list[list[str]]:
    """``new_threads`` for each user, on its own host."""
    spread = round_robin(system, users)
    made = await asyncio.gather(*(new_threads(h.url, mine, per_user) for h, mine in spread))
    return interleaved(made)


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
    server_cpu_s: float  # every process of every host
    client_cpu_s: float
    host_busy: float
    rss_mb: float
    # The PostgreSQL and Redis servers' CPU time, when the system uses them.
    database_cpu_s: float = math.nan
    broker_cpu_s: float = math.nan


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

    @property
    def database_cpu_ms_per_run(self) -> float:
        return 1000 * self.numbers.database_cpu_s / self.runs

    @property
    def broker_cpu_ms_per_run(self) -> float:
        return 1000 * self.numbers.broker_cpu_s / self.runs


Load = Callable[[], Coroutine[Any, Any, None]]
Measure = Callable[["System", Load], Awaitable[Numbers]]


async def measured(system: System, load: Load) -> Numbers:
    """Run ``load`` (bounded by ``BATCH_TIMEOUT_S``) and measure it."""
    pids = [pid for server in system.servers for pid in process_tree(server.process.pid)]
    gc.collect()  # the client's garbage from setting up, collected outside the clock
    services0 = services_cpu(system)
    host0, server0 = host_cpu_ticks(), cpu_seconds(pids)
    client0, start = time.process_time(), time.perf_counter()
    async with asyncio.timeout(BATCH_TIMEOUT_S):
        await load()
    wall = time.perf_counter() - start
    client1, server1, host1 = time.process_time(), cpu_seconds(pids), host_cpu_ticks()
    services1 = services_cpu(system)
    return Numbers(
        wall_s=wall,
        server_cpu_s=server1 - server0,
        client_cpu_s=client1 - client0,
        host_busy=ratio(host1[0] - host0[0], host1[1] - host0[1]),
        rss_mb=tree_rss_mb(pids),
        database_cpu_s=services1[0] - services0[0],
        broker_cpu_s=services1[1] - services0[1],
    )


async def ws_batch(
    system: System,
    users: Sequence[User],
    threads: Sequence[Sequence[str]],
    *,
    record: bool,
    measure: Measure = measured,
) -> tuple[Tally, Numbers]:
    tally = Tally()
    async with contextlib.AsyncExitStack() as stack:
        opened = await asyncio.gather(
            *(
                connect(
                    f"{system.server_of(i).ws_url}/ws?token={u.token}",
                    open_timeout=OPEN_TIMEOUT_S,
                )
                for i, u in enumerate(users)
            )
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

        numbers = await measure(system, load)
    return tally, numbers


async def http_batch(
    system: System,
    users: Sequence[User],
    threads: Sequence[Sequence[str]],
    *,
    record: bool,
    measure: Measure = measured,
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
                    base_url=system.server_of(i).url, timeout=BATCH_TIMEOUT_S, limits=limits
                )
            )
            for i in range(len(users))
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

        numbers = await measure(system, load)
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
    threads = await threads_of(system, mine, per_user)
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


# --- writes and messages per run ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counted:
    """What PostgreSQL and Redis did per run over one batch, beyond what they do idle."""

    system: str
    transport: str
    concurrency: int
    runs: int
    per_run: dict[str, float]  # the counters of ``Services.counters``, per run
    idle_per_s: dict[str, float]  # the same counters' change per second while idle
    problems: list[str]


async def count_per_run(
    system: System, users: Sequence[User], *, transport: str, concurrency: int, runs: int
) -> Counted:
    """One more batch, with the counters of the system's PostgreSQL and Redis read around it.
    PostgreSQL publishes a backend's counts up to ``COUNT_SETTLE_S`` late, so each reading
    waits that long after the work it should see, and what the servers do idle (lease renewals
    and sweeps, the sockets' renewals) over a window as long is subtracted."""
    services = system.services
    assert services is not None
    per_user = max(1, math.ceil(runs / concurrency))
    mine = users[:concurrency]
    threads = await threads_of(system, mine, per_user)
    readings: list[tuple[float, dict[str, float]]] = []

    async def read() -> None:
        await asyncio.sleep(COUNT_SETTLE_S)
        readings.append((time.monotonic(), await services.counters()))

    async def measure(system: System, load: Load) -> Numbers:
        await read()  # the threads and the sockets made: before the idle window
        await read()  # after it
        numbers = await measured(system, load)
        await read()
        return numbers

    run = ws_batch if transport == "ws" else http_batch
    tally, _ = await run(system, mine, threads, record=False, measure=measure)
    (t0, idle0), (t1, idle1), (t2, after) = readings
    idle = changes(idle0, idle1)
    done = per_user * concurrency
    return Counted(
        system=system.name,
        transport=transport,
        concurrency=concurrency,
        runs=done,
        per_run=per_run(idle1, after, idle, idle_share=(t2 - t1) / (t1 - t0), runs=done),
        idle_per_s={key: value / (t1 - t0) for key, value in idle.items()},
        problems=tally.problems,
    )


# --- the sweep ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Sweep:
    systems: list[System]
    options: Options
    batches: list[Batch] = field(default_factory=list)
    # transport -> system -> what one run sent: frames (ws) and the answer's size (http).
    shapes: dict[str, dict[str, Tally]] = field(default_factory=dict)
    counted: Counted | None = None  # with PostgreSQL or Redis: their work per run
    busy_before: float = math.nan  # the machine's cores, before the benchmark's first batch
    stopped_early: bool = False  # at TOTAL_TIMEOUT_S, with what was measured until then


async def sweep(systems: list[System], options: Options) -> Sweep:
    result = Sweep(systems, options)
    # Unique per benchmark run: a shared Redis keeps per-user counters of earlier runs.
    prefix = f"bench-{secrets.token_hex(3)}"
    names = [f"{prefix}-{i}" for i in range(max(*options.concurrency, WARMUP_CONCURRENCY))]
    users = {s.name: await users_of(s, names) for s in systems}
    result.busy_before = await machine_busy(BUSY_WINDOW_S)
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
    if (counted := next((s for s in systems if s.services), None)) is not None:
        result.counted = await count_per_run(
            counted,
            users[counted.name],
            transport=options.transports[0],
            concurrency=COUNT_CONCURRENCY,
            runs=options.runs,
        )
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
    database_cpu_ms_per_run: float = math.nan
    broker_cpu_ms_per_run: float = math.nan


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
        database_cpu_ms_per_run=statistics.median(b.database_cpu_ms_per_run for b in batches),
        broker_cpu_ms_per_run=statistics.median(b.broker_cpu_ms_per_run for b in batches),
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
    f"{'':<4} {'C':>4}  {'':<11} {'runs/s':>8} {'(min-max)':<15} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'cpu ms/run':>10} {'rss MB':>7} {'client cpu':>10} {'host busy':>9}"
)
SERVICES_HEADER = f" {'pg ms/run':>9} {'redis ms/run':>12}"
# Ratio rows: a label, and the systems whose cells it divides.
RATIOS = (("ratio", "isochat", "baseline"), ("present/iso", "present", "isochat"))


def row(transport: str, concurrency: int, name: str, c: Cell, *, services: bool = False) -> str:
    spread = f"({c.runs_per_s_min:.0f}-{c.runs_per_s_max:.0f})"
    line = (
        f"{transport:<4} {concurrency:>4}  {name:<11} {c.runs_per_s:>8.1f} {spread:<15} "
        f"{c.p50_ms:>8.1f} {c.p99_ms:>8.1f} {c.cpu_ms_per_run:>10.2f} {c.rss_mb:>7.1f} "
        f"{100 * c.client_cpu_share:>9.0f}% {100 * c.host_busy:>8.0f}%"
    )
    if services:
        line += f" {number(c.database_cpu_ms_per_run):>9} {number(c.broker_cpu_ms_per_run):>12}"
    return line


def number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def ratio_row(transport: str, concurrency: int, a: Cell, b: Cell, label: str = "ratio") -> str:
    return (
        f"{transport:<4} {concurrency:>4}  {label:<11} {ratio(a.runs_per_s, b.runs_per_s):>8.2f} "
        f"{'':<15} {ratio(a.p50_ms, b.p50_ms):>8.2f} {ratio(a.p99_ms, b.p99_ms):>8.2f} "
        f"{ratio(a.cpu_ms_per_run, b.cpu_ms_per_run):>10.2f} {ratio(a.rss_mb, b.rss_mb):>7.2f}"
    )


def table(result: Sweep) -> list[str]:
    found = cells(result)
    services = any(s.services for s in result.systems)
    lines = [HEADER + (SERVICES_HEADER if services else "")]
    for transport in result.options.transports:
        for concurrency in result.options.concurrency:
            for system in result.systems:
                if (c := found.get((transport, concurrency, system.name))) is not None:
                    lines.append(row(transport, concurrency, system.name, c, services=services))
            for label, top, bottom in RATIOS:
                a = found.get((transport, concurrency, top))
                b = found.get((transport, concurrency, bottom))
                if a is not None and b is not None:
                    lines.append(ratio_row(transport, concurrency, a, b, label))
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
        shapes = [(t.frames, t.answer_chars) for t in by_system.values()]
        if any(shape != shapes[0] for shape in shapes):
            names = ", ".join(by_system)
            differences.append(f"the {transport} frames of {names} differ: update the baseline")
    return lines, differences


def count(value: float) -> str:
    """A counter's change per run: what rounds to 0 is 0 (not -0.00)."""
    return f"{value if abs(value) >= 0.005 else 0.0:.2f}"


def breakdown(values: dict[str, float], prefix: str) -> str:
    """``name value`` for each counter under ``prefix`` that moved, the largest first."""
    picked = {
        k.removeprefix(prefix): v
        for k, v in values.items()
        if k.startswith(prefix) and k != f"{prefix}total"
    }
    moved = sorted((-v, k) for k, v in picked.items() if abs(v) >= 0.005)
    return ", ".join(f"{k} {count(-v)}" for v, k in moved) or "none"


def counted_lines(counted: Counted) -> list[str]:
    per, idle = counted.per_run, counted.idle_per_s
    lines = [
        f"per run, counted around one more batch on {counted.system} ({counted.transport}, "
        f"C={counted.concurrency}, {counted.runs} runs), what the servers did while idle for "
        f"{COUNT_SETTLE_S:.0f} s before it subtracted:"
    ]
    if "pg.xact_commit" in per:
        lines += [
            f"  postgresql: {count(per['pg.xact_commit'])} transactions committed "
            f"({count(per['pg.xact_rollback'])} rolled back); "
            f"rows inserted {count(per['pg.tup_inserted'])} ({breakdown(per, 'pg.inserted.')}), "
            f"updated {count(per['pg.tup_updated'])} ({breakdown(per, 'pg.updated.')}), "
            f"deleted {count(per['pg.tup_deleted'])}; "
            f"WAL {per['pg.wal_bytes'] / 1024:.1f} kB (the whole server's); "
            f"{count(per['pg.sessions'])} connections opened",
            f"    idle: {count(idle.get('pg.xact_commit', 0.0))} transactions/s, "
            f"{count(idle.get('pg.tup_updated', 0.0))} rows updated/s",
        ]
    if "redis.total" in per:
        lines += [
            f"  redis: {count(per['redis.total'])} commands ({breakdown(per, 'redis.')})",
            f"    idle: {count(idle.get('redis.total', 0.0))} commands/s "
            f"({breakdown(idle, 'redis.')}) (the whole server's: anyone else's commands too)",
        ]
    return lines


def unused_mcp_line(server: McpServerProcess) -> str:
    asked = [r.get("rpc") or f"{r.get('method')} {r.get('path')}" for r in server.seen()]
    what = f": {', '.join(sorted(set(map(str, asked))))}" if asked else ""
    return f"the unused MCP server was sent {len(asked)} request(s){what}"


def final_line(result: Sweep) -> str:
    found = cells(result)
    a, b = found.get(("ws", 50, "isochat")), found.get(("ws", 50, "baseline"))
    a10, b10 = found.get(("ws", 10, "isochat")), found.get(("ws", 10, "baseline"))
    nan = math.nan
    rate_a, rate_b = (a.runs_per_s if a else nan), (b.runs_per_s if b else nan)
    cpu = ratio(a.cpu_ms_per_run, b.cpu_ms_per_run) if a and b else nan
    p99 = ratio(a10.p99_ms, b10.p99_ms) if a10 and b10 else nan
    line = (
        f"throughput: c=50 isochat {rate_a:.1f} baseline {rate_b:.1f} "
        f"ratio {ratio(rate_a, rate_b):.2f} cpu_ratio {cpu:.2f} p99_c10_ratio {p99:.2f}"
    )
    if (present := found.get(("ws", 50, "present"))) is not None:
        cpu_a = a.cpu_ms_per_run if a else nan
        line += f" present_ratio {ratio(present.runs_per_s, rate_a):.2f}"
        line += f" present_cpu_ratio {ratio(present.cpu_ms_per_run, cpu_a):.2f}"
    return line


def report(result: Sweep) -> tuple[list[str], list[str]]:
    """The printed report, and every reason for a non-zero exit."""
    options = result.options
    shapes, problems = shape_lines(result)
    runs = result.batches
    if result.stopped_early:
        problems.append(f"stopped after {TOTAL_TIMEOUT_S:.0f} s, {len(runs)} batches measured")
    failed = [p for b in runs for p in b.tally.problems]
    if result.counted is not None:
        failed += result.counted.problems
    if failed:
        problems.append(f"{len(failed)} run(s) failed, the first {MAX_PROBLEMS_SHOWN}:")
        problems += [f"  {p}" for p in failed[:MAX_PROBLEMS_SHOWN]]
    services = any(s.services for s in result.systems)
    lines = [
        f"workload: {WORKLOAD!r}; {options.repeats} repetition(s); at least {options.runs} runs "
        f"per batch ({MIN_RUNS_PER_USER} per user); {len(runs)} batches, "
        f"{sum(b.runs for b in runs)} measured runs",
        f"the machine's cores were {100 * result.busy_before:.0f}% busy over {BUSY_WINDOW_S:.0f} s "
        "before the first batch, with no run going (others' work)",
        *shapes,
        "",
        *table(result),
        "",
        "ratio = isochat / baseline; present/iso = present / isochat; medians over the "
        "repetitions; cpu ms/run = the server's CPU time per run (every process of every host); "
        "client cpu = the client's share of one core during the batch; host busy = the share of "
        f"all {os.cpu_count()} cores busy during the batch (everything on the machine)"
        + (
            "; pg, redis ms/run = the PostgreSQL and Redis servers' CPU time per run"
            if services
            else ""
        ),
    ]
    if result.counted is not None:
        lines += ["", *counted_lines(result.counted)]
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
    parser.add_argument("--workers", type=int, default=1, help="isochat's workers (per host)")
    parser.add_argument(
        "--hosts", type=int, default=1, help="isochat's hosts (processes), users round-robin"
    )
    parser.add_argument(
        "--mcp-unused",
        action="store_true",
        help="also `present`: isochat with MCP, approvals and queued runs configured, unused",
    )
    args = parser.parse_args()
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if repeats < 1 or runs < 1:
        parser.error("--repeats and --runs must be at least 1")
    if args.workers < 1 or (args.workers > 1 and not args.redis):
        parser.error("--workers must be at least 1, and more than 1 needs --redis")
    if args.hosts < 1 or (args.hosts > 1 and not (args.postgres and args.redis)):
        parser.error("--hosts must be at least 1, and more than 1 needs --postgres and --redis")
    if args.mcp_unused and args.baseline_only:
        parser.error("--mcp-unused compares two isochat servers: not with --baseline-only")
    for url in (args.postgres, args.redis):
        if url is not None and urlsplit(url).hostname not in LOOPBACK:
            parser.error(f"only servers on this machine (127.0.0.1) are used, not {url!r}")
    systems = (
        ("isochat",) if args.isochat_only else ("baseline",) if args.baseline_only else SYSTEMS
    )
    if args.mcp_unused:
        systems = (systems[0], "present", *systems[1:])
    return Options(
        concurrency=args.concurrency or (QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY),
        repeats=repeats,
        runs=runs,
        transports=args.transport,
        systems=systems,
        deployment=Deployment(
            postgres=args.postgres, redis=args.redis, workers=args.workers, hosts=args.hosts
        ),
    )


def main() -> int:
    options = parse_args()
    # The client holds one socket per user, twice at most (closing ones and new ones).
    raise_fd_limit(2 * max(*options.concurrency, WARMUP_CONCURRENCY) + FD_HEADROOM)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="throughput-") as tmpdir,
            running_systems(Path(tmpdir), options) as running,
        ):
            systems = running.systems
            # Printed at once: the pids are for a profiler (py-spy) to attach to meanwhile.
            for s in systems:
                where = ", ".join(f"pid {h.process.pid} {h.url}" for h in s.servers)
                print(f"{s.name}: {s.description}, {where}", flush=True)
            try:
                result = run_async(sweep(systems, options))
            except (OSError, TimeoutError, httpx.HTTPError, WebSocketException) as exc:
                print(f"throughput: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                for s in systems:
                    for h in s.servers:
                        print(f"--- {s.name} log tail ---\n{log_tail(h.log)}", file=sys.stderr)
                return 1
            lines, problems = report(result)
            if running.unused_mcp is not None:
                lines.append(unused_mcp_line(running.unused_mcp))
            for s in systems:
                for h in s.servers:
                    if trouble := log_trouble(h.log):
                        problems.append(f"{h.log.stem}'s log has {trouble} line(s) with errors")
                        problems.append(log_tail(h.log, LOG_TAIL_LINES))
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
