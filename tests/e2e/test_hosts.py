"""Two real `isochat serve` hosts (separate processes, separate ports) on one PostgreSQL database
and one Redis: they start together, leave each other's live runs alone, end a dead host's runs
as `interrupted`, and stream and cancel each other's runs.

Needs PostgreSQL (``ISOCHAT_TEST_POSTGRES_URL``) and Redis (``ISOCHAT_TEST_REDIS_URL``); skipped,
saying why, when either cannot be reached. Each test has a database and users of its own."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.processes import (
    BOUND_S,
    POLL_S,
    Processes,
    assert_one_final_event,
    exit_code,
    hosts_env,
    login,
    start_both,
    until_model_holds,
    wait_until_ready,
)
from tests.e2e.test_server import READY
from tests.helpers import (
    asyncpg_url,
    new_thread,
    reachable_redis,
    wait_for_run,
)
from tests.llm_server import FakeModelServer
from tests.ws import open_socket

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

LEASE_S = 2


@pytest.fixture
async def host_env(database: str, model: FakeModelServer) -> dict[str, str]:
    """What every host of a test shares: the database, Redis, the model, a short lease."""
    return hosts_env(model, database=database, broker=await reachable_redis(), lease_s=LEASE_S)


async def run_status(http: httpx.AsyncClient, headers: dict[str, str], run_id: str) -> Any:
    response = await http.get(f"/api/runs/{run_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def events_of(
    http: httpx.AsyncClient, headers: dict[str, str], run_id: str
) -> list[dict[str, Any]]:
    response = await http.get(f"/api/runs/{run_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def post_message(
    http: httpx.AsyncClient, headers: dict[str, str], thread_id: str, content: str
) -> asyncio.Task[httpx.Response]:
    """``POST /api/threads/{id}/messages`` in the background (it answers when the run ends)."""
    return asyncio.create_task(
        http.post(f"/api/threads/{thread_id}/messages", json={"content": content}, headers=headers)
    )


async def test_two_hosts_started_together_on_an_empty_database_both_come_up(
    database: str, host_env: dict[str, str], hosts: Processes
) -> None:
    """Both hosts migrate the empty database at the same moment: one applies the migrations
    while the other waits for its lock and finds nothing left to do; both are ready, the schema
    is at one head revision, and neither logged a traceback."""
    a, b = await start_both(hosts, host_env | {"ISOCHAT_LOG_LEVEL": "info"})
    for host in (a, b):
        assert (await wait_until_ready(host))["checks"] == READY
    db = await asyncpg.connect(asyncpg_url(database))
    try:
        assert len(await db.fetch("SELECT version_num FROM alembic_version")) == 1
    finally:
        await db.close()
    logs = [host.log.read_text() for host in (a, b)]
    assert ["Running upgrade  -> 0001" in log for log in logs].count(True) == 1, logs
    assert not any("Traceback" in log for log in logs), logs


async def test_restarting_one_host_leaves_the_other_hosts_live_run_alone(
    database: str, model: FakeModelServer, host_env: dict[str, str], hosts: Processes
) -> None:
    """A run on A hangs on the model; B is stopped (SIGTERM) and started again, and sweeps at
    start and every third of a lease: A keeps renewing the run's lease, so across B's restart
    and three lease lengths after it the run stays `running`; cancelled through A, it ends
    `cancelled` (never `interrupted`) with one final event."""
    a, b = await start_both(hosts, host_env)
    tag = uuid.uuid4().hex
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=BOUND_S) as on_b,
    ):
        _, headers = await login(on_a, "restart")
        thread_id = await new_thread(on_a, headers)
        posting = post_message(on_a, headers, thread_id, f"stay {tag} [answer:hang]")
        await until_model_holds(model, f"stay {tag}")
        run_id = await wait_for_run(on_a, headers, thread_id)

        seen: list[str] = []
        watching = asyncio.Event()

        async def watch() -> None:
            """A's view of the run, from before B stops until the test cancels it."""
            while not watching.is_set():
                seen.append((await run_status(on_a, headers, run_id))["status"])
                await asyncio.sleep(POLL_S)

        watcher = asyncio.create_task(watch())
        db = await asyncpg.connect(asyncpg_url(database))
        try:
            b.process.send_signal(signal.SIGTERM)
            assert await exit_code(b) in (0, -signal.SIGTERM)
            await on_b.aclose()
            b_again = hosts.start("b-again", **host_env)
            await wait_until_ready(b_again)

            # Evidence that time passed, measured by A's own renewals: B, back and sweeping
            # every third of a lease, saw the run's lease live at each of its sweeps.
            lease_query = "SELECT lease_expires_at FROM runs WHERE id = $1"
            first = await db.fetchval(lease_query, run_id)
            assert first is not None
            wanted = first + timedelta(seconds=3 * LEASE_S)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + BOUND_S
            while True:
                lease = await db.fetchval(lease_query, run_id)
                assert lease is not None, "the run's lease was cleared: it ended"
                if lease >= wanted:
                    break
                assert loop.time() < deadline, "A stopped renewing its run's lease"
                await asyncio.sleep(POLL_S)
        finally:
            await db.close()
            watching.set()
            await watcher
        assert seen and set(seen) == {"running"}, seen
        assert (await run_status(on_a, headers, run_id))["status"] == "running"

        cancelled = await on_a.post(f"/api/runs/{run_id}/cancel", headers=headers)
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["run"]["status"] == "cancelled"
        assert cancelled.json()["run"]["error"] is None
        answered = await posting
        assert answered.status_code == 200, answered.text
        assert answered.json()["run"]["status"] == "cancelled"
        assert_one_final_event(await events_of(on_a, headers, run_id), "run_cancelled")
    assert "ended as interrupted" not in b_again.log.read_text()


async def test_a_killed_hosts_run_is_ended_interrupted_by_the_other_host(
    model: FakeModelServer, host_env: dict[str, str], hosts: Processes
) -> None:
    """SIGKILL of A while its run hangs on the model: B ends the run `failed` / `interrupted`
    once its lease expires, with exactly one final event; the thread takes a new message on B;
    B answered every readiness probe throughout."""
    a, b = await start_both(hosts, host_env)
    tag = uuid.uuid4().hex
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=BOUND_S) as on_b,
    ):
        _, headers = await login(on_b, "killed")
        thread_id = await new_thread(on_b, headers)
        posting = post_message(on_a, headers, thread_id, f"doomed {tag} [answer:hang]")
        await until_model_holds(model, f"doomed {tag}")
        run_id = await wait_for_run(on_b, headers, thread_id)

        probes: list[int | str] = []
        probing = asyncio.Event()

        async def probe() -> None:
            while not probing.is_set():
                try:
                    probes.append((await on_b.get("/health/ready")).status_code)
                except httpx.TransportError as exc:
                    probes.append(repr(exc))
                await asyncio.sleep(POLL_S)

        prober = asyncio.create_task(probe())
        try:
            a.process.kill()
            assert await exit_code(a) == -signal.SIGKILL
            with pytest.raises(httpx.TransportError):
                await posting

            loop = asyncio.get_running_loop()
            deadline = loop.time() + BOUND_S
            while (run := await run_status(on_b, headers, run_id))["status"] == "running":
                assert loop.time() < deadline, "B never ended the dead host's run"
                await asyncio.sleep(POLL_S)
            assert run["status"] == "failed" and run["error"]["code"] == "interrupted", run
            events = await events_of(on_b, headers, run_id)
            assert_one_final_event(events, "run_failed")
            assert events[-1]["data"]["error"]["code"] == "interrupted"

            again = await on_b.post(
                f"/api/threads/{thread_id}/messages",
                json={"content": f"again {tag}"},
                headers=headers,
            )
            assert again.status_code == 200, again.text
            assert again.json()["run"]["status"] == "completed"
            assert again.json()["message"]["content"] == f"Model says: again {tag}"
        finally:
            probing.set()
            await prober
    assert probes and set(probes) == {200}, probes
    assert b.process.poll() is None


async def test_a_run_on_one_host_streams_to_and_is_cancelled_from_the_other(
    model: FakeModelServer, host_env: dict[str, str], hosts: Processes
) -> None:
    """A run that A executes streams its events live to its user's socket on B (the same events
    as stored); `POST /api/runs/{id}/cancel` to B stops it on A through Redis: 202 `cancelled`,
    one `run_cancelled` final event, received live on the socket on B."""
    a, b = await start_both(hosts, host_env)
    tag = uuid.uuid4().hex
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=BOUND_S) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=BOUND_S) as on_b,
    ):
        token, headers = await login(on_a, "across")
        thread_id = await new_thread(on_a, headers)
        async with open_socket(b.url.removeprefix("http://"), token=token) as ws:
            await ws.send({"type": "ping"})  # answered once B follows the user's events
            assert await ws.recv(within_s=BOUND_S) == {"type": "pong"}
            posting = post_message(on_a, headers, thread_id, f"far {tag} [answer:hang]")
            started = await ws.until(lambda f: f.get("type") == "run_started", within_s=BOUND_S)
            run_id: str = started["run_id"]
            assert started["thread_id"] == thread_id
            await until_model_holds(model, f"far {tag}")

            cancelled = await on_b.post(f"/api/runs/{run_id}/cancel", headers=headers)
            assert cancelled.status_code == 202, cancelled.text
            assert cancelled.json()["run"]["status"] == "cancelled"
            await ws.until(
                lambda f: f.get("run_id") == run_id and f.get("type") == "run_cancelled",
                within_s=BOUND_S,
            )
        answered = await posting
        assert answered.status_code == 200, answered.text
        assert answered.json()["run"]["status"] == "cancelled"
        stored = await events_of(on_b, headers, run_id)
    assert_one_final_event(stored, "run_cancelled")
    live = [f for f in ws.received if f.get("run_id") == run_id and "seq" in f]
    assert live == stored
    assert [e["type"] for e in stored[:2]] == ["run_started", "agent_started"]
