"""Random JSON values, strings, sizes and unicode at every endpoint and frame type: never a 5xx,
never a crash, nothing written for a rejected request, and the connection stays usable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from dependency_injector import providers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from src.container import AppContainer, build_container
from src.services.database.models import Base, MessageRow, RunEventRow, RunRow, ThreadRow
from src.services.limits import RateLimiter
from src.settings import Settings
from src.web.app import create_app
from tests.ws import AsgiSocket

EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Objects that look almost right: the contract's field names with random values.
near_misses = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["chat", "cancel", "ping", "pong", "CHAT", ""])
        | st.text(max_size=8),
        "content": json_values | st.text(max_size=300),
        "title": json_values,
        "user_id": json_values | st.text(max_size=300),
        "thread_id": st.uuids().map(str) | json_values,
        "run_id": st.uuids().map(str) | json_values,
        "request_id": json_values,
    },
)
bodies = (
    near_misses.map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=200)
    | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    | st.integers(min_value=70_000, max_value=90_000).map(
        lambda n: json.dumps({"content": "x" * n})
    )
)
path_ids = st.uuids().map(str) | st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/?#%"), max_size=60
)


@dataclass
class Harness:
    runner: asyncio.Runner
    container: AppContainer
    client: httpx.AsyncClient
    headers: dict[str, str]
    thread_id: str

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)

    async def row_counts(self) -> tuple[int, ...]:
        async with self.container.database().engine.connect() as conn:
            counts = []
            for table in (ThreadRow, MessageRow, RunRow, RunEventRow):
                counts.append(
                    (await conn.execute(select(func.count()).select_from(table))).scalar_one()
                )
            return tuple(counts)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """One app for all examples: hypothesis runs many examples inside a single test."""
    runner = asyncio.Runner()
    container = build_container(
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/h.db", _env_file=None)
    )
    container.rate_limiter.override(providers.Object(RateLimiter(per_minute=10**6, burst=10**6)))

    async def start() -> Harness:
        async with container.database().engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(container)), base_url="http://h"
        )
        headers = {"Authorization": f"Bearer {container.tokens().issue('alice')}"}
        thread = await client.post("/api/threads", json={"title": "mine"}, headers=headers)
        return Harness(runner, container, client, headers, thread.json()["id"])

    harness = runner.run(start())
    try:
        yield harness
    finally:
        runner.run(harness.client.aclose())
        runner.run(container.database().dispose())
        runner.close()


def assert_clean_rejection(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} or response.request.url.path == "/health/ready"
        assert isinstance(body["error"]["code"], str)
        assert isinstance(body["error"]["message"], str)
        assert "Traceback" not in response.text


@EXAMPLES
@given(
    body=bodies,
    target=st.sampled_from(["dev-login", "threads", "messages", "foreign-messages"]),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "", "application/json; charset=utf-16"]
    ),
)
def test_random_bodies_are_rejected_cleanly(
    harness: Harness, body: str, target: str, content_type: str
) -> None:
    """Any body at any POST endpoint: a 2xx, or a 4xx error body that wrote nothing."""
    path = {
        "dev-login": "/api/auth/dev-login",
        "threads": "/api/threads",
        "messages": f"/api/threads/{harness.thread_id}/messages",
        "foreign-messages": "/api/threads/00000000-0000-4000-8000-000000000000/messages",
    }[target]

    async def attempt() -> None:
        before = await harness.row_counts()
        response = await harness.client.post(
            path,
            content=body.encode("utf-8", "surrogatepass"),
            headers=harness.headers | ({"Content-Type": content_type} if content_type else {}),
        )
        assert_clean_rejection(response)
        if response.status_code >= 400:
            assert await harness.row_counts() == before

    harness.run(attempt())


@EXAMPLES
@given(
    thread_id=path_ids,
    run_id=path_ids,
    after=st.text(max_size=30) | st.integers(min_value=-(2**70), max_value=2**70).map(str),
    # Any bytes a header can carry (latin-1), not only well-formed tokens.
    token=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=200),
)
def test_random_ids_queries_and_tokens_are_rejected_cleanly(
    harness: Harness, thread_id: str, run_id: str, after: str, token: str
) -> None:
    """Random ids, `after` values and tokens: never a 5xx, nothing written."""

    async def attempt() -> None:
        before = await harness.row_counts()
        thread, run = quote(thread_id, safe=""), quote(run_id, safe="")
        for method, path in [
            ("GET", f"/api/threads/{thread}"),
            ("GET", f"/api/threads/{thread}/messages"),
            ("GET", f"/api/runs/{run}"),
            ("GET", f"/api/runs/{run}/events"),
            ("POST", f"/api/runs/{run}/cancel"),
        ]:
            response = await harness.client.request(method, path, headers=harness.headers)
            assert_clean_rejection(response)
        with_token = await harness.client.get(
            "/api/threads", headers=[(b"authorization", b"Bearer " + token.encode("latin-1"))]
        )
        assert_clean_rejection(with_token)
        events = await harness.client.get(
            f"/api/runs/{run}/events", params={"after": after}, headers=harness.headers
        )
        assert_clean_rejection(events)
        assert await harness.row_counts() == before

    harness.run(attempt())


@EXAMPLES
@given(frames=st.lists(bodies | near_misses.map(json.dumps), min_size=1, max_size=5))
def test_random_frames_get_error_frames_and_the_socket_stays_usable(
    harness: Harness, frames: list[str]
) -> None:
    """Any frame is answered (an error frame, or a pong for a real ping), nothing is written,
    and a ping still gets its pong afterwards."""

    async def attempt() -> None:
        before = await harness.row_counts()
        token = harness.container.tokens().issue("alice")
        async with AsgiSocket(create_app(harness.container), token=token) as socket:
            for frame in frames:
                await socket.send(frame)
                answer = await socket.recv()
                if answer["type"] == "error":
                    assert answer["error"]["code"] != "internal_error", answer
                    assert isinstance(answer["error"]["message"], str)
                else:
                    assert answer == {"type": "pong"}
                await socket.send('{"type": "ping"}')
                assert await socket.recv() == {"type": "pong"}
            await socket.send(b"\xff\xfe binary")
            assert (await socket.recv())["error"]["code"] == "validation_error"
        assert await harness.row_counts() == before

    harness.run(attempt())
