"""Many users chatting over ``/ws`` at once against a real ``isochat serve`` process.

What it measures, on one server (its own process, fresh SQLite file, offline LLM):

- phase A, "healthy only": every healthy user opens one WebSocket, all at once, and sends
  ``what is i + (i+1)?`` as soon as its socket is open;
- phase B, "with failures": the same healthy users on fresh threads, plus the failing users
  (``round(N * fail_ratio)`` of them, spread evenly) who send ``what is i / 0?``, which makes the
  calculator tool fail so that their runs end ``run_failed`` with ``tool_error``.

A share of the healthy users (``--adapter-share`` of them on each, 10 % by default) chat through
the adapters of existing clients instead of ``/ws``: ``/v1/chat/completions`` streamed by the
``openai`` SDK, a ``langgraph_sdk`` run stream, and the AI SDK's ``/api/chat`` stream (see
``bench/adapter_clients.py``), each run on a thread the adapter makes. For them, a *cross-user
frame* is a run their stream named that is not their own, their answer must be their own, and
the *seq* check reads their run's stored events (with their token) after the phase.

Latency is the time from sending the ``chat`` frame to receiving that run's final event. Every
frame a user receives is checked: it must belong to the run whose ``run_started`` echoed the
user's own ``request_id`` (anything else is a *cross-user frame*), its ``seq`` must count 1, 2,
3, ... with no gaps, and there must be exactly one final event (anything else is a *seq
violation*). Healthy runs must answer ``i + (i+1) = 2i+1``; failing runs must fail with
``tool_error``. The server's resident memory (VmRSS) is read before the load and after it (after a
short pause, so the teardown of sockets and request scopes has finished).

Reading the ratios: ``ratio_p50`` / ``ratio_p99`` are phase B's healthy-run latency divided by
phase A's. Phase B runs N runs where A ran the N - F healthy ones, so about ``N / (N - F)`` (1.11
at the default 10 %, a little less as failing runs stop early) is the cost of the extra work alone;
clearly more means failing runs hurt healthy ones beyond their share (e.g. by holding
connections or locks while failing). All runs start together and the server interleaves them, so
a run's latency is mostly its wait for the server to work through the burst: p50 sits near the
phase's wall time, and the ratios compare throughput under the two mixes. The client runs on the
same machine as the server and shares its cores, so absolute numbers include the client's own
work; compare ratios.

    .venv/bin/python bench/ws_load.py [--users N] [--fail-ratio R] [--adapter-share S]

The last line is machine-readable; the exit code is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adapter_clients as ac
import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from src.drill.checks import Frame, count_cross_user, sequence_problems
from src.runs.domain import FINAL_EVENT_TYPES

ISOCHAT = str(Path(sys.executable).parent / "isochat")
HOST = "127.0.0.1"  # loopback only
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
PHASE_TIMEOUT_S = 120.0
OPEN_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 10.0
PREPARE_CONCURRENCY = 50
PAUSE_BETWEEN_PHASES_S = 1.0
SETTLE_S = 2.0  # after the load, before reading RSS: sockets and scopes finish tearing down
FD_HEADROOM = 200
FD_CAP_WHEN_UNLIMITED = 65536
SERVER_GAUGES = (
    "isochat_request_scopes_open",
    "isochat_db_sessions_open",
    "isochat_agent_instances_live",
    "isochat_ws_connections",
)
LOG_TAIL_LINES = 60
MAX_PROBLEMS_SHOWN = 20


# --- the server process -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def server_environment(tmpdir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISOCHAT_")}
    env |= {
        "ISOCHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmpdir}/var/isochat.db",
        "ISOCHAT_HOST": HOST,
        "ISOCHAT_PORT": str(port),
        "ISOCHAT_LOG_LEVEL": "warning",
    }
    return env


def fd_hard_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return FD_CAP_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard


def raise_fd_limit(needed: int | None = None) -> None:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit, if it is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = fd_hard_limit()
    if soft == resource.RLIM_INFINITY or soft >= (needed or target):
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def raise_server_fd_limit() -> None:
    """``preexec_fn`` of the server: one socket per user, plus the database and the log."""
    raise_fd_limit()


def wait_until_live(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited early with code {server.process.returncode}")
        try:
            if httpx.get(f"{server.url}/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer /health/live within {START_TIMEOUT_S:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_server(tmpdir: Path) -> Iterator[Server]:
    """``isochat serve`` on a free port; always stopped on the way out (errors, Ctrl-C too)."""
    port = free_port()
    log = tmpdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ISOCHAT, "serve"],
            env=server_environment(tmpdir, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_server_fd_limit,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the server ourselves
        )
    try:
        yield Server(url=f"http://{HOST}:{port}", process=process, log=log)
    finally:
        stop(process)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = log.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) if text else "(the server log is empty)"


def log_lines(log: Path) -> int:
    return len(log.read_text(errors="replace").splitlines())


def log_trouble(log: Path) -> int:
    """Lines in the server log that say something went wrong."""
    markers = ("Traceback", " ERROR ", " CRITICAL ", "Exception")
    return sum(
        1
        for line in log.read_text(errors="replace").splitlines()
        if any(m in line for m in markers)
    )


# --- users --------------------------------------------------------------------------------------


@dataclass(slots=True)
class User:
    index: int
    failing: bool
    protocol: str = "ws"  # or one of the adapters (adapter_clients.ADAPTERS)
    token: str = ""
    threads: list[str] = field(default_factory=list)  # healthy: one per phase; failing: one

    @property
    def name(self) -> str:
        return f"load-{self.index}"  # both the user id and the request id

    @property
    def question(self) -> str:
        i = self.index
        return f"what is {i} / 0?" if self.failing else f"what is {i} + {i + 1}?"

    @property
    def answer(self) -> str:
        i = self.index
        return f"{i} + {i + 1} = {2 * i + 1}"


def failing_indices(users: int, fail_ratio: float) -> frozenset[int]:
    """``round(users * fail_ratio)`` indices spread evenly: for 10 %, load-5, load-15, ..."""
    count = round(users * fail_ratio)
    return frozenset(int((j + 0.5) * users / count) for j in range(count)) if count else frozenset()


def make_users(count: int, fail_ratio: float, adapter_share: float = 0.0) -> list[User]:
    """The users; of the healthy ones, every ``1 / adapter_share``-th block of them puts one
    on each adapter (10 %: in every ten healthy users, the 2nd, 3rd and 4th)."""
    failing = failing_indices(count, fail_ratio)
    users = [User(index=i, failing=i in failing) for i in range(count)]
    if adapter_share > 0:
        period = round(1 / adapter_share)
        for position, user in enumerate(u for u in users if not u.failing):
            slot = position % period
            if 1 <= slot <= len(ac.ADAPTERS):
                user.protocol = ac.ADAPTERS[slot - 1]
    return users


async def prepare_user(http: httpx.AsyncClient, gate: asyncio.Semaphore, user: User) -> None:
    async with gate:
        login = await http.post("/api/auth/dev-login", json={"user_id": user.name})
        login.raise_for_status()
        user.token = login.json()["token"]
        headers = {"Authorization": f"Bearer {user.token}"}
        for phase in range(1 if user.failing else 2):
            thread = await http.post(
                "/api/threads", json={"title": f"load {phase}"}, headers=headers
            )
            thread.raise_for_status()
            user.threads.append(thread.json()["id"])


async def prepare_users(url: str, users: Sequence[User]) -> None:
    gate = asyncio.Semaphore(PREPARE_CONCURRENCY)
    limits = httpx.Limits(max_connections=PREPARE_CONCURRENCY)
    async with (
        httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http,
        asyncio.timeout(PHASE_TIMEOUT_S),
    ):
        await asyncio.gather(*(prepare_user(http, gate, user) for user in users))


# --- one user's chat over one WebSocket ---------------------------------------------------------


class RunWatch:
    """Everything one user's socket received; the user's own run is the one whose
    ``run_started`` echoed their ``request_id``. The checks are the drill's
    (``src/drill/checks.py``), so the bench and ``isochat drill`` count the same things."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.run_id: str | None = None
        self.frames: list[Frame] = []
        self.final: Frame | None = None  # the own run's first final event
        self.errors: list[str] = []

    def see(self, frame: Frame) -> None:
        kind = frame.get("type")
        # A gap notice is about no run: whether events were missed, the seqs say.
        if kind in ("pong", "gap"):
            return
        if "run_id" not in frame:
            self.errors.append(f"unexpected frame {json.dumps(frame)[:300]}")
            return
        self.frames.append(frame)
        echoed = (frame.get("data") or {}).get("request_id") if kind == "run_started" else None
        if kind == "run_started" and self.run_id is None and echoed == self.request_id:
            self.run_id = frame["run_id"]
        if frame["run_id"] == self.run_id and kind in FINAL_EVENT_TYPES and self.final is None:
            self.final = frame

    def cross_user_frames(self) -> int:
        return count_cross_user(self.frames, own_runs={self.run_id} if self.run_id else set())

    def seq_violations(self) -> int:
        if self.run_id is None:
            return 0
        return sequence_problems([f for f in self.frames if f["run_id"] == self.run_id])


@dataclass(slots=True)
class Outcome:
    user: User
    latency_s: float | None = None
    final: Frame | None = None
    cross_user_frames: int = 0
    seq_violations: int = 0
    problems: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)  # an adapter user's run

    @property
    def final_type(self) -> str | None:
        return None if self.final is None else self.final.get("type")

    @property
    def data(self) -> dict[str, Any]:
        data = None if self.final is None else self.final.get("data")
        return data if isinstance(data, dict) else {}


def parse(raw: str | bytes) -> Frame:
    frame = json.loads(raw)
    if not isinstance(frame, dict):
        raise ValueError(f"a frame that is not a JSON object: {raw[:200]!r}")
    return frame


async def run_chat(ws: ClientConnection, user: User, thread_id: str, watch: RunWatch) -> float:
    """Send the chat frame; read until this run's final event. Returns the latency in seconds."""
    chat = {"type": "chat", "thread_id": thread_id, "content": user.question}
    start = time.perf_counter()
    await ws.send(json.dumps(chat | {"request_id": user.name}))
    while True:
        raw = await ws.recv()
        received = time.perf_counter()
        watch.see(parse(raw))
        if watch.final is not None:
            return received - start
        if watch.errors:
            raise RuntimeError(watch.errors[0])


async def drain(ws: ClientConnection, watch: RunWatch) -> None:
    """Ping, and read up to the pong: frames sent after the final event are still checked."""
    async with asyncio.timeout(DRAIN_TIMEOUT_S):
        await ws.send(json.dumps({"type": "ping"}))
        while (frame := parse(await ws.recv())).get("type") != "pong":
            watch.see(frame)


async def adapter_once(url: str, user: User) -> Outcome:
    """One run through the user's adapter: what its client put together, as an outcome the
    ``/ws`` users' checks can judge; its stored events are read after the phase."""
    outcome = Outcome(user)
    start = time.perf_counter()
    try:
        client = await ac.client_for(user.protocol, url, user.token)
        try:
            seen = await client.run(user.question)
        finally:
            await client.aclose()
    except (OSError, TimeoutError, ValueError, RuntimeError, httpx.HTTPError) as exc:
        outcome.problems.append(f"{user.protocol}: {type(exc).__name__}: {exc}")
        return outcome
    outcome.latency_s = time.perf_counter() - start
    own = sorted(seen.run_ids)[:1]
    outcome.run_ids = own
    outcome.cross_user_frames = len(seen.run_ids) - len(own)
    if own and seen.problem is None:
        message = {"content": seen.answer}
        outcome.final = {"type": "run_completed", "run_id": own[0], "data": {"message": message}}
    else:
        outcome.problems.append(f"{user.protocol}: {seen.problem or 'no run named'}")
    outcome.problems += judge(outcome)
    return outcome


async def stored_seq_problems(url: str, outcomes: Sequence[Outcome]) -> None:
    """The adapter users' runs as stored: their seq problems counted, each named."""
    for outcome in outcomes:
        if outcome.user.protocol != "ws" and outcome.run_ids:
            found = await ac.stored_problems(url, outcome.user.token, outcome.run_ids)
            outcome.seq_violations += len(found)
            outcome.problems += found


async def chat_once(ws_url: str, user: User, thread_id: str) -> Outcome:
    outcome = Outcome(user)
    watch = RunWatch(user.name)
    try:
        async with connect(f"{ws_url}/ws?token={user.token}", open_timeout=OPEN_TIMEOUT_S) as ws:
            outcome.latency_s = await run_chat(ws, user, thread_id, watch)
            await drain(ws, watch)
    except (OSError, TimeoutError, ValueError, RuntimeError, WebSocketException) as exc:
        outcome.problems.append(f"{type(exc).__name__}: {exc}")
    outcome.final = watch.final
    outcome.cross_user_frames = watch.cross_user_frames()
    outcome.seq_violations = watch.seq_violations()
    outcome.problems += watch.errors
    outcome.problems += judge(outcome)
    return outcome


def judge(outcome: Outcome) -> list[str]:
    """What is wrong with this run's end, if anything."""
    if outcome.final is None:
        return ["no final event"]
    if outcome.user.failing:
        code = (outcome.data.get("error") or {}).get("code")
        if outcome.final_type != "run_failed" or code != "tool_error":
            return [f"expected run_failed/tool_error, got {outcome.final_type}/{code}"]
        return []
    content = (outcome.data.get("message") or {}).get("content")
    if outcome.final_type != "run_completed" or content != outcome.user.answer:
        return [
            f"expected run_completed {outcome.user.answer!r}, got {outcome.final_type} "
            f"{content!r} {outcome.data.get('error')}"
        ]
    return []


# --- phases -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhaseResult:
    name: str
    outcomes: list[Outcome]
    wall_s: float

    def latencies_ms(self, *, failing: bool) -> list[float]:
        return sorted(
            o.latency_s * 1000
            for o in self.outcomes
            if o.user.failing == failing and o.latency_s is not None
        )

    def count(self, final_type: str) -> int:
        return sum(1 for o in self.outcomes if o.final_type == final_type)

    @property
    def healthy_completed(self) -> int:
        return sum(
            1
            for o in self.outcomes
            if not o.user.failing and o.final_type == "run_completed" and not o.problems
        )

    def completed_through(self, protocol: str) -> int:
        return sum(
            1
            for o in self.outcomes
            if o.user.protocol == protocol and o.final_type == "run_completed" and not o.problems
        )

    @property
    def cross_user_frames(self) -> int:
        return sum(o.cross_user_frames for o in self.outcomes)

    @property
    def seq_violations(self) -> int:
        return sum(o.seq_violations for o in self.outcomes)

    def problems(self) -> list[str]:
        return [f"{self.name} {o.user.name}: {p}" for o in self.outcomes for p in o.problems]


def outcome_of(task: asyncio.Task[Outcome], user: User) -> Outcome:
    if task.cancelled():
        return Outcome(user, problems=[f"no final event within {PHASE_TIMEOUT_S:.0f} s"])
    if (exc := task.exception()) is not None:
        return Outcome(user, problems=[f"{type(exc).__name__}: {exc}"])
    return task.result()


async def run_phase(name: str, server: Server, jobs: Sequence[tuple[User, str]]) -> PhaseResult:
    """All ``jobs`` (user, thread) at once; bounded by ``PHASE_TIMEOUT_S``."""
    start = time.perf_counter()
    tasks = [
        asyncio.create_task(
            chat_once(server.ws_url, u, t) if u.protocol == "ws" else adapter_once(server.url, u)
        )
        for u, t in jobs
    ]
    _, pending = await asyncio.wait(tasks, timeout=PHASE_TIMEOUT_S)
    for task in pending:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S * 3):
            await asyncio.gather(*pending, return_exceptions=True)
    wall_s = time.perf_counter() - start
    outcomes = [outcome_of(task, user) for task, (user, _) in zip(tasks, jobs, strict=True)]
    await stored_seq_problems(server.url, outcomes)  # outside the clock
    return PhaseResult(name=name, outcomes=outcomes, wall_s=wall_s)


@dataclass(frozen=True, slots=True)
class LoadResult:
    users: list[User]
    a: PhaseResult
    b: PhaseResult
    rss_start_mb: float
    rss_before_mb: float
    rss_between_mb: float
    rss_after_mb: float
    gauges: dict[str, float]


async def server_gauges(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        text = (await http.get("/metrics")).text
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in SERVER_GAUGES:
            gauges[name] = float(value)
    return gauges


async def load(server: Server, users: list[User]) -> LoadResult:
    pid = server.process.pid
    rss_start = rss_mb(pid)
    await prepare_users(server.url, users)
    rss_before = rss_mb(pid)
    a = await run_phase("A", server, [(u, u.threads[0]) for u in users if not u.failing])
    await asyncio.sleep(PAUSE_BETWEEN_PHASES_S)
    rss_between = rss_mb(pid)
    # Healthy users on their second thread, failing users on their only one.
    b = await run_phase("B", server, [(u, u.threads[-1]) for u in users])
    await asyncio.sleep(SETTLE_S)
    return LoadResult(
        users=users,
        a=a,
        b=b,
        rss_start_mb=rss_start,
        rss_before_mb=rss_before,
        rss_between_mb=rss_between,
        rss_after_mb=rss_mb(pid),
        gauges=await server_gauges(server.url),
    )


# --- reporting ----------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank; NaN when there is nothing to rank."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def ratio(b: float, a: float) -> float:
    return b / a if a > 0 else math.nan


def describe_latencies(label: str, values: Sequence[float]) -> str:
    if not values:
        return f"    {label}: none"
    p50, p90, p99 = (percentile(values, q) for q in (0.5, 0.9, 0.99))
    return (
        f"    {label} ({len(values)}): p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, "
        f"max {values[-1]:.1f} ms"
    )


def describe_phase(title: str, phase: PhaseResult) -> list[str]:
    runs = len(phase.outcomes)
    return [
        f"phase {phase.name} ({title}): {runs} runs in {phase.wall_s:.2f} s wall "
        f"({runs / phase.wall_s:.0f} runs/s); completed {phase.count('run_completed')}, "
        f"failed {phase.count('run_failed')}, cancelled {phase.count('run_cancelled')}, "
        f"no final event {sum(1 for o in phase.outcomes if o.final is None)}",
        describe_latencies("healthy latency", phase.latencies_ms(failing=False)),
        describe_latencies("failing latency", phase.latencies_ms(failing=True)),
        f"    cross-user frames {phase.cross_user_frames}, seq violations {phase.seq_violations}",
        "    completed by protocol: "
        + ", ".join(
            f"{p} {phase.completed_through(p)}/{sum(o.user.protocol == p for o in phase.outcomes)}"
            for p in ("ws", *ac.ADAPTERS)
        ),
    ]


def summary(result: LoadResult) -> str:
    failing = [u.name for u in result.users if u.failing]
    lines = [
        f"users: {len(result.users)} ({len(result.users) - len(failing)} healthy, "
        f"{len(failing)} failing: {', '.join(failing[:3])}{', ...' if len(failing) > 3 else ''})",
        *describe_phase("healthy only", result.a),
        *describe_phase("with failures", result.b),
        f"server RSS: {result.rss_start_mb:.1f} MB at start, {result.rss_before_mb:.1f} MB "
        f"before the load, {result.rss_between_mb:.1f} MB after phase A, "
        f"{result.rss_after_mb:.1f} MB after the load "
        f"({result.rss_after_mb - result.rss_before_mb:+.1f} MB)",
        "server gauges after the load: "
        + ", ".join(f"{name} {value:g}" for name, value in result.gauges.items()),
    ]
    return "\n".join(lines)


def final_line(result: LoadResult) -> str:
    a, b = result.a, result.b
    la, lb = a.latencies_ms(failing=False), b.latencies_ms(failing=False)
    p50a, p50b, p99a, p99b = (percentile(v, q) for q in (0.5, 0.99) for v in (la, lb))
    return (
        f"ws_load: users={len(result.users)} completed={b.healthy_completed} "
        f"failed={b.count('run_failed')} "
        f"cross_user_frames={a.cross_user_frames + b.cross_user_frames} "
        f"seq_violations={a.seq_violations + b.seq_violations} "
        f"p50_ms={p50a:.1f}/{p50b:.1f} p99_ms={p99a:.1f}/{p99b:.1f} "
        f"ratio_p50={ratio(p50b, p50a):.2f} ratio_p99={ratio(p99b, p99a):.2f} "
        f"rss_mb={result.rss_before_mb:.1f}/{result.rss_after_mb:.1f}"
    )


def failures(result: LoadResult) -> list[str]:
    """Every reason for a non-zero exit."""
    found = result.a.problems() + result.b.problems()
    cross = result.a.cross_user_frames + result.b.cross_user_frames
    seq = result.a.seq_violations + result.b.seq_violations
    if cross:
        found.append(f"{cross} cross-user frame(s)")
    if seq:
        found.append(f"{seq} seq violation(s)")
    return found


# --- main ---------------------------------------------------------------------------------------


def bench(server: Server, users: list[User]) -> int:
    try:
        wait_until_live(server)
        result = asyncio.run(load(server, users))
    except Exception as exc:
        print(f"ws_load: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"--- server log tail ({server.log}) ---\n{log_tail(server.log)}", file=sys.stderr)
        return 1
    print(summary(result))
    trouble = log_trouble(server.log)
    found = failures(result)
    print(f"server log: {log_lines(server.log)} line(s), {trouble} with errors or tracebacks")
    if found:
        print(f"FAILED: {len(found)} problem(s), the first {MAX_PROBLEMS_SHOWN}:")
        print("\n".join(f"  {p}" for p in found[:MAX_PROBLEMS_SHOWN]))
    if found or trouble:
        print(f"--- server log tail ---\n{log_tail(server.log)}")
    print(final_line(result))
    return 1 if found else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--fail-ratio", type=float, default=0.10)
    parser.add_argument(
        "--adapter-share", type=float, default=0.10, help="of the users on each adapter (0.10)"
    )
    args = parser.parse_args()
    if not 0 <= args.adapter_share <= 0.25:
        parser.error("--adapter-share must be between 0 and 0.25")
    if args.users < 1:
        parser.error("--users must be at least 1")
    if not 0 <= args.fail_ratio < 1 or round(args.users * args.fail_ratio) >= args.users:
        parser.error("--fail-ratio must leave at least one healthy user (0 <= R < 1)")
    return args


def main() -> int:
    args = parse_args()
    users = make_users(args.users, args.fail_ratio, args.adapter_share)
    raise_fd_limit(args.users + FD_HEADROOM)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ws_load-") as tmpdir,
            running_server(Path(tmpdir)) as server,
        ):
            return bench(server, users)
    except KeyboardInterrupt:
        print("ws_load: interrupted; the server was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
