"""Per-user limits: reaching one answers that user with a clear error and never affects another."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from dependency_injector import providers
from websockets.exceptions import ConnectionClosed

from src.container import AppContainer, build_container
from src.services.database.engine import Database, create_engine
from src.services.limits import RateLimiter
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import install_chaos
from tests.helpers import auth, new_thread, wait_for_run
from tests.ws import open_socket


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_rate_limit_is_per_user_with_retry_after(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A user past their burst gets 429 `rate_limited` with Retry-After; another user is served."""
    container.rate_limiter.override(providers.Object(RateLimiter(per_minute=60, burst=3)))
    alice, bob = auth(container, "alice"), auth(container, "bob")
    for _ in range(3):
        assert (await client.get("/api/threads", headers=alice)).status_code == 200
    limited = await client.get("/api/threads", headers=alice)
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1
    assert (await client.get("/api/threads", headers=bob)).status_code == 200
    created = await client.post("/api/threads", json={"title": "x"}, headers=alice)
    assert_error(created, 429, "rate_limited")
    assert (await client.get("/api/threads", headers=bob)).json()["threads"] == []


def test_the_bucket_refills_with_time() -> None:
    """Tokens come back at the configured rate; Retry-After says when the next one is due."""
    now = [0.0]
    limiter = RateLimiter(per_minute=30, burst=2, clock=lambda: now[0])
    limiter.check("u")
    limiter.check("u")
    with pytest.raises(Exception, match="retry in 2 s") as refused:
        limiter.check("u")
    assert getattr(refused.value, "retry_after_s", None) == 2
    now[0] = 2.0
    limiter.check("u")


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
            client.post(f"/api/threads/{t}/messages", json={"content": "[hang]"}, headers=alice)
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
    assert messages == {"messages": []}
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
    """A user's socket past the cap is closed 4429; their frames past the rate limit get
    `rate_limited` error frames; another user connects and chats meanwhile."""
    capped = container.settings().model_copy(update={"max_ws_connections_per_user": 1})
    container.settings.override(providers.Object(capped))
    container.rate_limiter.override(providers.Object(RateLimiter(per_minute=60, burst=1)))
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

        frame = {"type": "cancel", "run_id": "x", "request_id": "c1"}
        await first.send(frame)  # takes the one token: not_found
        await first.send(frame | {"request_id": "c2"})  # none left
        errors = [await first.recv(), await first.recv()]
        codes = {e["request_id"]: e["error"]["code"] for e in errors}
        assert codes == {"c1": "not_found", "c2": "rate_limited"}


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
