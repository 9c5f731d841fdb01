"""A server that is no MCP server, for the tests of what isochat does with one:
``python -m tests.mcp_servers.garbage --port N --mode MODE`` from the checkout. Its ``/mcp``
answers every request the same way, by ``MODE``:

- ``json-garbage``: 200, ``application/json``, a body that is no JSON (``not json at all``);
- ``html``: 200, ``text/html``, a web page;
- ``500``: 500, ``text/plain``.

The recorder wraps it as it does the MCP servers: ``/_seen`` shows what isochat sent.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.mcp_servers.recorder import Seen, recording

ANSWERS = {
    "json-garbage": Response(b"not json at all", 200, media_type="application/json"),
    "html": Response(
        b"<!doctype html><html><body><h1>Welcome</h1></body></html>", 200, media_type="text/html"
    ),
    "500": Response(b"Internal Server Error", 500, media_type="text/plain"),
}
MODES = sorted(ANSWERS)


def app_for(mode: str) -> Starlette:
    answer = ANSWERS[mode]

    async def mcp(request: Request) -> Response:
        return answer

    methods = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"]
    return Starlette(routes=[Route("/mcp", mcp, methods=methods)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    args = parser.parse_args()
    app = recording(app_for(args.mode), Seen())
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
