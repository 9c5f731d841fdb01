"""What a run's MCP call costs, what caching the tool lists saves, and whether failing MCP
servers stay out of healthy runs, on real ``isochat serve`` processes.

Every server is its own process: isochat on a fresh SQLite file with the in-process broker and
the offline model, the MCP servers on the 2.x SDK (stateless Streamable HTTP). C users
(``--concurrency``), each with one ``/ws`` socket opened before the clock starts, run their
share of a batch's N runs (``--runs``) one after the other, each on a fresh thread. Latency is
from the ``chat`` frame to the final event; CPU is the isochat server's, around the batch. A
row is the median of ``--repeats`` batches, alternating with its baseline's, after a warm-up.

1. ``demo__add a=2 b=3`` (an MCP call to ``examples/mcp_server.py``) beside ``what is 2 + 3?``
   (isochat's own calculator): the difference is what the MCP session costs a run.
2. That MCP call with ``ISOCHAT_MCP_TOOLS_TTL_S=60`` beside ``=0``, to
   ``tests/mcp_servers/server2.py``, whose ``/_seen`` gives the ``tools/list`` requests per run.
3. Healthy users' MCP runs alone, then beside fault users (``--fault-users`` per kind) calling
   a stopped server, a hanging tool (``ISOCHAT_MCP_TIMEOUT_S=2``), a raising tool and a server
   answering garbage; with the offline model a failed call ends its run ``run_failed``/
   ``tool_error``, as expected.
4. After each server's load: its MCP sessions and request scopes open (``/metrics``, must be
   0), the ERROR lines of its log and its resident memory.

    .venv/bin/python bench/mcp_runs.py [--runs N] [--concurrency C] [--repeats R]
        [--fault-users K] [--quick]

The last line is machine-readable; the exit code is 1 when a run ended other than expected, a
gauge was not 0 or a server logged an ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from argparse import ArgumentParser, Namespace
from asyncio import Event
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import throughput as tp
import ws_load
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from tests.mcp_servers.fixtures import McpServerProcess, garbage_server, http_records, mcp2_server

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mcp_server.py"
DEFAULT_RUNS, QUICK_RUNS = 300, 60
DEFAULT_REPEATS, QUICK_REPEATS = 2, 1
WARMUP_RUNS = 30
FAULT_TIMEOUT_S = 2.0  # ISOCHAT_MCP_TIMEOUT_S of part 3
DRAIN_S = 30.0  # fault runs still in flight when the healthy users are done
GAUGES = ("isochat_mcp_sessions_open", "isochat_request_scopes_open")


@dataclass(frozen=True, slots=True)
class Workload:
    message: str
    answer: str | None  # a completed run's answer; None: must end run_failed/tool_error


LOCAL = Workload("what is 2 + 3?", "2 + 3 = 5")
MCP_CALL = Workload("demo__add a=2 b=3", "demo__add answered: 5")
HEALTHY = Workload("ok__add a=2 b=3", "ok__add answered: 5")
FAULTS = {  # kind: the run a fault user does back to back
    "refused": Workload("down__add a=2 b=3", None),
    "timeout": Workload("slow__hang", None),
    "raises": Workload("failing__boom", None),
    "garbage": Workload("junk__add a=2 b=3", None),
}


@dataclass(frozen=True, slots=True)
class Ended:
    latency_s: float
    status: str  # the final event's type, and its error code if any
    told: str | None  # the error's message: what the model was told of the failed call
    problem: str | None


async def ws_run(ws: ClientConnection, thread_id: str, w: Workload) -> Ended:
    """One run over the user's socket: the chat frame, then frames until its final event."""
    start = time.perf_counter()
    await ws.send(json.dumps({"type": "chat", "thread_id": thread_id, "content": w.message}))
    while (frame := json.loads(await ws.recv())).get("type") not in tp.FINAL_EVENTS | {"error"}:
        pass
    latency = time.perf_counter() - start
    data = frame.get("data") or {}
    error = data.get("error") or {}
    status = "/".join(s for s in (frame.get("type"), error.get("code")) if s)
    content = (data.get("message") or {}).get("content")
    expected = "run_completed" if w.answer is not None else "run_failed/tool_error"
    problem = f"{w.message!r}: expected {expected} {w.answer!r}, got {status} {content!r}"
    ok = status == expected and (w.answer is None or content == w.answer)
    return Ended(latency, status, error.get("message"), None if ok else problem)


async def user_runs(ws: ClientConnection, threads: Sequence[str], w: Workload, t: tp.Tally) -> None:
    for done, thread_id in enumerate(threads):
        try:
            ended = await ws_run(ws, thread_id, w)
        except (OSError, ValueError, WebSocketException) as exc:  # the socket is gone
            t.problems += [f"{w.message!r}: {type(exc).__name__}: {exc}"] * (len(threads) - done)
            return
        t.latencies_s.append(ended.latency_s)
        if ended.problem:
            t.problems.append(ended.problem)


async def sockets(
    stack: contextlib.AsyncExitStack, s: tp.System, users: Sequence[tp.User]
) -> list[ClientConnection]:
    url = "ws" + s.server.url.removeprefix("http")
    opened = await asyncio.gather(
        *(connect(f"{url}/ws?token={u.token}", open_timeout=tp.OPEN_TIMEOUT_S) for u in users)
    )
    for ws in opened:
        stack.push_async_callback(ws.close)
    return opened


@dataclass(slots=True)
class Faults:
    """The fault users, each with its kind, and how their runs ended, by kind."""

    users: list[tuple[tp.User, str]]
    ended: dict[str, list[Ended]] = field(default_factory=lambda: {k: [] for k in FAULTS})

    async def run(
        self, http: httpx.AsyncClient, ws: ClientConnection, user: tp.User, kind: str, done: Event
    ) -> None:
        """``kind``'s run back to back, each on a fresh thread, until ``done``."""
        try:
            while not done.is_set():
                made = await http.post("/api/threads", json={"title": kind}, headers=user.headers)
                thread = made.raise_for_status().json()["id"]
                self.ended[kind].append(await ws_run(ws, thread, FAULTS[kind]))
        except (OSError, ValueError, WebSocketException, httpx.HTTPError) as exc:
            self.ended[kind].append(Ended(math.nan, "no final event", None, f"{kind}: {exc!r}"))


async def batch(
    s: tp.System, users: Sequence[tp.User], w: Workload, runs: int, faults: Faults | None = None
) -> tp.Batch:
    """``runs`` runs of ``w`` shared by ``users`` (rounded up); with ``faults``, the fault users
    at work from before the clock starts until the healthy users are done."""
    per_user = max(1, math.ceil(runs / len(users)))
    threads = await tp.new_threads(s.server.url, users, per_user)
    tally, tasks, done = tp.Tally(), [], Event()
    async with contextlib.AsyncExitStack() as stack:
        mine = await sockets(stack, s, users)
        if faults is not None:
            theirs = await sockets(stack, s, [u for u, _ in faults.users])
            http = await stack.enter_async_context(tp.setup_client(s.server.url))
            for ws, (u, kind) in zip(theirs, faults.users, strict=True):
                tasks.append(asyncio.create_task(faults.run(http, ws, u, kind, done)))
            await asyncio.sleep(0.5)  # the fault users' first runs are under way

        async def load() -> None:
            await asyncio.gather(
                *(user_runs(ws, t, w, tally) for ws, t in zip(mine, threads, strict=True))
            )

        try:
            numbers = await tp.measured(s, load)
        finally:
            done.set()
        if tasks and (pending := (await asyncio.wait(tasks, timeout=DRAIN_S))[1]):
            raise RuntimeError(f"{len(pending)} fault run(s) did not end within {DRAIN_S:g} s")
    await asyncio.sleep(tp.SETTLE_S)
    ms = sorted(1000 * x for x in tally.latencies_s)
    return tp.Batch(s.name, "ws", len(users), per_user * len(users), ms, numbers, tally)


# --- the servers and their state afterwards -----------------------------------------------------


@contextlib.contextmanager
def isochat(tmpdir: Path, name: str, extra: dict[str, str]) -> Iterator[tp.System]:
    """``isochat serve`` on a free port with a database of its own; stopped on the way out."""
    (tmpdir / name / "var").mkdir(parents=True)
    env = ws_load.server_environment(tmpdir / name, 0) | tp.RAISED_LIMITS | extra
    env |= {"ISOCHAT_PORT": "{port}", "ISOCHAT_ENV": "development"}  # dev-login on
    env |= {"ISOCHAT_BROKER_URL": "memory://", "ISOCHAT_LLM_PROVIDER": "offline"}
    with tp.started([ws_load.ISOCHAT, "serve"], env=env, tmpdir=tmpdir, name=name) as server:
        ws_load.wait_until_live(server)
        yield tp.System(name, server, "")


def mcp_setting(servers: dict[str, str], routes: list[str] | None = None) -> str:
    """``ISOCHAT_MCP_SERVERS``: each name to its URL, for ``routes`` (None: every route)."""
    entry = {} if routes is None else {"routes": routes}
    return json.dumps({name: {"url": url} | entry for name, url in servers.items()})


@dataclass(frozen=True, slots=True)
class After:
    """One isochat server once its load was over."""

    name: str
    gauges: dict[str, float]
    errors: int  # ERROR lines in its log
    rss_mb: float


async def afterwards(s: tp.System) -> After:
    await asyncio.sleep(ws_load.SETTLE_S)  # sockets and scopes finish closing
    async with httpx.AsyncClient(base_url=s.server.url, timeout=30) as http:
        text = (await http.get("/metrics")).text
    lines = [line.partition(" ") for line in text.splitlines()]
    gauges = {name: float(value) for name, _, value in lines if name in GAUGES}
    log = s.server.log.read_text(errors="replace").splitlines()
    return After(s.name, gauges, sum(" ERROR " in line for line in log), ws_load.rss_mb(s.pid))


@dataclass(slots=True)
class Results:
    rows: dict[str, list[tp.Batch]] = field(default_factory=dict)  # by row label
    lists_per_run: dict[str, list[float]] = field(default_factory=dict)  # part 2, per batch
    faults: Faults = field(default_factory=lambda: Faults([]))
    after: list[After] = field(default_factory=list)

    def add(self, label: str, found: tp.Batch) -> None:
        self.rows.setdefault(label, []).append(found)

    def cell(self, label: str) -> tp.Cell:
        found = tp.cell(self.rows[label])
        assert found is not None, label
        return found

    def ok(self, label: str) -> tuple[int, int]:
        """Runs that ended as expected, of all."""
        runs = sum(b.runs for b in self.rows[label])
        return runs - sum(len(b.tally.problems) for b in self.rows[label]), runs

    def problems(self) -> list[str]:
        found = [p for bs in self.rows.values() for b in bs for p in b.tally.problems]
        found += [e.problem for es in self.faults.ended.values() for e in es if e.problem]
        for a in self.after:
            found += [f"{a.name}: {g} {a.gauges.get(g)}" for g in GAUGES if a.gauges.get(g) != 0]
            found += [f"{a.name}: {a.errors} ERROR line(s) in its log"] if a.errors else []
        return found


# --- the three parts ----------------------------------------------------------------------------


async def users_of(s: tp.System, prefix: str, count: int) -> list[tp.User]:
    return await tp.login(s.server.url, [f"bench-mcp-{prefix}-{i}" for i in range(count)])


async def calls_load(s: tp.System, o: Namespace, out: Results) -> None:
    users = await users_of(s, "calls", o.concurrency)
    for w in (LOCAL, MCP_CALL):  # warm-up: imports, caches, pools, the tool list
        await batch(s, users, w, WARMUP_RUNS)
    for _ in range(o.repeats):
        out.add("local tool", await batch(s, users, LOCAL, o.runs))
        out.add("mcp call", await batch(s, users, MCP_CALL, o.runs))
    out.after.append(await afterwards(s))


async def lists_load(
    servers: Sequence[tp.System], counted: McpServerProcess, o: Namespace, out: Results
) -> None:
    users = {s.name: await users_of(s, "lists", o.concurrency) for s in servers}
    for s in servers:
        await batch(s, users[s.name], MCP_CALL, WARMUP_RUNS)
    for _ in range(o.repeats):
        for s in servers:  # alternating: drift on the machine hits both
            await counted.areset()
            found = await batch(s, users[s.name], MCP_CALL, o.runs)
            listed = len(http_records(await counted.aseen(), rpc="tools/list"))
            out.lists_per_run.setdefault(s.name, []).append(listed / found.runs)
            out.add(s.name, found)
    for s in servers:
        out.after.append(await afterwards(s))


async def containment_load(
    s: tp.System, down: McpServerProcess, junk: McpServerProcess, o: Namespace, out: Results
) -> None:
    users = await users_of(s, "healthy", o.concurrency)
    kinds = [kind for kind in FAULTS for _ in range(o.fault_users)]
    out.faults.users = list(zip(await users_of(s, "fault", len(kinds)), kinds, strict=True))
    # Warm-up, every server working: all five tool lists are taken and kept for an hour, so the
    # runs meet the faults in their calls, not in listings.
    await batch(s, users, HEALTHY, WARMUP_RUNS)
    for name in ("down", "junk"):
        works = Workload(f"{name}__add a=2 b=3", f"{name}__add answered: 5")
        if problems := (await batch(s, users[:1], works, 1)).tally.problems:
            raise RuntimeError(f"{name}'s tool did not work before its fault: {problems}")
    await asyncio.gather(down.astop(), junk.astop())  # down: connection refused from now on
    garbage = garbage_server("json-garbage", junk.log)
    garbage.port = junk.port  # the same URL, answering garbage now
    async with garbage:
        for _ in range(o.repeats):
            out.add("healthy alone", await batch(s, users, HEALTHY, o.runs))
            out.add("healthy beside", await batch(s, users, HEALTHY, o.runs, out.faults))
        out.after.append(await afterwards(s))


def measure(tmpdir: Path, o: Namespace) -> Results:
    out = Results()
    with (
        McpServerProcess([sys.executable, str(EXAMPLE)], log=tmpdir / "example.log") as example,
        mcp2_server(tmpdir / "counted.log") as counted,
    ):
        extra = {"ISOCHAT_MCP_SERVERS": mcp_setting({"demo": example.url}, ["general"])}
        with isochat(tmpdir, "calls", extra | {"ISOCHAT_MCP_TOOLS_TTL_S": "60"}) as s:
            print(f"1. MCP calls: isochat pid {s.pid}", file=sys.stderr)
            tp.run_async(calls_load(s, o, out))
        extra = {"ISOCHAT_MCP_SERVERS": mcp_setting({"demo": counted.url}, ["general"])}
        with (
            isochat(tmpdir, "cached", extra | {"ISOCHAT_MCP_TOOLS_TTL_S": "60"}) as cached,
            isochat(tmpdir, "listing", extra | {"ISOCHAT_MCP_TOOLS_TTL_S": "0"}) as listing,
        ):
            print(f"2. tool lists: pids {cached.pid}, {listing.pid}", file=sys.stderr)
            tp.run_async(lists_load([cached, listing], counted, o, out))
        with mcp2_server(tmpdir / "down.log") as down, mcp2_server(tmpdir / "junk.log") as junk:
            urls = {"ok": example.url, "down": down.url, "junk": junk.url}
            urls |= {"slow": counted.url, "failing": counted.url}  # hang, boom
            extra = {"ISOCHAT_MCP_SERVERS": mcp_setting(urls), "ISOCHAT_MCP_TOOLS_TTL_S": "3600"}
            extra["ISOCHAT_MCP_TIMEOUT_S"] = f"{FAULT_TIMEOUT_S:g}"
            with isochat(tmpdir, "containment", extra) as s:
                print(f"3. containment: isochat pid {s.pid}", file=sys.stderr)
                tp.run_async(containment_load(s, down, junk, o, out))
    return out


# --- the report ---------------------------------------------------------------------------------


def row(label: str, c: tp.Cell, ok: tuple[int, int], extra: str = "") -> str:
    return (
        f"{label:<22} {ok[1]:>5} {ok[0]:>5} {c.runs_per_s:>7.1f} {c.p50_ms:>7.1f} "
        f"{c.p99_ms:>7.1f} {c.cpu_ms_per_run:>10.2f}{extra}"
    )


def ratio_row(label: str, a: tp.Cell, b: tp.Cell) -> str:
    return (
        f"{label:<22} {'':>5} {'':>5} {tp.ratio(a.runs_per_s, b.runs_per_s):>7.2f} "
        f"{tp.ratio(a.p50_ms, b.p50_ms):>7.2f} {tp.ratio(a.p99_ms, b.p99_ms):>7.2f} "
        f"{tp.ratio(a.cpu_ms_per_run, b.cpu_ms_per_run):>10.2f}"
    )


def report(r: Results) -> tuple[list[str], str]:
    """The table, and the last line."""
    local, mcp = r.cell("local tool"), r.cell("mcp call")
    cached, listing = r.cell("cached"), r.cell("listing")
    alone, beside = r.cell("healthy alone"), r.cell("healthy beside")
    lists = {name: statistics.median(v) for name, v in r.lists_per_run.items()}
    (ok_alone, n_alone), (ok_beside, n_beside) = r.ok("healthy alone"), r.ok("healthy beside")
    lines = [
        f"{'':<22} {'runs':>5} {'ok':>5} {'runs/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'cpu ms/run':>10} {'lists/run':>9}",
        row("1 local tool", local, r.ok("local tool")),
        row("1 mcp call", mcp, r.ok("mcp call")),
        ratio_row("  ratio mcp/local", mcp, local),
        f"{'  mcp - local':<22} {'':>5} {'':>5} {'':>7} {mcp.p50_ms - local.p50_ms:>+7.1f} "
        f"{mcp.p99_ms - local.p99_ms:>+7.1f} {mcp.cpu_ms_per_run - local.cpu_ms_per_run:>+10.2f}",
        row("2 ttl 60 (cached)", cached, r.ok("cached"), f" {lists['cached']:>9.2f}"),
        row("2 ttl 0 (listing)", listing, r.ok("listing"), f" {lists['listing']:>9.2f}"),
        ratio_row("  ratio listing/cached", listing, cached),
        row("3 healthy alone", alone, (ok_alone, n_alone)),
        row("3 healthy beside", beside, (ok_beside, n_beside)),
        ratio_row("  ratio beside/alone", beside, alone),
        f"3 fault runs (ISOCHAT_MCP_TIMEOUT_S={FAULT_TIMEOUT_S:g}): how they ended, what the "
        "model was told",
    ]
    for kind, ended in r.faults.ended.items():
        counted = ", ".join(f"{s} {n}" for s, n in sorted(Counter(e.status for e in ended).items()))
        told = next((e.told for e in ended if e.told), "")
        lines.append(f"  {kind:<8} {len(ended):>4} runs: {counted}; {told[:80]!r}")
    lines.append("4 each isochat server after its load:")
    for a in r.after:
        gauges = ", ".join(f"{g} {a.gauges.get(g, math.nan):g}" for g in GAUGES)
        lines.append(f"  {a.name:<12} {gauges}; {a.errors} ERROR line(s); rss {a.rss_mb:.0f} MB")
    sessions = max(a.gauges.get(GAUGES[0], math.nan) for a in r.after)
    return lines, (
        f"mcp_runs: runs_per_s mcp/local {mcp.runs_per_s:.1f}/{local.runs_per_s:.1f} "
        f"ratio {tp.ratio(mcp.runs_per_s, local.runs_per_s):.2f} "
        f"session_cpu_ms {mcp.cpu_ms_per_run - local.cpu_ms_per_run:+.2f} "
        f"session_p50_ms {mcp.p50_ms - local.p50_ms:+.1f}; "
        f"listing/cached runs_per_s {tp.ratio(listing.runs_per_s, cached.runs_per_s):.2f} "
        f"cpu {tp.ratio(listing.cpu_ms_per_run, cached.cpu_ms_per_run):.2f} "
        f"tools_list_per_run {lists['listing']:.2f}/{lists['cached']:.2f}; "
        f"healthy ok {ok_alone}/{n_alone} alone {ok_beside}/{n_beside} beside "
        f"ratio_p50 {tp.ratio(beside.p50_ms, alone.p50_ms):.2f} "
        f"ratio_p99 {tp.ratio(beside.p99_ms, alone.p99_ms):.2f}; "
        f"mcp_sessions_open {sessions:g} unexpected_errors {sum(a.errors for a in r.after)}"
    )


def parse_args() -> Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, help=f"runs per batch ({DEFAULT_RUNS})")
    parser.add_argument("--concurrency", type=int, default=10, help="users at once (10)")
    parser.add_argument("--repeats", type=int, help=f"batches per row ({DEFAULT_REPEATS})")
    parser.add_argument("--fault-users", type=int, default=1, help="per kind of fault (1)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs, 1 repeat")
    o = parser.parse_args()
    o.runs = o.runs or (QUICK_RUNS if o.quick else DEFAULT_RUNS)
    o.repeats = o.repeats or (QUICK_REPEATS if o.quick else DEFAULT_REPEATS)
    if min(o.runs, o.repeats, o.concurrency, o.fault_users) < 1:
        parser.error("--runs, --repeats, --concurrency and --fault-users must be at least 1")
    o.concurrency = min(o.concurrency, o.runs)
    return o


def main() -> int:
    o = parse_args()
    ws_load.raise_fd_limit(4 * (o.concurrency + len(FAULTS) * o.fault_users) + 200)
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="mcp_runs-") as name:
            try:
                result = measure(Path(name), o)
            except (OSError, RuntimeError, TimeoutError, httpx.HTTPError, WebSocketException) as e:
                print(f"mcp_runs: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
                for log in sorted(Path(name).glob("*.log")):
                    print(f"--- {log.name} (tail) ---\n{ws_load.log_tail(log)}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("mcp_runs: interrupted; the servers were stopped", file=sys.stderr)
        return 130
    print(
        f"{o.concurrency} users over /ws, {o.runs} runs per batch (rounded up to a multiple of "
        f"the users), medians of {o.repeats} batch(es); {time.monotonic() - began:.0f} s in all"
    )
    lines, last = report(result)
    print("\n".join(lines))
    if problems := result.problems():
        print(f"FAILED: {len(problems)} problem(s), the first {tp.MAX_PROBLEMS_SHOWN}:")
        print("\n".join(f"  {p}" for p in problems[: tp.MAX_PROBLEMS_SHOWN]))
    print(last)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
