"""A run's MCP sessions: the request-scoped resource through which its agents use the teams'
MCP servers. One session per server the run uses, opened at its first use, all closed when the
run's scope is disposed (on every way out: completed, failed, cancelled, timed out, paused).
Two runs never share one; every request says whose run it is (``X-Isochat-User``,
``X-Isochat-Run``, and the run's ids in each call's ``_meta``, which stdio servers read)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import mcp_types

from src.runs.domain import RunContext
from src.services.mcp.config import RUN_HEADER, TOOL_NAME, USER_HEADER, McpServer, tool_name
from src.services.mcp.session import McpSession, McpUnavailable
from src.services.mcp.tool_lists import McpToolLists
from src.services.metrics import Metrics

log = logging.getLogger(__name__)

# What a team's container may add to each request to a server for a run: a per-user
# credential, say (``mcp_user_headers``, see docs/api.md).
UserHeaders = Callable[[str, RunContext], Mapping[str, str]]


def no_user_headers(server: str, context: RunContext) -> Mapping[str, str]:
    return {}


class RunMcp:
    def __init__(
        self,
        *,
        servers: Mapping[str, McpServer],
        context: RunContext,
        tool_lists: McpToolLists,
        user_headers: UserHeaders,
        timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self._servers = servers
        self._context = context
        self._lists = tool_lists
        self._user_headers = user_headers
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._sessions: dict[str, McpSession] = {}
        self._retired: list[McpSession] = []  # sessions a server dropped, closed at the end
        self._closed = False

    def servers_for(self, route: str) -> list[str]:
        return [name for name, server in self._servers.items() if server.serves(route)]

    async def tools(self, route: str) -> list[tuple[str, mcp_types.Tool]]:
        """The tools of the servers that serve ``route``, each with its server's name; a
        server that cannot list them now offers what it last listed (or nothing)."""
        names = self.servers_for(route)
        if not names:
            return []
        lists = await asyncio.gather(*(self._tools_of(name) for name in names))
        return [(name, tool) for name, tools in zip(names, lists, strict=True) for tool in tools]

    async def _tools_of(self, name: str) -> tuple[mcp_types.Tool, ...]:
        fresh = self._lists.fresh(name)
        if fresh is not None:
            return fresh
        if not self._lists.should_ask(name):
            return self._lists.last(name)
        self._lists.asking(name)
        try:
            tools = tuple(await self._session(name).list_tools())
        except McpUnavailable as exc:
            self._lists.failed(name)
            self._failed(name, "list", exc)
            return self._lists.last(name)
        finally:
            self._lists.done_asking(name)
        usable = tuple(t for t in tools if TOOL_NAME.fullmatch(tool_name(name, t.name)))
        if len(usable) < len(tools):
            left_out = [t.name for t in tools if t not in usable]
            log.warning("MCP server %s: tools left out, names unfit for models: %s", name, left_out)
        self._lists.listed(name, usable)
        return usable

    async def call(self, server: str, tool: str, arguments: dict[str, Any]) -> str:
        """The tool's answer as text; ``McpUnavailable`` / ``McpToolFailed`` (from
        ``src/services/mcp/session.py``) when it could not give one."""
        session = self._session(server)
        try:
            return await session.call(tool, arguments, listed=self._lists.last(server))
        except McpUnavailable as exc:
            self._failed(server, "call", exc)
            raise

    def _session(self, name: str) -> McpSession:
        """The run's session with ``name`` (made now if the run has none, or the one it had
        was dropped by the server)."""
        if self._closed:
            raise McpUnavailable(f"the run's MCP sessions are closed ({name})", kind="failed")
        session = self._sessions.get(name)
        if session is not None and not session.broken:
            return session
        if session is not None:
            self._retired.append(session)
        ctx = self._context
        headers = {
            **self._servers[name].headers,
            **self._user_headers(name, ctx),
            USER_HEADER: ctx.user_id,
            RUN_HEADER: ctx.run_id,
        }
        session = self._sessions[name] = McpSession(
            name,
            self._servers[name],
            headers=headers,
            meta={"isochat/user": ctx.user_id, "isochat/run": ctx.run_id},
            timeout_s=self._timeout_s,
            gauge=self._metrics.mcp_sessions_open,
            protocol=self._lists.protocol(name),
            remember=functools.partial(self._lists.spoke, name),
        )
        return session

    def _failed(self, server: str, doing: str, exc: McpUnavailable) -> None:
        """Said where operators look: a log line naming the server, and the metric."""
        self._metrics.mcp_failed(server=server, kind=exc.kind)
        log.warning("MCP server %s: %s failed (%s): %s", server, doing, exc.kind, exc.detail)

    async def aclose(self) -> None:
        """Close every session the run opened (the scope's closer)."""
        self._closed = True
        sessions = [*self._sessions.values(), *self._retired]
        self._sessions.clear()
        self._retired.clear()
        if sessions:
            await asyncio.gather(*(session.aclose() for session in sessions))
