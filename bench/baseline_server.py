"""The hand-wired baseline of ``bench/throughput.py``: an isochat run's durable work, by hand.

Plain Starlette and one aiosqlite connection: no dependency injection, no ORM or SQL
compilation, no agents, no model, no broker, no rate limits, no leases renewed in the background.
What it keeps is what any durable chat backend must do for a run, statement for statement what
isochat's run ledger (``src/runs/ledger.py``) does, on the same tables, in WAL mode with
``synchronous=NORMAL``:

1. one transaction: the thread's owner is checked, the user's running runs are counted, the
   user's message and the run (``running``) are stored;
2. one transaction per event: the run's ``last_seq`` is taken (an ``UPDATE ... RETURNING`` that
   also checks the run is still running, and renews its lease) and the event is stored; then the
   event is sent to the client;
3. one final transaction: the run ``completed`` with the tokens its model calls used, the
   assistant message and ``run_completed``.

Whatever isochat does beyond that (request scopes, agents, broker, rate limits, lease renewal)
is what the benchmark charges to it. The database access is aiosqlite's, statement by statement:
each ``await`` on the connection is one trip to its thread.

Every message gets the answer isochat (offline model) gives to the benchmark's workload ``what is
(12 + 3) * 4?``: the same 9 events, with the same types, agents and data (the calculator's call
and result, the answer streamed as one ``agent_thinking``, the run's usage), hence frames of the
same sizes (``throughput.py`` checks that against the real server before it measures anything).

The protocol subset ``throughput.py`` uses, with the shapes of ``docs/api.md``:
``POST /api/auth/dev-login`` (the token is the user id: any token is accepted), ``POST
/api/threads``, ``POST /api/threads/{id}/messages`` (answers ``{"run", "message"}`` at the end),
``GET /health/live`` and ``/ws?token=...`` taking ``chat`` and ``ping`` frames.

    .venv/bin/python bench/baseline_server.py --database PATH --port N
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

HOST = "127.0.0.1"  # loopback only
CLOSE_UNAUTHORIZED = 4401
OWNER_ID = "baseline"
LEASE = timedelta(seconds=15)  # isochat's default ISOCHAT_RUN_LEASE_S: renewed with each event
MAX_RUNNING_PER_USER = 1_000_000  # counted like isochat does, never reached

# isochat's SQLite schema after its migrations (alembic/versions), indexes included: the
# partial unique index is what refuses a second running run on a thread, in both servers.
SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    id VARCHAR(36) NOT NULL, user_id VARCHAR(200) NOT NULL, title VARCHAR(200) NOT NULL,
    created_at DATETIME NOT NULL,
    CONSTRAINT pk_threads PRIMARY KEY (id)
);
CREATE INDEX IF NOT EXISTS ix_threads_user_created ON threads (user_id, created_at);
CREATE TABLE IF NOT EXISTS messages (
    id VARCHAR(36) NOT NULL, thread_id VARCHAR(36) NOT NULL, role VARCHAR(16) NOT NULL,
    content TEXT NOT NULL, run_id VARCHAR(36), created_at DATETIME NOT NULL,
    CONSTRAINT pk_messages PRIMARY KEY (id),
    CONSTRAINT fk_messages_thread_id_threads FOREIGN KEY(thread_id)
        REFERENCES threads (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_messages_thread_created ON messages (thread_id, created_at);
CREATE TABLE IF NOT EXISTS runs (
    id VARCHAR(36) NOT NULL, thread_id VARCHAR(36) NOT NULL, user_id VARCHAR(200) NOT NULL,
    status VARCHAR(16) NOT NULL, route VARCHAR(64), error_code VARCHAR(64), error_message TEXT,
    request_id VARCHAR(200), created_at DATETIME NOT NULL, finished_at DATETIME,
    owner_id VARCHAR(200), lease_expires_at DATETIME, last_seq INTEGER DEFAULT 0 NOT NULL,
    prompt_tokens INTEGER, completion_tokens INTEGER,
    CONSTRAINT pk_runs PRIMARY KEY (id),
    CONSTRAINT fk_runs_thread_id_threads FOREIGN KEY(thread_id)
        REFERENCES threads (id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_runs_one_running_per_thread ON runs (thread_id)
    WHERE status = 'running';
CREATE INDEX IF NOT EXISTS ix_runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS run_events (
    run_id VARCHAR(36) NOT NULL, seq INTEGER NOT NULL, type VARCHAR(32) NOT NULL,
    agent VARCHAR(64), data TEXT NOT NULL, ts DATETIME NOT NULL,
    CONSTRAINT pk_run_events PRIMARY KEY (run_id, seq),
    CONSTRAINT fk_run_events_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
);
"""

# isochat's events for the workload, after run_started (seq 1) and before run_completed: triage
# routes to math (a choose_route call), whose model calls the calculator, then answers (streamed
# as one agent_thinking: the offline model gives its answer in one piece). ``route`` is
# stored with the event after triage's choice (the math agent's start), as isochat's emitter
# stores it with the run's next write.
ROUTE = "math"
ROUTE_STORED_WITH = ("agent_started", "math")
EXPRESSION = "(12 + 3) * 4"
RESULT = "60"
ANSWER = f"{EXPRESSION} = {RESULT}"
CALL_ID = "call_calculator"  # the offline model's id for its calculator call
SCRIPT: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("agent_started", "triage", {}),
    ("agent_completed", "triage", {"result": ROUTE}),
    ("agent_started", "math", {}),
    (
        "tool_executing",
        "math",
        {"tool": "calculator", "input": json.dumps({"expression": EXPRESSION}), "call_id": CALL_ID},
    ),
    (
        "tool_completed",
        "math",
        {"tool": "calculator", "output": RESULT, "call_id": CALL_ID, "ok": True},
    ),
    ("agent_thinking", "math", {"text": ANSWER}),
    ("agent_completed", "math", {"result": ANSWER}),
)
# What the run's three model calls (triage, then math twice) cost: the offline model counts
# words. Stored with the run's end and sent in run_completed and the run's JSON.
USAGE = {"prompt_tokens": 113, "completion_tokens": 15}

Json = dict[str, Any]
Send = Callable[[Json], Awaitable[None]]


class NotFound(Exception):
    pass


class RunInProgress(Exception):
    pass


def iso(ts: datetime) -> str:
    """The API's timestamps (as isochat's ``domain.iso``)."""
    return ts.isoformat(timespec="microseconds").replace("+00:00", "Z")


def stored(ts: datetime) -> str:
    """How SQLAlchemy stores a DateTime in SQLite: naive UTC with microseconds."""
    return ts.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def now() -> datetime:
    return datetime.now(UTC)


class Store:
    """The one connection and the transactions on it, one at a time (queued in asyncio: a
    single connection cannot interleave two transactions)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> Store:
        # isolation_level=None: sqlite3 issues no BEGIN of its own; ours is BEGIN IMMEDIATE,
        # as isochat's engine does.
        conn = await aiosqlite.connect(path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.executescript(SCHEMA)
        return cls(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await asyncio.shield(self.conn.execute("ROLLBACK"))
                raise
            await asyncio.shield(self.conn.execute("COMMIT"))

    async def one(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first column of the first row, or None: one round trip to aiosqlite's thread."""
        rows = list(await self.conn.execute_fetchall(sql, params))
        return rows[0][0] if rows else None


@dataclass(frozen=True, slots=True)
class RunIds:
    run_id: str
    thread_id: str
    user_id: str
    request_id: str


def message_json(*, message_id: str, ids: RunIds, role: str, content: str, ts: datetime) -> Json:
    return {
        "id": message_id,
        "thread_id": ids.thread_id,
        "role": role,
        "content": content,
        "run_id": ids.run_id,
        "created_at": iso(ts),
    }


def event_json(
    ids: RunIds, *, seq: int, type_: str, agent: str | None, data: Json, ts: str
) -> Json:
    return {
        "type": type_,
        "run_id": ids.run_id,
        "thread_id": ids.thread_id,
        "seq": seq,
        "ts": ts,
        "agent": agent,
        "data": data,
    }


async def start_run(store: Store, ids: RunIds, content: str) -> datetime:
    """Transaction 1 (isochat's ``starting.start``)."""
    created = now()
    async with store.transaction() as conn:
        owned = await store.one(
            "SELECT id FROM threads WHERE id = ? AND user_id = ?", (ids.thread_id, ids.user_id)
        )
        if owned is None:
            raise NotFound("thread not found")
        running = await store.one(
            "SELECT count(*) FROM runs WHERE user_id = ? AND status = 'running'", (ids.user_id,)
        )
        if int(running or 0) >= MAX_RUNNING_PER_USER:
            raise RunInProgress("too many runs in progress")
        await conn.execute(
            "INSERT INTO messages (id, thread_id, role, content, run_id, created_at) "
            "VALUES (?, ?, 'user', ?, ?, ?)",
            (str(uuid.uuid4()), ids.thread_id, content, ids.run_id, stored(created)),
        )
        try:
            await conn.execute(
                "INSERT INTO runs (id, thread_id, user_id, status, request_id, created_at, "
                "owner_id, lease_expires_at, last_seq) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, 0)",
                (
                    ids.run_id,
                    ids.thread_id,
                    ids.user_id,
                    ids.request_id,
                    stored(created),
                    OWNER_ID,
                    stored(created + LEASE),
                ),
            )
        except sqlite3.IntegrityError:
            raise RunInProgress("another run of this thread is still running") from None
    return created


async def append(
    store: Store, ids: RunIds, *, type_: str, agent: str | None, data: Json, route: str | None
) -> Json:
    """One event's transaction (isochat's ``ledger.append``): the next seq, then the event."""
    ts = now()
    async with store.transaction() as conn:
        # The route only with the write that records it, as isochat's statement has it.
        seq = await store.one(
            "UPDATE runs SET last_seq = last_seq + 1, lease_expires_at = ?"
            + (", route = ?" if route is not None else "")
            + " WHERE id = ? AND status = 'running' RETURNING last_seq",
            (stored(ts + LEASE), *((route,) if route is not None else ()), ids.run_id),
        )
        if seq is None:
            raise RuntimeError(f"run {ids.run_id} has already ended")
        await conn.execute(
            "INSERT INTO run_events (run_id, seq, type, agent, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
            (ids.run_id, seq, type_, agent, json.dumps(data, ensure_ascii=False), stored(ts)),
        )
    return event_json(ids, seq=seq, type_=type_, agent=agent, data=data, ts=iso(ts))


async def finish(store: Store, ids: RunIds) -> tuple[Json, Json, datetime]:
    """The final transaction (isochat's ``ledger.finish``): the run ``completed``, the assistant
    message and ``run_completed``. Returns that event, the message and when it finished."""
    created = now()
    message = message_json(
        message_id=str(uuid.uuid4()), ids=ids, role="assistant", content=ANSWER, ts=created
    )
    data = {"message": message, "usage": USAGE}
    ts = now()
    async with store.transaction() as conn:
        seq = await store.one(
            "UPDATE runs SET status = 'completed', error_code = NULL, error_message = NULL, "
            "finished_at = ?, lease_expires_at = NULL, last_seq = last_seq + 1, "
            "prompt_tokens = ?, completion_tokens = ? "
            "WHERE id = ? AND status = 'running' RETURNING last_seq",
            (stored(ts), USAGE["prompt_tokens"], USAGE["completion_tokens"], ids.run_id),
        )
        if seq is None:
            raise RuntimeError(f"run {ids.run_id} has already ended")
        await conn.execute(
            "INSERT INTO messages (id, thread_id, role, content, run_id, created_at) "
            "VALUES (?, ?, 'assistant', ?, ?, ?)",
            (message["id"], ids.thread_id, ANSWER, ids.run_id, stored(created)),
        )
        await conn.execute(
            "INSERT INTO run_events (run_id, seq, type, agent, data, ts) "
            "VALUES (?, ?, 'run_completed', NULL, ?, ?)",
            (ids.run_id, seq, json.dumps(data, ensure_ascii=False), stored(ts)),
        )
    final = event_json(ids, seq=seq, type_="run_completed", agent=None, data=data, ts=iso(ts))
    return final, message, ts


async def run_chat(store: Store, ids: RunIds, content: str, send: Send) -> Json:
    """A whole run; each event is sent once stored. Returns the HTTP answer's body."""
    created = await start_run(store, ids, content)
    first = await append(
        store, ids, type_="run_started", agent=None, data={"request_id": ids.request_id}, route=None
    )
    await send(first)
    for type_, agent, data in SCRIPT:
        route = ROUTE if (type_, agent) == ROUTE_STORED_WITH else None
        await send(await append(store, ids, type_=type_, agent=agent, data=data, route=route))
    final, message, finished = await finish(store, ids)
    await send(final)
    run = {
        "id": ids.run_id,
        "thread_id": ids.thread_id,
        "status": "completed",
        "route": ROUTE,
        "error": None,
        "usage": USAGE,
        "created_at": iso(created),
        "finished_at": iso(finished),
    }
    return {"run": run, "message": message}


# --- HTTP -----------------------------------------------------------------------------------


def error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def user_of(request: Request) -> str | None:
    """The bearer token is the user id: the baseline checks no signature."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def body_of(request: Request) -> Json:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def live(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def dev_login(request: Request) -> Response:
    user = (await body_of(request)).get("user_id")
    if not isinstance(user, str) or not user:
        return error(422, "validation_error", "user_id: required")
    return JSONResponse({"token": user})


async def create_thread(request: Request) -> Response:
    user = user_of(request)
    if user is None:
        return error(401, "unauthorized", "send Authorization: Bearer <token>")
    title = (await body_of(request)).get("title") or "New chat"
    created = now()
    thread = {"id": str(uuid.uuid4()), "title": str(title), "created_at": iso(created)}
    async with store_of(request).transaction() as conn:
        await conn.execute(
            "INSERT INTO threads (id, user_id, title, created_at) VALUES (?, ?, ?, ?)",
            (thread["id"], user, thread["title"], stored(created)),
        )
    return JSONResponse(thread, status_code=201)


async def post_message(request: Request) -> Response:
    user = user_of(request)
    if user is None:
        return error(401, "unauthorized", "send Authorization: Bearer <token>")
    content = (await body_of(request)).get("content")
    if not isinstance(content, str) or not content:
        return error(422, "validation_error", "content: required")
    request_id = str(uuid.uuid4())
    ids = RunIds(str(uuid.uuid4()), request.path_params["id"], user, request_id)

    async def nobody(_: Json) -> None:
        return None  # isochat publishes to the user's sockets; this client has none open

    try:
        answer = await run_chat(store_of(request), ids, content, nobody)
    except NotFound as exc:
        return error(404, "not_found", str(exc))
    except RunInProgress as exc:
        return error(409, "run_in_progress", str(exc))
    return JSONResponse(answer, headers={"X-Request-ID": request_id})


# --- WebSocket ------------------------------------------------------------------------------


async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    user = websocket.query_params.get("token", "").strip()
    if not user:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="unauthorized")
        return
    store: Store = websocket.app.state.store
    sending = asyncio.Lock()  # several runs may share the socket: one frame at a time
    runs: set[asyncio.Task[None]] = set()

    async def send(frame: Json) -> None:
        async with sending:
            await websocket.send_text(json.dumps(frame, ensure_ascii=False))

    async def chat(frame: Json) -> None:
        request_id = str(frame.get("request_id") or uuid.uuid4())
        ids = RunIds(str(uuid.uuid4()), str(frame.get("thread_id")), user, request_id)
        try:
            await run_chat(store, ids, str(frame.get("content")), send)
        except (NotFound, RunInProgress) as exc:
            code = "not_found" if isinstance(exc, NotFound) else "run_in_progress"
            await send({"type": "error", "error": {"code": code, "message": str(exc)}})

    try:
        while True:
            try:
                frame = json.loads(await websocket.receive_text())
            except ValueError:
                frame = None
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "chat" and isinstance(frame, dict):
                task = asyncio.create_task(chat(frame))
                runs.add(task)
                task.add_done_callback(runs.discard)
            elif kind == "ping":
                await send({"type": "pong"})
            else:
                message = "expected a chat or ping frame"
                await send({"type": "error", "error": {"code": "invalid_json", "message": message}})
    except WebSocketDisconnect:
        pass
    finally:
        # As isochat does by default (on_disconnect=cancel): a closed socket ends its runs.
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


def create_app(database: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await Store.open(database)
        app.state.store = store
        try:
            yield
        finally:
            await store.conn.close()

    routes = [
        Route("/health/live", live, methods=["GET"]),
        Route("/api/auth/dev-login", dev_login, methods=["POST"]),
        Route("/api/threads", create_thread, methods=["POST"]),
        Route("/api/threads/{id}/messages", post_message, methods=["POST"]),
        WebSocketRoute("/ws", websocket_endpoint),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database", required=True, help="SQLite file (created if missing)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    # uvicorn's defaults otherwise, and its settings as `isochat serve` has them (uvloop,
    # httptools, websockets without per-message deflate), so that both servers differ only in
    # the application.
    uvicorn.run(
        create_app(args.database),
        host=HOST,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
