"""Drill faults: a deployment with ISOCHAT_DRILL_SECRET fails a drill user's run the way its
message asks, over every way a run starts; nobody else can force a fault, and without the
setting nobody at all can."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette

from src.container import AppContainer, build_container, shutdown
from src.drill.faults import DRILL_CLAIM, FAULTS, DrillClaim, drill_proof
from src.runs.domain import FINAL_EVENT_TYPES
from src.services.auth import TokenService
from src.services.database.migrations import upgrade_to_head
from src.settings import DEVELOPMENT_AUTH_SECRET, Settings
from src.web.app import create_app
from tests.helpers import NO_LEAKS, leaks_once_settled, new_thread, send
from tests.ws import AsgiSocket

DRILL_SECRET = "d" * 40
QUESTION = "what is 6 * 7?"


def drill_token(user_id: str, *, secret: str = DRILL_SECRET) -> str:
    """A drill user's token, as `isochat drill` makes it (with ``secret`` as the drill
    secret)."""
    tokens = TokenService(secret=DEVELOPMENT_AUTH_SECRET, ttl_s=600)
    return tokens.issue(user_id, extend=DrillClaim(secret).add_to)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def serve(tmp_path: Path, **settings: Any) -> tuple[AppContainer, Starlette]:
    config = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db", _env_file=None, **settings
    )
    await asyncio.to_thread(upgrade_to_head, config.database_url)
    container = build_container(config)
    return container, create_app(container)


@dataclass
class Deployment:
    container: AppContainer
    app: Starlette
    client: httpx.AsyncClient


@pytest.fixture
async def drills(tmp_path: Path) -> AsyncIterator[Deployment]:
    """A deployment with drills on (and a run deadline short enough to wait for)."""
    container, app = await serve(tmp_path, drill_secret=DRILL_SECRET, run_timeout_s=1.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isochat.test") as client:
        yield Deployment(container, app, client)
    await shutdown(container)


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("agent", "agent_error"),
        ("db", "database_error"),
        ("llm", "llm_error"),
        ("tool", "tool_error"),
        ("hang", "timeout"),
    ],
)
async def test_a_drill_users_run_fails_the_way_its_marker_asks(
    drills: Deployment, fault: str, code: str
) -> None:
    client = drills.client
    headers = bearer(drill_token("drill-a"))
    thread = await new_thread(client, headers)
    body = await send(client, headers, thread, f"[drill:{fault}] {QUESTION}")
    assert body["run"]["status"] == "failed"
    assert body["run"]["error"]["code"] == code
    assert body["message"] is None
    # The run is over for good: the thread takes the next message, which answers.
    again = await send(client, headers, thread, QUESTION)
    assert again["message"]["content"] == "6 * 7 = 42"
    assert await leaks_once_settled(drills.container) == NO_LEAKS | {"ws_connections": 0}


async def test_a_drill_fault_reaches_background_and_websocket_runs(
    drills: Deployment,
) -> None:
    """The claim travels with the token into runs started in the background and over /ws."""
    client = drills.client
    token = drill_token("drill-b")
    thread = await new_thread(client, bearer(token))
    started = await client.post(
        f"/api/threads/{thread}/runs", json={"content": "[drill:llm] hi"}, headers=bearer(token)
    )
    assert started.status_code == 202
    run_id = started.json()["run"]["id"]
    for _ in range(500):
        run = (await client.get(f"/api/runs/{run_id}", headers=bearer(token))).json()
        if run["status"] != "running":
            break
        await asyncio.sleep(0.01)
    assert run["error"]["code"] == "llm_error"

    async with AsgiSocket(drills.app, token=token) as socket:
        chat = {"type": "chat", "thread_id": thread, "content": "[drill:db] hi"}
        await socket.send(json.dumps(chat))
        while (frame := await socket.recv())["type"] != "run_failed":
            pass
    assert frame["data"]["error"]["code"] == "database_error"


async def test_a_hung_drill_run_ends_when_cancelled(
    drills: Deployment,
) -> None:
    client = drills.client
    headers = bearer(drill_token("drill-c"))
    thread = await new_thread(client, headers)
    started = await client.post(
        f"/api/threads/{thread}/runs", json={"content": "[drill:hang] hi"}, headers=headers
    )
    run_id = started.json()["run"]["id"]
    # The hang is in the triage agent's model call, after agent_started is stored.
    for _ in range(500):
        events = (await client.get(f"/api/runs/{run_id}/events", headers=headers)).json()
        if any(e["type"] == "agent_started" for e in events["events"]):
            break
        await asyncio.sleep(0.01)
    cancel = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    assert cancel.status_code == 202
    for _ in range(500):
        run = (await client.get(f"/api/runs/{run_id}", headers=headers)).json()
        if run["status"] != "running":
            break
        await asyncio.sleep(0.01)
    assert run["status"] == "cancelled"


async def test_a_drill_users_approval_marker_pauses_the_run_until_it_is_cancelled(
    drills: Deployment,
) -> None:
    """`[drill:approval]`: the calculator call waits for approval, so the run pauses as any
    such run does (`awaiting_approval`, one `approval_requested`, no task, the thread busy);
    a cancel from anyone's request ends it `cancelled`, seq 1..n with one final event last,
    and nothing is left behind."""
    client = drills.client
    headers = bearer(drill_token("drill-g"))
    thread = await new_thread(client, headers)
    body = await send(client, headers, thread, f"[drill:approval] {QUESTION}")
    run = body["run"]
    assert run["status"] == "awaiting_approval", body
    assert body["message"] is None
    events = (await client.get(f"/api/runs/{run['id']}/events", headers=headers)).json()
    [requested] = [e for e in events["events"] if e["type"] == "approval_requested"]
    assert requested["data"]["tool"] == "calculator"
    assert requested["data"]["input"] == {"expression": "6 * 7"}
    assert "tool_executing" not in [e["type"] for e in events["events"]]
    busy = (await client.get(f"/api/threads/{thread}", headers=headers)).json()
    assert busy["active_run_id"] == run["id"]
    assert len(drills.container.runs()) == 0  # paused: no task anywhere

    cancel = await client.post(f"/api/runs/{run['id']}/cancel", headers=headers)
    assert cancel.status_code == 202 and cancel.json()["run"]["status"] == "cancelled"
    events = (await client.get(f"/api/runs/{run['id']}/events", headers=headers)).json()["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events if e["type"] in FINAL_EVENT_TYPES] == ["run_cancelled"]
    assert events[-1]["type"] == "run_cancelled"
    free = (await client.get(f"/api/threads/{thread}", headers=headers)).json()
    assert free["active_run_id"] is None
    assert await leaks_once_settled(drills.container) == NO_LEAKS | {"ws_connections": 0}


async def test_a_paused_drill_run_is_told_on_the_socket_and_ends_with_its_cancel_frame(
    drills: Deployment,
) -> None:
    """Over /ws, as the drill sees it: the run's frames up to its `approval_requested`, then,
    after a `cancel` frame, its `run_cancelled`: every seq once, the final event last."""
    token = drill_token("drill-i")
    thread = await new_thread(drills.client, bearer(token))
    frames: list[dict[str, Any]] = []
    async with AsgiSocket(drills.app, token=token) as socket:
        chat = {"type": "chat", "thread_id": thread, "content": f"[drill:approval] {QUESTION}"}
        await socket.send(json.dumps(chat))
        while not frames or frames[-1]["type"] != "approval_requested":
            frames.append(await socket.recv())
        await socket.send(json.dumps({"type": "cancel", "run_id": frames[-1]["run_id"]}))
        while frames[-1]["type"] not in FINAL_EVENT_TYPES:
            frames.append(await socket.recv())
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-1]["type"] == "run_cancelled"
    assert await leaks_once_settled(drills.container) == NO_LEAKS | {"ws_connections": 0}


async def test_an_approved_drill_call_runs_the_real_calculator(drills: Deployment) -> None:
    """The fault is the wait alone: approved, the call runs and the run answers."""
    client = drills.client
    headers = bearer(drill_token("drill-h"))
    thread = await new_thread(client, headers)
    run = (await send(client, headers, thread, f"[drill:approval] {QUESTION}"))["run"]
    events = (await client.get(f"/api/runs/{run['id']}/events", headers=headers)).json()
    [requested] = [e for e in events["events"] if e["type"] == "approval_requested"]
    decision = {"call_id": requested["data"]["call_id"], "decision": "approve"}
    decided = await client.post(
        f"/api/runs/{run['id']}/approvals", json={"decisions": [decision]}, headers=headers
    )
    assert decided.status_code == 202, decided.text
    for _ in range(500):
        ended = (await client.get(f"/api/runs/{run['id']}", headers=headers)).json()
        if ended["status"] not in ("running", "awaiting_approval"):
            break
        await asyncio.sleep(0.01)
    assert ended["status"] == "completed", ended
    messages = (await client.get(f"/api/threads/{thread}/messages", headers=headers)).json()
    assert messages["messages"][-1]["content"] == "6 * 7 = 42"


def forged_tokens(user_id: str) -> dict[str, str]:
    """Tokens of ``user_id`` that look like a drill user's but are not."""
    now = int(time.time())
    exp = now + 600

    def signed(claims: dict[str, Any]) -> str:
        return jwt.encode(
            {"sub": user_id, "iat": now, "exp": exp, **claims},
            DEVELOPMENT_AUTH_SECRET,
            algorithm="HS256",
        )

    return {
        "no claim": signed({}),
        "claim by another secret": signed(
            {DRILL_CLAIM: drill_proof("x" * 40, user_id=user_id, exp=exp)}
        ),
        "another user's claim": signed(
            {DRILL_CLAIM: drill_proof(DRILL_SECRET, user_id="drill-z", exp=exp)}
        ),
        "another expiry's claim": signed(
            {DRILL_CLAIM: drill_proof(DRILL_SECRET, user_id=user_id, exp=exp + 1)}
        ),
        "claim true": signed({DRILL_CLAIM: True}),
    }


async def test_a_normal_users_markers_are_plain_text_even_with_drills_on(
    drills: Deployment,
) -> None:
    """dev-login's token, and tokens whose claim is not the drill secret's proof for exactly
    that token: every fault marker is just text, and the run answers (`[drill:approval]`
    included: the calculator runs without waiting)."""
    client = drills.client
    login = await client.post("/api/auth/dev-login", json={"user_id": "mallory"})
    tokens = {"dev-login": login.json()["token"], **forged_tokens("mallory")}
    for how, token in tokens.items():
        headers = bearer(token)
        thread = await new_thread(client, headers)
        for fault in FAULTS:
            body = await send(client, headers, thread, f"[drill:{fault}] {QUESTION}")
            assert body["run"]["status"] == "completed", (how, fault, body["run"])


async def test_without_a_drill_secret_nothing_can_force_a_fault(tmp_path: Path) -> None:
    """A deployment without ISOCHAT_DRILL_SECRET ignores markers, even from a token whose
    claim a drill secret made."""
    container, app = await serve(tmp_path)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://isochat.test") as client:
            headers = bearer(drill_token("drill-d"))
            thread = await new_thread(client, headers)
            for fault in FAULTS:
                body = await send(client, headers, thread, f"[drill:{fault}] {QUESTION}")
                assert body["run"]["status"] == "completed", (fault, body["run"])
                assert body["message"]["content"] == "6 * 7 = 42"
    finally:
        await shutdown(container)


async def test_a_database_error_leaves_no_agent_for_the_garbage_collector(
    drills: Deployment,
) -> None:
    """SQLAlchemy's exception sits in a cycle with its own frame; the run's agents and session
    must not wait in it for a collection that an idle server may not run for a long while."""
    client = drills.client
    headers = bearer(drill_token("drill-e"))
    thread = await new_thread(client, headers)
    gc.collect()
    gc.disable()
    try:
        body = await send(client, headers, thread, f"[drill:db] {QUESTION}")
        assert body["run"]["error"]["code"] == "database_error"
        metrics = drills.container.metrics()
        assert metrics.value("isochat_agent_instances_live") == 0
        assert metrics.value("isochat_db_sessions_open") == 0
    finally:
        gc.enable()


async def test_a_run_cancelled_by_its_sockets_close_leaves_no_agent_for_the_collector(
    drills: Deployment,
) -> None:
    """The cancel outlives the run, in a cycle with the frames it went through; the run's
    agents must not wait in it for a collection an idle server may not run for a long while."""
    token = drill_token("drill-f")
    thread = await new_thread(drills.client, bearer(token))
    metrics = drills.container.metrics()
    gc.collect()
    gc.disable()
    try:
        async with AsgiSocket(drills.app, token=token) as socket:
            chat = {"type": "chat", "thread_id": thread, "content": "[drill:hang] hi"}
            await socket.send(json.dumps(chat))
            while (await socket.recv())["type"] != "agent_started":
                pass
        # Polling: the run's teardown after the close has no event to wait on from here.
        for _ in range(500):
            if not len(drills.container.runs()) and not metrics.value(
                "isochat_request_scopes_open"
            ):
                break
            await asyncio.sleep(0.01)
        assert metrics.value("isochat_request_scopes_open") == 0
        assert metrics.value("isochat_agent_instances_live") == 0
    finally:
        gc.enable()
