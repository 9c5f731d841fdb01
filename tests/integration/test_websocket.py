"""`/ws`: each user's runs stream live to that user's sockets only, one request scope per run,
and nothing is left behind when a socket goes away."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers
from websockets.exceptions import ConnectionClosed

from src.container import AppContainer
from src.runs.domain import FINAL_EVENT_TYPES
from src.services.database.engine import Database, create_engine
from src.web.app import create_app
from tests.fakes import hold_triage, install_chaos
from tests.helpers import NO_LEAKS, auth, leaks_once_settled, new_thread, send
from tests.ws import Frame, events_by_run, open_socket, websocket_scope

SETTLED = NO_LEAKS | {"ws_connections": 0}


def token(container: AppContainer, user: str) -> str:
    return container.tokens().issue(user)


@pytest.fixture
async def http(live_server: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://{live_server}", timeout=30) as client:
        yield client


def assert_well_formed(run_events: list[Frame]) -> None:
    """seq 1..n, no gaps, exactly one final event and it is the last."""
    assert [e["seq"] for e in run_events] == list(range(1, len(run_events) + 1))
    finals = [e for e in run_events if e["type"] in FINAL_EVENT_TYPES]
    assert len(finals) == 1
    assert run_events[-1] is finals[0]


async def test_websocket_isolation(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """Many users at once, each running chats, some with injected failures: every frame a
    socket receives belongs to its own user's runs, every run is seq 1..n with one final event,
    healthy runs complete with their own answers, and what was live is what is stored."""
    install_chaos(container)
    users = [f"ws{i}" for i in range(16)]
    chats_per_user = 3
    threads = {
        u: [await new_thread(http, auth(container, u)) for _ in range(chats_per_user)]
        for u in users
    }

    def content(u: int, c: int) -> str:
        a, b = 100 * u + c, 7 + c
        failure = (
            ["[drill:agent] ", "[drill:db] ", "[drill:llm] tell me "][u % 3] if u % 4 == 0 else ""
        )
        return f"{failure}what is {a} + {b}?"

    async def user_session(u: int, user: str) -> list[Frame]:
        async with open_socket(live_server, token=token(container, user)) as socket:
            for c, thread_id in enumerate(threads[user]):
                await socket.send(
                    {"type": "chat", "thread_id": thread_id, "content": content(u, c),
                     "request_id": f"{user}-{c}"}
                )  # fmt: skip
            return await socket.until_runs_end(chats_per_user)

    received = await asyncio.gather(*(user_session(u, user) for u, user in enumerate(users)))

    for u, (user, frames) in enumerate(zip(users, received, strict=True)):
        headers = auth(container, user)
        runs = events_by_run(frames)
        assert len(runs) == chats_per_user
        for run_id, run_events in runs.items():
            # The run is this user's: another user could not even read it.
            run = (await http.get(f"/api/runs/{run_id}", headers=headers)).json()
            assert run["thread_id"] in threads[user]
            assert_well_formed(run_events)
            assert run_events[0]["data"]["request_id"].startswith(f"{user}-")
            c = int(run_events[0]["data"]["request_id"].split("-")[1])
            if u % 4 == 0:
                assert run_events[-1]["type"] == "run_failed"
            else:
                assert run_events[-1]["type"] == "run_completed"
                a, b = 100 * u + c, 7 + c
                assert run_events[-1]["data"]["message"]["content"] == f"{a} + {b} = {a + b}"
            stored = (await http.get(f"/api/runs/{run_id}/events", headers=headers)).json()
            assert stored["events"] == run_events
    assert await leaks_once_settled(container) == SETTLED


async def test_a_run_started_over_http_streams_to_its_owners_sockets_only(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """The owner's open socket receives an HTTP-started run's events; another user's gets none."""
    alice = auth(container, "alice")
    thread_id = await new_thread(http, alice)
    async with (
        open_socket(live_server, header_token=token(container, "alice")) as mine,
        open_socket(live_server, token=token(container, "bob")) as theirs,
    ):
        await mine.send({"type": "ping"})
        await theirs.send({"type": "ping"})
        assert (await mine.recv())["type"] == "pong"
        assert (await theirs.recv())["type"] == "pong"
        body = await send(http, alice, thread_id, "what is 2 + 5?")
        live = await mine.until(lambda f: f.get("type") == "run_completed")
        assert live["data"]["message"] == body["message"]
        await theirs.send({"type": "ping"})
        assert await theirs.recv() == {"type": "pong"}  # nothing of alice's came before it


async def test_cancel_over_websocket(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """A cancel frame ends the run `cancelled` with one `run_cancelled`; the thread works again."""
    install_chaos(container)
    thread_id = await new_thread(http, auth(container, "alice"))
    async with open_socket(live_server, token=token(container, "alice")) as socket:
        await socket.send({"type": "chat", "thread_id": thread_id, "content": "[drill:hang]"})
        started = await socket.until(lambda f: f.get("type") == "run_started")
        await socket.send({"type": "cancel", "run_id": started["run_id"]})
        final = await socket.until(lambda f: f.get("type") in FINAL_EVENT_TYPES)
        assert final["type"] == "run_cancelled"
        assert final["run_id"] == started["run_id"]

        await socket.send({"type": "cancel", "run_id": started["run_id"]})
        error = await socket.until(lambda f: f.get("type") == "error")
        assert error["error"]["code"] == "conflict"

        await socket.send({"type": "chat", "thread_id": thread_id, "content": "what is 9 - 4?"})
        done = await socket.until(lambda f: f.get("type") in FINAL_EVENT_TYPES)
        assert done["data"]["message"]["content"] == "9 - 4 = 5"
    assert_well_formed(events_by_run(socket.received)[started["run_id"]])
    assert await leaks_once_settled(container) == SETTLED


async def test_cancel_over_http_reaches_a_websocket_run(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """POST /api/runs/{id}/cancel stops a run started over the socket."""
    install_chaos(container)
    alice = auth(container, "alice")
    thread_id = await new_thread(http, alice)
    async with open_socket(live_server, token=token(container, "alice")) as socket:
        await socket.send({"type": "chat", "thread_id": thread_id, "content": "[drill:hang]"})
        started = await socket.until(lambda f: f.get("type") == "run_started")
        response = await http.post(f"/api/runs/{started['run_id']}/cancel", headers=alice)
        assert response.status_code == 202
        assert response.json()["run"]["status"] == "cancelled"
        final = await socket.until(lambda f: f.get("type") in FINAL_EVENT_TYPES)
        assert final["type"] == "run_cancelled"
    assert await leaks_once_settled(container) == SETTLED


async def test_disconnect_mid_run_cancels_its_runs_and_releases_everything(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """Closing a socket cancels its runs (several in flight, on different threads); their
    scopes, sessions and agents are all released, and the threads take new runs."""
    install_chaos(container)
    alice = auth(container, "alice")
    threads = [await new_thread(http, alice) for _ in range(3)]
    async with open_socket(live_server, token=token(container, "alice")) as socket:
        for thread_id in threads:
            await socket.send({"type": "chat", "thread_id": thread_id, "content": "[drill:hang]"})
        run_ids: set[str] = set()
        while len(run_ids) < len(threads):
            frame = await socket.until(lambda f: f.get("type") == "run_started")
            run_ids.add(frame["run_id"])
        assert container.metrics().value("isochat_request_scopes_open") == len(threads)

    for run_id in run_ids:
        for _ in range(500):
            run = (await http.get(f"/api/runs/{run_id}", headers=alice)).json()
            if run["status"] != "running":
                break
            await asyncio.sleep(0.01)
        assert run["status"] == "cancelled"
    for _ in range(500):
        if container.metrics().value("isochat_ws_connections") == 0:
            break
        await asyncio.sleep(0.01)
    assert await leaks_once_settled(container) == SETTLED
    body = await send(http, alice, threads[0], "what is 1 + 1?")
    assert body["run"]["status"] == "completed"


async def test_bad_frames_get_error_frames_and_the_connection_stays_usable(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """Not JSON, unknown type, missing fields, too long, binary, another user's thread: each
    gets an error frame with the contract's code, nothing is stored, and the socket still works."""
    alice = auth(container, "alice")
    mine = await new_thread(http, alice)
    bobs = await new_thread(http, auth(container, "bob"))
    settings = container.settings()
    cases: list[tuple[str | bytes | dict[str, Any], str]] = [
        ("{not json", "invalid_json"),
        ("[1, 2]", "validation_error"),
        ({"type": "dance"}, "validation_error"),
        ({"type": "chat", "thread_id": mine}, "validation_error"),
        ({"type": "chat", "thread_id": mine, "content": ""}, "validation_error"),
        ({"type": "chat", "thread_id": mine, "content": 5}, "validation_error"),
        ({"type": "chat", "thread_id": mine, "content": "x" * (settings.max_message_chars + 1)},
         "validation_error"),
        ({"type": "cancel"}, "validation_error"),
        ("x" * (settings.max_body_bytes + 1), "payload_too_large"),
        (b"\x00binary", "validation_error"),
        ({"type": "chat", "thread_id": bobs, "content": "hi"}, "not_found"),
        ({"type": "chat", "thread_id": "not-a-uuid", "content": "hi"}, "not_found"),
        ({"type": "cancel", "run_id": str(uuid.uuid4())}, "not_found"),
    ]  # fmt: skip
    async with open_socket(live_server, token=token(container, "alice")) as socket:
        for i, (frame, code) in enumerate(cases):
            if isinstance(frame, dict):
                frame = json.dumps(frame | ({"request_id": f"bad-{i}"} if "type" in frame else {}))
            await socket.connection.send(frame)
            error = await socket.until(lambda f: f.get("type") == "error")
            assert error["error"]["code"] == code, (frame, error)
            assert error["error"]["message"]
            await socket.send({"type": "ping"})
            assert await socket.recv() == {"type": "pong"}
        error = next(f for f in socket.received if f.get("request_id") == "bad-10")
        assert error["error"]["code"] == "not_found"

        await socket.send({"type": "chat", "thread_id": mine, "content": "what is 2 * 21?"})
        done = await socket.until(lambda f: f.get("type") in FINAL_EVENT_TYPES)
        assert done["data"]["message"]["content"] == "2 * 21 = 42"
    messages = await http.get(f"/api/threads/{bobs}/messages", headers=auth(container, "bob"))
    assert messages.json() == {"messages": [], "next_cursor": None}


@pytest.mark.parametrize("how", ["none", "bad query", "bad header", "expired"])
async def test_a_socket_without_a_valid_token_is_closed_4401(
    container: AppContainer, live_server: str, how: str
) -> None:
    """No token, or a bad one in the query or the header: closed 4401 before any message."""
    kwargs: dict[str, str] = {
        "none": {},
        "bad query": {"token": "not-a-token"},
        "bad header": {"header_token": "not-a-token"},
        "expired": {"token": _expired_token(container)},
    }[how]
    async with open_socket(live_server, **kwargs) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert socket.received == []


def _expired_token(container: AppContainer) -> str:
    import time

    import jwt

    secret = container.settings().auth_secret
    return jwt.encode({"sub": "alice", "exp": int(time.time()) - 5}, secret, algorithm="HS256")


async def test_reconnect_and_replay_with_after(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """A client that drops after a few events and replays `?after=N` has, without gaps or
    repeats, exactly what a client that stayed saw live."""
    alice = auth(container, "alice")
    thread_id = await new_thread(http, alice)
    async with open_socket(live_server, token=token(container, "alice")) as stayed:
        async with open_socket(live_server, token=token(container, "alice")) as dropped:
            await stayed.send({"type": "ping"})
            await stayed.recv()
            await dropped.send({"type": "ping"})
            await dropped.recv()
            await stayed.send({"type": "chat", "thread_id": thread_id, "content": "tell me more"})
            seen = [await dropped.recv() for _ in range(3)]
        stayed_frames = await stayed.until_runs_end(1)
    run_id = seen[0]["run_id"]
    last_seq = seen[-1]["seq"]
    replay = await http.get(f"/api/runs/{run_id}/events?after={last_seq}", headers=alice)
    resumed = seen + replay.json()["events"]
    live = events_by_run(stayed_frames)[run_id]
    assert resumed == live
    assert_well_formed(resumed)


async def test_a_slow_consumer_is_dropped_and_never_stalls_others(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """A client that stops reading is disconnected with 4408 once its bounded outbox is full,
    while another user's client, on the same server, keeps completing its runs; the slow
    client's events stay stored for replay."""
    container.settings.override(
        providers.Object(container.settings().model_copy(update={"ws_max_pending_frames": 8}))
    )
    slow_user, fast_user = auth(container, "slow"), auth(container, "fast")
    slow_threads = [await new_thread(http, slow_user) for _ in range(4)]
    fast_threads = [await new_thread(http, fast_user) for _ in range(4)]
    slow = StalledClient(create_app(container), token(container, "slow"))
    slow_task = asyncio.create_task(slow.run())
    await slow.accepted.wait()

    # The slow user's runs (over HTTP) fill its outbox: 8 frames and it is over.
    slow_runs = [send(http, slow_user, t, f"what is {i} + 1?") for i, t in enumerate(slow_threads)]
    async with open_socket(live_server, token=token(container, "fast")) as fast:
        for thread_id in fast_threads:
            await fast.send({"type": "chat", "thread_id": thread_id, "content": "what is 3 * 3?"})
        results = await asyncio.gather(*slow_runs)
        frames = await fast.until_runs_end(len(fast_threads))
    await asyncio.wait_for(slow_task, 15)

    assert slow.close_code == 4408
    for body in results:
        assert body["run"]["status"] == "completed"
        stored = await http.get(f"/api/runs/{body['run']['id']}/events", headers=slow_user)
        assert_well_formed(stored.json()["events"])
    fast_runs = events_by_run(frames)
    assert len(fast_runs) == len(fast_threads)
    for run_events in fast_runs.values():
        assert run_events[-1]["data"]["message"]["content"] == "3 * 3 = 9"
    assert await leaks_once_settled(container) == SETTLED


class StalledClient:
    """A WebSocket client, at the ASGI level, that connects, sends ``frames``, and then never
    reads again: every send the server attempts after the first blocks, like a peer whose TCP
    window is full."""

    def __init__(self, app: Any, token: str, frames: tuple[Frame, ...] = ()) -> None:
        self._app = app
        self._token = token
        self._frames = list(frames)
        self.accepted = asyncio.Event()
        self._disconnect = asyncio.Event()
        self.close_code: int | None = None

    async def run(self) -> None:
        scope = websocket_scope(self._token)
        connected = False

        async def receive() -> dict[str, Any]:
            nonlocal connected
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            if self._frames:
                return {"type": "websocket.receive", "text": json.dumps(self._frames.pop(0))}
            await self._disconnect.wait()
            return {"type": "websocket.disconnect", "code": 1006}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.accept":
                self.accepted.set()
            elif message["type"] == "websocket.close":
                self.close_code = message.get("code")
                self._disconnect.set()
            elif message["type"] == "websocket.send":
                await self._disconnect.wait()  # never reads: the send never completes

        await self._app(scope, receive, send)


async def test_run_in_progress_unavailable_and_internal_errors_reach_the_socket(
    container: AppContainer, live_server: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A second chat on a busy thread, a chat while the database is unreachable, and a chat
    that hits a bug each get their error frame (`run_in_progress`, `unavailable`,
    `internal_error`, with the frame's request id), and the socket goes on."""
    install_chaos(container)
    thread_id = await new_thread(http, auth(container, "alice"))
    async with open_socket(live_server, token=token(container, "alice")) as socket:
        await socket.send({"type": "chat", "thread_id": thread_id, "content": "[drill:hang]"})
        started = await socket.until(lambda f: f.get("type") == "run_started")
        await socket.send(
            {"type": "chat", "thread_id": thread_id, "content": "hi", "request_id": "busy"}
        )
        busy = await socket.until(lambda f: f.get("type") == "error")
        assert busy["request_id"] == "busy"
        assert busy["error"]["code"] == "run_in_progress"
        await socket.send({"type": "cancel", "run_id": started["run_id"]})
        await socket.until(lambda f: f.get("type") == "run_cancelled")

        unreachable = Database(
            create_engine(f"sqlite+aiosqlite:///{tmp_path}"), container.metrics()
        )
        container.database.override(providers.Object(unreachable))
        try:
            await socket.send(
                {"type": "chat", "thread_id": thread_id, "content": "hi", "request_id": "down"}
            )
            down = await socket.until(lambda f: f.get("type") == "error")
        finally:
            container.database.reset_override()
            await unreachable.dispose()
        assert (down["request_id"], down["error"]["code"]) == ("down", "unavailable")

        def explode() -> None:
            raise RuntimeError("secret detail")

        container.request.chat.override(providers.Callable(explode))
        try:
            await socket.send(
                {"type": "chat", "thread_id": thread_id, "content": "hi", "request_id": "bug"}
            )
            bug = await socket.until(lambda f: f.get("type") == "error")
        finally:
            container.request.chat.reset_override()
        assert (bug["request_id"], bug["error"]["code"]) == ("bug", "internal_error")
        assert "secret" not in bug["error"]["message"]

        await socket.send({"type": "chat", "thread_id": thread_id, "content": "what is 3 + 4?"})
        done = await socket.until(lambda f: f.get("type") in FINAL_EVENT_TYPES)
        assert done["data"]["message"]["content"] == "3 + 4 = 7"
    assert await leaks_once_settled(container) == SETTLED


def final_of(run_id: str) -> Any:
    return lambda f: f.get("run_id") == run_id and f.get("type") in FINAL_EVENT_TYPES


async def test_a_socket_dropped_for_falling_behind_does_not_cancel_its_runs(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """A socket closed 4408 for falling behind leaves the run it started in flight; the run
    completes, and its events replay in full from GET /api/runs/{id}/events."""
    gate = hold_triage(container, only="[gate]")
    container.settings.override(
        providers.Object(container.settings().model_copy(update={"ws_max_pending_frames": 8}))
    )
    headers = auth(container, "behind")
    gated_thread = await new_thread(http, headers)
    busy_threads = [await new_thread(http, headers) for _ in range(3)]
    chat = {"type": "chat", "thread_id": gated_thread, "content": "[gate] what is 2 + 3?"}
    stalled = StalledClient(create_app(container), token(container, "behind"), frames=(chat,))
    async with open_socket(live_server, token=token(container, "behind")) as watcher:
        await watcher.send({"type": "ping"})
        assert await watcher.recv() == {"type": "pong"}
        stalled_task = asyncio.create_task(stalled.run())
        run_id = (await watcher.until(lambda f: f.get("type") == "run_started"))["run_id"]
        # Read on while other runs of the user flood the stalled socket's outbox.
        finished = asyncio.create_task(watcher.until(final_of(run_id), within_s=60))
        for thread_id in busy_threads:
            await send(http, headers, thread_id, "what is 1 + 1?")
        await asyncio.wait_for(stalled_task, 15)
        assert stalled.close_code == 4408
        run = (await http.get(f"/api/runs/{run_id}", headers=headers)).json()
        assert run["status"] == "running"  # held at the gate: the close did not cancel it

        gate.opened.set()
        final = await finished
    assert final["type"] == "run_completed"
    assert final["data"]["message"]["content"] == "2 + 3 = 5"
    stored = (await http.get(f"/api/runs/{run_id}/events", headers=headers)).json()["events"]
    assert_well_formed(stored)
    assert stored == events_by_run(watcher.received)[run_id]
    assert await leaks_once_settled(container) == SETTLED


async def test_on_disconnect_continue_runs_on_after_the_socket_closes(
    container: AppContainer, live_server: str, http: httpx.AsyncClient
) -> None:
    """When a socket closes, its run started with `on_disconnect: continue` completes (its
    events stay replayable), while its run started with the default is cancelled."""
    gate = hold_triage(container, only="[gate]")
    headers = auth(container, "alice")
    goes_on, ends = await new_thread(http, headers), await new_thread(http, headers)
    async with open_socket(live_server, token=token(container, "alice")) as watcher:
        await watcher.send({"type": "ping"})
        assert await watcher.recv() == {"type": "pong"}
        async with open_socket(live_server, token=token(container, "alice")) as socket:
            await socket.send(
                {"type": "chat", "thread_id": goes_on, "content": "[gate] what is 4 * 5?",
                 "on_disconnect": "continue", "request_id": "goes-on"}
            )  # fmt: skip
            await socket.send(
                {"type": "chat", "thread_id": ends, "content": "[gate] what is 1 + 2?",
                 "request_id": "ends"}
            )  # fmt: skip
            started = [await socket.until(lambda f: f.get("type") == "run_started")]
            started.append(await socket.until(lambda f: f.get("type") == "run_started"))
        run_of = {f["data"]["request_id"]: f["run_id"] for f in started}

        cancelled = await watcher.until(final_of(run_of["ends"]))
        assert cancelled["type"] == "run_cancelled"
        run = (await http.get(f"/api/runs/{run_of['goes-on']}", headers=headers)).json()
        assert run["status"] == "running"

        gate.opened.set()
        completed = await watcher.until(final_of(run_of["goes-on"]))
    assert completed["type"] == "run_completed"
    assert completed["data"]["message"]["content"] == "4 * 5 = 20"
    for run_id in run_of.values():
        stored = await http.get(f"/api/runs/{run_id}/events", headers=headers)
        assert_well_formed(stored.json()["events"])
        assert stored.json()["events"] == events_by_run(watcher.received)[run_id]
    assert await leaks_once_settled(container) == SETTLED
