"""A real MCP server made with the 1.x SDK (``FastMCP``, Streamable HTTP with sessions), for the
tests: run by the Python of its own virtualenv (``fixtures.ensure_mcp1_venv``) as
``python -m tests.mcp_servers.server1 --port N`` from the checkout, serving
``http://127.0.0.1:N/mcp`` plus the recorder's ``/_seen`` and ``/_reset``.

Its tools are those of ``server2`` (the 2.x SDK) in name, description and behaviour; each
records a ``called`` tool record, ``hang`` also ``started`` and ``cancelled``. Each MCP session
records ``session_started`` and ``session_ended`` (FastMCP runs its lifespan once a session).

The project's virtualenv has the 2.x SDK, under the same import name: its type checker sees none
of the 1.x API, hence the ``type: ignore`` on its import and ``tool``, a typed decorator.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import uvicorn
from mcp.server.fastmcp import Context, FastMCP  # type: ignore[attr-defined,unused-ignore]

from tests.mcp_servers.recorder import Seen, recording

# Plain log lines, set up before the SDK's (which would draw tracebacks with rich: slow enough
# to delay the next call by half a second).
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

seen = Seen()
F = TypeVar("F", bound=Callable[..., Any])


@asynccontextmanager
async def one_session(_: Any) -> AsyncIterator[dict[str, Any]]:
    seen.note("session", event="session_started")
    try:
        yield {}
    finally:
        seen.note("session", event="session_ended")


server = FastMCP("isochat-test-tools", lifespan=one_session)


def tool(fn: F) -> F:
    """``fn``, registered as a tool (FastMCP's decorator, with the type it has)."""
    server.tool()(fn)
    return fn


def headers_of(ctx: Any) -> Mapping[str, str] | None:
    """The headers of the HTTP request that carried the call (a Starlette ``Request``)."""
    request = ctx.request_context.request
    return None if request is None else request.headers


@tool
def add(a: int, b: int, ctx: Context) -> int:
    """Add two integers."""
    seen.tool("add", "called", headers_of(ctx))
    return a + b


@tool
def whoami(ctx: Context) -> dict[str, Any]:
    """Who is calling: the user, run, authorization and session headers of the request."""
    seen.tool("whoami", "called", headers_of(ctx))
    headers = headers_of(ctx) or {}
    return {
        "user": headers.get("x-isochat-user"),
        "run": headers.get("x-isochat-run"),
        "authorization": headers.get("authorization"),
        "session": headers.get("mcp-session-id"),
    }


@tool
async def hang(ctx: Context) -> str:
    """Wait forever, until the call is cancelled."""
    seen.tool("hang", "called", headers_of(ctx))
    seen.tool("hang", "started", headers_of(ctx))
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        seen.tool("hang", "cancelled", headers_of(ctx))
        raise
    return "never"


@tool
def boom(ctx: Context) -> str:
    """Fail, always."""
    seen.tool("boom", "called", headers_of(ctx))
    raise RuntimeError("kaboom")


@tool
def big(ctx: Context) -> str:
    """A result of 100,000 characters."""
    seen.tool("big", "called", headers_of(ctx))
    return "x" * 100_000


@tool
def weather(city: str, ctx: Context) -> dict[str, Any]:
    """The current weather in a city."""
    seen.tool("weather", "called", headers_of(ctx))
    return {"city": city, "sky": "sunny", "celsius": 21}


# SSE answers (json_response=False, the default). The app's own lifespan starts the session
# manager: the recorder passes lifespan messages through, and uvicorn sends them.
app = recording(server.streamable_http_app(), seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # On SIGTERM, calls still running (a hanging tool) get a second, not forever: a test's
    # stop() then takes about a second, not the fixture's bound before SIGKILL.
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
