"""A small WebSocket test client over a real socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from src.services.domain import FINAL_EVENT_TYPES

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
