"""What a test MCP server was asked and did, kept for the tests to read back.

``recording(app, seen)`` wraps the server's ASGI app: every HTTP request to it is recorded (its
method, path, the headers isochat sends, the JSON-RPC method in its body, the answer's status
and session id), and two routes of its own are added: ``GET /_seen`` answers the records as a
JSON list, ``POST /_reset`` clears them. The servers' tools add records of their own through
``Seen.note``.

This module is imported by the servers made with either major version of the MCP SDK, each
running in a virtualenv of its own, so it uses the standard library only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Record = dict[str, Any]

# The request headers worth a field of their own in an HTTP record.
RECORDED_HEADERS = {
    b"x-isochat-user": "user",
    b"x-isochat-run": "run",
    b"authorization": "authorization",
    b"mcp-session-id": "session",
    b"mcp-protocol-version": "protocol_version",
}


# The JSON-RPC fields of a request that carries no JSON-RPC message (a GET, a DELETE).
NO_JSON_RPC: Record = {"rpc": None, "rpc_id": None, "tool": None, "arguments": None}


class Seen:
    """The records of one server process, oldest first."""

    def __init__(self) -> None:
        # The SDKs may run a synchronous tool in a worker thread: its record is added there.
        self._lock = threading.Lock()
        self._records: list[Record] = []

    def add(self, record: Record) -> Record:
        """Keep ``record`` (stamped with the time); it may still be filled in afterwards."""
        record["time"] = time.time()
        with self._lock:
            self._records.append(record)
        return record

    def note(self, kind: str, **fields: Any) -> None:
        """A record from inside the server: ``kind`` is ``tool`` or ``session``."""
        self.add({"kind": kind, **fields})

    def tool(self, tool: str, event: str, headers: Mapping[str, str] | None) -> None:
        """A tool-level record: ``tool`` had ``event`` in the run its request came from."""
        headers = headers or {}
        self.note(
            "tool",
            tool=tool,
            event=event,
            run=headers.get("x-isochat-run"),
            user=headers.get("x-isochat-user"),
        )

    def to_json(self) -> bytes:
        with self._lock:
            return json.dumps(self._records).encode()

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


def recording(app: ASGIApp, seen: Seen) -> ASGIApp:
    """``app``, with its HTTP requests recorded in ``seen`` and ``/_seen`` and ``/_reset``
    served. Other scopes (``lifespan``: the SDK's session manager starts there) pass through."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if (method, path) == ("GET", "/_seen"):
            await _answer(send, 200, seen.to_json())
            return
        if (method, path) == ("POST", "/_reset"):
            seen.clear()
            await _answer(send, 200, b"[]")
            return

        body = await _read_body(receive)
        record: Record = {"kind": "http", "method": method, "path": path}
        headers = dict(scope["headers"])
        for name, field in RECORDED_HEADERS.items():
            value = headers.get(name)
            record[field] = value.decode("latin-1") if value is not None else None
        record |= _json_rpc(body) if method == "POST" else dict(NO_JSON_RPC)
        record |= {"status": None, "response_session": None, "content_type": None, "done": False}
        seen.add(record)  # now, not once answered: a call still running shows up too

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Past the body, the client's own messages: the SDKs learn of a client that went
            # away (and cancel its tool call) from the http.disconnect that comes here.
            return await receive()

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered = dict(message.get("headers", []))
                record["status"] = message["status"]
                for field, name in (
                    ("response_session", b"mcp-session-id"),
                    ("content_type", b"content-type"),
                ):
                    value = answered.get(name)
                    record[field] = value.decode("latin-1") if value is not None else None
            await send(message)

        try:
            await app(scope, replay, send_and_note)
        finally:
            record["done"] = True

    return wrapper


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client left before sending it all: the app sees an empty body
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _json_rpc(body: bytes) -> Record:
    """The JSON-RPC method of a POST's body (and the tool, for ``tools/call``); ``None`` where
    the body is no JSON-RPC message."""
    try:
        message = json.loads(body)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        return dict(NO_JSON_RPC)
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    calls = message.get("method") == "tools/call"
    return {
        "rpc": message.get("method"),
        "rpc_id": message.get("id"),
        "tool": params.get("name") if calls else None,
        "arguments": params.get("arguments") if calls else None,
    }


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
