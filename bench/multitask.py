"""Messages enqueued behind a busy run (``"multitask": "enqueue"``) against the same messages sent
one at a time, on real ``isochat serve`` processes, in the same run.

Each phase has a server of its own (its own process on a free loopback port, a fresh SQLite file
in a temporary directory, the in-process broker, the offline model), started for it and stopped
after it; the rate limit is raised out of the way, the queue and running-run limits are the
server's defaults (printed), and so is everything else (its database pool among them). N users
(``--users``, default 1,000), each with a thread of its own, send three questions each, ``what
is i + 1?``, ``what is i + 2?`` and ``what is i + 3?`` (user i), which the offline model answers
``i + 1 = i+1`` and so on: every answer says which question it answers.

- ``enqueue``: each user sends its three messages at once, back to back, each with
  ``"multitask": "enqueue"``; the first runs, the other two wait their turn behind it;
- ``one at a time`` (the baseline): each user sends its next message only once the one before
  is answered, so that its thread is never busy when a message comes (the same body, with
  ``enqueue``, which then changes nothing).

A message is sent as a client that streams its answers sends it (as the LangGraph SDK's
``runs.create`` then ``runs.join_stream`` do on the Agent Protocol routes): ``POST
/api/threads/{id}/runs`` answers 202 with the Run as soon as the message is stored
(``running``, or ``queued`` behind the thread's busy run), then ``GET /api/runs/{id}/stream``
follows the run's events (server-sent events) to its final event. The next message of a user
goes out only after the 202 of the one before, so the order the user sent them in is the order
they were stored in: the order the thread must keep. At most C users (``--concurrency``,
default 50) are at it at once, each on a client of its own (keep-alive connections, first opened
before the clock starts); a user who is done hands its client to the next. So about C runs are
running at any time in both phases (one per busy thread): what differs is that in ``enqueue``
the next run of a thread starts as the one before ends, with no round trip to the client in
between.

Measured, per phase: messages/s (messages answered / wall time from the first message sent to
the last answer received), latency per message (from its ``POST`` sent to its final event
received: in ``enqueue`` the second and third message wait behind the first, so their latency
includes that wait; shown by position too), a user's time for its three answers (first ``POST``
to last answer), the server's CPU time per message (``/proc/<pid>/stat``), its peak resident
memory (``VmHWM``, over the server's whole life: start, warm-up and load), the client's own CPU
time and how busy the machine's cores were (``/proc/stat``). Each phase starts with a warm-up
of a few users of its own (not counted).

Checked in each phase, after the load (not timed): every run ``completed`` with the answer to
its own question (3 answers per thread); the thread's messages, oldest first, read q1, a1, q2,
a2, q3, a3, each answer from the run of the question before it; the thread idle
(``active_run_id`` null, ``queued_run_ids`` empty); each run's events ``1..n`` with one final
event, the last; and never two runs of a thread at once: each run's first event (its
``run_started``) is not before the ``finished_at`` of the thread's run before it. Every request
that failed (a transport error, an unexpected status, a stream without a final event within
``STREAM_TIMEOUT_S``) is an error, counted and shown with its request, answer and run ids.

Reading the result: ``ratio`` is enqueue / one at a time. Messages/s near or above 1 means
queueing costs nothing over sending messages one by one (it saves the client's round trip
between two messages); latency per message is higher by nature (a queued message waits for the
ones before it); a user's time for its three answers is where queueing can win (no round trip
between its messages). ``runs at once`` (the runs' time over the wall time) and the time a run
takes by the server's clock tell a slower server from more runs in flight. The client shares
the machine's cores with the server: ``client cpu`` near 100 % of a core means the client set
the pace; compare ratios, not absolute numbers across machines.

    .venv/bin/python bench/multitask.py [--users N] [--concurrency C]

The last line is machine-readable; the exit code is 1 when a check failed, a request failed or
the server logged an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from throughput import (
    User,
    bounded,
    cpu_seconds,
    host_cpu_ticks,
    new_threads,
    process_tree,
    ratio,
    run_async,
)
from ws_load import (
    HOST,
    ISOCHAT,
    Server,
    free_port,
    log_lines,
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

from src.services.auth import TokenService

ENQUEUE, ONE_AT_A_TIME = "enqueue", "one at a time"
PHASES = (ONE_AT_A_TIME, ENQUEUE)  # the baseline first; each on a fresh server
MESSAGES = 3  # per user
FINAL_EVENTS = frozenset({"run_completed", "run_failed", "run_cancelled"})

DEFAULT_USERS = 1000
DEFAULT_CONCURRENCY = 50
WARMUP_USERS = 20
CHECK_CONCURRENCY = 25  # requests in flight while checking what was stored (not timed)
HTTP_TIMEOUT_S = 60.0  # any one request; a stream sends a keep-alive every 15 s
# A connection idle this long is not used again: below the server's (uvicorn's) 5 s keep-alive,
# so that the client never sends on a connection the server is closing (httpx's default is the
# same 5 s: the request then fails with a ReadError, and a POST is not retried).
KEEPALIVE_EXPIRY_S = 2.0
STREAM_TIMEOUT_S = 120.0  # a run's stream without its final event by then: an error
PHASE_TIMEOUT_S = 900.0  # the whole load of one phase; only guards against a hang
FD_HEADROOM = 200
MAX_PROBLEMS_SHOWN = 10
LOG_KINDS_SHOWN = 8
TOKEN_TTL_S = 3600
LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
LOG_IDS = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|Task-\d+|mt-(?:warm-)?\d+")
# The load needs 1 running run per user, and 2 runs queued per thread: the server's own
# defaults for those two (set here so that no environment changes them). The rate limit is
# raised as in the other benchmarks (a user makes about 12 requests in a phase, well within the
# default burst of 60, but the limit is not what is measured here). The rate limit is a moving
# window of BURST hits in ceil(60 * BURST / PER_MINUTE) s = 1 s.
LIMITS = {
    "ISOCHAT_RATE_LIMIT_PER_MINUTE": "6000000",
    "ISOCHAT_RATE_LIMIT_BURST": "100000",
    "ISOCHAT_MAX_RUNNING_RUNS_PER_USER": "8",
    "ISOCHAT_MAX_QUEUED_RUNS": "10",
}


# --- the server ---------------------------------------------------------------------------------


def environment(home: Path, port: int, secret: str) -> dict[str, str]:
    return (
        server_environment(home, port)
        | LIMITS
        | {"ISOCHAT_ENV": "development", "ISOCHAT_AUTH_SECRET": secret}
    )


@contextlib.contextmanager
def serving(tmpdir: Path, name: str, secret: str) -> Iterator[Server]:
    """``isochat serve`` on a free port, with a database of its own; stopped on the way out."""
    home = tmpdir / name
    (home / "var").mkdir(parents=True)
    port = free_port()
    log = tmpdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ISOCHAT, "serve"],
            env=environment(home, port, secret),
            cwd=home,  # no .env of the caller's directory is read
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_server_fd_limit,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the server ourselves
        )
    try:
        yield Server(url=f"http://{HOST}:{port}", process=process, log=log)
    finally:
        stop(process)


def peak_rss_mb(pids: Sequence[int]) -> float:
    """The peak resident memory (``VmHWM``) of the server's processes, summed."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


# --- what one user sends and sees ---------------------------------------------------------------


def parse_ts(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


@dataclass(slots=True)
class Sent:
    """One message of one user, and what became of it."""

    question: str
    answer: str
    run_id: str | None = None
    stored_as: str | None = None  # the Run's status in the 202: running or queued
    ended_as: str | None = None  # the Run's status after the load (GET /api/runs/{id})
    sent_at: float | None = None  # perf_counter
    answered_at: float | None = None  # its final event received
    # The same two on the wall clock, which the server's event times are on (same machine).
    sent_wall: float | None = None
    answered_wall: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # as streamed

    @property
    def final(self) -> dict[str, Any] | None:
        last = self.events[-1] if self.events else None
        return last if last is not None and last.get("type") in FINAL_EVENTS else None

    @property
    def latency_s(self) -> float | None:
        if self.sent_at is None or self.answered_at is None:
            return None
        return self.answered_at - self.sent_at

    @property
    def run_s(self) -> float | None:
        """How long its run ran, by the server's clock: its first event to its final one."""
        start, end = self._started_at, self._ended_at
        return None if start is None or end is None else end - start

    @property
    def wait_s(self) -> float | None:
        """From its POST sent to its run's first event: storing it, and its turn in the queue."""
        start = self._started_at
        return None if start is None or self.sent_wall is None else start - self.sent_wall

    @property
    def delivery_s(self) -> float | None:
        """From its run's final event to the client receiving it on the stream."""
        end = self._ended_at
        return None if end is None or self.answered_wall is None else self.answered_wall - end

    @property
    def _started_at(self) -> float | None:
        start = parse_ts(self.events[0].get("ts")) if self.events else None
        return None if start is None else start.timestamp()

    @property
    def _ended_at(self) -> float | None:
        end = parse_ts(self.final.get("ts")) if self.final is not None else None
        return None if end is None else end.timestamp()


@dataclass(slots=True)
class Load:
    """One user of a phase: its thread and its three messages."""

    user: User
    thread_id: str
    number: int

    messages: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        i = self.number
        self.messages = [
            Sent(question=f"what is {i} + {k}?", answer=f"{i} + {k} = {i + k}")
            for k in range(1, MESSAGES + 1)
        ]

    @property
    def span_s(self) -> float | None:
        """From its first message sent to its last answer received."""
        first, last = self.messages[0].sent_at, self.messages[-1].answered_at
        if first is None or last is None or any(m.answered_at is None for m in self.messages):
            return None
        return max(m.answered_at or 0.0 for m in self.messages) - first


@dataclass(slots=True)
class Problems:
    """Errors and failed checks, counted by kind, with the first few in full."""

    counts: dict[str, int] = field(default_factory=dict)
    shown: list[str] = field(default_factory=list)

    def add(self, kind: str, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.shown) < MAX_PROBLEMS_SHOWN:
            self.shown.append(f"{kind}: {detail}")

    def count(self, *kinds: str) -> int:
        return sum(self.counts.get(k, 0) for k in kinds)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# What the client met (the other kinds are what the checks found in what was stored).
ERRORS = ("request failed", "bad status", "no final event")


def answer_text(answer: httpx.Response) -> str:
    return f"{answer.status_code} {answer.text[:300]}"


async def send(http: httpx.AsyncClient, load: Load, sent: Sent, problems: Problems) -> bool:
    """``POST /api/threads/{id}/runs``: whether the message was stored (202)."""
    path = f"/api/threads/{load.thread_id}/runs"
    body = {"content": sent.question, "multitask": "enqueue"}
    request = f"POST {path} {json.dumps(body)} ({load.user.name})"
    sent.sent_at, sent.sent_wall = time.perf_counter(), time.time()
    try:
        answer = await http.post(path, json=body, headers=load.user.headers)
    except httpx.HTTPError as exc:
        problems.add("request failed", f"{request}: {type(exc).__name__}: {exc}")
        return False
    if answer.status_code != 202:
        problems.add("bad status", f"{request}: {answer_text(answer)}")
        return False
    run = answer.json()["run"]
    sent.run_id, sent.stored_as = run["id"], run["status"]
    return True


async def follow(http: httpx.AsyncClient, load: Load, sent: Sent, problems: Problems) -> None:
    """``GET /api/runs/{id}/stream`` until the run's final event."""
    path = f"/api/runs/{sent.run_id}/stream"
    request = f"GET {path} ({load.user.name}, thread {load.thread_id}, {sent.question!r})"
    try:
        async with (
            asyncio.timeout(STREAM_TIMEOUT_S),
            http.stream("GET", path, headers=load.user.headers) as answer,
        ):
            if answer.status_code != 200:
                await answer.aread()
                problems.add("bad status", f"{request}: {answer_text(answer)}")
                return
            async for line in answer.aiter_lines():
                if not line.startswith("data:"):
                    continue  # id:, event:, keep-alive comments, blank lines
                event = json.loads(line.removeprefix("data:"))
                sent.events.append(event)
                if event.get("type") in FINAL_EVENTS:
                    sent.answered_at, sent.answered_wall = time.perf_counter(), time.time()
                    return
    except TimeoutError:
        seen = [e.get("type") for e in sent.events]
        problems.add("no final event", f"{request}: none within {STREAM_TIMEOUT_S:.0f} s: {seen}")
        return
    except (httpx.HTTPError, ValueError) as exc:
        problems.add("request failed", f"{request}: {type(exc).__name__}: {exc}")
        return
    problems.add("no final event", f"{request}: the stream ended after {len(sent.events)} events")


async def enqueued(http: httpx.AsyncClient, load: Load, problems: Problems) -> None:
    """All three at once: each sent as soon as the one before is stored, all followed at once.
    After a message that was not stored, the rest are not sent (their order would not say
    anything)."""
    following: list[asyncio.Task[None]] = []
    for sent in load.messages:
        if not await send(http, load, sent, problems):
            break
        following.append(asyncio.create_task(follow(http, load, sent, problems)))
    await asyncio.gather(*following)


async def one_at_a_time(http: httpx.AsyncClient, load: Load, problems: Problems) -> None:
    for sent in load.messages:
        if not await send(http, load, sent, problems):
            return
        await follow(http, load, sent, problems)


USER_LOADS = {ENQUEUE: enqueued, ONE_AT_A_TIME: one_at_a_time}


def client(url: str) -> httpx.AsyncClient:
    # A user's client: its three streams and one request at once, on keep-alive connections.
    limits = httpx.Limits(
        max_connections=MESSAGES + 1,
        max_keepalive_connections=MESSAGES + 1,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    return httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, limits=limits)


async def drive(
    clients: Sequence[httpx.AsyncClient], loads: Sequence[Load], phase: str, problems: Problems
) -> None:
    """Every load, at most ``len(clients)`` users at once: each client takes the next user
    when its user is done."""
    user_load = USER_LOADS[phase]
    todo = iter(loads)

    async def worker(http: httpx.AsyncClient) -> None:
        for load in todo:
            await user_load(http, load, problems)

    await asyncio.gather(*(worker(http) for http in clients))


# --- checks (after the load, not timed) ---------------------------------------------------------


async def get_json(
    http: httpx.AsyncClient, load: Load, path: str, problems: Problems
) -> dict[str, Any] | None:
    request = f"GET {path} ({load.user.name})"
    try:
        answer = await http.get(path, headers=load.user.headers)
    except httpx.HTTPError as exc:
        problems.add("request failed", f"{request}: {type(exc).__name__}: {exc}")
        return None
    if answer.status_code != 200:
        problems.add("bad status", f"{request}: {answer_text(answer)}")
        return None
    body: dict[str, Any] = answer.json()
    return body


def check_events(load: Load, sent: Sent, problems: Problems) -> None:
    seqs = [e.get("seq") for e in sent.events]
    finals = [e for e in sent.events if e.get("type") in FINAL_EVENTS]
    if seqs != list(range(1, len(seqs) + 1)) or len(finals) != 1 or sent.final is None:
        kinds = [(e.get("seq"), e.get("type")) for e in sent.events]
        problems.add("events", f"run {sent.run_id} ({load.user.name}): {kinds}")


async def check(http: httpx.AsyncClient, load: Load, problems: Problems) -> tuple[bool, bool]:
    """What was stored for one user: (its thread in order, two of its runs overlapped)."""
    if any(m.run_id is None for m in load.messages):
        return False, False  # counted already: a message was not stored
    runs = []
    for sent in load.messages:
        run = await get_json(http, load, f"/api/runs/{sent.run_id}", problems)
        runs.append(run or {})
        sent.ended_as = None if run is None else run.get("status")
        content = ((sent.final or {}).get("data") or {}).get("message") or {}
        if run is not None and run.get("status") != "completed":
            problems.add(
                "not completed",
                f"run {sent.run_id} ({load.user.name}, {sent.question!r}, stored "
                f"{sent.stored_as}): {json.dumps(run)[:300]}",
            )
        elif sent.final is not None and content.get("content") != sent.answer:
            problems.add(
                "wrong answer",
                f"run {sent.run_id} ({sent.question!r}): {json.dumps(sent.final)[:300]}",
            )
        if sent.final is not None:
            check_events(load, sent, problems)
    overlapped = False
    for k in range(1, len(runs)):
        before = parse_ts(runs[k - 1].get("finished_at"))
        events = load.messages[k].events
        start = parse_ts(events[0].get("ts")) if events else None
        if before is None or start is None or events[0].get("type") != "run_started":
            continue  # not ended, or not started: counted above
        if start < before:
            overlapped = True
            problems.add(
                "runs overlap",
                f"thread {load.thread_id}: run {load.messages[k].run_id} started at "
                f"{events[0].get('ts')}, before run {load.messages[k - 1].run_id} ended at "
                f"{runs[k - 1].get('finished_at')}",
            )
    thread = await get_json(http, load, f"/api/threads/{load.thread_id}", problems)
    if thread is not None and (thread.get("active_run_id") or thread.get("queued_run_ids")):
        problems.add("thread busy", f"after the load: {json.dumps(thread)[:300]}")
    path = f"/api/threads/{load.thread_id}/messages?limit=50"
    listed = await get_json(http, load, path, problems)
    if listed is None:
        return False, overlapped
    got = [(m.get("role"), m.get("run_id"), m.get("content")) for m in listed["messages"]]
    expected = [
        (role, sent.run_id, text)
        for sent in load.messages
        for role, text in (("user", sent.question), ("assistant", sent.answer))
    ]
    if got != expected:
        problems.add(
            "order broken",
            f"thread {load.thread_id} ({load.user.name}): expected {expected}, listed {got}",
        )
        return False, overlapped
    return True, overlapped


# --- a phase ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Phase:
    name: str
    loads: list[Load]
    problems: Problems
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    host_busy: float = 0.0
    rss_start_mb: float = 0.0
    rss_after_mb: float = 0.0
    peak_rss_mb: float = 0.0
    threads_in_order: int = 0
    threads_overlapping: int = 0
    log_lines: int = 0
    log_trouble: int = 0
    log_summary: list[str] = field(default_factory=list)
    setup_s: float = 0.0
    checks_s: float = 0.0

    @property
    def messages(self) -> list[Sent]:
        return [sent for load in self.loads for sent in load.messages]

    @property
    def answered(self) -> int:
        """Messages whose run completed with the answer to its own question, as streamed."""
        return sum(
            1
            for m in self.messages
            if m.final is not None
            and m.final.get("type") == "run_completed"
            and ((m.final.get("data") or {}).get("message") or {}).get("content") == m.answer
        )

    @property
    def per_s(self) -> float:
        return ratio(self.answered, self.wall_s)

    def latencies_ms(self) -> list[float]:
        return sorted(1000 * s for m in self.messages if (s := m.latency_s) is not None)

    def runs_ms(self) -> list[float]:
        return sorted(1000 * s for m in self.messages if (s := m.run_s) is not None)

    @property
    def running_at_once(self) -> float:
        """Runs running at once on average: the time they ran over the wall time."""
        return ratio(sum(self.runs_ms()) / 1000, self.wall_s)

    def spans_ms(self) -> list[float]:
        return sorted(1000 * s for load in self.loads if (s := load.span_s) is not None)

    def stored_as(self, status: str) -> int:
        return sum(1 for m in self.messages if m.stored_as == status)

    @property
    def completed(self) -> int:
        """Runs stored ``completed`` after the load."""
        return sum(1 for m in self.messages if m.ended_as == "completed")

    @property
    def cpu_ms_per_message(self) -> float:
        return ratio(1000 * self.server_cpu_s, len(self.messages))

    @property
    def client_share(self) -> float:
        return ratio(self.client_cpu_s, self.wall_s)


async def load_phase(
    server: Server, phase: Phase, users: int, concurrency: int, secret: str
) -> None:
    """Users and threads, a warm-up, the load (timed), then the checks."""
    pid = server.process.pid
    phase.rss_start_mb = rss_mb(pid)
    begun = time.perf_counter()
    names = [f"mt-{i}" for i in range(users)] + [f"mt-warm-{i}" for i in range(WARMUP_USERS)]
    tokens = TokenService(secret=secret, ttl_s=TOKEN_TTL_S)
    accounts = [User(name=name, token=tokens.issue(name)) for name in names]
    threads = await new_threads(server.url, accounts, 1)
    loads = [Load(u, t[0], i + 1) for i, (u, t) in enumerate(zip(accounts, threads, strict=True))]
    measured, warmup = loads[:users], loads[users:]
    phase.loads = measured
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client(server.url)) for _ in range(concurrency)]
        # Each client's connections opened before the clock starts.
        await asyncio.gather(
            *(http.get("/health/live") for http in clients for _ in range(MESSAGES + 1))
        )
        await drive(clients[:WARMUP_USERS], warmup, phase.name, Problems())
        phase.setup_s = time.perf_counter() - begun
        pids = process_tree(pid)
        gc.collect()  # the client's garbage from setting up, collected outside the clock
        host0, server0 = host_cpu_ticks(), cpu_seconds(pids)
        client0, start = time.process_time(), time.perf_counter()
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await drive(clients, measured, phase.name, phase.problems)
        phase.wall_s = time.perf_counter() - start
        phase.client_cpu_s = time.process_time() - client0
        server1, host1 = cpu_seconds(pids), host_cpu_ticks()
        phase.server_cpu_s = server1 - server0
        phase.host_busy = ratio(host1[0] - host0[0], host1[1] - host0[1])
        phase.peak_rss_mb = peak_rss_mb(pids)
        phase.rss_after_mb = sum(rss_mb(p) for p in pids)

        async def one(load: Load) -> tuple[bool, bool]:
            return await check(clients[load.number % len(clients)], load, phase.problems)

        checked = time.perf_counter()
        verdicts = await bounded([one(load) for load in measured], CHECK_CONCURRENCY)
        phase.checks_s = time.perf_counter() - checked
    phase.threads_in_order = sum(1 for in_order, _ in verdicts if in_order)
    phase.threads_overlapping = sum(1 for _, overlapped in verdicts if overlapped)


def run_phase(tmpdir: Path, name: str, users: int, concurrency: int) -> Phase:
    phase = Phase(name=name, loads=[], problems=Problems())
    secret = secrets.token_hex(20)
    with serving(tmpdir, name.replace(" ", "-"), secret) as server:
        wait_until_live(server)
        print(
            f"{name}: isochat serve (sqlite, in-process broker), pid {server.process.pid}, "
            f"{server.url}",
            flush=True,
        )
        try:
            run_async(load_phase(server, phase, users, concurrency, secret))
        except (OSError, TimeoutError, httpx.HTTPError) as exc:
            phase.problems.add("phase failed", f"{type(exc).__name__}: {exc}")
            print(f"--- {name}: server log tail ---\n{log_tail(server.log)}", file=sys.stderr)
    print(
        f"{name}: {phase.answered}/{len(phase.messages)} messages answered in "
        f"{phase.wall_s:.1f} s (setup and warm-up {phase.setup_s:.1f} s, checks "
        f"{phase.checks_s:.1f} s), {phase.problems.total} problem(s)",
        flush=True,
    )
    phase.log_lines, phase.log_trouble = log_lines(server.log), log_trouble(server.log)
    phase.log_summary = log_summary(server.log)
    if phase.log_trouble:
        phase.problems.add("server log", f"{phase.log_trouble} line(s) with errors")
    return phase


def log_summary(log: Path) -> list[str]:
    """The server log's warnings, errors and exceptions, alike ones counted together (times,
    ids and numbers left out), the most frequent first."""
    found: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith((" ", "Traceback", "future:")):
            continue
        logged = any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL"))
        if not logged and not ("Error" in line or "Exception" in line):
            continue
        text = LOG_TIME.sub("", line)
        text = LOG_IDS.sub("<id>", text)
        found[text] = found.get(text, 0) + 1
    ranked = sorted(found.items(), key=lambda item: -item[1])
    return [f"{n:>5} x {text[:240]}" for text, n in ranked[:LOG_KINDS_SHOWN]]


# --- reporting ----------------------------------------------------------------------------------


def p(values: Sequence[float], fraction: float) -> float:
    return percentile(values, fraction)


COST_HEADER = (
    f"{'':<14} {'msgs':>5} {'wall s':>7} {'msgs/s':>7} {'cpu ms/msg':>10} {'peak MB':>8} "
    f"{'client cpu':>10} {'host busy':>9}"
)
LATENCY_HEADER = (
    f"{'':<14} {'msg p50':>8} {'msg p99':>8} {'user p50':>9} {'user p99':>9} {'run p50':>8} "
    f"{'run p99':>8} {'runs at once':>12}"
)


def cost_row(phase: Phase) -> str:
    return (
        f"{phase.name:<14} {len(phase.messages):>5} {phase.wall_s:>7.1f} {phase.per_s:>7.1f} "
        f"{phase.cpu_ms_per_message:>10.2f} {phase.peak_rss_mb:>8.1f} "
        f"{100 * phase.client_share:>9.0f}% {100 * phase.host_busy:>8.0f}%"
    )


def cost_ratio(a: Phase, b: Phase) -> str:
    return (
        f"{'ratio':<14} {'':>5} {ratio(a.wall_s, b.wall_s):>7.2f} {ratio(a.per_s, b.per_s):>7.2f} "
        f"{ratio(a.cpu_ms_per_message, b.cpu_ms_per_message):>10.2f} "
        f"{ratio(a.peak_rss_mb, b.peak_rss_mb):>8.2f}"
    )


def latencies(phase: Phase) -> list[float]:
    """p50 and p99 of a message's latency, a user's time for its answers, a run's time."""
    lat, spans, runs = phase.latencies_ms(), phase.spans_ms(), phase.runs_ms()
    return [p(values, q) for values in (lat, spans, runs) for q in (0.5, 0.99)]


def latency_row(phase: Phase) -> str:
    m50, m99, u50, u99, r50, r99 = latencies(phase)
    return (
        f"{phase.name:<14} {m50:>8.1f} {m99:>8.1f} {u50:>9.1f} {u99:>9.1f} {r50:>8.1f} "
        f"{r99:>8.1f} {phase.running_at_once:>12.1f}"
    )


def latency_ratio(a: Phase, b: Phase) -> str:
    m50, m99, u50, u99, r50, r99 = (
        ratio(x, y) for x, y in zip(latencies(a), latencies(b), strict=True)
    )
    return (
        f"{'ratio':<14} {m50:>8.2f} {m99:>8.2f} {u50:>9.2f} {u99:>9.2f} {r50:>8.2f} "
        f"{r99:>8.2f} {ratio(a.running_at_once, b.running_at_once):>12.2f}"
    )


def positions(phase: Phase) -> list[str]:
    """By position in the user's messages: where a message's time went (p50 ms)."""
    lines = []
    for k in range(MESSAGES):
        sent = [load.messages[k] for load in phase.loads]
        parts = {
            "msg": [m.latency_s for m in sent],
            "wait": [m.wait_s for m in sent],
            "run": [m.run_s for m in sent],
            "delivery": [m.delivery_s for m in sent],
        }
        shown = []
        for label, values in parts.items():
            ordered = sorted(1000 * v for v in values if v is not None)
            shown.append(f"{label} {p(ordered, 0.5):>7.1f}/{p(ordered, 0.99):>7.1f}")
        lines.append(f"{phase.name:<14} q{k + 1}: " + ", ".join(shown))
    return lines


def checks(phase: Phase) -> list[str]:
    users, problems = len(phase.loads), phase.problems
    counts = ", ".join(f"{k} {v}" for k, v in sorted(problems.counts.items())) or "none"
    return [
        f"{phase.name:<14} runs completed {phase.completed}/{len(phase.messages)}, answers "
        f"streamed {phase.answered}/{len(phase.messages)}, threads in order "
        f"{phase.threads_in_order}/{users}, threads with overlapping runs "
        f"{phase.threads_overlapping}, errors {problems.count(*ERRORS)}; problems: {counts}",
        f"{'':<14} stored queued {phase.stored_as('queued')}, running "
        f"{phase.stored_as('running')}; server RSS {phase.rss_start_mb:.1f} MB at start, "
        f"{phase.rss_after_mb:.1f} MB after; server log {phase.log_lines} line(s), "
        f"{phase.log_trouble} with errors",
    ]


def final_line(phases: dict[str, Phase]) -> str:
    a, b = phases[ENQUEUE], phases[ONE_AT_A_TIME]
    la, lb = a.latencies_ms(), b.latencies_ms()
    return (
        f"multitask: users={len(a.loads)} enqueue_msgs_per_s={a.per_s:.1f} "
        f"baseline_msgs_per_s={b.per_s:.1f} ratio={ratio(a.per_s, b.per_s):.2f} "
        f"p50_ms={p(la, 0.5):.1f}/{p(lb, 0.5):.1f} p99_ms={p(la, 0.99):.1f}/{p(lb, 0.99):.1f} "
        f"answered={a.answered}/{len(a.messages)} in_order={a.threads_in_order}/{len(a.loads)} "
        f"overlaps={a.threads_overlapping} errors={a.problems.count(*ERRORS)}/"
        f"{b.problems.count(*ERRORS)} peak_rss_mb={a.peak_rss_mb:.1f}/{b.peak_rss_mb:.1f}"
    )


def report(phases: dict[str, Phase], users: int, concurrency: int) -> list[str]:
    a, b = phases[ENQUEUE], phases[ONE_AT_A_TIME]
    limits = " ".join(f"{k}={v}" for k, v in LIMITS.items())
    return [
        f"load: {users} users x {MESSAGES} messages ({users * MESSAGES}), {concurrency} users at "
        f"once, {WARMUP_USERS} warm-up users per phase; a message is POST "
        "/api/threads/{id}/runs (multitask enqueue) + GET /api/runs/{id}/stream",
        f"server limits: {limits}",
        "",
        COST_HEADER,
        cost_row(b),
        cost_row(a),
        cost_ratio(a, b),
        "",
        LATENCY_HEADER,
        latency_row(b),
        latency_row(a),
        latency_ratio(a, b),
        "",
        "p50/p99 ms by position (wait = POST sent to the run's first event; delivery = the "
        "run's final event to the client):",
        *positions(b),
        *positions(a),
        *checks(b),
        *checks(a),
        "",
        "ratio = enqueue / one at a time. msgs/s = messages answered / wall time; cpu ms/msg = "
        "the server's CPU time per message; peak MB = the server's VmHWM; client cpu = the "
        "client's share of one core; host busy = the share of all cores busy (everything on "
        "the machine). msg = a message's POST sent to its final event received; user = a "
        "user's first POST to its last answer; run = a run's first event to its final one "
        "(the server's clock); runs at once = the runs' time / wall time.",
    ]


# --- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="default 1000")
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="users at once (default 50)"
    )
    args = parser.parse_args()
    if args.users < 1 or args.concurrency < 1:
        parser.error("--users and --concurrency must be at least 1")
    args.concurrency = min(args.concurrency, args.users)
    return args


def main() -> int:
    args = parse_args()
    # Each client holds MESSAGES + 1 connections; logging in holds 50 more.
    raise_fd_limit((MESSAGES + 1) * args.concurrency + FD_HEADROOM)
    phases: dict[str, Phase] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="multitask-") as tmpdir:
            for name in PHASES:
                phases[name] = run_phase(Path(tmpdir), name, args.users, args.concurrency)
    except KeyboardInterrupt:
        print("multitask: interrupted; the servers were stopped", file=sys.stderr)
        return 130
    print("\n".join(report(phases, args.users, args.concurrency)))
    problems = [(name, phase.problems) for name, phase in phases.items() if phase.problems.total]
    for name, found in problems:
        print(f"FAILED ({name}): {found.total} problem(s), the first {len(found.shown)}:")
        print("\n".join(f"  {line}" for line in found.shown))
        if summary := phases[name].log_summary:
            print(f"  the server's log ({name}), by kind:")
            print("\n".join(f"  {line}" for line in summary))
    print(final_line(phases))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
