"""Streaming overhead: the time isochat adds between a token leaving the model server and the
client's WebSocket frame that carries it, with 1 and with C runs streaming at once.

The processes, all on this machine (each its own, on free loopback ports):

- a fake OpenAI-compatible model server (this file with ``--serve-model``, plain asyncio, no
  framework: as cheap as a model server can be): triage's ``choose_route`` call is answered at
  once (route ``general``); the answer streams ``--tokens`` tokens, one every ``--pace-ms``
  (on a fixed schedule from the first), each token being a marker ``⟨t=<µs>⟩ `` that carries
  the time it was written to the socket (CLOCK_MONOTONIC, which is one clock for every process
  of the machine);
- ``isochat serve`` on a fresh SQLite file with ``ISOCHAT_LLM_PROVIDER=openai`` pointing at the
  fake model, rate, run, socket and model-connection limits raised so that they never
  interfere;
- this process, the client: C users, each with its own ``/ws`` socket (opened before the clock
  starts), running ``--runs`` runs one after the other, each on a thread of its own; the users
  start spread over one answer's length, so that C answers stream at once in a steady state
  rather than in lock-step. For every token, latency = the arrival of the frame that completes
  it (the clock read as ``recv`` returns) minus the time in its marker. So it holds isochat's
  work (reading the model's stream, storing the event, publishing it, the socket's send) and
  two loopback hops; the client's own work per frame is a JSON parse and a regex.

After each C, the baseline (``direct``): the same C streams read by this client straight from
the model server, with no isochat between: the floor of loopback, model server and client on
this machine at that load. What isochat adds is the difference.

Every run must complete with an answer equal to its ``agent_thinking`` texts joined and holding
all its tokens. ``events/answer`` (``agent_thinking`` events per answer) shows the batching: one
per token when isochat keeps up, fewer and bigger when it does not. ``client cpu`` is the share
of a core this process used: near 100 % the client, not the server, set the pace; ``host busy``
near 100 % means the machine was out of cores (the model server, isochat and the client share
them).

    .venv/bin/python bench/streaming_overhead.py [--concurrency 1,200] [--pace-ms 20]
        [--tokens 50] [--runs N]

The last line is machine-readable (p50 and p99 in ms, events per answer and the direct p99, at
each C); the exit code is 1 when a run did not complete as it should.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import orjson
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
    server_environment,
    stop,
    wait_until_live,
)

from src.agents.triage import ROUTE_TOOL

DEFAULT_CONCURRENCY = (1, 200)
DEFAULT_PACE_MS = 20.0
DEFAULT_TOKENS = 50
# Runs per user: at C = 1 enough tokens for a p99, at high C each user still runs two in a row.
RUNS_AT_ONE = 40
RUNS_AT_MANY = 2
WARMUP_RUNS = 3
PROMPT = "tell me a story"
FINAL_EVENTS = frozenset({"run_completed", "run_failed", "run_cancelled"})
MARKER = re.compile("\u27e8t=(\\d+)\u27e9")
MARKER_BYTES = re.compile(MARKER.pattern.encode())
RAISED_LIMITS = {
    "ISOCHAT_RATE_LIMIT_PER_MINUTE": "6000000",
    "ISOCHAT_RATE_LIMIT_BURST": "100000",
    "ISOCHAT_MAX_RUNNING_RUNS_PER_USER": "100000",
    "ISOCHAT_MAX_WS_CONNECTIONS_PER_USER": "100000",
    "ISOCHAT_LLM_MAX_CONNECTIONS": "1000",  # one stream per run in flight
}
PREPARE_CONCURRENCY = 50
OPEN_TIMEOUT_S = 60.0
BATCH_TIMEOUT_S = 300.0
MODEL_START_TIMEOUT_S = 10.0
FD_HEADROOM = 200
MAX_PROBLEMS_SHOWN = 10
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def now_us() -> int:
    return time.monotonic_ns() // 1000


# --- the fake model server (a process of its own) -----------------------------------------------

USAGE = {"prompt_tokens": 10, "completion_tokens": 50, "total_tokens": 60}


def sse(data: object) -> bytes:
    body = b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(body), body)  # one HTTP chunk


def json_response(data: object) -> bytes:
    body = orjson.dumps(data)
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
ROLE = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
FINISH = sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
STREAM_END = sse({"choices": [], "usage": USAGE}) + sse(b"[DONE]") + b"0\r\n\r\n"
ROUTE_CHOICE = json_response(
    {
        "id": "route",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_route",
                            "type": "function",
                            "function": {"name": ROUTE_TOOL, "arguments": '{"route": "general"}'},
                        }
                    ],
                },
            }
        ],
        "usage": USAGE,
    }
)
MODELS = json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})


async def serve_model(port: int, *, pace_ms: float, tokens: int) -> None:
    handler = partial(model_connection, pace_ns=int(pace_ms * 1e6), tokens=tokens)
    server = await asyncio.start_server(handler, HOST, port, backlog=4096)
    async with server:
        await server.serve_forever()


async def model_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, pace_ns: int, tokens: int
) -> None:
    """Requests one after the other on a kept-alive connection, until the client closes it
    (isochat closes a stream it no longer wants)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = orjson.loads(await reader.readexactly(length)) if length else {}
            choice = body.get("tool_choice")
            if not body:
                writer.write(MODELS)
            elif isinstance(choice, dict) and choice["function"]["name"] == ROUTE_TOOL:
                writer.write(ROUTE_CHOICE)
            else:
                await stream_answer(writer, pace_ns=pace_ns, tokens=tokens)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client went
    finally:
        writer.close()


async def stream_answer(writer: asyncio.StreamWriter, *, pace_ns: int, tokens: int) -> None:
    writer.write(STREAM_HEAD + ROLE)
    start = time.monotonic_ns()
    for index in range(tokens):
        wait_ns = start + index * pace_ns - time.monotonic_ns()
        if wait_ns > 0:
            await asyncio.sleep(wait_ns / 1e9)
        piece = f"\u27e8t={now_us()}\u27e9 "  # stamped as it is written
        writer.write(sse({"choices": [{"index": 0, "delta": {"content": piece}}]}))
        await writer.drain()
    writer.write(FINISH + STREAM_END)


# --- the servers --------------------------------------------------------------------------------


@contextlib.contextmanager
def started(
    command: list[str], *, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` as a process of its own, stopped on the way out."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_server_fd_limit,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the servers ourselves
        )
    try:
        yield process
    finally:
        stop(process)


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + MODEL_START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the model server did not listen within {MODEL_START_TIMEOUT_S:.0f} s")


@dataclass(frozen=True, slots=True)
class Servers:
    isochat: Server
    model_pid: int
    model_port: int


@contextlib.contextmanager
def running_servers(tmpdir: Path, args: argparse.Namespace) -> Iterator[Servers]:
    model_port, isochat_port = free_port(), free_port()
    model_command = [sys.executable, __file__, "--serve-model", str(model_port)]
    model_command += ["--pace-ms", str(args.pace_ms), "--tokens", str(args.tokens)]
    isochat_log = tmpdir / "server.log"
    env = server_environment(tmpdir, isochat_port) | RAISED_LIMITS
    env |= {
        "ISOCHAT_LLM_PROVIDER": "openai",
        "ISOCHAT_LLM_BASE_URL": f"http://{HOST}:{model_port}/v1",
        "ISOCHAT_LLM_API_KEY": "bench",
        "ISOCHAT_LLM_MODEL": "fake",
    }
    with (
        started(model_command, env=dict(os.environ), log=tmpdir / "model.log") as model,
        started([ISOCHAT, "serve"], env=env, log=isochat_log) as isochat,
    ):
        server = Server(url=f"http://{HOST}:{isochat_port}", process=isochat, log=isochat_log)
        wait_for_port(model_port)
        wait_until_live(server)
        yield Servers(isochat=server, model_pid=model.pid, model_port=model_port)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads: the SQLite writer's too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def host_cpu_ticks() -> tuple[int, int]:
    """Busy and total ticks of all the machine's cores since boot (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return sum(ticks[:8]) - ticks[3] - ticks[4], sum(ticks[:8])


# --- users, threads and runs --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    token: str
    threads: list[str]


async def prepare(url: str, count: int, runs: int, name: str) -> list[User]:
    """``count`` users logged in, each with ``runs`` fresh threads (not timed)."""
    gate = asyncio.Semaphore(PREPARE_CONCURRENCY)
    limits = httpx.Limits(max_connections=PREPARE_CONCURRENCY)

    async def one(http: httpx.AsyncClient, index: int) -> User:
        async with gate:
            login = await http.post("/api/auth/dev-login", json={"user_id": f"{name}-{index}"})
            login.raise_for_status()
            token = login.json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            threads = []
            for _ in range(runs):
                thread = await http.post("/api/threads", json={"title": "s"}, headers=headers)
                thread.raise_for_status()
                threads.append(thread.json()["id"])
            return User(token=token, threads=threads)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        return await asyncio.gather(*(one(http, i) for i in range(count)))


@dataclass(slots=True)
class Tally:
    latencies_us: list[int] = field(default_factory=list)
    events_per_answer: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def user_runs(
    ws: ClientConnection, threads: Sequence[str], *, tokens: int, delay_s: float, tally: Tally
) -> None:
    await asyncio.sleep(delay_s)
    for thread_id in threads:
        chat = orjson.dumps({"type": "chat", "thread_id": thread_id, "content": PROMPT})
        texts: list[str] = []
        tail = ""  # the text after the last whole marker: an event may end inside one
        found = 0
        try:
            await ws.send(chat.decode())
            while True:
                raw = await ws.recv()
                arrived = now_us()
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "agent_thinking":
                    text = frame["data"]["text"]
                    texts.append(text)
                    tail += text
                    end = 0
                    for match in MARKER.finditer(tail):
                        tally.latencies_us.append(arrived - int(match[1]))
                        found += 1
                        end = match.end()
                    tail = tail[end:]
                elif kind in FINAL_EVENTS or kind == "error":
                    break
        except (OSError, WebSocketException) as exc:
            tally.problems.append(f"ws: {type(exc).__name__}: {exc}")
            return
        tally.events_per_answer.append(len(texts))
        message = ((frame.get("data") or {}).get("message") or {}).get("content")
        if kind != "run_completed" or message != "".join(texts) or found != tokens:
            error = (frame.get("data") or {}).get("error") or frame.get("error")
            detail = error or {"answer_equals_its_events": message == "".join(texts)}
            shown = orjson.dumps(detail).decode()[:200]
            tally.problems.append(f"{kind} after {found} of {tokens} tokens: {shown}")


async def direct_runs(port: int, runs: int, *, tokens: int, delay_s: float, tally: Tally) -> None:
    """The floor: the same streams read straight from the model server, no isochat between
    (loopback, the model server's and this client's own work)."""
    body = orjson.dumps({"model": "fake", "stream": True, "messages": [{"role": "user"}]})
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: model\r\n"
    request += b"content-length: %d\r\n\r\n%s" % (len(body), body)
    await asyncio.sleep(delay_s)
    for _ in range(runs):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(request)
        tail, found = b"", 0
        while not tail.endswith(b"0\r\n\r\n"):  # the last HTTP chunk
            data = await reader.read(65536)
            if not data:
                break
            arrived = now_us()
            tail += data
            end = 0
            for match in MARKER_BYTES.finditer(tail):
                tally.latencies_us.append(arrived - int(match[1]))
                found += 1
                end = match.end()
            tail = tail[end:]
        writer.close()
        tally.events_per_answer.append(found)
        if found != tokens:
            tally.problems.append(f"direct: {found} of {tokens} tokens")


@dataclass(frozen=True, slots=True)
class Batch:
    way: str  # "isochat" or "direct"
    concurrency: int
    runs: int
    tally: Tally
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float
    model_cpu_s: float
    host_busy: float

    def latency_ms(self, fraction: float) -> float:
        return percentile(self.tally.latencies_us, fraction) / 1000

    @property
    def events_per_answer(self) -> float:
        return statistics.fmean(self.tally.events_per_answer or [0])


async def measured(
    servers: Servers, way: str, concurrency: int, runs: int, load: Awaitable[object], tally: Tally
) -> Batch:
    """Run ``load`` (bounded by ``BATCH_TIMEOUT_S``) and measure it."""
    gc.collect()  # the client's garbage from setting up, collected outside the clock
    pid = servers.isochat.process.pid
    host0, server0, model0 = host_cpu_ticks(), cpu_seconds(pid), cpu_seconds(servers.model_pid)
    client0, start = time.process_time(), time.perf_counter()
    async with asyncio.timeout(BATCH_TIMEOUT_S):
        await load
    wall = time.perf_counter() - start
    client1, host1 = time.process_time(), host_cpu_ticks()
    server1, model1 = cpu_seconds(pid), cpu_seconds(servers.model_pid)
    tally.latencies_us.sort()
    busy, total = host1[0] - host0[0], host1[1] - host0[1]
    return Batch(
        way=way,
        concurrency=concurrency,
        runs=concurrency * runs,
        tally=tally,
        wall_s=wall,
        client_cpu_s=client1 - client0,
        server_cpu_s=server1 - server0,
        model_cpu_s=model1 - model0,
        host_busy=busy / total if total else float("nan"),
    )


async def isochat_batch(
    servers: Servers, concurrency: int, runs: int, args: argparse.Namespace, name: str
) -> Batch:
    users = await prepare(servers.isochat.url, concurrency, runs, name)
    tally = Tally()
    spread_s = args.tokens * args.pace_ms / 1000  # one answer's length
    async with contextlib.AsyncExitStack() as stack:
        url = f"{servers.isochat.ws_url}/ws"
        sockets = await asyncio.gather(
            *(connect(f"{url}?token={u.token}", open_timeout=OPEN_TIMEOUT_S) for u in users)
        )
        for ws in sockets:
            stack.push_async_callback(ws.close)
        load = asyncio.gather(
            *(
                user_runs(
                    ws,
                    user.threads,
                    tokens=args.tokens,
                    delay_s=spread_s * index / concurrency,
                    tally=tally,
                )
                for index, (ws, user) in enumerate(zip(sockets, users, strict=True))
            )
        )
        return await measured(servers, "isochat", concurrency, runs, load, tally)


async def direct_batch(
    servers: Servers, concurrency: int, runs: int, args: argparse.Namespace
) -> Batch:
    tally = Tally()
    spread_s = args.tokens * args.pace_ms / 1000
    load = asyncio.gather(
        *(
            direct_runs(
                servers.model_port,
                runs,
                tokens=args.tokens,
                delay_s=spread_s * index / concurrency,
                tally=tally,
            )
            for index in range(concurrency)
        )
    )
    return await measured(servers, "direct", concurrency, runs, load, tally)


async def measure(servers: Servers, args: argparse.Namespace) -> list[Batch]:
    await isochat_batch(servers, 1, WARMUP_RUNS, args, "warmup")  # not counted
    results = []
    for concurrency in args.concurrency:
        runs = args.runs or (RUNS_AT_ONE if concurrency == 1 else RUNS_AT_MANY)
        results.append(await isochat_batch(servers, concurrency, runs, args, f"c{concurrency}"))
        results.append(await direct_batch(servers, concurrency, runs, args))
    return results


# --- reporting ----------------------------------------------------------------------------------


def describe(b: Batch) -> list[str]:
    lines = [
        f"C={b.concurrency} {b.way}: {b.runs} runs, {len(b.tally.latencies_us)} tokens in "
        f"{b.wall_s:.1f} s",
        f"    token to {'frame' if b.way == 'isochat' else 'client'}: p50 "
        f"{b.latency_ms(0.5):.1f} ms, p90 {b.latency_ms(0.9):.1f} ms, "
        f"p99 {b.latency_ms(0.99):.1f} ms, max {b.latency_ms(1.0):.1f} ms",
    ]
    if b.way == "isochat":
        events = b.tally.events_per_answer
        spread = f"{min(events)}-{max(events)}" if events else "-"
        lines.append(f"    agent_thinking events per answer: {b.events_per_answer:.1f} ({spread})")
    lines.append(
        f"    cpu (share of a core): isochat {b.server_cpu_s / b.wall_s:.0%}, model server "
        f"{b.model_cpu_s / b.wall_s:.0%}, client {b.client_cpu_s / b.wall_s:.0%}; "
        f"host busy {b.host_busy:.0%}"
    )
    return lines


def final_line(batches: Sequence[Batch]) -> str:
    parts = []
    for b in batches:
        c = f"c{b.concurrency}"
        if b.way == "direct":
            parts.append(f"{c}_direct_p99_ms {b.latency_ms(0.99):.2f}")
            continue
        parts += [
            f"{c}_p50_ms {b.latency_ms(0.5):.2f}",
            f"{c}_p99_ms {b.latency_ms(0.99):.2f}",
            f"{c}_events_per_answer {b.events_per_answer:.1f}",
        ]
    return "streaming: " + " ".join(parts)


def bench(args: argparse.Namespace) -> int:
    raise_fd_limit(2 * max(args.concurrency) + FD_HEADROOM)
    with (
        tempfile.TemporaryDirectory(prefix="streaming-") as tmp,
        running_servers(Path(tmp), args) as servers,
    ):
        log = servers.isochat.log
        try:
            batches = asyncio.run(measure(servers, args))
        except Exception as exc:
            print(f"streaming_overhead: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"--- server log tail ---\n{log_tail(log)}", file=sys.stderr)
            return 1
        print(
            f"isochat serve (sqlite, in-process broker, 1 worker); fake model: {args.tokens} "
            f"tokens every {args.pace_ms:g} ms; {os.cpu_count()} cores"
        )
        for b in batches:
            print("\n".join(describe(b)))
        problems = [p for b in batches for p in b.tally.problems]
        trouble = log_trouble(log)
        if problems:
            print(f"FAILED: {len(problems)} run(s), the first {MAX_PROBLEMS_SHOWN}:")
            print("\n".join(f"  {p}" for p in problems[:MAX_PROBLEMS_SHOWN]))
        if trouble:
            print(f"server log: {trouble} line(s) with errors or tracebacks")
            print(f"--- server log tail ---\n{log_tail(log)}")
        print(final_line(batches))
        return 1 if problems else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)))
    parser.add_argument("--pace-ms", type=float, default=DEFAULT_PACE_MS)
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS)
    parser.add_argument("--runs", type=int, default=0, help="per user (default: 40 at C=1, 2)")
    parser.add_argument("--serve-model", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        args.concurrency = tuple(int(c) for c in args.concurrency.split(","))
    except ValueError:
        parser.error("--concurrency takes numbers separated by commas")
    if min(args.concurrency) < 1 or args.tokens < 1 or args.pace_ms < 0 or args.runs < 0:
        parser.error("--concurrency and --tokens must be at least 1, --pace-ms and --runs >= 0")
    return args


def main() -> int:
    args = parse_args()
    if args.serve_model is not None:
        asyncio.run(serve_model(args.serve_model, pace_ms=args.pace_ms, tokens=args.tokens))
        return 0
    try:
        return bench(args)
    except KeyboardInterrupt:
        print("streaming_overhead: interrupted; the servers were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
