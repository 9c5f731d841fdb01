"""A small WebSocket test client over a real socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from src.runs.domain import FINAL_EVENT_TYPES

Frame = dict[str, Any]


class Socket:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.received: list[Frame] = []

    async def send(self, frame: Frame | str) -> None:
        await self.connection.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, within_s: float = 15.0) -> Frame:
        raw = await asyncio.wait_for(self.connection.recv(), within_s)
        frame: Frame = json.loads(raw)
        self.received.append(frame)
        return frame

    async def until(self, done: Callable[[Frame], bool], within_s: float = 15.0) -> Frame:
        """Receive until a frame satisfies ``done``; that frame."""
        async with asyncio.timeout(within_s):
            while True:
                frame = await self.recv(within_s)
                if done(frame):
                    return frame

    async def until_runs_end(self, count: int, within_s: float = 30.0) -> list[Frame]:
        """Receive until ``count`` runs have sent their final event; every frame received."""
        ended: set[str] = set()
        async with asyncio.timeout(within_s):
            while len(ended) < count:
                frame = await self.recv(within_s)
                if frame.get("type") in FINAL_EVENT_TYPES:
                    ended.add(frame["run_id"])
        return self.received


@asynccontextmanager
async def open_socket(
    server: str, *, token: str | None = None, header_token: str | None = None
) -> AsyncIterator[Socket]:
    url = f"ws://{server}/ws" + (f"?token={token}" if token else "")
    headers = {"Authorization": f"Bearer {header_token}"} if header_token else None
    async with connect(url, additional_headers=headers, open_timeout=10) as connection:
        yield Socket(connection)


def events_by_run(frames: list[Frame]) -> dict[str, list[Frame]]:
    runs: dict[str, list[Frame]] = {}
    for frame in frames:
        if "run_id" in frame and "seq" in frame:
            runs.setdefault(frame["run_id"], []).append(frame)
    return runs


def websocket_scope(token: str) -> dict[str, Any]:
    """The ASGI scope of a connection to ``/ws`` with ``token`` in the query."""
    return {
        "type": "websocket", "asgi": {"version": "3.0"}, "path": "/ws", "raw_path": b"/ws",
        "root_path": "", "scheme": "ws", "query_string": f"token={token}".encode(),
        "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "subprotocols": [], "state": {},
    }  # fmt: skip


class AsgiSocket:
    """A WebSocket client that talks to the ASGI app in memory, on the test's own event loop."""

    def __init__(self, app: Any, *, token: str) -> None:
        self._app = app
        self._token = token
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiSocket:
        scope = websocket_scope(self._token)
        self._task = asyncio.create_task(self._app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "websocket.connect"})
        accepted = await asyncio.wait_for(self._from_app.get(), 10)
        assert accepted["type"] == "websocket.accept", accepted
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._to_app.put({"type": "websocket.disconnect", "code": 1000})
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)

    async def send(self, payload: str | bytes) -> None:
        key = "text" if isinstance(payload, str) else "bytes"
        await self._to_app.put({"type": "websocket.receive", key: payload})

    async def recv(self) -> Frame:
        message = await asyncio.wait_for(self._from_app.get(), 10)
        assert message["type"] == "websocket.send", message
        frame: Frame = json.loads(message["text"])
        return frame
