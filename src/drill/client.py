"""One drill user's connections to the deployment: its WebSockets, every frame each receives
kept for the checks, runs matched to the messages that started them by their request id; and
its HTTP calls, which wait out a 429 as a well-behaved client does."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from src.drill.checks import Frame
from src.drill.plan import PAUSING, DrillUser, ends_as_expected, question
from src.runs.domain import FINAL_EVENT_TYPES

# The event of a run that pauses for a person's approval (one per call that waits).
PAUSE_EVENT = "approval_requested"
OPEN_TIMEOUT_S = 10.0
HTTP_ATTEMPTS = 5  # a 429 is waited out this many times at most
MAX_RETRY_AFTER_S = 15.0


class DrillAborted(Exception):
    """The drill cannot go on: the deployment is unreachable or refuses the drill."""


@dataclass(slots=True, eq=False)
class RunRecord:
    """One message of the drill and what became of its run."""

    user: DrillUser
    kind: str  # "healthy" or a fault kind
    phase: str  # "baseline" or "drill"
    operand: int
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sent_at: float = 0.0
    run_id: str | None = None
    ended_at: float | None = None  # when its final event first arrived
    status: str | None = None
    code: str | None = None
    problem: str | None = None  # what kept it from starting or from being seen to end
    paused: bool = False  # seen paused for approval: its frame, then its stored status
    working: asyncio.Event = field(default_factory=asyncio.Event)  # an agent is at work
    pausing: asyncio.Event = field(default_factory=asyncio.Event)  # its pause event arrived
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # final event or refusal seen

    @property
    def content(self) -> str:
        return question(self.operand, self.kind)

    @property
    def as_expected(self) -> bool:
        """Whether the run ended as its kind says (and, for a kind that pauses, paused)."""
        paused = self.paused or self.kind not in PAUSING
        return paused and ends_as_expected(self.kind, self.status, self.code)

    @property
    def latency_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.sent_at

    def end(self, *, status: str | None, code: str | None) -> None:
        if self.ended.is_set():
            return
        self.ended_at = time.monotonic()
        self.status, self.code = status, code
        self.ended.set()


@dataclass(slots=True, eq=False)
class Socket:
    """One WebSocket of a user, and everything it received, in order."""

    connection: ClientConnection
    main: bool  # open the user's whole drill: its frames must hold every run, in full
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None
    frames: list[Frame] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def send(self, frame: Frame) -> None:
        await self.connection.send(json.dumps(frame))

    def drop(self) -> None:
        """Lose the connection, as a client whose network went away (no closing handshake)."""
        self.connection.transport.abort()

    async def close(self) -> None:
        await self.connection.close()
        if self.reader is not None:
            await asyncio.wait((self.reader,), timeout=OPEN_TIMEOUT_S)


class UserClient:
    def __init__(self, user: DrillUser, http: dict[str, httpx.AsyncClient]) -> None:
        self.user = user
        self._http = http
        self.sockets: list[Socket] = []
        self.main: Socket | None = None
        self._by_request: dict[str, RunRecord] = {}
        self._by_run: dict[str, RunRecord] = {}
        self.records: list[RunRecord] = []

    @property
    def run_ids(self) -> set[str]:
        """The runs this user's messages started (learnt from their ``run_started``)."""
        return set(self._by_run)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.user.token}"}

    # sockets

    async def open_socket(self, host: str, *, main: bool) -> Socket:
        url = "ws" + host.removeprefix("http").rstrip("/") + "/ws"
        try:
            connection = await connect(
                url, additional_headers=self.headers, open_timeout=OPEN_TIMEOUT_S
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise DrillAborted(f"cannot open a WebSocket to {url}: {exc}") from None
        socket = Socket(connection, main=main, opened_at=time.monotonic())
        socket.reader = asyncio.create_task(self._read(socket))
        self.sockets.append(socket)
        if main:
            self.main = socket
        return socket

    async def main_socket(self) -> Socket:
        """The user's main socket, opened again if the server closed it (which is reported)."""
        if self.main is None or self.main.closed_at is not None:
            await self.open_socket(self.user.host, main=True)
        assert self.main is not None
        return self.main

    async def _read(self, socket: Socket) -> None:
        try:
            async for raw in socket.connection:
                frame = json.loads(raw)
                if isinstance(frame, dict):
                    socket.frames.append(frame)
                    self._see(frame)
        except (WebSocketException, OSError, ValueError):
            pass  # a dropped connection: what it received is kept
        finally:
            socket.closed_at = time.monotonic()
            socket.close_code = socket.connection.close_code

    def _see(self, frame: Frame) -> None:
        kind = frame.get("type")
        data = _object(frame.get("data"))
        if kind == "error":
            record = self._by_request.get(str(frame.get("request_id")))
            if record is not None and record.run_id is None:
                error = _object(frame.get("error"))
                record.problem = f"refused: {error.get('code')}: {error.get('message')}"
                record.end(status=None, code=error.get("code"))
            return
        run_id = frame.get("run_id")
        if kind == "run_started" and isinstance(run_id, str):
            record = self._by_request.get(str(data.get("request_id")))
            if record is not None and record.run_id is None:
                record.run_id = run_id
                self._by_run[run_id] = record
        record = self._by_run.get(run_id) if isinstance(run_id, str) else None
        if record is None:
            return
        if kind == "agent_started":
            record.working.set()
        if kind == PAUSE_EVENT:
            record.pausing.set()
        if kind in FINAL_EVENT_TYPES:
            status = {"run_completed": "completed", "run_failed": "failed"}.get(kind, "cancelled")
            record.end(status=status, code=_object(data.get("error")).get("code"))

    # runs

    def new_record(self, kind: str, phase: str) -> RunRecord:
        record = RunRecord(self.user, kind, phase, self.user.next_operand())
        self._by_request[record.request_id] = record
        self.records.append(record)
        return record

    def forget(self, record: RunRecord) -> None:
        """``record`` was refused before its run started and is sent again as a new one."""
        self.records.remove(record)
        self._by_request.pop(record.request_id, None)

    async def chat(self, socket: Socket, record: RunRecord) -> None:
        """Send ``record``'s message on ``socket``: its run starts."""
        record.sent_at = time.monotonic()
        frame = {
            "type": "chat",
            "thread_id": self.user.thread_id,
            "content": record.content,
            "request_id": record.request_id,
        }
        try:
            await socket.send(frame)
        except (WebSocketException, OSError) as exc:
            record.problem = f"the message could not be sent: {type(exc).__name__}"
            record.end(status=None, code=None)

    # HTTP

    async def request(
        self, method: str, path: str, *, host: str | None = None, body: Any = None
    ) -> httpx.Response:
        """One call to the user's host (or ``host``), a 429 waited out as it says."""
        client = self._http[host or self.user.host]
        for _ in range(HTTP_ATTEMPTS):
            try:
                response = await client.request(method, path, json=body, headers=self.headers)
            except httpx.HTTPError as exc:
                raise DrillAborted(f"{method} {client.base_url}{path}: {exc!r}") from None
            if response.status_code != 429:
                return response
            retry = float(response.headers.get("retry-after", "1") or 1)
            await asyncio.sleep(min(MAX_RETRY_AFTER_S, max(0.1, retry)))
        return response

    async def create_thread(self) -> None:
        response = await self.request("POST", "/api/threads", body={"title": "isochat drill"})
        if response.status_code != 201:
            raise DrillAborted(
                f"POST /api/threads answered {response.status_code}: {response.text}"
            )
        self.user.thread_id = response.json()["id"]


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
