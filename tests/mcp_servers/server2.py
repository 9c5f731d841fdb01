"""A real MCP server made with the 2.x SDK (``MCPServer``, stateless Streamable HTTP), for the
tests: ``python -m tests.mcp_servers.server2 --port N`` from the checkout, serving
``http://127.0.0.1:N/mcp`` plus the recorder's ``/_seen`` and ``/_reset``.

Its tools are those of ``server1`` (the 1.x SDK) in name, description and behaviour; each
records a ``called`` tool record, ``hang`` also ``started`` and ``cancelled``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

from tests.mcp_servers.recorder import Seen, recording

# Plain log lines, set up before the SDK's (which would draw tracebacks with rich: slow enough
# to delay the next call by half a second).
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

seen = Seen()
server: MCPServer[Any] = MCPServer("isochat-test-tools")


@server.tool()
def add(a: int, b: int, ctx: Context) -> int:
    """Add two integers."""
    seen.tool("add", "called", ctx.headers)
    return a + b


@server.tool()
def whoami(ctx: Context) -> dict[str, Any]:
    """Who is calling: the user, run, authorization and session headers of the request."""
    seen.tool("whoami", "called", ctx.headers)
    headers = ctx.headers or {}
    # Over stdio there are no headers: the caller says who it is in the call's _meta.
    meta = dict(ctx.request_context.meta or {})
    return {
        "user": headers.get("x-isochat-user", meta.get("isochat/user")),
        "run": headers.get("x-isochat-run", meta.get("isochat/run")),
        "authorization": headers.get("authorization"),
        "session": headers.get("mcp-session-id"),
    }


@server.tool()
async def hang(ctx: Context) -> str:
    """Wait forever, until the call is cancelled."""
    seen.tool("hang", "called", ctx.headers)
    seen.tool("hang", "started", ctx.headers)
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        seen.tool("hang", "cancelled", ctx.headers)
        raise
    return "never"


@server.tool()
def boom(ctx: Context) -> str:
    """Fail, always."""
    seen.tool("boom", "called", ctx.headers)
    raise RuntimeError("kaboom")


@server.tool()
def big(ctx: Context) -> str:
    """A result of 100,000 characters."""
    seen.tool("big", "called", ctx.headers)
    return "x" * 100_000


@server.tool()
def weather(city: str, ctx: Context) -> dict[str, Any]:
    """The current weather in a city."""
    seen.tool("weather", "called", ctx.headers)
    return {"city": city, "sky": "sunny", "celsius": 21}


# SSE answers (json_response=False, the default): a client that leaves a call's stream cancels
# the call, which is what the tests of cancelled runs need.
app = recording(server.streamable_http_app(stateless_http=True), seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int)
    parser.add_argument("--stdio", action="store_true", help="speak MCP on stdin and stdout")
    args = parser.parse_args()
    if args.stdio:
        server.run("stdio")
        return
    # On SIGTERM, calls still running (a hanging tool) get a second, not forever: a test's
    # stop() then takes about a second, not the fixture's bound before SIGKILL.
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
