"""The drill's findings: figures worked out from what every user received and what the hosts
said, the checks that gate a deployment, and the two ways they are shown (a table, JSON)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from src.drill.checks import Frame, count_cross_user, sequence_problems
from src.drill.client import RunRecord, UserClient
from src.drill.hosts import GAUGES, HostReading
from src.drill.plan import HEALTHY, OPERAND, expected_outcome, owner_of

MAX_LISTED = 20  # unexpected runs and problems listed at most
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: str
    ok: bool


@dataclass(slots=True)
class HostFigures:
    url: str
    before: HostReading
    after: HostReading

    @property
    def settled(self) -> bool:
        return self.after.settled_since(self.before)


@dataclass(slots=True)
class Findings:
    """Everything the drill observed, handed to ``build_report``."""

    clients: Sequence[UserClient]
    kinds: Sequence[str]
    stored_events: dict[str, list[Frame]]  # run id -> its stored events (faulty runs, unseen)
    runs_left_running: int
    threads_left: int
    hosts: list[HostFigures]
    problems: list[str] = field(default_factory=list)
    rate_limited: int = 0  # messages refused by the rate limit and sent again
    seconds: float = 0.0


@dataclass(slots=True)
class Report:
    checks: list[Check]
    figures: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "value": c.value, "ok": c.ok} for c in self.checks],
            **self.figures,
        }

    def render(self, console: Console) -> None:
        table = Table(title="isochat drill", show_lines=False)
        table.add_column("check")
        table.add_column("result", justify="right")
        table.add_column("", justify="center")
        for check in self.checks:
            table.add_row(check.name, check.value, "ok" if check.ok else "[bold red]FAIL[/]")
        console.print(table)
        console.print(_details(self.figures))
        failed = [check.name for check in self.checks if not check.ok]
        console.print(
            f"[bold red]containment failed[/]: {', '.join(failed)}"
            if failed
            else "[bold green]contained[/]"
        )


def build_report(found: Findings) -> Report:
    records = [r for client in found.clients for r in client.records]
    healthy = [r for r in records if r.kind == HEALTHY]
    faulty = [r for r in records if r.kind != HEALTHY]
    completed = sum(1 for r in healthy if r.status == "completed")
    cross = sum(cross_user_frames(client) for client in found.clients)
    seq = sum(seq_problems(client) for client in found.clients)
    seq += sum(sequence_problems(events) for events in found.stored_events.values())
    by_kind = {kind: kind_figures(kind, faulty) for kind in found.kinds}
    unexercised = [kind for kind, figures in by_kind.items() if figures["runs"] == 0]
    as_expected = sum(f["as_expected"] for f in by_kind.values())
    baseline = latency([r for r in healthy if r.phase == "baseline"])
    beside = latency([r for r in healthy if r.phase == "drill"])
    unsettled = [host.url for host in found.hosts if not host.settled]
    pct = 100.0 * completed / len(healthy) if healthy else 0.0

    checks = [
        Check("healthy runs completed", f"{pct:.1f}% ({completed}/{len(healthy)})", bool(healthy)
              and completed == len(healthy)),
        Check("cross-user frames", str(cross), cross == 0),
        Check("seq gaps (live and stored)", str(seq), seq == 0),
        Check("faulty runs ended as their fault says", f"{as_expected}/{len(faulty)}",
              as_expected == len(faulty)),
        Check("fault kinds exercised",
              f"{len(by_kind) - len(unexercised)}/{len(by_kind)}"
              + (f" (not {', '.join(unexercised)}: more --duration or --faulty)"
                 if unexercised else ""),
              not unexercised),
        Check("gauges back on every host", "yes" if not unsettled else ", ".join(unsettled),
              not unsettled),
        Check("runs left running", str(found.runs_left_running), found.runs_left_running == 0),
        Check("drill threads left", str(found.threads_left), found.threads_left == 0),
    ]  # fmt: skip
    figures: dict[str, Any] = {
        "seconds": round(found.seconds, 1),
        "users": {
            "healthy": sum(1 for c in found.clients if not c.user.faulty),
            "faulty": sum(1 for c in found.clients if c.user.faulty),
        },
        "healthy": {
            "runs": len(healthy),
            "completed": completed,
            "completed_pct": round(pct, 2),
            "without_faulty": baseline,
            "with_faulty": beside,
            "p50_ratio": _ratio(beside["p50_ms"], baseline["p50_ms"]),
            "p99_ratio": _ratio(beside["p99_ms"], baseline["p99_ms"]),
        },
        "cross_user_frames": cross,
        "seq_gaps": seq,
        "faulty": by_kind,
        "faults_not_exercised": unexercised,
        "runs_left_running": found.runs_left_running,
        "threads_left": found.threads_left,
        "hosts": [host_json(host) for host in found.hosts],
        "rate_limited_resent": found.rate_limited,
        "problems": found.problems[:MAX_LISTED],
    }
    return Report(checks, figures)


# the figures


def cross_user_frames(client: UserClient) -> int:
    """Frames this user received that are not about their own runs: another run's id, or a
    text naming a number only another user's question named."""

    def names_another_user(text: str) -> bool:
        return any(owner_of(int(n)) != client.user.index for n in OPERAND.findall(text))

    mine = client.run_ids
    return sum(
        count_cross_user(socket.frames, own_runs=mine, foreign_text=names_another_user)
        for socket in client.sockets
    )


def seq_problems(client: UserClient) -> int:
    """For each of the user's runs, on each main socket open from before it started until
    after it ended: each seq that is not the one before + 1, each final event beyond (or short
    of) exactly one, and a final event that is not the run's last frame."""
    problems = 0
    for socket in (s for s in client.sockets if s.main):
        watched = [
            r
            for r in client.records
            if r.run_id is not None
            and r.sent_at >= socket.opened_at
            and (socket.closed_at is None or (r.ended_at or math.inf) <= socket.closed_at)
        ]
        frames_of: dict[str, list[Frame]] = {r.run_id: [] for r in watched if r.run_id}
        for frame in socket.frames:
            if frame.get("run_id") in frames_of:
                frames_of[frame["run_id"]].append(frame)
        problems += sum(sequence_problems(frames) for frames in frames_of.values())
    return problems


def kind_figures(kind: str, faulty: list[RunRecord]) -> dict[str, Any]:
    runs = [r for r in faulty if r.kind == kind]
    wrong = [r for r in runs if not r.as_expected]
    return {
        "runs": len(runs),
        "expected": expected_outcome(kind),
        "as_expected": len(runs) - len(wrong),
        # how they ended (an approval run: cancelled by the drill, or expired first)
        "ended": dict(Counter(_outcome(r) for r in runs)),
        "unexpected": [
            {"run_id": r.run_id, "got": _outcome(r), "problem": r.problem}
            for r in wrong[:MAX_LISTED]
        ],
    }


def _outcome(record: RunRecord) -> str:
    if record.status is None:
        return "no end seen"
    return record.status if record.code is None else f"{record.status} {record.code}"


def latency(records: list[RunRecord]) -> dict[str, Any]:
    seconds = sorted(r.latency_s for r in records if r.latency_s is not None)
    return {
        "runs": len(records),
        "p50_ms": _ms(percentile(seconds, 50)),
        "p99_ms": _ms(percentile(seconds, 99)),
    }


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile; None of nothing."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def host_json(host: HostFigures) -> dict[str, Any]:
    def reading(r: HostReading) -> dict[str, Any]:
        memory = None if r.memory_bytes is None else round(r.memory_bytes / MB, 1)
        return {**r.gauges, "memory_mb": memory}

    return {
        "url": host.url,
        "before": reading(host.before),
        "after": reading(host.after),
        "gauges_back": host.settled,
    }


def _details(figures: dict[str, Any]) -> Table:
    """The figures behind the checks: latency, each fault, each host."""
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("")
    table.add_column("")
    h = figures["healthy"]
    for label, phase in (("without faulty users", "without_faulty"), ("with", "with_faulty")):
        p = h[phase]
        table.add_row(
            f"healthy p50 / p99 {label}", f"{p['p50_ms']} / {p['p99_ms']} ms ({p['runs']} runs)"
        )
    table.add_row("ratio p50 / p99", f"{h['p50_ratio']} / {h['p99_ratio']}")
    for kind, f in figures["faulty"].items():
        table.add_row(f"{kind} ({f['expected']})", f"{f['as_expected']}/{f['runs']} as expected")
    for host in figures["hosts"]:
        before, after = host["before"], host["after"]
        gauges = " ".join(f"{name.removeprefix('isochat_')}={after[name]:g}" for name in GAUGES)
        table.add_row(f"{host['url']} after", gauges)
        table.add_row(f"{host['url']} memory", f"{before['memory_mb']} -> {after['memory_mb']} MB")
    if figures["rate_limited_resent"]:
        table.add_row(
            "rate-limited, sent again",
            f"{figures['rate_limited_resent']} (raise --interval: the drill's pace is over "
            "the per-user limit)",
        )
    for problem in figures["problems"]:
        table.add_row("problem", problem)
    return table
