"""What each MCP server said, kept for the runs of this process: its tools, for
``ISOCHAT_MCP_TOOLS_TTL_S`` (a tool list is the server's, not a user's), and the protocol it
speaks (so that a run's new session skips the probe for it).

A run whose servers' lists are fresh starts with no request to them; the first run to find a
list stale (or missing) asks the server, through its own session, and the others keep using
the stale one meanwhile. A server that failed to list is not asked again for a short while, so
a hung server does not hold every run that starts meanwhile for the whole timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import mcp_types

# How a server speaks: a 2026-07-28-or-later revision (the version agreed on, and the
# server's discovery answer), or the initialize handshake of earlier revisions (sessions).
Protocol = tuple[str, mcp_types.DiscoverResult] | Literal["legacy"]

# The longest a failed listing keeps runs from asking that server again.
RETRY_AFTER_S = 10.0


@dataclass(frozen=True, slots=True)
class _Listed:
    tools: tuple[mcp_types.Tool, ...]
    at: float


class McpToolLists:
    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._retry_after_s = min(ttl_s, RETRY_AFTER_S)
        self._clock = clock
        self._listed: dict[str, _Listed] = {}
        self._failed_at: dict[str, float] = {}
        self._asking: set[str] = set()
        self._protocols: dict[str, Protocol] = {}

    def fresh(self, server: str) -> tuple[mcp_types.Tool, ...] | None:
        """The server's tools if listed within the TTL, else None: ask it (``asking``)."""
        listed = self._listed.get(server)
        if listed is not None and self._clock() - listed.at < self._ttl_s:
            return listed.tools
        return None

    def should_ask(self, server: str) -> bool:
        """Whether a run should ask the server now: nobody is asking it, and it did not just
        fail (a run that need not ask uses ``last``)."""
        if server in self._asking and server in self._listed:
            return False
        failed = self._failed_at.get(server)
        return failed is None or self._clock() - failed >= self._retry_after_s

    def asking(self, server: str) -> None:
        self._asking.add(server)

    def done_asking(self, server: str) -> None:
        self._asking.discard(server)

    def listed(self, server: str, tools: tuple[mcp_types.Tool, ...]) -> None:
        self._failed_at.pop(server, None)
        self._listed[server] = _Listed(tools, self._clock())

    def failed(self, server: str) -> None:
        self._failed_at[server] = self._clock()

    def last(self, server: str) -> tuple[mcp_types.Tool, ...]:
        """The server's tools as last listed, however old (none if it never listed)."""
        listed = self._listed.get(server)
        return listed.tools if listed is not None else ()

    def protocol(self, server: str) -> Protocol | None:
        """How the server spoke to the last session that opened (None: not known, probe)."""
        return self._protocols.get(server)

    def spoke(self, server: str, protocol: Protocol | None) -> None:
        """Remember how the server speaks (None: forget it, the next session probes again)."""
        if protocol is None:
            self._protocols.pop(server, None)
        else:
            self._protocols[server] = protocol
