"""The OpenAI-compatible provider against a real HTTP model server: every failure mode fails
only its own run with a short, safe message (the details go to the log, with the run's id), the
next run on the same thread completes, and readiness says whether the model server answers."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from src.container import AppContainer
from src.logs import ContextFilter
from src.services.llm.base import INVALID_REPLY, TOO_SLOW, UNAVAILABLE
from src.services.llm.offline import OfflineLLM
from src.services.llm.openai import OpenAILLM
from src.settings import Settings
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send, serving, wait_for_run
from tests.llm_server import FakeModelServer

# Long enough for the client's two retries with backoff (about 0.4 + 0.8 s) to fit in one call.
LLM_TIMEOUT_S = 4.0


class ModelsEndpoint:
    """``GET /v1/models`` beside the fake model server (which has only chat completions): what
    readiness probes. Each request is counted with its headers; while ``gate`` is clear it waits
    for the test to open it."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def handle(self, request: Request) -> Response:
        self.headers.append(dict(request.headers))
        self.arrived.set()
        await self.gate.wait()
        return JSONResponse({"object": "list", "data": [{"id": "test-model"}]})


@pytest.fixture
def models_endpoint() -> ModelsEndpoint:
    return ModelsEndpoint()


@pytest.fixture
async def model_server(models_endpoint: ModelsEndpoint) -> AsyncIterator[FakeModelServer]:
    server = FakeModelServer()
    app = Starlette(
        routes=[
            Route("/v1/models", models_endpoint.handle, methods=["GET"]),
            Mount("/", app=server.app),
        ]
    )
    async with serving(app) as address:
        server.base_url = f"http://{address}/v1"
        try:
            yield server
        finally:
            models_endpoint.gate.set()
            server.release()


@pytest.fixture
def model_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """What the OpenAI adapter logs, each record with the ids of its log context."""
    caplog.set_level(logging.WARNING, logger="src.services.llm.openai")
    caplog.handler.addFilter(ContextFilter())
    return caplog


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def settings(tmp_path: Path, model_server: FakeModelServer) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        llm_provider="openai",
        llm_base_url=model_server.base_url,
        llm_api_key="sk-test",
        llm_model="test-model",
        llm_timeout_s=LLM_TIMEOUT_S,
        llm_max_retries=2,
        run_timeout_s=20,
        _env_file=None,
    )


async def events_of(client: httpx.AsyncClient, headers: dict[str, str], run_id: str) -> list[Any]:
    response = await client.get(f"/api/runs/{run_id}/events", headers=headers)
    events: list[Any] = response.json()["events"]
    return events


async def test_answers_stream_as_thinking_events_with_the_threads_history(
    container: AppContainer, client: httpx.AsyncClient, model_server: FakeModelServer
) -> None:
    """Triage asks for a route (one call, no stream); `general` streams its answer, which
    arrives as agent_thinking events, the final message holding the full text; the model gets
    the thread's earlier messages, the configured model and the API key."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    first = await send(client, headers, thread_id, "tell me about the sea")
    assert first["run"]["route"] == "general"
    assert first["message"]["content"] == "Model says: tell me about the sea"
    events = await events_of(client, headers, first["run"]["id"])
    thinking = [e["data"]["text"] for e in events if e["type"] == "agent_thinking"]
    assert thinking
    assert "".join(thinking) == "Model says: tell me about the sea"

    await send(client, headers, thread_id, "and the mountains?")
    route_call, answer_call = model_server.requests[-2:]
    assert route_call["stream"] is False
    assert answer_call["stream"] is True
    assert answer_call["model"] == "test-model"
    assert [m["content"] for m in answer_call["messages"][1:]] == [
        "tell me about the sea",
        "Model says: tell me about the sea",
        "and the mountains?",
    ]
    assert model_server.headers[-1]["authorization"] == "Bearer sk-test"


async def test_a_server_that_does_not_stream_still_answers(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A plain JSON answer to a streaming request is taken whole."""
    headers = auth(container, "alice")
    body = await send(client, headers, await new_thread(client, headers), "hi [llm:nostream]")
    assert body["message"]["content"] == "Model says: hi"


async def test_an_unknown_route_goes_to_general(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A route choice naming no known route is parsed robustly: general answers."""
    headers = auth(container, "alice")
    body = await send(client, headers, await new_thread(client, headers), "x [route:bananas]")
    assert body["run"]["route"] == "general"
    assert body["run"]["status"] == "completed"


@pytest.mark.parametrize(
    ("marker", "code", "says", "logged"),
    [
        ("[llm:500]", "llm_error", UNAVAILABLE, "answered 500 after 3 attempts: "),
        ("[answer:500]", "llm_error", UNAVAILABLE, '{"error":{"message":"model crashed"}}'),
        ("[llm:garbage]", "llm_error", INVALID_REPLY, "not valid JSON: b'<html>oops</html>'"),
        ("[llm:no-choices]", "llm_error", INVALID_REPLY, "no choices"),
        ("[answer:bad-chunk]", "llm_error", INVALID_REPLY, "not valid JSON"),
        ("[answer:error]", "llm_error", UNAVAILABLE, "model overloaded"),
        ("[llm:hang]", "timeout", TOO_SLOW, f"within {LLM_TIMEOUT_S:g} s"),
        ("[answer:stall]", "timeout", TOO_SLOW, f"within {LLM_TIMEOUT_S:g} s"),
    ],
)
async def test_each_failure_fails_only_its_run_and_the_thread_goes_on(
    container: AppContainer,
    client: httpx.AsyncClient,
    model_server: FakeModelServer,
    model_log: pytest.LogCaptureFixture,
    marker: str,
    code: str,
    says: str,
    logged: str,
) -> None:
    """HTTP errors, garbage, empty choices, broken streams and hangs end the run `failed` with
    `llm_error` or `timeout` and a short message that names neither the server nor its answer;
    the cause is logged, with the run's id; the next run completes."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    failed = await send(client, headers, thread_id, f"hello {marker}")
    assert failed["run"]["status"] == "failed"
    assert failed["run"]["error"] == {"code": code, "message": says}
    assert failed["message"] is None
    failures = [r for r in model_log.records if r.getMessage().startswith("model call to ")]
    assert [r.run_id for r in failures] == [failed["run"]["id"]]  # type: ignore[attr-defined]
    assert model_server.base_url in failures[0].getMessage()
    assert logged in failures[0].getMessage()
    following = await send(client, headers, thread_id, "hello again")
    assert following["message"]["content"] == "Model says: hello again"
    assert leaks(container) == NO_LEAKS


async def test_429_and_5xx_are_retried_with_backoff(
    container: AppContainer, client: httpx.AsyncClient, model_server: FakeModelServer
) -> None:
    """A 429 is retried and the run completes; a 500 is retried up to the bound, then fails."""
    headers = auth(container, "alice")
    body = await send(client, headers, await new_thread(client, headers), "hi [llm:429-then-ok]")
    assert body["message"]["content"] == "Model says: hi"
    assert sorted(model_server.attempts.values()) == [2, 2]  # route choice and answer

    model_server.attempts.clear()
    await send(client, headers, await new_thread(client, headers), "hi [llm:500]")
    assert list(model_server.attempts.values()) == [3]  # 1 + llm_max_retries, then it gave up


async def test_a_refused_connection_is_an_llm_error(
    container: AppContainer, client: httpx.AsyncClient, model_log: pytest.LogCaptureFixture
) -> None:
    """Nothing listening at the model URL: `llm_error` saying the model is unavailable; the
    URL (without its credentials) is in the log line of that run, not in the run."""
    port = closed_port()
    refused = OpenAILLM(
        base_url=f"http://isochat:hunter2-model@127.0.0.1:{port}/v1", api_key=None, model="m",
        timeout_s=LLM_TIMEOUT_S, max_retries=2, max_connections=4,
    )  # fmt: skip
    container.llm.override(providers.Object(refused))
    try:
        headers = auth(container, "alice")
        body = await send(client, headers, await new_thread(client, headers), "hello")
    finally:
        container.llm.reset_override()
        await refused.aclose()
    assert body["run"]["error"] == {"code": "llm_error", "message": UNAVAILABLE}
    [line] = [r for r in model_log.records if r.getMessage().startswith("model call to ")]
    assert line.run_id == body["run"]["id"]  # type: ignore[attr-defined]
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in line.getMessage()
    assert "could not connect" in line.getMessage()
    assert "hunter2-model" not in line.getMessage()


async def test_healthy_runs_never_wait_for_hanging_ones(
    container: AppContainer, client: httpx.AsyncClient, model_server: FakeModelServer
) -> None:
    """40 healthy runs beside 10 whose model hangs: every healthy run completes before any
    hanging run is cut off, and the hanging ones end `timeout` at the call's bound."""
    # Longer than the other tests' bound: 40 runs must finish well inside it on a slow machine.
    bound_s = 5.0
    model = container.llm()
    assert isinstance(model, OpenAILLM)
    slower = OpenAILLM(
        base_url=model_server.base_url, api_key=None, model="m",
        timeout_s=bound_s, max_retries=0, max_connections=100,
    )  # fmt: skip
    container.llm.override(providers.Object(slower))
    loop = asyncio.get_running_loop()
    finished: dict[int, float] = {}

    async def one(i: int) -> dict[str, Any]:
        headers = auth(container, f"user{i}")
        thread_id = await new_thread(client, headers)
        content = f"run {i} [llm:hang]" if i % 5 == 0 else f"run {i}"
        body = await send(client, headers, thread_id, content)
        finished[i] = loop.time()
        return body

    started = loop.time()
    results = await asyncio.gather(*(one(i) for i in range(50)))

    hanging = [i for i in range(50) if i % 5 == 0]
    for i, body in enumerate(results):
        if i in hanging:
            assert body["run"]["error"]["code"] == "timeout"
            assert finished[i] - started >= bound_s
        else:
            assert body["message"]["content"] == f"Model says: run {i}"
            assert finished[i] < min(finished[h] for h in hanging)
    container.llm.reset_override()
    await slower.aclose()
    assert leaks(container) == NO_LEAKS


async def test_cancelling_a_run_closes_its_model_stream_at_once(
    container: AppContainer, client: httpx.AsyncClient, model_server: FakeModelServer
) -> None:
    """A cancel reaches the model call: the HTTP stream is closed, so the server stops."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    running = asyncio.create_task(send(client, headers, thread_id, "go on [answer:stall]"))
    run_id = await wait_for_run(client, headers, thread_id)
    await asyncio.wait_for(model_server.stream_started.wait(), 10)
    assert model_server.streams_closed == 0

    cancelled = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)

    assert cancelled.json()["run"]["status"] == "cancelled"
    await asyncio.wait_for(model_server.stream_closed.wait(), 10)
    assert (await running)["run"]["status"] == "cancelled"


def test_openai_without_a_base_url_is_refused_at_start() -> None:
    """Settings say what is missing before anything starts."""
    with pytest.raises(ValidationError, match="ISOCHAT_LLM_BASE_URL must be set"):
        Settings(llm_provider="openai", _env_file=None)
    with pytest.raises(ValidationError, match="must start with http"):
        Settings(llm_provider="openai", llm_base_url="localhost:11434", _env_file=None)


async def test_readiness_asks_the_model_server(
    container: AppContainer, client: httpx.AsyncClient, models_endpoint: ModelsEndpoint
) -> None:
    """With the model server up, readiness checks `model: ok`, asking `GET /v1/models` with
    the API key; the answer is kept, so more probes do not reach the server."""
    first = await client.get("/health/ready")
    assert first.status_code == 200, first.text
    assert first.json()["checks"]["model"] == "ok"
    assert [h["authorization"] for h in models_endpoint.headers] == ["Bearer sk-test"]
    for _ in range(3):
        assert (await client.get("/health/ready")).json()["checks"]["model"] == "ok"
    assert len(models_endpoint.headers) == 1


@pytest.mark.parametrize("path", ["", "/not-the-api"])
async def test_readiness_fails_with_a_wrong_model_url(
    container: AppContainer, client: httpx.AsyncClient, model_server: FakeModelServer, path: str
) -> None:
    """A model URL where nothing listens, or where the server has no such API (404): 503 with
    `model: unavailable`, while the other checks stay ok; liveness stays 200."""
    address = model_server.base_url.removesuffix("/v1")
    base_url = f"http://127.0.0.1:{closed_port()}/v1" if not path else address + path
    wrong = OpenAILLM(
        base_url=base_url, api_key="sk-test", model="m",
        timeout_s=LLM_TIMEOUT_S, max_retries=0, max_connections=4,
    )  # fmt: skip
    container.llm.override(providers.Object(wrong))
    try:
        response = await client.get("/health/ready")
    finally:
        container.llm.reset_override()
        await wrong.aclose()
    assert response.status_code == 503
    body = response.json()
    assert body["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "broker": "ok",
        "model": "unavailable",
    }
    assert body["error"]["code"] == "unavailable"
    assert "model" in body["error"]["message"]
    assert (await client.get("/health/live")).status_code == 200


async def test_concurrent_readiness_probes_ask_the_model_server_once(
    container: AppContainer, models_endpoint: ModelsEndpoint
) -> None:
    """Probes arriving while one is in flight wait for it, not for a probe of their own; a
    probe whose caller gave up still finishes and its answer is kept."""
    model = container.llm()
    assert isinstance(model, OpenAILLM)
    models_endpoint.gate.clear()
    abandoned = asyncio.create_task(model.is_available())
    await models_endpoint.arrived.wait()
    waiting = [asyncio.create_task(model.is_available()) for _ in range(5)]
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    models_endpoint.gate.set()
    assert await asyncio.gather(*waiting) == [True] * 5
    assert await model.is_available()
    assert len(models_endpoint.headers) == 1


async def test_the_offline_model_is_always_available() -> None:
    """No server to ask: readiness's model check is always ok offline."""
    assert await OfflineLLM().is_available()
