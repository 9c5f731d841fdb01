"""The same run through each way a client can reach isochat, beside the run over ``/ws``, on a
real ``isochat serve`` process (fresh SQLite file, in-process broker, offline model).

The run is ``what is (12 + 3) * 4?`` on a new thread (triage, the math specialist, one
calculator call, the answer): over ``/ws`` (the baseline; a socket per user, a thread made per
run), isochat's own SSE (``POST .../messages`` as ``text/event-stream``), and the adapters of
existing clients: ``/v1/chat/completions`` streamed through the ``openai`` SDK (a thread per
request), a thread and a ``values`` stream through ``langgraph_sdk``, and ``/api/chat`` read
as the AI SDK's UI message stream (a new chat id per run). See ``bench/adapter_clients.py``.

C users (``--concurrency``), each with its own token and client (connections open before the
clock starts), do their share of a batch's N runs (``--runs``) one after the other. Per batch:
runs/s, p50 and p99 (from the request to the end of the run's stream), the server's CPU per
run (``/proc``). Protocols alternate batch by batch; each row is the median of ``--repeats``
batches, after a warm-up batch of each. ``ratio`` is the protocol's over ``/ws``'s: runs/s
below 1 and CPU above 1 are what the protocol costs beyond the run itself (a thread made per
request, its translation, an HTTP request per run instead of a frame on an open socket); the
client's own work (the SDKs parse every chunk) shares the machine's cores and shows in
runs/s, not in the server's CPU.

Every run must answer ``(12 + 3) * 4 = 60`` as its client assembled it, name only its own run,
and have stored events with seq 1, 2, 3, ... and one final event.

    .venv/bin/python bench/adapters.py [--runs N] [--concurrency C] [--repeats R] [--quick]
        [--protocols ws,sse,openai,agent_protocol,ai_sdk]

The last line is machine-readable; the exit code is 1 when any check failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import tempfile
import time
from argparse import ArgumentParser, Namespace
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import adapter_clients as ac
import httpx
import throughput as tp
import ws_load

QUESTION, ANSWER = tp.WORKLOAD, tp.ANSWER
DEFAULT_RUNS, QUICK_RUNS = 300, 60
DEFAULT_REPEATS, QUICK_REPEATS = 3, 1
WARMUP_RUNS = 20


@dataclass(slots=True)
class UserRuns:
    """What one user's client saw in one batch."""

    user: tp.User
    latencies_s: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def user_runs(client: ac.Client, mine: UserRuns, runs: int, protocol: str) -> None:
    for _ in range(runs):
        start = time.perf_counter()
        try:
            seen = await client.run(QUESTION)
        except (OSError, ValueError, httpx.HTTPError, RuntimeError) as exc:
            mine.problems.append(f"{protocol}: {type(exc).__name__}: {exc}")
            continue
        mine.latencies_s.append(time.perf_counter() - start)
        mine.run_ids += sorted(seen.run_ids)
        if seen.problem or seen.answer != ANSWER or len(seen.run_ids) != 1:
            mine.problems.append(
                f"{protocol}: answer {seen.answer!r}, runs named {sorted(seen.run_ids)}, "
                f"ended {seen.ended}, {seen.problem or ''}"
            )


async def batch(s: tp.System, users: Sequence[tp.User], protocol: str, runs: int) -> tp.Batch:
    per_user = max(1, math.ceil(runs / len(users)))
    tally = tp.Tally()
    seen = [UserRuns(u) for u in users]
    async with contextlib.AsyncExitStack() as stack:
        clients = await asyncio.gather(
            *(ac.client_for(protocol, s.server.url, u.token) for u in users)
        )
        for client in clients:
            stack.push_async_callback(client.aclose)

        async def load() -> None:
            await asyncio.gather(
                *(user_runs(c, m, per_user, protocol) for c, m in zip(clients, seen, strict=True))
            )

        numbers = await tp.measured(s, load)
    await asyncio.sleep(tp.SETTLE_S)
    for mine in seen:  # outside the clock: the stored events of every run
        tally.latencies_s += mine.latencies_s
        tally.problems += mine.problems
        tally.problems += await ac.stored_problems(s.server.url, mine.user.token, mine.run_ids)
    ms = sorted(1000 * x for x in tally.latencies_s)
    return tp.Batch(s.name, protocol, len(users), per_user * len(users), ms, numbers, tally)


@contextlib.contextmanager
def isochat(tmpdir: Path) -> Iterator[tp.System]:
    (tmpdir / "isochat" / "var").mkdir(parents=True)
    env = ws_load.server_environment(tmpdir / "isochat", 0) | tp.RAISED_LIMITS
    env |= {"ISOCHAT_PORT": "{port}", "ISOCHAT_ENV": "development"}  # dev-login on
    env |= {"ISOCHAT_BROKER_URL": "memory://", "ISOCHAT_LLM_PROVIDER": "offline"}
    with tp.started([ws_load.ISOCHAT, "serve"], env=env, tmpdir=tmpdir, name="isochat") as server:
        ws_load.wait_until_live(server)
        yield tp.System("isochat", server, "")


async def measure(s: tp.System, o: Namespace) -> dict[str, list[tp.Batch]]:
    users = await tp.login(s.server.url, [f"bench-adapters-{i}" for i in range(o.concurrency)])
    for protocol in o.protocols:  # warm-up: imports, caches, pools
        await batch(s, users, protocol, WARMUP_RUNS)
    found: dict[str, list[tp.Batch]] = {p: [] for p in o.protocols}
    for _ in range(o.repeats):
        for protocol in o.protocols:  # alternating: drift on the machine hits every one
            found[protocol].append(await batch(s, users, protocol, o.runs))
    return found


def report(found: dict[str, list[tp.Batch]]) -> tuple[list[str], str]:
    cells = {p: tp.cell(b) for p, b in found.items()}
    ws = cells["ws"]
    assert ws is not None
    lines = [
        f"{'':<16} {'runs':>5} {'ok':>5} {'runs/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'cpu ms/run':>10} {'ratio runs/s':>12} {'ratio cpu':>9} {'ratio p50':>9}"
    ]
    ratios = []
    for protocol, c in cells.items():
        assert c is not None
        runs = sum(b.runs for b in found[protocol])
        ok = runs - sum(len(b.tally.problems) for b in found[protocol])
        speed, cpu = (
            tp.ratio(c.runs_per_s, ws.runs_per_s),
            tp.ratio(c.cpu_ms_per_run, ws.cpu_ms_per_run),
        )
        p50 = tp.ratio(c.p50_ms, ws.p50_ms)
        lines.append(
            f"{protocol:<16} {runs:>5} {ok:>5} {c.runs_per_s:>7.1f} {c.p50_ms:>7.1f} "
            f"{c.p99_ms:>7.1f} {c.cpu_ms_per_run:>10.2f} {speed:>12.2f} {cpu:>9.2f} {p50:>9.2f}"
        )
        if protocol != "ws":
            ratios.append(f"{protocol} runs_per_s {speed:.2f} cpu {cpu:.2f}")
    problems = sum(len(b.tally.problems) for bs in found.values() for b in bs)
    return lines, f"adapters (over /ws): {'; '.join(ratios)}; problems {problems}"


def parse_args() -> Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, help=f"runs per batch ({DEFAULT_RUNS})")
    parser.add_argument("--concurrency", type=int, default=10, help="users at once (10)")
    parser.add_argument("--repeats", type=int, help=f"batches per row ({DEFAULT_REPEATS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs, 1 repeat")
    parser.add_argument(
        "--protocols",
        type=lambda text: tuple(p for p in text.split(",") if p),
        default=ac.PROTOCOLS,
        help=f"which, ws first ({','.join(ac.PROTOCOLS)})",
    )
    o = parser.parse_args()
    if o.protocols[:1] != ("ws",) or not set(o.protocols) <= set(ac.PROTOCOLS):
        parser.error(f"--protocols: ws first, then any of {', '.join(ac.PROTOCOLS[1:])}")
    o.runs = o.runs or (QUICK_RUNS if o.quick else DEFAULT_RUNS)
    o.repeats = o.repeats or (QUICK_REPEATS if o.quick else DEFAULT_REPEATS)
    if min(o.runs, o.repeats, o.concurrency) < 1:
        parser.error("--runs, --repeats and --concurrency must be at least 1")
    o.concurrency = min(o.concurrency, o.runs)
    return o


def main() -> int:
    o = parse_args()
    ws_load.raise_fd_limit(4 * o.concurrency + 200)
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="adapters-") as name:
            try:
                with isochat(Path(name)) as s:
                    print(f"isochat pid {s.pid}", file=sys.stderr)
                    found = tp.run_async(measure(s, o))
            except (OSError, RuntimeError, TimeoutError, httpx.HTTPError) as e:
                print(f"adapters: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
                for log in sorted(Path(name).glob("*.log")):
                    print(f"--- {log.name} (tail) ---\n{ws_load.log_tail(log)}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("adapters: interrupted; the server was stopped", file=sys.stderr)
        return 130
    print(
        f"{o.concurrency} users, {o.runs} runs per batch (rounded up to a multiple of the "
        f"users), medians of {o.repeats} batch(es); {time.monotonic() - began:.0f} s in all"
    )
    lines, last = report(found)
    print("\n".join(lines))
    problems = [p for bs in found.values() for b in bs for p in b.tally.problems]
    if problems:
        print(f"FAILED: {len(problems)} problem(s), the first {tp.MAX_PROBLEMS_SHOWN}:")
        print("\n".join(f"  {p}" for p in problems[: tp.MAX_PROBLEMS_SHOWN]))
    print(last)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
