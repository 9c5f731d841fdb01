"""A small MCP server a team can start beside isochat, made with the MCP SDK's server
(``MCPServer``, FastMCP before the SDK's 2.x line):

    .venv/bin/python examples/mcp_server.py            # serves http://127.0.0.1:8765/mcp

and plug into isochat with
``ISOCHAT_MCP_SERVERS='{"demo": {"url": "http://127.0.0.1:8765/mcp"}}'``: its tools reach the
model as ``demo__weather``, ``demo__add`` and ``demo__whoami``. Every request isochat sends
says whose run it is (``X-Isochat-User``, ``X-Isochat-Run``): ``whoami`` answers with it.
"""

from __future__ import annotations

import argparse

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("demo")


@server.tool()
def weather(city: str) -> dict[str, object]:
    """The current weather in a city (a made-up forecast: always mild)."""
    return {"city": city, "sky": "sunny", "celsius": 21}


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def whoami(ctx: Context) -> dict[str, str | None]:
    """Who isochat says is asking: the user and the run."""
    headers = ctx.headers or {}
    return {"user": headers.get("x-isochat-user"), "run": headers.get("x-isochat-run")}


# Stateless: every request stands alone (MCP's 2026-07-28 revision), so any number of runs
# can call at once with nothing kept between them.
app = server.streamable_http_app(stateless_http=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="isochat's example MCP server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
