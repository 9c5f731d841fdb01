"""What a pause for approval costs, and what a paused run costs while it waits, on real
``isochat serve`` processes.

Two servers, each its own process on a free loopback port, its own SQLite file, the in-process
broker and the offline model, started and measured in the same run:

- ``approvals``: ``ISOCHAT_APPROVAL_TOOLS=calculator`` (every calculation waits for a person);
- ``plain``: the same settings without it.

Both get the same question, ``what is (12 + 3) * 4?``: triage picks ``math``, whose agent calls
the calculator once. On ``approvals`` that call pauses the run; on ``plain`` it runs at once.

1. **A pause and its resume.** One run at a time, each on a fresh thread, the two servers
   alternating run by run after a few warm-up runs. On ``approvals``: ``POST
   /api/threads/{id}/messages`` (answers when the run has paused, ``awaiting_approval``), ``POST
   /api/runs/{id}/approvals`` approving the pending call (202), and the run's end (it goes on in
   the background). On ``plain``: the same ``POST .../messages``, which answers when the run has
   ended. Checked: both answer ``(12 + 3) * 4 = 60``; the paused run's events run 1..n with one
   ``approval_requested`` and one ``approval_resolved`` and nothing repeated.

   - ``cpu ms``: the server's CPU time (user + system, every thread, from
     ``/proc/<pid>/task/*/schedstat``, nanoseconds) from just before the first request to
     100 ms after the run's end, p50 and mean over the runs. An idle server uses about 0.3 ms
     of CPU in 100 ms (see part 2): once in a plain run's figure, twice in a paused run's (it
     also settles 100 ms at its pause, where it is split, see below). The call id to approve is
     read from the server's database file (``run_approvals``) and the end of the paused run is
     watched there, so neither figure includes requests a client would make to learn them (a
     client reads the call id from the events or a stream; ``events read`` is what one ``GET
     /api/runs/{id}/events`` of the whole run costs the server, measured after each run).
   - ``commits`` and ``wal pages``: the database writes, counted in SQLite's write-ahead log:
     before each run the benchmark checkpoints the server's database and truncates its log
     (``PRAGMA wal_checkpoint(TRUNCATE)``, while the server is idle), and after it counts the
     log's frames: every frame is a page written, and a frame that ends a transaction is a
     commit. So ``commits`` is the number of write transactions that changed the file, and
     ``wal pages`` how many database pages they wrote. ``events`` is how many events the run
     stored. ``wall ms``: from the message sent to the run's end, less the time between the
     pause's answer and the decision sent (the end of a paused run is seen by polling the
     database file every 2 ms).
   - the paused run's row is split at the pause: ``to the pause`` (the message's request) and
     ``decision + resume`` (the decision's request and the rest of the run).

2. **A paused run costs nothing while it waits.** Idle windows (no request at all) during which
   both servers' resident memory (``VmRSS``) is sampled every half second and their CPU time is
   read at the start and the end, and their write-ahead logs count what they wrote: ``before``
   (no paused run); then, twice (``batch 1``, ``batch 2``): ``--paused`` runs are paused on
   ``approvals`` (each on a thread of its own, the threads spread over several users; the rate
   limit is raised), ``plain`` completes as many runs of the same question (what the same work
   leaves behind in a server that holds no run), and the same window again. The first batch
   also shows what the work of pausing leaves behind (allocator high-water marks, caches); the
   second, with twice as many runs paused, whether anything grows with them. The paused runs
   are then cancelled (``POST /api/runs/{id}/cancel``) and every thread deleted, both timed.

   ``cpu ms/s`` is the server's CPU time per second of the window: what an idle server does
   anyway (uvicorn's tick every 0.1 s, the lease keeper's beat every ``RUN_LEASE_S``/3 = 5 s,
   whose sweep also looks for expired pauses, ...); ``rss MB`` the mean of the samples. The
   gauges of ``/metrics`` are read after the window (``isochat_runs_awaiting_approval`` must
   say how many runs are paused; scopes, sessions and agents must be 0: a paused run holds
   none).

Reading the result: in (1), ``ratio`` is the paused-and-approved run over the plain run: what
pausing and resuming adds to a run (its two extra requests, the stored state and the decision,
two more events, reading the state back and rebuilding the agent). In (2), ``batch 2/batch 1``
near 1.000 for memory (and a growth in batch 1 like ``plain``'s), an idle CPU like the one
``before`` and no commit while idle mean a paused run is data in the database and nothing in
the process. Idle CPU is a few ms per second on both servers, so its ratios move with the
machine's noise. The benchmark shares the machine with both servers: compare ratios, not
milliseconds across machines.

    .venv/bin/python bench/approvals.py [--runs N] [--paused N] [--idle S] [--quick] [--json]

The last line is machine-readable (with ``--json``, the only output on stdout is one JSON
object); the exit code is 1 when a check failed or a server logged an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cancel_latency import (
    HOST,
    ISOCHAT,
    Failed,
    Host,
    free_port,
    log_tail,
    log_trouble,
    stop,
    wait_until_ready,
)

from src.services.auth import TokenService

T = TypeVar("T")

QUESTION = "what is (12 + 3) * 4?"
ANSWER = "(12 + 3) * 4 = 60"
TOOL = "calculator"
APPROVALS, PLAIN = "approvals", "plain"
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

DEFAULT_RUNS, QUICK_RUNS = 40, 8
DEFAULT_PAUSED, QUICK_PAUSED = 1000, 100
DEFAULT_IDLE_S, QUICK_IDLE_S = 10.0, 3.0
WARMUP_RUNS = 3
USERS = 10
CONCURRENCY = 10  # requests in flight while pausing, completing, cancelling and deleting
SETTLE_S = 0.1  # after a run's end (and after a pause), before the server's CPU is read
RSS_EVERY_S = 0.5
WATCH_POLL_S = 0.002  # the paused run's status, in the database file
BOUND_S = 60.0  # any one wait; only guards against a hang
HTTP_TIMEOUT_S = 60.0
TOKEN_TTL_S = 3600
MAX_PROBLEMS_SHOWN = 10

# Far beyond what the benchmark asks for: thousands of requests a minute from its 10 users.
RAISED_LIMITS = {
    "ISOCHAT_RATE_LIMIT_PER_MINUTE": "6000000",
    "ISOCHAT_RATE_LIMIT_BURST": "100000",
}
WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
FRAME_HEADER = 24
GAUGES = (
    "isochat_runs_awaiting_approval",
    "isochat_request_scopes_open",
    "isochat_db_sessions_open",
    "isochat_agent_instances_live",
)


# --- the servers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    host: Host
    database: Path

    @property
    def url(self) -> str:
        return self.host.url

    @property
    def pid(self) -> int:
        return self.host.process.pid


def environment(home: Path, port: int, secret: str, approval_tools: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISOCHAT_")}
    env |= {
        "ISOCHAT_ENV": "development",
        "ISOCHAT_HOST": HOST,
        "ISOCHAT_PORT": str(port),
        "ISOCHAT_LOG_LEVEL": "warning",
        "ISOCHAT_AUTH_SECRET": secret,
        "ISOCHAT_DATABASE_URL": f"sqlite+aiosqlite:///{home}/isochat.db",
        "ISOCHAT_BROKER_URL": "memory://",
        "ISOCHAT_LLM_PROVIDER": "offline",
        "ISOCHAT_APPROVAL_TOOLS": approval_tools,
    }
    return env | RAISED_LIMITS


def start_server(directory: Path, name: str, secret: str, approval_tools: str) -> Server:
    """``isochat serve`` on a free port; returns at once, without waiting for it."""
    port = free_port()
    home = directory / name
    home.mkdir()
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ISOCHAT, "serve"],
            env=environment(home, port, secret, approval_tools),
            cwd=home,  # no .env of the caller's directory is read
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the servers ourselves
        )
    host = Host(name=name, url=f"http://{HOST}:{port}", process=process, log=log)
    return Server(name=name, host=host, database=home / "isochat.db")


@contextlib.asynccontextmanager
async def serving(directory: Path, secret: str) -> AsyncIterator[dict[str, Server]]:
    """Both servers, started together and ready; both stopped on the way out."""
    servers: dict[str, Server] = {}
    try:
        servers[APPROVALS] = start_server(directory, APPROVALS, secret, TOOL)
        servers[PLAIN] = start_server(directory, PLAIN, secret, "")
        await asyncio.gather(*(wait_until_ready(s.host) for s in servers.values()))
        yield servers
    finally:
        await asyncio.gather(*(stop(s.host) for s in servers.values()))


# --- what the server uses: CPU time, memory, database writes -----------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time of every live thread of ``pid``, in nanoseconds (the first field of each
    thread's schedstat). A thread that ended meanwhile takes its time with it: the server's
    threads (event loop, SQLite writer, aiosqlite's, the loop's executor) live as long as it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise Failed(f"no VmRSS in /proc/{pid}/status")


@dataclass(frozen=True, slots=True)
class Writes:
    commits: int  # write transactions that changed the file
    pages: int  # pages they wrote

    def __sub__(self, other: Writes) -> Writes:
        return Writes(self.commits - other.commits, self.pages - other.pages)


class DatabaseFile:
    """The bench's own look at a server's SQLite file: its write-ahead log, truncated and
    counted, and the runs the server stored. Every read is its own short transaction (a read
    held open would keep the server's checkpoints from finishing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.wal = path.with_name(path.name + "-wal")
        self._conn = sqlite3.connect(path, timeout=BOUND_S, isolation_level=None)

    def close(self) -> None:
        self._conn.close()

    def truncate_log(self) -> None:
        """Checkpoint the log into the database and truncate it to nothing (the server must be
        idle: with a writer at work this waits for it, which would bias what is measured)."""
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        if busy:
            raise Failed(f"{self.path}: the checkpoint could not finish (a reader or writer)")

    def writes(self) -> Writes:
        """Commits and pages in the log since it was truncated. Frames are appended until the
        log restarts (after a checkpoint the server does itself, every 1,000 pages); the frames
        of the current log carry its header's salts."""
        try:
            data = self.wal.read_bytes()
        except FileNotFoundError:
            return Writes(0, 0)
        if len(data) < WAL_HEADER:
            return Writes(0, 0)
        magic, _version, page_size, _checkpoint, salt1, salt2 = struct.unpack(">6I", data[:24])
        if magic not in WAL_MAGIC:
            raise Failed(f"{self.wal}: not a write-ahead log")
        commits = pages = 0
        frame = FRAME_HEADER + page_size
        for offset in range(WAL_HEADER, len(data) - frame + 1, frame):
            _page, size_after_commit, s1, s2 = struct.unpack(">4I", data[offset : offset + 16])
            if (s1, s2) != (salt1, salt2):
                break  # left over from before the log restarted
            pages += 1
            commits += size_after_commit != 0
        return Writes(commits, pages)

    def status(self, run_id: str) -> str | None:
        rows = self._conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchall()
        return str(rows[0][0]) if rows else None

    def pending_call_ids(self, run_id: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT call_id FROM run_approvals WHERE run_id = ? AND decision IS NULL "
            "ORDER BY call_id",
            (run_id,),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def count_paused(self) -> int:
        rows = self._conn.execute(
            "SELECT count(*) FROM runs WHERE status = 'awaiting_approval'"
        ).fetchall()
        return int(rows[0][0])


# --- users and threads --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_users(secret: str, tag: str) -> list[User]:
    tokens = TokenService(secret=secret, ttl_s=TOKEN_TTL_S)
    names = [f"bench-approvals-{tag}-{i}" for i in range(USERS)]
    return [User(name, tokens.issue(name)) for name in names]


async def bounded(jobs: Sequence[Awaitable[T]], limit: int = CONCURRENCY) -> list[T]:
    """``jobs`` (not started yet), at most ``limit`` at once."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return await asyncio.gather(*(one(job) for job in jobs))


def expect(answer: httpx.Response, status: int, doing: str) -> Any:
    if answer.status_code != status:
        raise Failed(f"{doing}: {answer.status_code} {answer.text[:300]}")
    return answer.json() if answer.content else None


async def new_thread(http: httpx.AsyncClient, user: User) -> str:
    body = expect(
        await http.post("/api/threads", json={"title": "bench"}, headers=user.headers),
        201,
        "creating a thread",
    )
    return str(body["id"])


async def send(http: httpx.AsyncClient, user: User, thread_id: str) -> dict[str, Any]:
    body: dict[str, Any] = expect(
        await http.post(
            f"/api/threads/{thread_id}/messages", json={"content": QUESTION}, headers=user.headers
        ),
        200,
        f"sending to thread {thread_id}",
    )
    return body


async def approve(http: httpx.AsyncClient, user: User, run_id: str, call_ids: list[str]) -> None:
    decisions = [{"call_id": call_id, "decision": "approve"} for call_id in call_ids]
    body = expect(
        await http.post(
            f"/api/runs/{run_id}/approvals", json={"decisions": decisions}, headers=user.headers
        ),
        202,
        f"approving run {run_id}'s calls",
    )
    if body["run"]["status"] not in ("running", "completed"):
        raise Failed(f"run {run_id} after its approval: {body['run']['status']}")


async def events_of(http: httpx.AsyncClient, user: User, run_id: str) -> list[dict[str, Any]]:
    body = expect(
        await http.get(f"/api/runs/{run_id}/events?after=0", headers=user.headers),
        200,
        f"reading run {run_id}'s events",
    )
    events: list[dict[str, Any]] = body["events"]
    return events


async def delete_thread(http: httpx.AsyncClient, user: User, thread_id: str) -> None:
    expect(
        await http.delete(f"/api/threads/{thread_id}", headers=user.headers),
        204,
        f"deleting thread {thread_id}",
    )


def check_events(events: Sequence[dict[str, Any]], *, paused: bool) -> None:
    """seq 1..n, one final event (the last, ``run_completed`` with the answer) and, for a
    paused run, exactly one request and one decision, in that order, nothing repeated."""
    types = [e["type"] for e in events]
    run_id = events[0]["run_id"] if events else "?"
    if [e["seq"] for e in events] != list(range(1, len(events) + 1)):
        raise Failed(f"run {run_id}: seqs {[e['seq'] for e in events]}")
    if not types or types[-1] != "run_completed":
        raise Failed(f"run {run_id} ended with {types[-1:]}")
    if events[-1]["data"]["message"]["content"] != ANSWER:
        raise Failed(f"run {run_id} answered {events[-1]['data']['message']['content']!r}")
    expected = (1, 1) if paused else (0, 0)
    found = (types.count("approval_requested"), types.count("approval_resolved"))
    if found != expected:
        raise Failed(f"run {run_id}: approval events {found}, expected {expected}: {types}")
    if paused and types.index("approval_requested") > types.index("approval_resolved"):
        raise Failed(f"run {run_id}: decided before it was asked: {types}")
    if types.count("tool_executing") != 1:
        raise Failed(f"run {run_id}: the tool ran {types.count('tool_executing')} times: {types}")


# --- 1. a pause and its resume ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    cpu_ms: float
    writes: Writes


@dataclass(frozen=True, slots=True)
class RunCost:
    cpu_ms: float
    writes: Writes
    events: int
    wall_ms: float
    read_cpu_ms: float  # one GET of the run's events, after it
    # A paused run up to its pause (the message's request); the rest is the decision's request
    # and the resumed run.
    to_pause: Part | None = None

    @property
    def after_pause(self) -> Part | None:
        if self.to_pause is None:
            return None
        return Part(self.cpu_ms - self.to_pause.cpu_ms, self.writes - self.to_pause.writes)


async def settle() -> None:
    await asyncio.sleep(SETTLE_S)


async def until_ended(db: DatabaseFile, run_id: str) -> None:
    deadline = time.perf_counter() + BOUND_S
    while (status := db.status(run_id)) not in FINAL_STATUSES:
        if time.perf_counter() > deadline:
            raise Failed(f"run {run_id} still {status} {BOUND_S:.0f} s after its approval")
        await asyncio.sleep(WATCH_POLL_S)
    if status != "completed":
        raise Failed(f"run {run_id} ended {status}")


async def one_run(server: Server, db: DatabaseFile, http: httpx.AsyncClient, user: User) -> RunCost:
    """One run of the question on a fresh thread, measured from its message to its end."""
    thread_id = await new_thread(http, user)
    await settle()
    db.truncate_log()
    cpu0, start = cpu_ns(server.pid), time.perf_counter()
    body = await send(http, user, thread_id)
    run_id: str = body["run"]["id"]
    to_pause, waited_s = None, 0.0  # waited: between the pause's answer and the decision
    if server.name == APPROVALS:
        if body["run"]["status"] != "awaiting_approval" or body["message"] is not None:
            raise Failed(f"run {run_id} did not pause: {json.dumps(body)[:300]}")
        paused_at = time.perf_counter()
        await settle()
        to_pause = Part((cpu_ns(server.pid) - cpu0) / 1e6, db.writes())
        call_ids = db.pending_call_ids(run_id)
        if len(call_ids) != 1:
            raise Failed(f"run {run_id} waits for {call_ids}, expected one call")
        waited_s = time.perf_counter() - paused_at
        await approve(http, user, run_id, call_ids)
        await until_ended(db, run_id)
    elif body["run"]["status"] != "completed" or body["message"]["content"] != ANSWER:
        raise Failed(f"run {run_id}: {json.dumps(body)[:300]}")
    wall_ms = (time.perf_counter() - start - waited_s) * 1000
    await settle()
    cpu1 = cpu_ns(server.pid)
    writes = db.writes()
    events = await events_of(http, user, run_id)
    await settle()
    read_cpu_ms = (cpu_ns(server.pid) - cpu1) / 1e6
    check_events(events, paused=server.name == APPROVALS)
    await delete_thread(http, user, thread_id)
    return RunCost(
        cpu_ms=(cpu1 - cpu0) / 1e6,
        writes=writes,
        events=len(events),
        wall_ms=wall_ms,
        read_cpu_ms=read_cpu_ms,
        to_pause=to_pause,
    )


@dataclass(slots=True)
class Costs:
    server: str
    runs: list[RunCost] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        runs = self.runs
        if not runs:
            return {"server": self.server, "n": 0}

        def p50(values: Sequence[float]) -> float:
            return statistics.median(values)

        stats: dict[str, Any] = {
            "server": self.server,
            "n": len(runs),
            "cpu_ms_p50": p50([r.cpu_ms for r in runs]),
            "cpu_ms_mean": statistics.fmean(r.cpu_ms for r in runs),
            "commits": p50([r.writes.commits for r in runs]),
            "wal_pages": p50([r.writes.pages for r in runs]),
            "events": p50([r.events for r in runs]),
            "wall_ms_p50": p50([r.wall_ms for r in runs]),
            "events_read_cpu_ms_p50": p50([r.read_cpu_ms for r in runs]),
        }
        for key, parts in (
            ("to_pause", [r.to_pause for r in runs]),
            ("decision_and_resume", [r.after_pause for r in runs]),
        ):
            measured = [part for part in parts if part is not None]
            if measured:
                stats[key] = {
                    "cpu_ms_p50": p50([part.cpu_ms for part in measured]),
                    "commits": p50([part.writes.commits for part in measured]),
                    "wal_pages": p50([part.writes.pages for part in measured]),
                }
        return stats


async def pause_and_resume(
    servers: dict[str, Server],
    dbs: dict[str, DatabaseFile],
    clients: dict[str, httpx.AsyncClient],
    users: Sequence[User],
    runs: int,
) -> dict[str, Costs]:
    """``WARMUP_RUNS + runs`` rounds, one run on each server per round (which goes first
    alternating), one run at a time; the warm-up rounds are not counted."""
    costs = {name: Costs(name) for name in servers}
    order = [APPROVALS, PLAIN]
    for round_ in range(WARMUP_RUNS + runs):
        user = users[round_ % len(users)]
        for name in order if round_ % 2 == 0 else order[::-1]:
            cost = await one_run(servers[name], dbs[name], clients[name], user)
            if round_ >= WARMUP_RUNS:
                costs[name].runs.append(cost)
        say(f"  round {round_ + 1}/{WARMUP_RUNS + runs}" + (" (warm-up)" * (round_ < WARMUP_RUNS)))
    return costs


# --- 2. paused runs while they wait -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Idle:
    server: str
    paused: int  # runs paused on the server during the window
    seconds: float
    cpu_ms_per_s: float
    rss_mb: float  # the mean of the samples
    rss_mb_min: float
    rss_mb_max: float
    writes: Writes

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "paused": self.paused,
            "seconds": round(self.seconds, 3),
            "cpu_ms_per_s": round(self.cpu_ms_per_s, 3),
            "rss_mb": round(self.rss_mb, 2),
            "rss_mb_min": round(self.rss_mb_min, 2),
            "rss_mb_max": round(self.rss_mb_max, 2),
            "commits": self.writes.commits,
            "wal_pages": self.writes.pages,
        }


async def idle_window(
    servers: dict[str, Server], dbs: dict[str, DatabaseFile], seconds: float
) -> dict[str, Idle]:
    """Both servers left alone for ``seconds``: their memory sampled, their CPU time and their
    database writes counted."""
    await settle()
    for db in dbs.values():
        db.truncate_log()
    paused = {name: db.count_paused() for name, db in dbs.items()}
    rss: dict[str, list[float]] = {name: [] for name in servers}
    cpu0 = {name: cpu_ns(s.pid) for name, s in servers.items()}
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for name, server in servers.items():
            rss[name].append(rss_mb(server.pid))
        await asyncio.sleep(min(RSS_EVERY_S, max(0.0, seconds - elapsed)))
    cpu1 = {name: cpu_ns(s.pid) for name, s in servers.items()}
    wall = time.perf_counter() - start
    return {
        name: Idle(
            server=name,
            paused=paused[name],
            seconds=wall,
            cpu_ms_per_s=(cpu1[name] - cpu0[name]) / 1e6 / wall,
            rss_mb=statistics.fmean(rss[name]),
            rss_mb_min=min(rss[name]),
            rss_mb_max=max(rss[name]),
            writes=dbs[name].writes(),
        )
        for name in servers
    }


async def gauges(http: httpx.AsyncClient) -> dict[str, float]:
    answer = await http.get("/metrics")
    if answer.status_code != 200:
        raise Failed(f"GET /metrics: {answer.status_code}")
    found: dict[str, float] = {}
    for line in answer.text.splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES:
            found[name] = float(value)
    return found


@dataclass(slots=True)
class Timed:
    count: int = 0
    seconds: float = 0.0

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else math.nan

    def add(self, other: Timed) -> None:
        self.count += other.count
        self.seconds += other.seconds


BATCHES = ("batch 1", "batch 2")


@dataclass(slots=True)
class Waiting:
    """What part 2 measured."""

    count: int  # runs paused (and completed on the plain server) per batch
    # before, batch 1, batch 2: per server
    windows: dict[str, dict[str, Idle]] = field(default_factory=dict)
    gauges: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # after each
    paused: Timed = field(default_factory=Timed)
    completed: Timed = field(default_factory=Timed)
    cancelled: Timed = field(default_factory=Timed)
    cancel_ms: list[float] = field(default_factory=list)
    deleted: Timed = field(default_factory=Timed)
    gauges_after: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.count * len(BATCHES)


async def timed(jobs: Sequence[Awaitable[T]]) -> tuple[list[T], Timed]:
    start = time.perf_counter()
    results = await bounded(jobs)
    return results, Timed(len(jobs), time.perf_counter() - start)


async def paused_runs_wait(
    servers: dict[str, Server],
    dbs: dict[str, DatabaseFile],
    clients: dict[str, httpx.AsyncClient],
    users: Sequence[User],
    count: int,
    idle_s: float,
) -> Waiting:
    """An idle window; then, twice: ``count`` runs paused on one server and as many completed
    on the other, and an idle window. Then every paused run cancelled, every thread deleted."""
    waiting = Waiting(count)
    say(f"  idle {idle_s:g} s, nothing paused")
    waiting.windows["before"] = await idle_window(servers, dbs, idle_s)

    async def pause(user: User, thread_id: str) -> str:
        body = await send(clients[APPROVALS], user, thread_id)
        if body["run"]["status"] != "awaiting_approval":
            raise Failed(f"a run did not pause: {json.dumps(body)[:300]}")
        return str(body["run"]["id"])

    async def complete(user: User, thread_id: str) -> None:
        body = await send(clients[PLAIN], user, thread_id)
        if body["run"]["status"] != "completed":
            raise Failed(f"a run did not complete: {json.dumps(body)[:300]}")

    owners = [users[i % len(users)] for i in range(count)]
    threads: dict[str, list[tuple[User, str]]] = {name: [] for name in servers}
    paused: list[tuple[User, str]] = []
    for n, batch in enumerate(BATCHES, start=1):
        new: dict[str, list[str]] = {}
        for name, http in clients.items():
            say(f"  {batch}: {name}: {count} threads")
            new[name], _ = await timed([new_thread(http, user) for user in owners])
            threads[name] += zip(owners, new[name], strict=True)
        say(f"  {batch}: {APPROVALS}: pausing {count} runs")
        run_ids, took = await timed(
            [pause(u, t) for u, t in zip(owners, new[APPROVALS], strict=True)]
        )
        waiting.paused.add(took)
        paused += zip(owners, run_ids, strict=True)
        say(f"  {batch}: {PLAIN}: completing {count} runs")
        _, took = await timed([complete(u, t) for u, t in zip(owners, new[PLAIN], strict=True)])
        waiting.completed.add(took)
        if (stored := dbs[APPROVALS].count_paused()) != n * count:
            raise Failed(f"{n * count} runs paused, the database holds {stored} paused runs")
        say(f"  idle {idle_s:g} s, {n * count} runs paused on {APPROVALS}")
        waiting.windows[batch] = await idle_window(servers, dbs, idle_s)
        waiting.gauges[batch] = {name: await gauges(client) for name, client in clients.items()}

    async def cancel(user: User, run_id: str) -> float:
        sent = time.perf_counter()
        body = expect(
            await clients[APPROVALS].post(f"/api/runs/{run_id}/cancel", headers=user.headers),
            202,
            f"cancelling paused run {run_id}",
        )
        if body["run"]["status"] != "cancelled":
            raise Failed(f"paused run {run_id} after its cancel: {body['run']['status']}")
        return (time.perf_counter() - sent) * 1000

    say(f"  {APPROVALS}: cancelling {len(paused)} paused runs")
    waiting.cancel_ms, waiting.cancelled = await timed([cancel(u, r) for u, r in paused])
    say(f"  deleting {sum(len(t) for t in threads.values())} threads")
    for name, client in clients.items():
        _, took = await timed([delete_thread(client, u, t) for u, t in threads[name]])
        waiting.deleted.add(took)
    waiting.gauges_after = await gauges(clients[APPROVALS])
    return waiting


def waiting_problems(waiting: Waiting) -> list[str]:
    found = []
    for n, batch in enumerate(BATCHES, start=1):
        for name, values in waiting.gauges.get(batch, {}).items():
            for gauge, value in values.items():
                expected = n * waiting.count if gauge == GAUGES[0] and name == APPROVALS else 0
                if value != expected:
                    found.append(f"{batch}: {name}: {gauge} = {value:g}, expected {expected}")
    for gauge, value in waiting.gauges_after.items():
        if value != 0:
            found.append(f"{APPROVALS}: {gauge} = {value:g} after the cleanup, expected 0")
    for window, idle in waiting.windows.items():
        for name, measured in idle.items():
            if measured.writes.commits:
                found.append(
                    f"{name} wrote {measured.writes.commits} transaction(s) while idle ({window})"
                )
    return found


# --- reporting ----------------------------------------------------------------------------------


def say(line: str) -> None:
    """Progress, on stderr: stdout holds the report (or the JSON)."""
    print(line, file=sys.stderr, flush=True)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank; NaN when there is nothing to rank."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def cost_table(costs: dict[str, Costs]) -> list[str]:
    a, p = costs[APPROVALS].stats(), costs[PLAIN].stats()
    head = (
        f"{'':<28} {'cpu ms p50':>10} {'mean':>7} {'commits':>8} {'wal pages':>9} "
        f"{'events':>6} {'wall ms':>8} {'events read':>11}"
    )
    lines = [head, "-" * len(head)]

    def row(label: str, s: dict[str, Any], full: bool = True) -> str:
        line = f"{label:<28} {s['cpu_ms_p50']:>10.2f} "
        line += f"{s['cpu_ms_mean']:>7.2f} " if full else f"{'':>7} "
        line += f"{s['commits']:>8g} {s['wal_pages']:>9g}"
        if full:
            line += (
                f" {s['events']:>6g} {s['wall_ms_p50']:>8.1f} {s['events_read_cpu_ms_p50']:>11.2f}"
            )
        return line

    if a["n"] == 0 or p["n"] == 0:
        return [*lines, "(no run measured)"]
    lines.append(row(f"needs approval (n={a['n']})", a))
    lines.append(row("  to the pause", a["to_pause"], full=False))
    lines.append(row("  decision + resume", a["decision_and_resume"], full=False))
    lines.append(row(f"no approval (n={p['n']})", p))
    lines.append(
        f"{'ratio':<28} {ratio(a['cpu_ms_p50'], p['cpu_ms_p50']):>10.2f} "
        f"{ratio(a['cpu_ms_mean'], p['cpu_ms_mean']):>7.2f} "
        f"{ratio(a['commits'], p['commits']):>8.2f} {ratio(a['wal_pages'], p['wal_pages']):>9.2f} "
        f"{ratio(a['events'], p['events']):>6.2f} {ratio(a['wall_ms_p50'], p['wall_ms_p50']):>8.2f}"
    )
    return lines


def idle_table(waiting: Waiting) -> list[str]:
    head = (
        f"{'window':<8} {'server':<10} {'paused':>6} {'rss MB':>7} {'min-max':>13} "
        f"{'cpu ms/s':>9} {'commits':>8}"
    )
    lines = [head, "-" * len(head)]
    for window, idle in waiting.windows.items():
        for name in (APPROVALS, PLAIN):
            i = idle[name]
            lines.append(
                f"{window:<8} {name:<10} {i.paused:>6} {i.rss_mb:>7.1f} "
                f"{f'{i.rss_mb_min:.1f}-{i.rss_mb_max:.1f}':>13} {i.cpu_ms_per_s:>9.2f} "
                f"{i.writes.commits:>8}"
            )
    return lines


def idle_ratios(waiting: Waiting) -> dict[str, float]:
    """Each server's window after a batch over the window before it, and the two servers in
    the last window."""
    windows = [waiting.windows.get(w) for w in ("before", *BATCHES)]
    if any(w is None for w in windows):
        return {}
    before, first, second = (w for w in windows if w is not None)
    found: dict[str, float] = {}
    for name in (APPROVALS, PLAIN):
        b, f, s = before[name], first[name], second[name]
        found |= {
            f"{name}_rss_first_over_before": ratio(f.rss_mb, b.rss_mb),
            f"{name}_rss_second_over_first": ratio(s.rss_mb, f.rss_mb),
            f"{name}_rss_growth_first_mb": f.rss_mb - b.rss_mb,
            f"{name}_rss_growth_second_mb": s.rss_mb - f.rss_mb,
            f"{name}_cpu_first_over_before": ratio(f.cpu_ms_per_s, b.cpu_ms_per_s),
            f"{name}_cpu_second_over_before": ratio(s.cpu_ms_per_s, b.cpu_ms_per_s),
        }
    a, p = second[APPROVALS], second[PLAIN]
    found["rss_approvals_over_plain"] = ratio(a.rss_mb, p.rss_mb)
    found["cpu_approvals_over_plain"] = ratio(a.cpu_ms_per_s, p.cpu_ms_per_s)
    return found


def final_line(costs: dict[str, Costs], waiting: Waiting | None) -> str:
    a, p = costs[APPROVALS].stats(), costs[PLAIN].stats()
    parts = []
    if a["n"] and p["n"]:
        parts.append(
            f"cpu_ms {a['cpu_ms_p50']:.2f}/{p['cpu_ms_p50']:.2f} "
            f"ratio {ratio(a['cpu_ms_p50'], p['cpu_ms_p50']):.2f} "
            f"commits {a['commits']:g}/{p['commits']:g} wal_pages {a['wal_pages']:g}/"
            f"{p['wal_pages']:g}"
        )
    if waiting is not None and (r := idle_ratios(waiting)):
        last = waiting.windows[BATCHES[-1]][APPROVALS]
        idle_commits = sum(w[APPROVALS].writes.commits for w in waiting.windows.values())
        parts.append(
            f"paused={waiting.count}+{waiting.count} rss_mb {last.rss_mb:.1f} "
            f"rss_ratio {r[f'{APPROVALS}_rss_first_over_before']:.3f}/"
            f"{r[f'{APPROVALS}_rss_second_over_first']:.3f} "
            f"cpu_ms_per_s {last.cpu_ms_per_s:.2f} "
            f"cpu_ratio {r[f'{APPROVALS}_cpu_second_over_before']:.2f} "
            f"idle_commits {idle_commits}"
        )
    return "approvals: " + "; ".join(parts)


def finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else None
    return value


def as_json(
    options: Options, costs: dict[str, Costs], waiting: Waiting | None, problems: list[str]
) -> dict[str, Any]:
    a, p = costs[APPROVALS].stats(), costs[PLAIN].stats()
    out: dict[str, Any] = {
        "benchmark": "approvals",
        "question": QUESTION,
        "runs": options.runs,
        "warmup": WARMUP_RUNS,
        "pause_and_resume": {
            APPROVALS: finite(a),
            PLAIN: finite(p),
            "cpu_ratio_p50": finite(ratio(a.get("cpu_ms_p50", 0), p.get("cpu_ms_p50", 0))),
            "commits_ratio": finite(ratio(a.get("commits", 0), p.get("commits", 0))),
            "wal_pages_ratio": finite(ratio(a.get("wal_pages", 0), p.get("wal_pages", 0))),
        },
        "problems": problems,
    }
    if waiting is not None:
        cancels = sorted(waiting.cancel_ms)
        out["paused_runs"] = {
            "per_batch": waiting.count,
            "batches": len(BATCHES),
            "idle_s": options.idle_s,
            "windows": {
                window: {name: idle.as_json() for name, idle in idle_by_server.items()}
                for window, idle_by_server in waiting.windows.items()
            },
            "ratios": finite(idle_ratios(waiting)),
            "gauges": waiting.gauges,
            "gauges_after_cleanup": waiting.gauges_after,
            "paused_per_s": finite(waiting.paused.per_s),
            "completed_per_s": finite(waiting.completed.per_s),
            "cancelled_per_s": finite(waiting.cancelled.per_s),
            "cancel_p50_ms": finite(percentile(cancels, 0.5)),
            "cancel_p99_ms": finite(percentile(cancels, 0.99)),
            "deleted_per_s": finite(waiting.deleted.per_s),
        }
    return out


def report(
    options: Options, costs: dict[str, Costs], waiting: Waiting | None, problems: list[str]
) -> None:
    print(
        f"approvals: {QUESTION!r}, one run at a time on fresh threads, {options.runs} per server "
        f"after {WARMUP_RUNS} warm-up ones; '{APPROVALS}' pauses at the calculator and is "
        f"approved, '{PLAIN}' needs no approval"
    )
    print("\n".join(cost_table(costs)))
    print(
        "cpu ms: the server's CPU time per run (message to end, + 100 ms); commits / wal pages: "
        "the write transactions and pages in SQLite's write-ahead log per run (p50); events "
        "read: server CPU ms of one GET of the run's events"
    )
    if waiting is not None:
        print()
        print(
            f"runs paused on '{APPROVALS}' and completed on '{PLAIN}' in {len(BATCHES)} batches "
            f"of {waiting.count}; both servers idle {options.idle_s:g} s before and after each"
        )
        print("\n".join(idle_table(waiting)))
        if r := idle_ratios(waiting):
            for name, did in ((APPROVALS, "paused"), (PLAIN, "completed")):
                print(
                    f"{name:<10} rss: batch 1/before {r[f'{name}_rss_first_over_before']:.3f} "
                    f"({r[f'{name}_rss_growth_first_mb']:+.1f} MB), batch 2/batch 1 "
                    f"{r[f'{name}_rss_second_over_first']:.3f} "
                    f"({r[f'{name}_rss_growth_second_mb']:+.1f} MB); "
                    f"cpu/before {r[f'{name}_cpu_first_over_before']:.2f}, "
                    f"{r[f'{name}_cpu_second_over_before']:.2f} ({did} runs)"
                )
            print(
                f"{APPROVALS}/{PLAIN} after batch 2: rss {r['rss_approvals_over_plain']:.3f}, "
                f"cpu {r['cpu_approvals_over_plain']:.2f}"
            )
        g = waiting.gauges.get(BATCHES[-1], {}).get(APPROVALS, {})
        print(
            f"gauges of '{APPROVALS}' after batch 2: "
            + ", ".join(f"{k} {v:g}" for k, v in g.items())
        )
        for label, value in (
            ("paused", waiting.paused),
            ("completed", waiting.completed),
            ("cancelled", waiting.cancelled),
            ("deleted", waiting.deleted),
        ):
            print(
                f"  {label:<10} {value.count:>5} in {value.seconds:6.2f} s ({value.per_s:.1f}/s, "
                f"{CONCURRENCY} requests in flight)"
            )
        cancels = sorted(waiting.cancel_ms)
        print(
            f"  a paused run's cancel: p50 {percentile(cancels, 0.5):.1f} ms, "
            f"p99 {percentile(cancels, 0.99):.1f} ms"
        )
    if problems:
        print(f"FAILED: {len(problems)} problem(s), the first {MAX_PROBLEMS_SHOWN}:")
        print("\n".join(f"  {p}" for p in problems[:MAX_PROBLEMS_SHOWN]))
    print(final_line(costs, waiting))


# --- main ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    paused: int
    idle_s: float
    json: bool


async def bench(options: Options) -> tuple[dict[str, Costs], Waiting | None, list[str]]:
    secret = secrets.token_hex(20)
    users = make_users(secret, secrets.token_hex(4))
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="approvals-") as tmpdir:
        directory = Path(tmpdir)
        async with serving(directory, secret) as servers:
            for server in servers.values():
                say(f"{server.name}: pid {server.pid}, {server.url}")
            dbs = {name: DatabaseFile(s.database) for name, s in servers.items()}
            limits = httpx.Limits(max_connections=CONCURRENCY)
            clients = {
                name: httpx.AsyncClient(base_url=s.url, timeout=HTTP_TIMEOUT_S, limits=limits)
                for name, s in servers.items()
            }
            costs = {name: Costs(name) for name in servers}
            waiting = None
            try:
                say("1. a pause and its resume")
                costs = await pause_and_resume(servers, dbs, clients, users, options.runs)
                if options.paused:
                    say(f"2. {options.paused} paused runs")
                    waiting = await paused_runs_wait(
                        servers, dbs, clients, users, options.paused, options.idle_s
                    )
                    problems += waiting_problems(waiting)
            except (Failed, httpx.HTTPError, KeyError, ValueError, OSError) as exc:
                problems.append(f"{type(exc).__name__}: {exc}")
            finally:
                for client in clients.values():
                    await client.aclose()
                for db in dbs.values():
                    db.close()
        for server in servers.values():
            if trouble := log_trouble(server.host.log):
                problems.append(
                    f"{server.name}'s log has {trouble} line(s) with errors:\n"
                    f"{log_tail(server.host.log)}"
                )
    return costs, waiting, problems


def parse_args() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, help=f"runs per server in part 1 ({DEFAULT_RUNS})")
    parser.add_argument(
        "--paused", type=int, help=f"runs paused per batch in part 2 ({DEFAULT_PAUSED})"
    )
    parser.add_argument("--idle", type=float, help=f"seconds per idle window ({DEFAULT_IDLE_S:g})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_RUNS} runs, {QUICK_PAUSED} paused, {QUICK_IDLE_S:g} s windows",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    runs = args.runs if args.runs is not None else QUICK_RUNS if args.quick else DEFAULT_RUNS
    paused = (
        args.paused if args.paused is not None else QUICK_PAUSED if args.quick else DEFAULT_PAUSED
    )
    idle_s = args.idle if args.idle is not None else QUICK_IDLE_S if args.quick else DEFAULT_IDLE_S
    if runs < 1:
        parser.error("--runs must be at least 1")
    if paused < 0:
        parser.error("--paused must be 0 (skip part 2) or more")
    if idle_s <= 0:
        parser.error("--idle must be more than 0")
    return Options(runs=runs, paused=paused, idle_s=idle_s, json=args.json)


def main() -> int:
    options = parse_args()
    try:
        costs, waiting, problems = asyncio.run(bench(options))
    except KeyboardInterrupt:
        print("approvals: interrupted; the servers were stopped", file=sys.stderr)
        return 130
    except (Failed, OSError, httpx.HTTPError) as exc:
        print(f"approvals: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if options.json:
        print(json.dumps(as_json(options, costs, waiting, problems), indent=2))
    else:
        report(options, costs, waiting, problems)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
