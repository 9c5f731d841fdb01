"""``/ws``: a user's runs, live, on that user's connections only.

Each connection has one reader (client frames), one writer (the only task that sends) and a
bounded outbox that the broker fills with the user's events; the writer sends what the follower
(``src/runs/follower.py``) makes of it: every event of the user's runs once, in seq order, with
whatever the live stream missed filled from the store. Each ``chat`` frame starts a run in
a task of its own, inside a request scope of its own. When the socket closes, the runs it started
with ``on_disconnect: cancel`` (the default) are cancelled and their scopes disposed; the others,
and all of them when the socket was closed for falling behind (4408: the client can replay what
it missed), go on to their end, kept by the run registry.

Open sockets are counted per user by the container's ``socket_counter`` (across workers and hosts
with Redis); ``chat`` frames count against the user's rate limit, while ``cancel`` and ``ping``
never do, so a user at the limit can always stop their own runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from src.container import AppContainer, request_scope
from src.logs import bind, log_failure
from src.runs.domain import Run
from src.runs.follower import KEEPALIVE, Follower
from src.services.approvals import ApprovalService
from src.services.auth import Caller, TicketCheckUnavailable
from src.services.broker import Frame, Subscription
from src.services.errors import ChatError, RateLimited, Unauthorized
from src.services.limits import SocketCounter
from src.web.auth import BEARER_SUBPROTOCOL, bearer_subprotocol, find_caller
from src.web.detached import resume_detached
from src.web.errors import DATABASE_UNAVAILABLE
from src.web.frames import ApproveFrame, CancelFrame, ChatFrame, FrameError, PingFrame, parse_frame

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4408
CLOSE_TOO_MANY_CONNECTIONS = 4429
CLOSE_TRY_AGAIN_LATER = 1013


async def websocket_endpoint(websocket: WebSocket) -> None:
    container: AppContainer = websocket.app.state.container
    # A client that offered the bearer subprotocol must get it back (a browser drops a socket
    # whose server picks none of the offered ones); never the token, which it also offered.
    offered = bearer_subprotocol(websocket) is not None
    await websocket.accept(subprotocol=BEARER_SUBPROTOCOL if offered else None)
    try:
        caller = await find_caller(websocket)
    except Unauthorized:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="unauthorized")
        return
    except TicketCheckUnavailable:
        # Whether the ticket was used already cannot be checked: refused, never let through
        # (a replay must not pass); the client retries with a new ticket.
        await websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason="cannot check tickets now; retry")
        return
    user_id = caller.user_id
    bind(user_id=user_id)
    limit = container.settings().max_ws_connections_per_user
    counter: SocketCounter = container.socket_counter()
    socket_id = str(uuid.uuid4())
    if not await counter.admit(user_id, socket_id, limit=limit):
        await websocket.close(
            code=CLOSE_TOO_MANY_CONNECTIONS, reason=f"at most {limit} connections per user"
        )
        return
    renewing = asyncio.create_task(_keep_counted(counter, user_id, socket_id))
    try:
        await Connection(websocket, caller=caller, container=container).serve()
    finally:
        renewing.cancel()
        await asyncio.wait((renewing,))
        await counter.release(user_id, socket_id)


async def _keep_counted(counter: SocketCounter, user_id: str, socket_id: str) -> None:
    """Renew the socket's place while it is open: a socket whose host dies stops counting."""
    if counter.renew_every_s is None:
        return
    while True:
        await asyncio.sleep(counter.renew_every_s)
        await counter.renew(user_id, socket_id)


class Connection:
    def __init__(self, websocket: WebSocket, *, caller: Caller, container: AppContainer) -> None:
        self._websocket = websocket
        self._caller = caller
        self._user_id = caller.user_id
        self._container = container
        settings = container.settings()
        self._max_bytes = settings.max_body_bytes
        self._max_chars = settings.max_message_chars
        self._max_pending = settings.ws_max_pending_frames
        self._keepalive_s = settings.sse_keepalive_s
        self._rate_limiter = container.rate_limiter()
        # Runs and cancels started by this socket -> whether the socket's close cancels them.
        self._tasks: dict[asyncio.Task[None], bool] = {}
        self._follower: Follower | None = None

    async def serve(self) -> None:
        broker = self._container.broker()
        gauge = self._container.metrics().ws_connections
        outbox = await broker.subscribe(self._user_id, max_pending=self._max_pending)
        self._follower = Follower(
            outbox, self._container.event_store(), keepalive_s=self._keepalive_s
        )
        gauge.inc()
        reader = asyncio.create_task(self._read(outbox))
        writer = asyncio.create_task(self._write(self._follower))
        too_slow = asyncio.create_task(outbox.overflowed.wait())
        try:
            await asyncio.wait((reader, writer, too_slow), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer, too_slow):
                task.cancel()
            await self._let_go(fell_behind=outbox.overflowed.is_set())
            await broker.unsubscribe(outbox)
            gauge.dec()
            await asyncio.gather(reader, writer, too_slow, return_exceptions=True)
        if outbox.overflowed.is_set():
            await self._close(
                CLOSE_TOO_SLOW,
                f"fell more than {self._max_pending} frames behind; "
                "replay with GET /api/runs/{id}/events?after=N",
            )

    async def _read(self, outbox: Subscription) -> None:
        while True:
            message = await self._websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await self._handle(message.get("text"), outbox)

    async def _write(self, follower: Follower) -> None:
        try:
            async for frame in follower.frames():
                if frame is not KEEPALIVE:
                    await self._websocket.send_text(json.dumps(frame, ensure_ascii=False))
        except (WebSocketDisconnect, OSError, RuntimeError):
            return  # the client is gone; the reader sees the disconnect too

    async def _handle(self, text: str | None, outbox: Subscription) -> None:
        """Answers one frame. Whatever goes wrong with it ends here, answered: the reader
        must outlive any one frame, since its end closes the socket and cancels its runs."""
        request_id: str | None = None
        try:
            frame = parse_frame(text, max_bytes=self._max_bytes, max_chars=self._max_chars)
            request_id = frame.request_id
            if isinstance(frame, PingFrame):
                outbox.offer({"type": "pong"})
            elif isinstance(frame, CancelFrame):
                # Never rate-limited, and never cancelled with the socket: it is what the user
                # asked for, and it ends quickly.
                self._start(self._cancel(frame, outbox), cancel_on_close=False)
            elif not await self._within_rate_limit(frame, outbox):
                # Awaited here, in the reader, so that frames are counted in the order they came.
                return
            elif isinstance(frame, ApproveFrame):
                # A decision resumes its run in a scope of its own: the socket's close never
                # cancels what a person decided.
                self._start(self._approve(frame, outbox), cancel_on_close=False)
            else:
                cancel_on_close = frame.on_disconnect == "cancel"
                self._start(self._chat(frame, outbox), cancel_on_close=cancel_on_close)
        except FrameError as exc:
            outbox.offer(_error_frame(exc.code, exc.message, exc.request_id))
        except Exception as exc:  # a bug: the client gets no details, the log gets them all
            # Logged under the frame's request id (a new one when it has none), bound in a copy
            # of the reader's context so that it does not stick to the frames that follow.
            logged_id = request_id or str(uuid.uuid4())

            def log_it(failure: Exception) -> None:
                bind(request_id=logged_id)
                log_failure(log, "unhandled error on a frame of %s", self._user_id, exc=failure)

            contextvars.copy_context().run(log_it, exc)
            outbox.offer(_error_frame("internal_error", "an internal error occurred", request_id))

    async def _within_rate_limit(
        self, frame: ChatFrame | ApproveFrame, outbox: Subscription
    ) -> bool:
        try:
            await self._rate_limiter.check(self._user_id)
        except RateLimited as exc:
            outbox.offer(_error_frame(exc.code, exc.message, frame.request_id))
            return False
        return True

    def _start(self, work: Coroutine[Any, Any, None], *, cancel_on_close: bool) -> None:
        task = asyncio.create_task(work)
        self._tasks[task] = cancel_on_close
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _chat(self, frame: ChatFrame, outbox: Subscription) -> None:
        """One run in a request scope of its own; its events reach the outbox via the broker."""
        request_id = frame.request_id or str(uuid.uuid4())
        bind(request_id=request_id)  # this task's context: the run's log lines carry it
        await self._in_scope(
            lambda: self._container.request.chat().send_message(
                caller=self._caller,
                thread_id=frame.thread_id,
                content=frame.content,
                request_id=request_id,
                multitask=frame.multitask,
                on_started=self._started,
            ),
            outbox,
            request_id=frame.request_id,
        )

    def _started(self, run: Run) -> None:
        """A run this socket started: every one of its events reaches it, missed ones from
        the store."""
        if self._follower is not None:
            self._follower.follow(run.id)

    async def _cancel(self, frame: CancelFrame, outbox: Subscription) -> None:
        await self._in_scope(
            lambda: self._container.request.chat().cancel_run(
                user_id=self._user_id, run_id=frame.run_id
            ),
            outbox,
            request_id=frame.request_id,
        )

    async def _approve(self, frame: ApproveFrame, outbox: Subscription) -> None:
        """Decisions about a paused run's calls; the turn's last resumes the run. The answer is
        the run's `approval_resolved` events (and, resumed, the rest of its events)."""
        request_id = frame.request_id or str(uuid.uuid4())
        bind(request_id=request_id)

        async def decide() -> None:
            approval: ApprovalService = self._container.request.approval()
            _, resumed = await approval.decide(
                caller=self._caller,
                run_id=frame.run_id,
                decisions=[d.as_decision() for d in frame.decisions],
                request_id=request_id,
            )
            if resumed is not None:
                resume_detached(self._container, resumed)

        await self._in_scope(decide, outbox, request_id=frame.request_id)

    async def _in_scope(
        self,
        use_case: Callable[[], Awaitable[object]],
        outbox: Subscription,
        *,
        request_id: str | None,
    ) -> None:
        try:
            async with request_scope(self._container, request_id=request_id):
                await use_case()
        except ChatError as exc:
            outbox.offer(_error_frame(exc.code, exc.message, request_id, details=exc.details))
        except DATABASE_UNAVAILABLE:
            message = "the database is unavailable; retry later"
            outbox.offer(_error_frame("unavailable", message, request_id))
        except Exception as exc:
            log_failure(log, "unhandled error on a WebSocket of %s", self._user_id, exc=exc)
            outbox.offer(_error_frame("internal_error", "an internal error occurred", request_id))

    async def _let_go(self, *, fell_behind: bool) -> None:
        """The socket is gone. Runs that end with it are cancelled (they release everything
        they held); the rest go on, each task owning its run's request scope handed to the run
        registry, which keeps it alive until it ends (or shutdown cancels it)."""
        registry = self._container.runs()
        cancelled = []
        for task, cancel_on_close in list(self._tasks.items()):
            if cancel_on_close and not fell_behind:
                task.cancel()
                cancelled.append(task)
            else:
                registry.adopt(task)
        if cancelled:
            await asyncio.gather(*cancelled, return_exceptions=True)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):  # already gone
            await self._websocket.close(code=code, reason=reason[:120])


def _error_frame(
    code: str, message: str, request_id: str | None, *, details: dict[str, Any] | None = None
) -> Frame:
    frame: Frame = {"type": "error", "error": {"code": code, "message": message, **(details or {})}}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame
