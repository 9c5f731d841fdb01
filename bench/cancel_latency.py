"""How long a cancel takes: from sending ``POST /api/runs/{id}/cancel`` to the run's final event
(``run_cancelled``) being stored, on real ``isochat serve`` processes.

The scenarios, each on servers of its own (their own processes on free loopback ports):

- ``sqlite``: one host on a fresh SQLite file with the in-process broker (the embedded
  defaults); the cancel goes to that host, which runs the run;
- ``postgres+redis``: two hosts, A and B, on a fresh PostgreSQL database (created for this bench
  run, dropped afterwards) and Redis (every key under a prefix of this bench run's own, removed
  afterwards). Runs start on A; the cancel goes (a) to A, the run's owner, and (b) to B, the
  other host, which has to reach A through Redis. Skipped, saying why, when PostgreSQL or Redis
  cannot be reached.

A run that stays in progress until it is cancelled: the hosts run with a drill secret and every
user of the benchmark is a drill user (its token carries the ``drill`` claim), whose message
``hold [drill:hang]`` makes the run's model never answer. One sample: start a background run
(``POST /api/threads/{id}/runs``), wait until its ``agent_started`` event is stored (the run is
at work, hung on its model), time one plain ``GET /api/runs/{id}`` round trip to the host the
cancel goes to (the baseline), then time the cancel. The cancel answers 202 once the run's end
is recorded; the run's events are read right after to confirm that ``run_cancelled`` is stored
(exactly one final event, the last). If it is not stored yet, the events are polled every 5 ms
and the moment it is seen is the end instead of the cancel's answer: ``late`` counts those
samples (it should be 0). Cancels are sent one at a time with nothing else going on, so the
figure is latency, not throughput. Runs go round-robin over several users' threads; the first
few samples of each series are a warm-up, not counted; in the two-host scenario series (a) and
(b) alternate sample by sample.

Reading the result: per series ``n``, ``p50_ms``, ``p99_ms`` and ``max_ms`` of the cancel
latency (nearest rank: below 100 samples p99 is the largest one), ``get_p50_ms`` the p50 of the
plain GET to the same host in the same run, and ``ratio`` = cancel p50 / GET p50, how many plain
requests' worth of time a cancel costs. A cancel does a few requests' worth of work (read the
run, end it, read it again): a ratio near that is the floor; much more means the cancel waits on
something else, such as a poll interval. The client shares the machine with the servers (and with
PostgreSQL and Redis): compare ratios, not milliseconds across machines.

    .venv/bin/python bench/cancel_latency.py [--runs N | --quick] [--json]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]

The last line is machine-readable (with ``--json``, the only output on stdout is one JSON
object); the exit code is 1 when a cancel failed or a server logged an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from src.drill.faults import DrillClaim
from src.services.auth import TokenService

ISOCHAT = str(Path(sys.executable).parent / "isochat")
HOST = "127.0.0.1"  # loopback only
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

DEFAULT_RUNS = 60
QUICK_RUNS = 10
WARMUP_RUNS = 3
USERS = 4
THREADS_PER_USER = 3
HANG = "hold [drill:hang]"
FINAL_EVENTS = frozenset({"run_completed", "run_failed", "run_cancelled"})

POLL_S = 0.005  # the events, while waiting for agent_started or for a late run_cancelled
READY_POLL_S = 0.05
BOUND_S = 30.0  # any one wait of a sample; only guards against a hang
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 3.0
HTTP_TIMEOUT_S = 30.0
TOKEN_TTL_S = 3600
LOG_TAIL_LINES = 30
MAX_PROBLEMS_SHOWN = 10
# Limits far beyond what this benchmark reaches (it polls a run's events every 5 ms).
RAISED_LIMITS = {
    "ISOCHAT_RATE_LIMIT_PER_MINUTE": "6000000",
    "ISOCHAT_RATE_LIMIT_BURST": "100000",
    "ISOCHAT_MAX_RUNNING_RUNS_PER_USER": "100",
}


class Failed(Exception):
    """A sample, a setup step or a scenario went wrong; the message says how."""


# --- tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keys:
    """The secrets every host of a bench run shares."""

    auth: str
    drill: str

    @classmethod
    def new(cls) -> Keys:
        return cls(auth=secrets.token_hex(20), drill=secrets.token_hex(24))


def drill_token(keys: Keys, user_id: str) -> str:
    """A drill user's bearer token, as ``isochat drill`` makes it."""
    tokens = TokenService(secret=keys.auth, ttl_s=TOKEN_TTL_S)
    return tokens.issue(user_id, extend=DrillClaim(keys.drill).add_to)


# --- the servers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def host_environment(home: Path, port: int, keys: Keys, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISOCHAT_")}
    env |= {
        "ISOCHAT_ENV": "development",
        "ISOCHAT_HOST": HOST,
        "ISOCHAT_PORT": str(port),
        "ISOCHAT_LOG_LEVEL": "warning",
        "ISOCHAT_AUTH_SECRET": keys.auth,
        "ISOCHAT_DRILL_SECRET": keys.drill,
        "ISOCHAT_DATABASE_URL": f"sqlite+aiosqlite:///{home}/isochat.db",
        "ISOCHAT_BROKER_URL": "memory://",
    }
    return env | RAISED_LIMITS | extra


def start_host(directory: Path, name: str, keys: Keys, extra: dict[str, str]) -> Host:
    """``isochat serve`` on a free port; returns at once, without waiting for it."""
    port = free_port()
    home = directory / name
    home.mkdir()
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ISOCHAT, "serve"],
            env=host_environment(home, port, keys, extra),
            cwd=home,  # no .env of the caller's directory is read
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the servers ourselves
        )
    return Host(name=name, url=f"http://{HOST}:{port}", process=process, log=log)


async def wait_until_ready(host: Host) -> None:
    """Until ``GET /health/ready`` answers 200; fails if the process exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=host.url, timeout=5) as http:
        while loop.time() < deadline:
            if host.process.poll() is not None:
                raise Failed(f"host {host.name} exited early:\n{log_tail(host.log)}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(READY_POLL_S)
    raise Failed(f"host {host.name} was not ready within {START_TIMEOUT_S:.0f} s")


async def stop(host: Host) -> None:
    """SIGTERM; SIGKILL if it has not exited within ``STOP_TIMEOUT_S``."""
    process = host.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait)


@contextlib.asynccontextmanager
async def serving(
    directory: Path, keys: Keys, names: Sequence[str], extra: dict[str, str]
) -> AsyncIterator[list[Host]]:
    """One host per name, started together and ready; all stopped on the way out."""
    hosts: list[Host] = []
    try:
        for name in names:
            hosts.append(start_host(directory, name, keys, extra))
        await asyncio.gather(*(wait_until_ready(h) for h in hosts))
        yield hosts
    finally:
        await asyncio.gather(*(stop(h) for h in hosts))


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = log.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) if text else "(the log is empty)"


def log_trouble(log: Path) -> int:
    """Lines in a server log that say something went wrong."""
    markers = ("Traceback", " ERROR ", " CRITICAL ", "Exception")
    return sum(
        1
        for line in log.read_text(errors="replace").splitlines()
        if any(m in line for m in markers)
    )


# --- PostgreSQL and Redis -----------------------------------------------------------------------


def asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def unreachable(postgres: URL, redis_url: str) -> str | None:
    """Why the two-host scenario cannot run, or None when both servers answer."""
    try:
        conn = await asyncpg.connect(asyncpg_dsn(postgres), timeout=CONNECT_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL is not reachable at {postgres.render_as_string()}: {why(exc)}"
    await conn.close()
    probe = Redis.from_url(redis_url, socket_connect_timeout=CONNECT_TIMEOUT_S)
    try:
        await probe.ping()
    except (RedisError, OSError) as exc:
        return f"Redis is not reachable at {redis_url}: {why(exc)}"
    finally:
        await probe.aclose()
    return None


def why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def admin_sql(postgres: URL, sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(postgres), timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(postgres: URL) -> AsyncIterator[str]:
    """A new database ``isochat_bench_<hex>`` on ``postgres``'s server, dropped on the way out
    (even if a connection is left); yields its URL for isochat."""
    name = f"isochat_bench_{secrets.token_hex(6)}"
    await admin_sql(postgres, f'CREATE DATABASE "{name}"')
    try:
        url = postgres.set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        await admin_sql(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def remove_redis_keys(redis_url: str, prefix: str) -> int:
    """Every key under ``prefix`` (this bench run's own) removed; how many there were."""
    redis = Redis.from_url(redis_url, socket_connect_timeout=CONNECT_TIMEOUT_S)
    removed = 0
    try:
        async for key in redis.scan_iter(match=f"{prefix}*", count=500):
            removed += await redis.delete(key)
    finally:
        await redis.aclose()
    return removed


# --- users and threads --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a sample's run goes: a thread (of ``user``'s) with no run in progress."""

    user: User
    thread_id: str


async def create_slots(http: httpx.AsyncClient, keys: Keys, tag: str) -> list[Slot]:
    """``USERS`` drill users with ``THREADS_PER_USER`` threads each, interleaved by user."""
    users = [User(f"bench-cancel-{tag}-{i}", "") for i in range(USERS)]
    users = [User(u.name, drill_token(keys, u.name)) for u in users]

    async def thread_of(user: User) -> Slot:
        answer = await http.post("/api/threads", json={"title": "bench"}, headers=user.headers)
        if answer.status_code != 201:
            raise Failed(f"creating a thread: {answer.status_code} {answer.text[:300]}")
        return Slot(user, answer.json()["id"])

    return list(
        await asyncio.gather(*(thread_of(u) for _ in range(THREADS_PER_USER) for u in users))
    )


async def delete_threads(http: httpx.AsyncClient, slots: Sequence[Slot]) -> list[str]:
    """Each slot's thread deleted (a run still in progress is cancelled first); what failed."""

    async def delete(slot: Slot) -> str | None:
        try:
            answer = await http.delete(f"/api/threads/{slot.thread_id}", headers=slot.user.headers)
        except httpx.HTTPError as exc:
            return f"deleting thread {slot.thread_id}: {exc!r}"
        if answer.status_code != 204:
            return f"deleting thread {slot.thread_id}: {answer.status_code} {answer.text[:200]}"
        return None

    found = await asyncio.gather(*(delete(s) for s in slots))
    return [problem for problem in found if problem is not None]


# --- one sample ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    cancel_ms: float  # the cancel sent -> run_cancelled stored
    get_ms: float  # the baseline: one plain GET /api/runs/{id} to the same host
    late: bool  # run_cancelled was not stored yet when the cancel answered


async def events_of(http: httpx.AsyncClient, slot: Slot, run_id: str) -> list[dict[str, Any]]:
    answer = await http.get(f"/api/runs/{run_id}/events?after=0", headers=slot.user.headers)
    if answer.status_code != 200:
        raise Failed(f"reading run {run_id}'s events: {answer.status_code} {answer.text[:200]}")
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


def finals(events: Sequence[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events if e["type"] in FINAL_EVENTS]


async def until_working(http: httpx.AsyncClient, slot: Slot, run_id: str) -> None:
    """Until the run's ``agent_started`` is stored (its model, hung, is asked next)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while True:
        events = await events_of(http, slot, run_id)
        if ended := finals(events):
            raise Failed(f"run {run_id} ended {ended} before it was cancelled (not held?)")
        if any(e["type"] == "agent_started" for e in events):
            return
        if loop.time() > deadline:
            raise Failed(f"run {run_id} had no agent_started within {BOUND_S:.0f} s")
        await asyncio.sleep(POLL_S)


async def one_cancel(
    starter: httpx.AsyncClient, canceller: httpx.AsyncClient, slot: Slot
) -> Sample:
    """Start a held run through ``starter``, then time a GET of it and its cancel through
    ``canceller``."""
    headers = slot.user.headers
    started = await starter.post(
        f"/api/threads/{slot.thread_id}/runs", json={"content": HANG}, headers=headers
    )
    if started.status_code != 202:
        raise Failed(f"starting a run: {started.status_code} {started.text[:300]}")
    run_id: str = started.json()["run"]["id"]
    try:
        await until_working(starter, slot, run_id)

        sent = time.perf_counter()
        got = await canceller.get(f"/api/runs/{run_id}", headers=headers)
        get_s = time.perf_counter() - sent
        if got.status_code != 200 or got.json()["status"] != "running":
            raise Failed(f"run {run_id} before its cancel: {got.status_code} {got.text[:200]}")

        sent = time.perf_counter()
        answer = await canceller.post(f"/api/runs/{run_id}/cancel", headers=headers)
        answered = time.perf_counter()
    except Exception:
        # Not left running: the thread takes runs again later.
        with contextlib.suppress(Exception):
            await starter.post(f"/api/runs/{run_id}/cancel", headers=headers)
        raise
    if answer.status_code != 202:
        raise Failed(f"cancelling run {run_id}: {answer.status_code} {answer.text[:300]}")
    if (status := answer.json()["run"]["status"]) != "cancelled":
        raise Failed(f"cancelling run {run_id} answered 202 with status {status!r}")

    events = await events_of(canceller, slot, run_id)
    late = not finals(events)
    end = answered
    deadline = answered + BOUND_S
    while not finals(events):
        if time.perf_counter() > deadline:
            raise Failed(f"run {run_id}: no final event stored {BOUND_S:.0f} s after its cancel")
        await asyncio.sleep(POLL_S)
        events = await events_of(canceller, slot, run_id)
        end = time.perf_counter()
    if finals(events) != ["run_cancelled"] or events[-1]["type"] != "run_cancelled":
        raise Failed(f"run {run_id} ended with {finals(events)}, last {events[-1]['type']}")
    return Sample(cancel_ms=(end - sent) * 1000, get_ms=get_s * 1000, late=late)


# --- series and scenarios -----------------------------------------------------------------------


@dataclass(slots=True)
class Series:
    """The cancels of a scenario sent to one host."""

    key: str
    label: str
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        cancel = sorted(s.cancel_ms for s in self.samples)
        get_p50 = percentile(sorted(s.get_ms for s in self.samples), 0.5)
        p50 = percentile(cancel, 0.5)
        return {
            "series": self.key,
            "cancel_sent_to": self.label,
            "n": len(cancel),
            "p50_ms": p50,
            "p99_ms": percentile(cancel, 0.99),
            "max_ms": cancel[-1] if cancel else math.nan,
            "get_p50_ms": get_p50,
            "ratio": p50 / get_p50 if get_p50 > 0 else math.nan,
            "late": sum(1 for s in self.samples if s.late),
            "failed": len(self.problems),
        }


@dataclass(slots=True)
class Scenario:
    key: str
    description: str
    series: list[Series] = field(default_factory=list)
    skipped: str | None = None
    problems: list[str] = field(default_factory=list)  # beyond the series' own


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank; NaN when there is nothing to rank."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def measure(
    starter: httpx.AsyncClient,
    plan: Sequence[tuple[Series, httpx.AsyncClient]],
    slots: Sequence[Slot],
    runs: int,
) -> None:
    """``WARMUP_RUNS + runs`` rounds, each one cancel per series (their order alternating),
    one at a time; the warm-up rounds are not counted."""
    rotation: Iterator[Slot] = itertools.cycle(slots)
    for round_ in range(WARMUP_RUNS + runs):
        ordered = plan if round_ % 2 == 0 else list(reversed(plan))
        for series, canceller in ordered:
            try:
                sample = await one_cancel(starter, canceller, next(rotation))
            except (Failed, httpx.HTTPError, KeyError, ValueError) as exc:
                series.problems.append(f"{type(exc).__name__}: {exc}")
                continue
            if round_ >= WARMUP_RUNS:
                series.samples.append(sample)


async def run_scenario(
    scenario: Scenario,
    hosts: Sequence[Host],
    targets: Sequence[tuple[str, str, int]],
    keys: Keys,
    runs: int,
) -> None:
    """Runs start on ``hosts[0]``; each target (key, label, host index) is a series."""
    clients = [httpx.AsyncClient(base_url=h.url, timeout=HTTP_TIMEOUT_S) for h in hosts]
    try:
        starter = clients[0]
        slots = await create_slots(starter, keys, secrets.token_hex(4))
        try:
            scenario.series = [Series(key, label) for key, label, _ in targets]
            plan = [(s, clients[i]) for s, (_, _, i) in zip(scenario.series, targets, strict=True)]
            await measure(starter, plan, slots, runs)
        finally:
            scenario.problems += await delete_threads(starter, slots)
    finally:
        for client in clients:
            await client.aclose()
    for host in hosts:
        if trouble := log_trouble(host.log):
            scenario.problems.append(
                f"host {host.name}'s log has {trouble} line(s) with errors:\n{log_tail(host.log)}"
            )


async def sqlite_scenario(directory: Path, keys: Keys, runs: int) -> Scenario:
    scenario = Scenario("sqlite", "1 host, SQLite file, in-process broker")
    say(f"{scenario.key}: {scenario.description}")
    async with serving(directory / "sqlite", keys, ["host"], {}) as hosts:
        say(f"  host: pid {hosts[0].process.pid}, {hosts[0].url}")
        await run_scenario(scenario, hosts, [("owner", "the host (owner)", 0)], keys, runs)
    return scenario


async def postgres_redis_scenario(
    directory: Path, keys: Keys, runs: int, postgres: URL, redis_url: str
) -> Scenario:
    scenario = Scenario("postgres+redis", "2 hosts, PostgreSQL, Redis broker; runs start on A")
    say(f"{scenario.key}: {scenario.description}")
    if (why := await unreachable(postgres, redis_url)) is not None:
        scenario.skipped = why
        say(f"  skipped: {why}")
        return scenario
    prefix = f"isochat-bench-cancel:{secrets.token_hex(6)}:"
    try:
        async with fresh_database(postgres) as database_url:
            extra = {
                "ISOCHAT_DATABASE_URL": database_url,
                "ISOCHAT_BROKER_URL": redis_url,
                "ISOCHAT_REDIS_PREFIX": prefix,
            }
            async with serving(directory / "postgres", keys, ["a", "b"], extra) as hosts:
                for host in hosts:
                    say(f"  host {host.name.upper()}: pid {host.process.pid}, {host.url}")
                targets = [("owner", "A (owner)", 0), ("other", "B (other host, via Redis)", 1)]
                await run_scenario(scenario, hosts, targets, keys, runs)
    finally:
        await remove_redis_keys(redis_url, prefix)
    return scenario


# --- reporting ----------------------------------------------------------------------------------


def say(line: str) -> None:
    """Progress, on stderr: stdout holds the report (or the JSON)."""
    print(line, file=sys.stderr, flush=True)


def table(scenarios: Sequence[Scenario]) -> list[str]:
    head = (
        f"{'scenario':<16} {'cancel sent to':<27} {'n':>4} {'p50_ms':>8} {'p99_ms':>8} "
        f"{'max_ms':>8} {'get_p50_ms':>10} {'ratio':>6} {'late':>5} {'failed':>6}"
    )
    lines = [head, "-" * len(head)]
    for scenario in scenarios:
        if scenario.skipped is not None:
            lines.append(f"{scenario.key:<16} skipped: {scenario.skipped}")
            continue
        for series in scenario.series:
            s = series.stats()
            lines.append(
                f"{scenario.key:<16} {s['cancel_sent_to']:<27} {s['n']:>4} {s['p50_ms']:>8.2f} "
                f"{s['p99_ms']:>8.2f} {s['max_ms']:>8.2f} {s['get_p50_ms']:>10.2f} "
                f"{s['ratio']:>6.1f} {s['late']:>5} {s['failed']:>6}"
            )
    return lines


def problems_of(scenarios: Sequence[Scenario]) -> list[str]:
    found: list[str] = []
    for scenario in scenarios:
        found += [f"{scenario.key}: {p}" for p in scenario.problems]
        for series in scenario.series:
            found += [f"{scenario.key} {series.key}: {p}" for p in series.problems]
    return found


def final_line(scenarios: Sequence[Scenario]) -> str:
    parts = []
    for scenario in scenarios:
        if scenario.skipped is not None:
            parts.append(f"{scenario.key}=skipped")
        for series in scenario.series:
            s = series.stats()
            parts.append(
                f"{scenario.key}/{series.key}: n={s['n']} p50_ms={s['p50_ms']:.2f} "
                f"p99_ms={s['p99_ms']:.2f} max_ms={s['max_ms']:.2f} "
                f"get_p50_ms={s['get_p50_ms']:.2f} ratio={s['ratio']:.1f} late={s['late']}"
            )
    return "cancel_latency: " + "; ".join(parts)


def as_json(scenarios: Sequence[Scenario], runs: int) -> dict[str, Any]:
    def finite(value: Any) -> Any:
        """Milliseconds to the microsecond; NaN (nothing measured) as null."""
        if not isinstance(value, float):
            return value
        return round(value, 3) if math.isfinite(value) else None

    return {
        "benchmark": "cancel_latency",
        "runs": runs,
        "warmup": WARMUP_RUNS,
        "scenarios": [
            {
                "scenario": scenario.key,
                "description": scenario.description,
                "skipped": scenario.skipped,
                "series": [
                    {k: finite(v) for k, v in series.stats().items()} for series in scenario.series
                ],
            }
            for scenario in scenarios
        ],
        "problems": problems_of(scenarios),
    }


# --- main ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    json: bool
    postgres: URL
    redis: str


async def bench(options: Options) -> list[Scenario]:
    keys = Keys.new()
    with tempfile.TemporaryDirectory(prefix="cancel_latency-") as tmpdir:
        directory = Path(tmpdir)
        for name in ("sqlite", "postgres"):
            (directory / name).mkdir()
        first = await sqlite_scenario(directory, keys, options.runs)
        second = await postgres_redis_scenario(
            directory, keys, options.runs, options.postgres, options.redis
        )
    return [first, second]


def parse_args() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, help=f"cancels per series (default {DEFAULT_RUNS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} cancels per series")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--postgres", metavar="URL", default=DEFAULT_POSTGRES)
    parser.add_argument("--redis", metavar="URL", default=DEFAULT_REDIS)
    args = parser.parse_args()
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if runs < 1:
        parser.error("--runs must be at least 1")
    try:
        postgres = make_url(args.postgres)
    except ArgumentError:
        parser.error(f"--postgres: not a database URL: {args.postgres!r}")
    if not postgres.drivername.startswith("postgres"):
        parser.error(f"--postgres: expected a postgresql:// URL, got {args.postgres!r}")
    if not args.redis.startswith(("redis://", "rediss://")):
        parser.error(f"--redis: expected a redis:// URL, got {args.redis!r}")
    return Options(runs=runs, json=args.json, postgres=postgres, redis=args.redis)


def main() -> int:
    options = parse_args()
    try:
        scenarios = asyncio.run(bench(options))
    except KeyboardInterrupt:
        print("cancel_latency: interrupted; the servers were stopped", file=sys.stderr)
        return 130
    except (Failed, OSError, httpx.HTTPError, asyncpg.PostgresError, RedisError) as exc:
        print(f"cancel_latency: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    problems = problems_of(scenarios)
    if options.json:
        print(json.dumps(as_json(scenarios, options.runs), indent=2))
        return 1 if problems else 0
    print(
        f"cancel latency: POST /api/runs/{{id}}/cancel sent -> run_cancelled stored; "
        f"{options.runs} cancels per series, one at a time, after {WARMUP_RUNS} warm-up ones"
    )
    print("\n".join(table(scenarios)))
    print(
        "ratio = cancel p50 / get p50 (a plain GET /api/runs/{id} to the same host, same run); "
        "late = run_cancelled not yet stored when the cancel answered; failed = samples lost"
    )
    if problems:
        print(f"FAILED: {len(problems)} problem(s), the first {MAX_PROBLEMS_SHOWN}:")
        print("\n".join(f"  {p}" for p in problems[:MAX_PROBLEMS_SHOWN]))
    print(final_line(scenarios))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
