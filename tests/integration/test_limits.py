"""Per-user limits: reaching one answers that user with a clear error and never affects another;
with Redis they hold across workers (two apps on one Redis stand for two workers)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dependency_injector import providers
from limits.aio.storage import MemoryStorage
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from src.container import AppContainer, build_container, shutdown
from src.runs.domain import FINAL_EVENT_TYPES
from src.services.database.engine import Database, create_engine
from src.services.database.migrations import upgrade_to_head
from src.services.limits import (
    InProcessSocketCounter,
    RateLimiter,
    RedisSocketCounter,
    SparseExpiryMemoryStorage,
    window_seconds,
)
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import install_chaos
from tests.helpers import REDIS_TIMEOUT_S, auth, new_thread, reachable_redis, serving, wait_for_run
from tests.ws import Socket, open_socket

# per_minute=1: a window of 60 s per hit of the burst, which never reopens during a test, so no
# test races the clock.
NEVER_REFILLS = 1

# Nothing listens on port 1: connections are refused at once.
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_rate_limit_is_per_user_with_retry_after(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A user past their burst gets 429 `rate_limited` with Retry-After; another user is served."""
    limiter = RateLimiter(per_minute=NEVER_REFILLS, burst=3)
    container.rate_limiter.override(providers.Object(limiter))
    alice, bob = auth(container, "alice"), auth(container, "bob")
    for _ in range(3):
        assert (await client.get("/api/threads", headers=alice)).status_code == 200
    limited = await client.get("/api/threads", headers=alice)
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 180
    assert (await client.get("/api/threads", headers=bob)).status_code == 200
    created = await client.post("/api/threads", json={"title": "x"}, headers=alice)
    assert_error(created, 429, "rate_limited")
    assert (await client.get("/api/threads", headers=bob)).json()["threads"] == []


@pytest.mark.parametrize(
    ("per_minute", "burst", "window"),
    [(300, 60, 12), (60, 1, 1), (1, 3, 180), (300, 7, 2), (10**6, 10, 1), (60, 60, 60)],
)
def test_the_settings_map_onto_a_moving_window(per_minute: int, burst: int, window: int) -> None:
    """`burst` hits in any W = 60 * burst / per_minute seconds, W rounded up to whole seconds:
    never more than `burst` at once, never more than `per_minute` a minute."""
    assert window_seconds(per_minute=per_minute, burst=burst) == window
    assert burst * 60 / window <= per_minute


async def test_a_limiter_refuses_past_the_burst_and_says_when_to_retry() -> None:
    """`burst` checks pass, the next is `RateLimited` with a Retry-After within the window."""
    limiter = RateLimiter(per_minute=NEVER_REFILLS, burst=2)
    await limiter.check("u")
    await limiter.check("u")
    with pytest.raises(Exception, match="retry in") as refused:
        await limiter.check("u")
    assert 1 <= getattr(refused.value, "retry_after_s", 0) <= 120
    await limiter.check("someone else")


async def test_hits_in_memory_are_dropped_once_expired_in_passes_at_most_a_second_apart() -> None:
    """300 users' hits of a 1 s window: none is dropped before it expired, all are dropped by
    the first pass after, which a later hit starts; a pass a second at most, so hits in
    between start none. (The hook it throttles is the library's own: were it renamed, every
    hit would start a pass again.)"""
    assert hasattr(MemoryStorage, "_MemoryStorage__schedule_expiry")
    limiter = RateLimiter(per_minute=60, burst=1)  # 1 hit in any 1 s
    storage = limiter._storage
    assert isinstance(storage, SparseExpiryMemoryStorage)
    for user in range(300):
        await limiter.check(f"user-{user}")
    assert len(storage.events) == 300
    first_pass = storage.timer
    await limiter.check("late")  # within the second: no pass of its own
    assert storage.timer is first_pass
    await asyncio.sleep(1.1)  # every hit so far has expired
    await limiter.check("later")  # the pass it starts drops them
    assert storage.timer is not first_pass and storage.timer is not None
    await storage.timer
    [kept] = storage.events  # the one hit that has not expired
    assert "later" in kept


async def test_running_runs_per_user_are_capped(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Past the cap of runs in progress a user's message is 429 and stores nothing; another
    user still runs."""
    install_chaos(container)
    capped = container.settings().model_copy(update={"max_running_runs_per_user": 2})
    container.settings.override(providers.Object(capped))
    alice, bob = auth(container, "alice"), auth(container, "bob")
    threads = [await new_thread(client, alice) for _ in range(3)]
    hanging = [
        asyncio.create_task(
            client.post(
                f"/api/threads/{t}/messages", json={"content": "[drill:hang]"}, headers=alice
            )
        )
        for t in threads[:2]
    ]
    run_ids = [await wait_for_run(client, alice, t) for t in threads[:2]]

    third = await client.post(
        f"/api/threads/{threads[2]}/messages", json={"content": "hello"}, headers=alice
    )
    assert_error(third, 429, "rate_limited")
    assert third.headers["retry-after"] == "1"
    messages = (await client.get(f"/api/threads/{threads[2]}/messages", headers=alice)).json()
    assert messages == {"messages": [], "next_cursor": None}
    bobs = await client.post(
        f"/api/threads/{await new_thread(client, bob)}/messages",
        json={"content": "what is 1 + 1?"},
        headers=bob,
    )
    assert bobs.json()["run"]["status"] == "completed"

    for run_id in run_ids:
        assert (await client.post(f"/api/runs/{run_id}/cancel", headers=alice)).status_code == 202
    await asyncio.gather(*hanging)


async def test_websocket_connections_and_frames_are_limited_per_user(
    container: AppContainer, live_server: str
) -> None:
    """A user's socket past the cap is closed 4429; their chat frames past the rate limit get
    `rate_limited` error frames (cancel and ping never do); another user connects meanwhile."""
    capped = container.settings().model_copy(update={"max_ws_connections_per_user": 1})
    container.settings.override(providers.Object(capped))
    container.rate_limiter.override(
        providers.Object(RateLimiter(per_minute=NEVER_REFILLS, burst=1))
    )
    alice = container.tokens().issue("alice")
    async with open_socket(live_server, token=alice) as first:
        await first.send({"type": "ping"})
        assert await first.recv() == {"type": "pong"}
        async with open_socket(live_server, token=alice) as second:
            with pytest.raises(ConnectionClosed) as closed:
                await second.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4429
        async with open_socket(live_server, token=container.tokens().issue("bob")) as bobs:
            await bobs.send({"type": "ping"})
            assert await bobs.recv() == {"type": "pong"}

        frame = {"type": "chat", "thread_id": "x", "content": "hi", "request_id": "c1"}
        await first.send(frame)  # takes the one hit: not_found
        await first.send(frame | {"request_id": "c2"})  # none left
        await first.send({"type": "cancel", "run_id": "x", "request_id": "c3"})
        errors = [await first.recv(), await first.recv(), await first.recv()]
        codes = {e["request_id"]: e["error"]["code"] for e in errors}
        assert codes == {"c1": "not_found", "c2": "rate_limited", "c3": "not_found"}
        await first.send({"type": "ping"})
        assert await first.recv() == {"type": "pong"}


async def test_a_user_at_the_rate_limit_can_still_cancel_their_runs(
    container: AppContainer, live_server: str
) -> None:
    """Past the rate limit, chat frames and API calls are refused, but a cancel frame ends the
    user's run `cancelled`, and so does POST /api/runs/{id}/cancel."""
    install_chaos(container)
    async with httpx.AsyncClient(base_url=f"http://{live_server}", timeout=30) as http:
        alice = auth(container, "alice")
        threads = [await new_thread(http, alice) for _ in range(3)]
        container.rate_limiter.override(
            providers.Object(RateLimiter(per_minute=NEVER_REFILLS, burst=2))
        )
        async with open_socket(live_server, token=container.tokens().issue("alice")) as socket:
            run_ids = [await _start_hanging_run(socket, thread_id) for thread_id in threads[:2]]
            await socket.send(
                {"type": "chat", "thread_id": threads[2], "content": "hi", "request_id": "over"}
            )
            refused = await socket.until(lambda f: f.get("type") == "error")
            assert (refused["request_id"], refused["error"]["code"]) == ("over", "rate_limited")
            assert_error(await http.get("/api/threads", headers=alice), 429, "rate_limited")

            await socket.send({"type": "ping"})
            assert await socket.until(lambda f: f.get("type") == "pong") == {"type": "pong"}
            await socket.send({"type": "cancel", "run_id": run_ids[0]})
            final = await socket.until(lambda f: f.get("type") in FINAL_EVENT_TYPES)
            assert (final["run_id"], final["type"]) == (run_ids[0], "run_cancelled")

            response = await http.post(f"/api/runs/{run_ids[1]}/cancel", headers=alice)
            assert response.status_code == 202, response.text
            assert response.json()["run"]["status"] == "cancelled"


async def _start_hanging_run(socket: Socket, thread_id: str) -> str:
    """A run that hangs in triage, once it hangs (its triage has started): no frame of it is
    still on its way."""
    await socket.send({"type": "chat", "thread_id": thread_id, "content": "[drill:hang]"})
    started = await socket.until(lambda f: f.get("type") == "run_started")
    run_id: str = started["run_id"]
    await socket.until(lambda f: f.get("type") == "agent_started" and f["run_id"] == run_id)
    return run_id


async def test_limits_fail_open_when_redis_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis unreachable, requests and sockets are allowed (never an error), and the
    outage is logged once per limit, not once per request."""
    limiter = RateLimiter(
        per_minute=NEVER_REFILLS,
        burst=1,
        storage_url=UNREACHABLE_REDIS,
        timeout_s=REDIS_TIMEOUT_S,
    )
    sockets = RedisSocketCounter(UNREACHABLE_REDIS, timeout_s=REDIS_TIMEOUT_S)
    try:
        with caplog.at_level(logging.WARNING, logger="src.services.limits"):
            for _ in range(3):
                await limiter.check("alice")
                assert await sockets.admit("alice", str(uuid.uuid4()), limit=1)
    finally:
        await limiter.aclose()
        await sockets.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.name == "src.services.limits"]
    assert len(warnings) == 2, warnings
    assert all("unreachable" in line for line in warnings)


async def test_an_app_whose_redis_is_down_serves_requests(tmp_path: Path) -> None:
    """A worker configured with Redis that cannot reach it answers API calls (the rate limit
    fails open), not 500."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/down.db",
        broker_url=UNREACHABLE_REDIS,
        _env_file=None,
    )
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    transport = httpx.ASGITransport(app=create_app(container))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://down") as client:
            headers = auth(container, "alice")
            for _ in range(3):
                response = await client.get("/api/threads", headers=headers)
                assert response.status_code == 200, response.text
    finally:
        await container.rate_limiter().aclose()
        await shutdown(container)


async def test_sockets_are_counted_per_user_in_process() -> None:
    """Without Redis, a user's sockets are counted in the process; a closed one frees a place
    and another user is never counted against."""
    counter = InProcessSocketCounter()
    assert await counter.admit("alice", "a1", limit=2)
    assert await counter.admit("alice", "a2", limit=2)
    assert not await counter.admit("alice", "a3", limit=2)
    assert await counter.admit("bob", "b1", limit=2)
    await counter.release("alice", "a1")
    assert await counter.admit("alice", "a3", limit=2)


@dataclass
class Worker:
    address: str
    container: AppContainer


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[Worker]]:
    """Two workers (two apps, each with its own container) on one database and one Redis,
    each served by a real uvicorn: 3 requests per user per 180 s, 2 sockets per user."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/shared.db",
        broker_url=await reachable_redis(),
        rate_limit_per_minute=NEVER_REFILLS,
        rate_limit_burst=3,
        max_ws_connections_per_user=2,
        _env_file=None,
    )
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    containers = [build_container(settings), build_container(settings)]
    try:
        async with (
            serving(create_app(containers[0])) as first,
            serving(create_app(containers[1])) as second,
        ):
            yield [Worker(first, containers[0]), Worker(second, containers[1])]
    finally:
        for container in containers:
            # shutdown() does not close the limits' Redis connections (see the report).
            await container.rate_limiter().aclose()
            await container.socket_counter().aclose()
            await shutdown(container)


def new_user() -> str:
    """A user of this test only: the limits of earlier runs stay in Redis for their window."""
    return f"u-{uuid.uuid4().hex[:12]}"


@pytest.mark.redis
async def test_the_rate_limit_is_shared_by_workers_on_one_redis(workers: list[Worker]) -> None:
    """Requests to either worker count against one limit per user: past it both answer 429
    `rate_limited` with Retry-After, while another user is served by both."""
    one, two = workers
    user, other = new_user(), new_user()
    headers = auth(one.container, user)
    async with (
        httpx.AsyncClient(base_url=f"http://{one.address}", timeout=30) as first,
        httpx.AsyncClient(base_url=f"http://{two.address}", timeout=30) as second,
    ):
        for client in (first, second, first):
            assert (await client.get("/api/threads", headers=headers)).status_code == 200
        for client in (second, first):
            limited = await client.get("/api/threads", headers=headers)
            assert_error(limited, 429, "rate_limited")
            assert 1 <= int(limited.headers["retry-after"]) <= 180
        for client in (first, second):
            response = await client.get("/api/threads", headers=auth(one.container, other))
            assert response.status_code == 200


@pytest.mark.redis
async def test_the_socket_limit_is_shared_by_workers_on_one_redis(workers: list[Worker]) -> None:
    """A user's sockets on both workers add up: past the cap either worker closes a new one
    4429; closing one frees a place on the other worker; another user is not counted."""
    one, two = workers
    user = new_user()
    token = one.container.tokens().issue(user)
    async with (
        open_socket(one.address, token=token) as first,
        open_socket(two.address, token=token) as second,
    ):
        await _ping(first)
        await _ping(second)
        for worker in workers:
            assert await _close_code(worker.address, token) == 4429
        async with open_socket(two.address, token=one.container.tokens().issue(new_user())) as x:
            await _ping(x)
        await first.connection.close()
        await _until_counted(one.container, user, 1)  # the server releases after the close
        async with open_socket(two.address, token=token) as third:
            await _ping(third)  # the place the closed socket held
        await _ping(second)


@pytest.mark.redis
async def test_sockets_of_a_dead_host_stop_counting(workers: list[Worker]) -> None:
    """Sockets whose renewal time has passed (their host died) no longer count; those another
    live host keeps renewing still do."""
    one, _ = workers
    user = new_user()
    counter = one.container.socket_counter()
    assert isinstance(counter, RedisSocketCounter)
    redis = Redis.from_url(await reachable_redis())
    try:
        seconds, micros = await redis.time()
        now_ms = seconds * 1000 + micros // 1000
        await redis.zadd(counter.key(user), {"dead-1": now_ms - 1, "dead-2": now_ms - 1000})
        await redis.zadd(counter.key(user), {"live-elsewhere": now_ms + 60_000})
        await redis.expire(counter.key(user), 120)
        token = one.container.tokens().issue(user)
        async with open_socket(one.address, token=token) as socket:
            await _ping(socket)  # 1 live elsewhere + this one: the dead do not count
            assert await _close_code(one.address, token) == 4429
    finally:
        await redis.delete(counter.key(user))
        await redis.aclose()


async def _until_counted(container: AppContainer, user: str, count: int) -> None:
    """Wait until ``count`` of ``user``'s sockets are counted in Redis (the server releases a
    socket's place after the client has seen the close; nothing to wait on from outside)."""
    counter = container.socket_counter()
    assert isinstance(counter, RedisSocketCounter)
    redis = Redis.from_url(await reachable_redis())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10  # a bound against a hang, not a timing
    try:
        while (counted := await redis.zcard(counter.key(user))) != count:
            if loop.time() > deadline:
                raise AssertionError(f"{counted} sockets still counted, not {count}")
            await asyncio.sleep(0.02)
    finally:
        await redis.aclose()


async def _ping(socket: Socket) -> None:
    await socket.send({"type": "ping"})
    assert await socket.recv() == {"type": "pong"}


async def _close_code(address: str, token: str) -> int | None:
    """The close code of a socket opened with ``token`` (which must be refused)."""
    async with open_socket(address, token=token) as refused:
        with pytest.raises(ConnectionClosed) as closed:
            await refused.recv()
    return None if closed.value.rcvd is None else closed.value.rcvd.code


async def test_an_unreachable_database_is_503_unavailable(
    container: AppContainer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """With the database unreachable, API calls are 503 `unavailable` (not 500), and work again
    once it is back."""
    unreachable = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path}"), container.metrics())
    container.database.override(providers.Object(unreachable))
    headers = auth(container, "alice")
    try:
        response = await client.get("/api/threads", headers=headers)
        assert_error(response, 503, "unavailable")
        assert response.headers["retry-after"]
    finally:
        container.database.reset_override()
        await unreachable.dispose()
    assert (await client.get("/api/threads", headers=headers)).status_code == 200


async def test_production_has_no_dev_login(tmp_path: Path) -> None:
    """In production dev-login is 404 `not_found`, and tokens from `isochat token` work."""
    settings = Settings(
        env="production",
        auth_secret="p" * 48,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db",
        _env_file=None,
    )
    container = build_container(settings)
    transport = httpx.ASGITransport(app=create_app(container))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://prod") as client:
            response = await client.post("/api/auth/dev-login", json={"user_id": "alice"})
            assert_error(response, 404, "not_found")
    finally:
        await container.database().dispose()
