"""Prometheus metrics, fed by the code paths themselves (names are part of the public contract).

Each application owns its own registry, so two apps in one process (tests) never mix counts.
"""

from __future__ import annotations

import os
import re
import weakref

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from src.runs.domain import Usage

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """With ``multiprocess_dir`` (several workers), each process writes its values there and
    ``render`` adds up those of the live processes; gauges sum over live workers."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self._multiprocess_dir = multiprocess_dir
        self._agent_refs: set[weakref.ref[object]] = set()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if multiprocess_dir is None:
            # process_resident_memory_bytes and the rest of the standard process metrics (with
            # several workers they would be only the answering worker's: left out).
            ProcessCollector(registry=r)
        self.request_scopes_open = Gauge(
            "isochat_request_scopes_open", "Request scopes opened and not yet disposed",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.request_scope_seconds = Histogram(
            "isochat_request_scope_seconds",
            "Time from a request scope's opening to its disposal",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.agent_instances_live = Gauge(
            "isochat_agent_instances_live", "Agent objects not yet garbage-collected",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.db_sessions_open = Gauge(
            "isochat_db_sessions_open", "Database sessions opened and not yet closed",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.runs_total = Counter(
            "isochat_runs_total", "Runs ended, by terminal status", ["status"], registry=r
        )
        self.run_seconds = Histogram(
            "isochat_run_seconds",
            "Run duration, start to terminal state",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.agent_failures_total = Counter(
            "isochat_agent_failures_total",
            "Runs failed, by the agent that was working and the error code",
            ["agent", "code"],
            registry=r,
        )
        self.llm_tokens_total = Counter(
            "isochat_llm_tokens_total",
            "Tokens the model calls used, by kind (prompt, completion)",
            ["kind"],
            registry=r,
        )
        self.approvals_total = Counter(
            "isochat_approvals_total",
            "Decisions on tool calls that waited for approval, by decision",
            ["decision"],
            registry=r,
        )
        # Set from the database when /metrics is read, so every host says the same.
        self.runs_awaiting_approval = Gauge(
            "isochat_runs_awaiting_approval", "Runs paused until a person decides on their calls",
            registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.mcp_sessions_open = Gauge(
            "isochat_mcp_sessions_open", "Runs' MCP client sessions opened and not yet closed",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.mcp_failures_total = Counter(
            "isochat_mcp_failures_total",
            "MCP servers' failures, by server and kind "
            "(open, timeout, session, garbage, error, failed)",
            ["server", "kind"],
            registry=r,
        )
        self.ws_connections = Gauge(
            "isochat_ws_connections", "Open WebSocket connections",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip

    def track_agent(self, agent: object) -> None:
        """Count ``agent`` as live until the garbage collector takes it.

        A weak reference with a callback: half the cost of ``weakref.finalize``, paid by every
        agent of every run.
        """
        self.agent_instances_live.inc()
        self._agent_refs.add(weakref.ref(agent, self._agent_collected))

    def _agent_collected(self, ref: weakref.ref[object]) -> None:
        self._agent_refs.discard(ref)
        self.agent_instances_live.dec()

    def run_ended(self, *, status: str, seconds: float) -> None:
        self.runs_total.labels(status=status).inc()
        self.run_seconds.observe(seconds)

    def approval_decided(self, decision: str) -> None:
        self.approvals_total.labels(decision=decision).inc()

    def tokens_used(self, usage: Usage) -> None:
        self.llm_tokens_total.labels(kind="prompt").inc(usage.prompt_tokens)
        self.llm_tokens_total.labels(kind="completion").inc(usage.completion_tokens)

    def agent_failed(self, *, agent: str, code: str) -> None:
        self.agent_failures_total.labels(agent=agent, code=code).inc()

    def mcp_failed(self, *, server: str, kind: str) -> None:
        self.mcp_failures_total.labels(server=server, kind=kind).inc()

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        forget_dead_workers(self._multiprocess_dir)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(combined)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when never set): for health checks and tests."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else got


_GAUGE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that have exited (a restarted worker gets a new pid):
    their last values would otherwise be added to the living ones' forever."""
    for name in os.listdir(directory):
        match = _GAUGE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
