"""One run's client session with one MCP server, on the official SDK's ``Client``.

The SDK's client must be entered and left in one task (its transport runs in an anyio task
group). A run calls tools from its own task and from the tasks of a turn's side-by-side calls,
and its scope is disposed from whichever task ends it; so each session has a task of its own,
the *owner*, that enters the client, holds it open and leaves it when told. Leaving it ends
the session the protocol's way (a session-based server gets its ``DELETE``). A transport that
dies (the server went away) ends the owner, never the run's task.

Every failure becomes ``McpUnavailable`` (the server could not be used: down, too slow,
answered garbage, dropped the session) or ``McpToolFailed`` (the tool ran and said it failed),
each with a message fit for the model; the details go to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import httpx2
import mcp_types
from mcp import Client, Implementation, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from src.services.mcp.config import McpServer
from src.services.mcp.tool_lists import Protocol

log = logging.getLogger(__name__)

CLIENT_INFO = Implementation(name="isochat", version="0.1.0")
# How long leaving a session may take (its DELETE) before its owner is cancelled.
CLOSE_GRACE_S = 5.0
# A session-based server's event stream may stay quiet for long: reads are bounded by the
# caller (ISOCHAT_MCP_TIMEOUT_S per call), not by the HTTP client.
IDLE_READ_S = 300.0
MAX_TOOL_PAGES = 20
MAX_ERROR_CHARS = 300


class McpUnavailable(Exception):
    """The server could not be used for this request; ``str(exc)`` is for the model, ``kind``
    (open, timeout, session, garbage, error, failed) for the metric."""

    def __init__(self, message: str, *, kind: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail or message  # for operators: the underlying error


class McpToolFailed(Exception):
    """The tool ran and answered an error; ``str(exc)`` is what it said."""


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every session of the process: making one costs about 50 ms."""
    return httpx2.create_ssl_context()


class McpSession:
    """A client session with ``server`` for one run: opened by ``open`` (or the first
    ``list_tools`` / ``call``), ended by ``aclose``, every request carrying ``headers``."""

    def __init__(
        self,
        name: str,
        server: McpServer,
        *,
        headers: Mapping[str, str],
        meta: Mapping[str, str],
        timeout_s: float,
        gauge: Any,
        protocol: Protocol | None = None,
        remember: Callable[[Protocol | None], None] = lambda protocol: None,
    ) -> None:
        self.name = name
        # How the server spoke to an earlier session: given, the probe is skipped. Told to
        # ``remember`` when this one opens, or forgotten (None) when it could not.
        self.protocol = protocol
        self._remember = remember
        self._server = server
        self._headers = dict(headers)
        self._meta = cast(mcp_types.RequestParamsMeta, dict(meta))
        self._timeout_s = timeout_s
        self._gauge = gauge  # isochat_mcp_sessions_open
        self._client: Client | None = None
        self._owner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self.broken = False  # the transport died: the next use needs a new session
        self._primed = False
        # Whether the server has answered this session yet: with a known protocol, opening
        # asks nothing, so a server that is down shows only at the first request.
        self._answered = False

    async def open(self) -> Client:
        if self._owner is None:
            self._owner = asyncio.create_task(self._own(), name=f"mcp session {self.name}")
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.shield(self._ready.wait())
        except TimeoutError:
            self.broken = True
            raise McpUnavailable(
                self._said(f"did not answer within {self._timeout_s:g} s"), kind="timeout"
            ) from None
        if self._client is None or self.broken:
            self.broken = True
            self._remember(None)  # the next session probes: the server may have changed
            cause = _cause(self._error) if self._error is not None else None
            raise McpUnavailable(self._said("is unavailable"), kind="open", detail=cause)
        return self._client

    async def _own(self) -> None:
        """Enter the client, hold it until ``aclose``, leave it: all in this task."""
        opened = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                client = await stack.enter_async_context(self._client_of(stack))
                discovered = client.session.discover_result
                self.protocol = (
                    (client.protocol_version, discovered) if discovered is not None else "legacy"
                )
                self._remember(self.protocol)
                self._client, opened = client, True
                self._gauge.inc()
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # an ExceptionGroup from the transport, or a cancel
            # Told to whoever uses the session next (the caller logs it once).
            self._error = exc
            self.broken = True
            log.debug("MCP session with %s ended: %s", self.name, _cause(exc))
        finally:
            self._client = None
            self._ready.set()
            if opened:
                self._gauge.dec()

    def _client_of(self, stack: contextlib.AsyncExitStack) -> Client:
        transport = self._transport(stack)
        known = self.protocol
        if known is None:
            return Client(transport, client_info=CLIENT_INFO, cache=None)  # probes
        if known == "legacy":
            return Client(transport, client_info=CLIENT_INFO, cache=None, mode="legacy")
        version, discovered = known
        return Client(
            transport, client_info=CLIENT_INFO, cache=None, mode=version, prior_discover=discovered
        )

    def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        server = self._server
        if server.url is None:
            assert server.command is not None  # the configuration has one or the other
            return StdioServerParameters(
                command=server.command, args=list(server.args), env=dict(server.env) or None
            )
        http = httpx2.AsyncClient(
            headers=self._headers,
            verify=_tls(),
            timeout=httpx2.Timeout(self._timeout_s, read=max(IDLE_READ_S, self._timeout_s)),
        )
        stack.push_async_callback(http.aclose)
        return streamable_http_client(server.url, http_client=http)

    async def list_tools(self) -> list[mcp_types.Tool]:
        client = await self.open()
        self._primed = True  # the SDK keeps what a listing says (output schemas, headers)
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        async with self._bounded("list its tools"):
            for _ in range(MAX_TOOL_PAGES):
                page = await client.list_tools(cursor=cursor)
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
        return tools

    async def call(
        self, tool: str, arguments: dict[str, Any], *, listed: Sequence[mcp_types.Tool] = ()
    ) -> str:
        """The tool's answer as text; ``McpToolFailed`` with what it said when it failed.
        ``listed``: the server's tools as last listed, which the session is told instead of
        listing them again."""
        client = await self.open()
        self._prime(client, listed)
        async with self._bounded(f"run {tool}"):
            result = await client.call_tool(tool, arguments, meta=self._meta)
        text = result_text(result)
        if result.is_error:
            raise McpToolFailed(text[:MAX_ERROR_CHARS] or f"the {tool} tool failed")
        return text

    def _prime(self, client: Client, listed: Sequence[mcp_types.Tool]) -> None:
        """Tell a new session the tools as listed before. The SDK checks a call's result
        against the tool's output schema, and lists the tools first (a request more, for every
        call of a new session) when it was never told them; a 2026-07-28 server's tools may also
        ask for arguments mirrored in headers, which it learns from the listing. The SDK's own
        response cache feeds it a served listing the same way."""
        if self._primed or not listed:
            return
        self._primed = True
        listing = mcp_types.ListToolsResult(tools=list(listed))
        try:
            client.session._absorb_tool_listing(listing, complete=True)
        except AttributeError:  # another SDK version: it lists the tools itself
            log.debug("MCP session with %s could not be told its tools", self.name)

    @contextlib.asynccontextmanager
    async def _bounded(self, doing: str) -> Any:
        """A request within ``timeout_s``; the server's failures as ``McpUnavailable``."""
        try:
            async with asyncio.timeout(self._timeout_s):
                yield
            self._answered = True
        except TimeoutError:
            raise McpUnavailable(
                self._said(f"did not {doing} within {self._timeout_s:g} s"), kind="timeout"
            ) from None
        except MCPError as exc:
            detail = f"MCPError {exc.code}: {exc.message[:MAX_ERROR_CHARS]}"
            if exc.code == mcp_types.CONNECTION_CLOSED and not self._answered:
                self.broken = True
                self._remember(None)  # it may not be the server it was: probe it again
                raise McpUnavailable(
                    self._said("is unavailable"), kind="open", detail=detail
                ) from None
            if (
                exc.code == mcp_types.CONNECTION_CLOSED
                or "session not found" in exc.message.lower()
            ):
                self.broken = True
                raise McpUnavailable(
                    self._said("closed the session"), kind="session", detail=detail
                ) from None
            if exc.code == mcp_types.PARSE_ERROR or "content type" in exc.message.lower():
                # The client's words for an answer that is not MCP (a proxy's page, garbage).
                raise McpUnavailable(
                    self._said("answered something that is not MCP"), kind="garbage", detail=detail
                ) from None
            said = exc.message.splitlines()[0][:MAX_ERROR_CHARS] if exc.message else ""
            raise McpUnavailable(
                self._said(f"answered an error: {said or exc.code}"), kind="error", detail=detail
            ) from None
        except Exception as exc:
            self.broken = True
            raise McpUnavailable(self._said("failed"), kind="failed", detail=_cause(exc)) from None

    def _said(self, what: str) -> str:
        return f"the MCP server {self.name} {what}"

    async def aclose(self) -> None:
        """End the session (from any task): its owner leaves the client (a session still
        opening is given up at once), within ``CLOSE_GRACE_S``, or is cancelled."""
        owner = self._owner
        if owner is None or owner.done():
            return
        if self._client is not None:
            self._stop.set()
        else:
            owner.cancel()
        done, _ = await asyncio.wait({owner}, timeout=CLOSE_GRACE_S)
        if not done:
            log.warning("MCP server %s did not end the session in time", self.name)
            owner.cancel()


def result_text(result: mcp_types.CallToolResult) -> str:
    """What a tool answered, as the model reads it: its texts, its structured content when it
    gave no text, and a mention of what cannot be shown as text (images, audio, links)."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[resource {resource.uri} ({resource.mime_type or 'binary'})]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type} ({block.mime_type})]")
        else:
            parts.append(f"[{block.type}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _cause(exc: BaseException) -> str:
    """The first real error inside the SDK's nested exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
