"""A run paused for approval on real hosts (separate `isochat serve` processes on one PostgreSQL
database and one Redis): it is data, not a task, so it outlives the death of the host that ran
it and a restart of every host, the lease sweeps of the hosts still alive leave it alone, and an
approval sent to any host resumes it there, its events going on from where they paused.

The runs use the offline model: "what is 2 + 2?" goes to math, whose calculator call waits for
approval (``ISOCHAT_APPROVAL_TOOLS=calculator``).

Needs PostgreSQL (``ISOCHAT_TEST_POSTGRES_URL``) and Redis (``ISOCHAT_TEST_REDIS_URL``); skipped,
saying why, when either cannot be reached. Each test has a database and users of its own."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.responses import Response

from src.runs.domain import FINAL_EVENT_TYPES
from tests.e2e.processes import (
    BOUND_S,
    POLL_S,
    Processes,
    assert_one_final_event,
    exit_code,
    login,
    model_env,
    processes,
    until,
    wait_until_ready,
)
from tests.e2e.test_server import Server
from tests.helpers import (
    asyncpg_url,
    fresh_postgres_database,
    new_thread,
    reachable_redis,
)
from tests.llm_server import FakeModelServer, serving_model
from tests.ws import Frame, Socket, open_socket

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

LEASE_S = 1
QUESTION = "what is 2 + 2?"
ANSWER = "2 + 2 = 4"
# What a paused run stores once its one pending call is approved, in order.
RESUMED = [
    "approval_resolved",
    "tool_executing",
    "tool_completed",
    "agent_thinking",
    "agent_completed",
    "run_completed",
]
# How many sweeps of the live hosts a paused run must outlive, and for how many leases at least.
SWEEPS = 3
LEASES = 3


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_postgres_database("isochat_approval_hosts") as url:
        yield url


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    """The test's own look at the database the hosts share."""
    connection = await asyncpg.connect(asyncpg_url(database))
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def host_env(database: str) -> dict[str, str]:
    """What every host of a test shares: the database, Redis, a short lease, calculator calls
    that wait for approval, and the offline model (the default)."""
    return {
        "ISOCHAT_DATABASE_URL": database,
        "ISOCHAT_BROKER_URL": await reachable_redis(),
        "ISOCHAT_RUN_LEASE_S": str(LEASE_S),
        "ISOCHAT_SHUTDOWN_TIMEOUT_S": "1",
        "ISOCHAT_APPROVAL_TOOLS": "calculator",
        # The tests poll a run's status many times a second.
        "ISOCHAT_RATE_LIMIT_PER_MINUTE": "100000",
        "ISOCHAT_RATE_LIMIT_BURST": "10000",
    }


@pytest.fixture
async def hosts(tmp_path: Path, db: asyncpg.Connection) -> AsyncIterator[Processes]:
    """Stopped (killed if need be) before the database is dropped."""
    async with processes(tmp_path) as started:
        yield started


# Marker of a message whose specialist calls its tools, then hangs on its answer.
HANG_AFTER_TOOLS = "[answer:hang-after-tools]"


class ModelThatHangsAfterTools(FakeModelServer):
    """The fake model where ``HANG_AFTER_TOOLS`` makes the answer (the call after the tools
    ran) hang until the model is released."""

    async def _respond(
        self, mode: str | None, turn: dict[str, Any], *, stream: bool, raw: str
    ) -> Response:
        if mode == HANG_AFTER_TOOLS.removeprefix("[answer:").removesuffix("]"):
            mode = None if turn["tool_calls"] else "hang"
        return await super()._respond(mode, turn, stream=stream, raw=raw)

    def asked_after_tools(self, text: str) -> bool:
        """Whether the model was asked for the answer to ``text`` with its tools' results."""
        return any(
            text in _last_user(body) and body["messages"][-1]["role"] == "tool"
            for body in self.requests
        )


def _last_user(body: dict[str, Any]) -> str:
    content: str = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    return content


@pytest.fixture
async def model() -> AsyncIterator[ModelThatHangsAfterTools]:
    """Served in the test's event loop; the answers it holds are released when it stops."""
    async with serving_model(ModelThatHangsAfterTools()) as model:
        yield model


async def start_hosts(hosts: Processes, env: dict[str, str], *names: str) -> list[Server]:
    """Hosts started at the same moment; all ready."""
    started = [hosts.start(name, **env) for name in names]
    await asyncio.gather(*(wait_until_ready(host) for host in started))
    return started


@dataclass(frozen=True)
class PausedRun:
    """A run that paused for approval of its calculator call: whose it is, and what it had
    stored when it paused."""

    run_id: str
    thread_id: str
    headers: dict[str, str]
    call_id: str
    events: list[dict[str, Any]]


async def pause_a_run(
    http: httpx.AsyncClient, *, prefix: str, token: str = "", question: str = QUESTION
) -> PausedRun:
    """A new user (unless ``token`` is given) asks ``question`` on the host ``http`` talks to:
    the answer comes at the pause (200, `awaiting_approval`, no message); the run's stored
    events end with the one `approval_requested`, for the calculator."""
    if token:
        headers = {"Authorization": f"Bearer {token}"}
    else:
        token, headers = await login(http, prefix)
    thread_id = await new_thread(http, headers)
    response = await http.post(
        f"/api/threads/{thread_id}/messages", json={"content": question}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["run"]["status"] == "awaiting_approval", body
    assert body["message"] is None, body
    run_id: str = body["run"]["id"]
    events = await events_of(http, headers, run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert not any(e["type"] in FINAL_EVENT_TYPES for e in events), events
    assert events[0]["type"] == "run_started"
    assert [e["type"] for e in events].count("approval_requested") == 1, events
    requested = events[-1]
    assert requested["type"] == "approval_requested", events
    assert requested["data"]["tool"] == "calculator", requested
    return PausedRun(
        run_id=run_id,
        thread_id=thread_id,
        headers=headers,
        call_id=requested["data"]["call_id"],
        events=events,
    )


async def run_of(http: httpx.AsyncClient, headers: dict[str, str], run_id: str) -> Any:
    response = await http.get(f"/api/runs/{run_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def events_of(
    http: httpx.AsyncClient, headers: dict[str, str], run_id: str
) -> list[dict[str, Any]]:
    response = await http.get(f"/api/runs/{run_id}/events", params={"after": 0}, headers=headers)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def approval(http: httpx.AsyncClient, paused: PausedRun) -> Awaitable[httpx.Response]:
    """``POST /api/runs/{id}/approvals`` approving the paused run's call, to ``http``'s host."""
    return http.post(
        f"/api/runs/{paused.run_id}/approvals",
        json={"decisions": [{"call_id": paused.call_id, "decision": "approve"}]},
        headers=paused.headers,
    )


async def approve(http: httpx.AsyncClient, paused: PausedRun) -> None:
    """Approve the paused run's call on the host ``http`` talks to: 202, the run `running`."""
    response = await approval(http, paused)
    assert response.status_code == 202, response.text
    assert response.json()["run"]["status"] == "running", response.text


async def ended(http: httpx.AsyncClient, paused: PausedRun) -> Any:
    """The run once it has ended (it goes on in the background after the approval)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while (run := await run_of(http, paused.headers, paused.run_id))["status"] == "running":
        assert loop.time() < deadline, f"the resumed run never ended: {run}"
        await asyncio.sleep(POLL_S)
    return run


async def assert_completed_after_pause(http: httpx.AsyncClient, paused: PausedRun) -> None:
    """The run completed with the right answer; its events are one record, seq 1..n with no gap
    and nothing repeated: those stored before the pause exactly as they were, then the
    approval's and the rest of the run's, one final event."""
    run = await ended(http, paused)
    assert run["status"] == "completed" and run["error"] is None, run
    events = await events_of(http, paused.headers, paused.run_id)
    assert_one_final_event(events, "run_completed")
    paused_at = len(paused.events)
    assert events[:paused_at] == paused.events
    assert [e["type"] for e in events[paused_at:]] == RESUMED, events
    assert events[paused_at]["data"] == {"call_id": paused.call_id, "decision": "approve"}
    messages = await http.get(f"/api/threads/{paused.thread_id}/messages", headers=paused.headers)
    assert messages.status_code == 200, messages.text
    assert [(m["role"], m["content"], m["run_id"]) for m in messages.json()["messages"]] == [
        ("user", QUESTION, paused.run_id),
        ("assistant", ANSWER, paused.run_id),
    ]
    thread = await http.get(f"/api/threads/{paused.thread_id}", headers=paused.headers)
    assert thread.json()["active_run_id"] is None, thread.text


async def assert_still_paused(db: asyncpg.Connection, paused: PausedRun) -> None:
    """Stored as it paused: `awaiting_approval`, no owner, no lease, no event since."""
    row = await db.fetchrow(
        "SELECT status, owner_id, lease_expires_at, last_seq FROM runs WHERE id = $1",
        paused.run_id,
    )
    assert row is not None
    assert dict(row) == {
        "status": "awaiting_approval",
        "owner_id": None,
        "lease_expires_at": None,
        "last_seq": len(paused.events),
    }


class Sweeps:
    """Evidence that the live hosts sweep: runs planted `running` under a lease that expired
    long ago, owned by a process that never existed, each of which only a sweep ends
    (`interrupted`)."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db
        self._user_id = f"swept-{uuid.uuid4().hex[:12]}"
        self._thread_id = str(uuid.uuid4())
        self.ended = 0

    async def outlive(self, paused: PausedRun, *, since: datetime) -> None:
        """Until ``SWEEPS`` planted runs have been swept one after another and the database's
        clock is ``LEASES`` leases past ``since``: the paused run is still as it was after each
        sweep."""
        await self._db.execute(
            "INSERT INTO threads (id, user_id, title, created_at) VALUES ($1, $2, 'swept', now())",
            self._thread_id,
            self._user_id,
        )
        wanted = since + timedelta(seconds=LEASES * LEASE_S)
        while self.ended < SWEEPS or await self._db.fetchval("SELECT now()") < wanted:
            await self._one()
            await assert_still_paused(self._db, paused)

    async def _one(self) -> None:
        run_id = str(uuid.uuid4())
        await self._db.execute(
            "INSERT INTO runs (id, thread_id, user_id, status, created_at, owner_id,"
            " lease_expires_at, last_seq) VALUES ($1, $2, $3, 'running', now(), 'gone:1:dead',"
            " now() - interval '1 hour', 0)",
            run_id,
            self._thread_id,
            self._user_id,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND_S
        query = "SELECT status, error_code FROM runs WHERE id = $1"
        while (row := await self._db.fetchrow(query, run_id))["status"] == "running":
            assert loop.time() < deadline, "no live host swept a run whose lease had expired"
            await asyncio.sleep(POLL_S)
        assert dict(row) == {"status": "failed", "error_code": "interrupted"}
        self.ended += 1


async def owner_of(db: asyncpg.Connection, run_id: str) -> Any:
    return await db.fetchval("SELECT owner_id FROM runs WHERE id = $1", run_id)


def owned_by(owner_id: object, host: Server) -> bool:
    """Whether a run's owner is ``host``'s process (owner ids read ``<host>:<pid>:<random>``)."""
    return isinstance(owner_id, str) and owner_id.split(":")[-2] == str(host.process.pid)


async def metric(http: httpx.AsyncClient, sample: str) -> float:
    """The value of one sample (name and labels) of the host's ``/metrics``."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line.rsplit(" ", 1)[0] == sample
    ]
    assert len(values) == 1, response.text
    return values[0]


def assert_no_traceback(*hosts: Server) -> None:
    for host in hosts:
        log = host.log.read_text()
        assert "Traceback" not in log, log


async def test_a_run_paused_on_a_killed_host_is_approved_on_the_other_and_completes(
    db: asyncpg.Connection, host_env: dict[str, str], hosts: Processes
) -> None:
    """A run pauses on A; A is killed (SIGKILL). B sweeps again and again, well past the lease,
    ending planted runs of a dead owner, but leaves the paused run as it was (no owner, no
    lease, no new event). The approval sent to B resumes it there: `completed`, "2 + 2 = 4",
    events seq 1..n with the ones before the pause unchanged and none repeated."""
    a, b = await start_hosts(hosts, host_env, "a", "b")
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=BOUND_S) as on_b,
    ):
        paused = await pause_a_run(on_a, prefix="killed")
        await assert_still_paused(db, paused)

        a.process.kill()
        assert await exit_code(a) == -signal.SIGKILL
        killed_at = await db.fetchval("SELECT now()")
        await Sweeps(db).outlive(paused, since=killed_at)

        assert (await run_of(on_b, paused.headers, paused.run_id))["status"] == "awaiting_approval"
        assert await events_of(on_b, paused.headers, paused.run_id) == paused.events
        thread = await on_b.get(f"/api/threads/{paused.thread_id}", headers=paused.headers)
        assert thread.json()["active_run_id"] == paused.run_id, thread.text

        await approve(on_b, paused)
        await assert_completed_after_pause(on_b, paused)
    assert b.process.poll() is None
    assert_no_traceback(b)


async def test_a_paused_run_survives_a_restart_of_every_host_and_completes_when_approved(
    db: asyncpg.Connection, host_env: dict[str, str], hosts: Processes
) -> None:
    """A run pauses on A; A shuts down gracefully (SIGTERM) and B is killed (SIGKILL), the
    same moment; two new hosts start and sweep on a paused run that is still as it was (A's
    shutdown did not end it), and both show it `awaiting_approval`. The approval sent to one
    of them resumes it there; it completes as if nothing had happened, seen the same from the
    other. Both count one paused run (from the database) before, none after."""
    a, b = await start_hosts(hosts, host_env, "a", "b")
    async with httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a:
        paused = await pause_a_run(on_a, prefix="restart")
    a.process.send_signal(signal.SIGTERM)
    b.process.kill()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert await exit_code(a) in (0, -signal.SIGTERM)
    assert await exit_code(b) == -signal.SIGKILL
    assert_no_traceback(a)
    stopped_at = await db.fetchval("SELECT now()")
    await assert_still_paused(db, paused)

    a2, b2 = await start_hosts(hosts, host_env, "a-again", "b-again")
    await Sweeps(db).outlive(paused, since=stopped_at)
    async with (
        httpx.AsyncClient(base_url=a2.url, timeout=BOUND_S) as on_a2,
        httpx.AsyncClient(base_url=b2.url, timeout=BOUND_S) as on_b2,
    ):
        for http in (on_a2, on_b2):
            run = await run_of(http, paused.headers, paused.run_id)
            assert run["status"] == "awaiting_approval", run
            assert await events_of(http, paused.headers, paused.run_id) == paused.events
            assert await metric(http, "isochat_runs_awaiting_approval") == 1

        await approve(on_b2, paused)
        await assert_completed_after_pause(on_b2, paused)
        for http in (on_a2, on_b2):
            assert await metric(http, "isochat_runs_awaiting_approval") == 0
        assert await metric(on_b2, 'isochat_approvals_total{decision="approve"}') == 1
        assert await events_of(on_a2, paused.headers, paused.run_id) == await events_of(
            on_b2, paused.headers, paused.run_id
        )
    assert_no_traceback(a2, b2)


async def test_sockets_on_both_hosts_receive_the_resumed_run_once(
    host_env: dict[str, str], hosts: Processes
) -> None:
    """The user's socket on B, open before the run starts on A, receives it live up to its
    pause; a second socket, on A, is opened during the pause. The approval sent to B resumes
    the run on B: each socket receives the whole run, every seq exactly once, in order, equal
    to the stored record (the one on A hears of it half-way and fills from the start)."""
    a, b = await start_hosts(hosts, host_env, "a", "b")
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=BOUND_S) as on_b,
    ):
        token, _ = await login(on_b, "sockets")
        async with open_socket(b.url.removeprefix("http://"), token=token) as early:
            await ready(early)
            paused = await pause_a_run(on_a, prefix="sockets", token=token)
            await early.until(lambda f: is_of(f, paused.run_id, "approval_requested"), BOUND_S)
            async with open_socket(a.url.removeprefix("http://"), token=token) as late:
                await ready(late)
                await approve(on_b, paused)
                for ws in (early, late):
                    await ws.until(lambda f: is_of(f, paused.run_id, "run_completed"), BOUND_S)
        await assert_completed_after_pause(on_b, paused)
        stored = await events_of(on_b, paused.headers, paused.run_id)
    for ws in (early, late):
        assert [f for f in ws.received if f.get("run_id") == paused.run_id] == stored
    assert_no_traceback(a, b)


async def ready(ws: Socket) -> None:
    """Once the socket answers a ping, its host follows the user's events."""
    await ws.send({"type": "ping"})
    assert await ws.recv(within_s=BOUND_S) == {"type": "pong"}


def is_of(frame: Frame, run_id: str, kind: str) -> bool:
    return frame.get("run_id") == run_id and frame.get("type") == kind


async def test_approvals_sent_to_both_hosts_at_once_resume_the_run_exactly_once(
    db: asyncpg.Connection, host_env: dict[str, str], hosts: Processes
) -> None:
    """The same approval goes to A and to B at the same moment: one is taken (202 `running`,
    the run resumed on that host), the other refused 409 `conflict`; the run completes with
    one `approval_resolved` and nothing run twice."""
    a, b = await start_hosts(hosts, host_env, "a", "b")
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=BOUND_S) as on_b,
    ):
        paused = await pause_a_run(on_a, prefix="race")
        answers = await asyncio.gather(approval(on_a, paused), approval(on_b, paused))
        codes = [answer.status_code for answer in answers]
        assert sorted(codes) == [202, 409], [answer.text for answer in answers]
        taken = answers[codes.index(202)]
        refused = answers[codes.index(409)]
        assert taken.json()["run"]["status"] == "running", taken.text
        assert refused.json()["error"]["code"] == "conflict", refused.text
        resumer = (a, b)[codes.index(202)]
        assert owned_by(await owner_of(db, paused.run_id), resumer)
        await assert_completed_after_pause(on_a, paused)
    assert_no_traceback(a, b)


async def test_a_resumed_run_is_leased_by_the_host_that_resumed_it(
    db: asyncpg.Connection,
    model: ModelThatHangsAfterTools,
    host_env: dict[str, str],
    hosts: Processes,
) -> None:
    """A run paused on A is approved on B, which runs the calculator and then waits on the
    model: the run is `running` under B's lease, which B keeps renewing (three leases on,
    while both hosts sweep); once B is killed, A ends it `failed` / `interrupted` when B's
    lease expires, with one final event after the events stored before."""
    env = host_env | model_env(model)
    a, b = await start_hosts(hosts, env, "a", "b")
    tag = uuid.uuid4().hex
    question = f'{tag} [route:math] [calls:calculator={{"expression": "2+2"}}] {HANG_AFTER_TOOLS}'
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=BOUND_S) as on_b,
    ):
        paused = await pause_a_run(on_a, prefix="leased", question=question)
        await approve(on_b, paused)
        await until(lambda: model.asked_after_tools(tag), "the model to be asked after the tool")
        assert owned_by(await owner_of(db, paused.run_id), b)

        # Evidence that time passed, measured by B's own renewals, while A and B swept.
        lease_query = "SELECT lease_expires_at FROM runs WHERE id = $1"
        first = await db.fetchval(lease_query, paused.run_id)
        assert first is not None
        wanted = first + timedelta(seconds=LEASES * LEASE_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND_S
        while True:
            lease = await db.fetchval(lease_query, paused.run_id)
            assert lease is not None, "the resumed run's lease was cleared: it ended"
            if lease >= wanted:
                break
            assert loop.time() < deadline, "B stopped renewing the resumed run's lease"
            await asyncio.sleep(POLL_S)
        running = await run_of(on_a, paused.headers, paused.run_id)
        assert running["status"] == "running", running
        assert owned_by(await owner_of(db, paused.run_id), b)

        b.process.kill()
        assert await exit_code(b) == -signal.SIGKILL
        deadline = loop.time() + BOUND_S
        while (run := await run_of(on_a, paused.headers, paused.run_id))["status"] == "running":
            assert loop.time() < deadline, "A never ended the dead host's resumed run"
            await asyncio.sleep(POLL_S)
        assert run["status"] == "failed" and run["error"]["code"] == "interrupted", run
        events = await events_of(on_a, paused.headers, paused.run_id)
    assert_one_final_event(events, "run_failed")
    paused_at = len(paused.events)
    assert events[:paused_at] == paused.events
    assert [e["type"] for e in events[paused_at:]] == [
        "approval_resolved",
        "tool_executing",
        "tool_completed",
        "run_failed",
    ], events
    assert_no_traceback(a)
