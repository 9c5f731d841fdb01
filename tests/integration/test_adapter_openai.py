"""The OpenAI-compatible API (`/v1`) driven by the real `openai` SDK against a real uvicorn: the
models, a whole answer and a streamed one (each the run isochat stores, on a new thread holding
the messages sent), a forced route, the SDK's own exceptions for refusals and for runs that
fail, another user's isolation, a client that leaves its stream (its run cancelled), a run
cancelled or paused for approval, and README's example run as printed."""

from __future__ import annotations

import asyncio
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from dependency_injector import providers
from openai.types.chat import ChatCompletionMessageParam

from src.agents.approval import ApprovalPolicy
from src.container import AppContainer
from src.settings import Settings
from tests.helpers import auth
from tests.integration.test_readme import blocks, section
from tests.llm_server import FakeModelServer, served_model
from tests.mcp_runs import with_settings

WITHIN_S = 30.0  # a liveness guard only
KEEPALIVE_S = 0.2  # a client gone is seen at the next write: a keep-alive while a run hangs
QUESTION: ChatCompletionMessageParam = {"role": "user", "content": "what is 2 + 3?"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        run_timeout_s=600.0,
        sse_keepalive_s=KEEPALIVE_S,
        llm_max_retries=0,  # a model server's 500 fails the run at once
        _env_file=None,
    )


class Isochat:
    """isochat's own API, to see what a completion stored (as ``user``: alice by default)."""

    def __init__(self, http: httpx.AsyncClient, container: AppContainer) -> None:
        self.http = http
        self.container = container

    async def get(self, path: str, user: str = "alice") -> Any:
        response = await self.http.get(path, headers=auth(self.container, user))
        assert response.status_code == 200, response.text
        return response.json()

    async def post(self, path: str, **request: Any) -> httpx.Response:
        return await self.http.post(path, headers=auth(self.container, "alice"), **request)


@pytest.fixture
async def api(container: AppContainer, live_server: str) -> AsyncIterator[Isochat]:
    async with httpx.AsyncClient(base_url=f"http://{live_server}", timeout=WITHIN_S) as client:
        yield Isochat(client, container)


Clients = Callable[..., openai.AsyncOpenAI]


@pytest.fixture
async def sdk(container: AppContainer, live_server: str) -> AsyncIterator[Clients]:
    """``sdk(user)``: the `openai` SDK's client with the user's token as its key (or
    ``api_key``), closed after the test."""
    made: list[openai.AsyncOpenAI] = []

    def client(user: str = "alice", *, api_key: str | None = None) -> openai.AsyncOpenAI:
        made.append(
            openai.AsyncOpenAI(
                base_url=f"http://{live_server}/v1",
                api_key=api_key or container.tokens().issue(user),
                timeout=WITHIN_S,
            )
        )
        return made[-1]

    yield client
    for each in made:
        await each.close()


@pytest.fixture
async def model(container: AppContainer) -> AsyncIterator[FakeModelServer]:
    """The fake model server as the app's model (set before any request builds the client)."""
    async with served_model() as server:
        with_settings(container, llm_provider="openai", llm_base_url=server.base_url)
        yield server


async def eventually(condition: Callable[[], Awaitable[bool]]) -> None:
    """Until ``condition`` holds: a liveness guard of WITHIN_S, not a timing."""
    for _ in range(int(WITHIN_S / 0.02)):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


async def test_the_models_are_isochat_and_one_per_route(sdk: Clients) -> None:
    """`isochat` (triage chooses) and `isochat-<route>` for each route, in OpenAI's list."""
    models = await sdk().models.list()
    assert [m.id for m in models.data] == [
        "isochat",
        "isochat-math",
        "isochat-history",
        "isochat-general",
    ]
    assert {(m.object, m.owned_by) for m in models.data} == {("model", "isochat")}


async def test_a_whole_answer_is_the_run_stored_on_a_new_thread(sdk: Clients, api: Isochat) -> None:
    """A conversation sent whole is answered by math; the thread (origin `openai`, titled from
    the first user message) holds every user and assistant message sent, then the answer;
    the system message is not stored; the completion's id and usage are the run's."""
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "Hello!"},
        QUESTION,
    ]
    raw = await sdk().chat.completions.with_raw_response.create(model="isochat", messages=messages)
    completion = raw.parse()
    thread_id, run_id = raw.headers["X-Isochat-Thread-Id"], raw.headers["X-Isochat-Run-Id"]

    assert completion.choices[0].message.content == "2 + 3 = 5"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id == f"chatcmpl-{run_id}" and completion.model == "isochat"
    thread = await api.get(f"/api/threads/{thread_id}")
    assert (thread["origin"], thread["title"]) == ("openai", "hello there")
    stored = (await api.get(f"/api/threads/{thread_id}/messages"))["messages"]
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "hello there"),
        ("assistant", "Hello!"),
        ("user", "what is 2 + 3?"),
        ("assistant", "2 + 3 = 5"),
    ]
    run = await api.get(f"/api/runs/{run_id}")
    assert (run["status"], run["route"]) == ("completed", "math")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == run["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens == run["usage"]["completion_tokens"]
    assert completion.usage.total_tokens == sum(run["usage"].values())


async def test_a_streamed_answer_is_the_live_text_then_the_usage(
    sdk: Clients, api: Isochat
) -> None:
    """Chunks: the role first, the deltas joined equal to the stored answer, the finish
    reason, then the usage chunk (no choices) equal to the run's usage."""
    raw = await sdk().chat.completions.with_raw_response.create(
        model="isochat",
        messages=[{"role": "user", "content": [{"type": "text", "text": "what is 6 * 7?"}]}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in raw.parse()]
    run_id = raw.headers["X-Isochat-Run-Id"]

    *answer, finish, usage = chunks
    assert answer[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in answer)
    assert [c.choices[0].finish_reason for c in [*answer, finish]] == [None] * len(answer) + [
        "stop"
    ]
    messages = await api.get(f"/api/threads/{raw.headers['X-Isochat-Thread-Id']}/messages")
    assert text == messages["messages"][-1]["content"] == "6 * 7 = 42"
    run = await api.get(f"/api/runs/{run_id}")
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (
        run["usage"]["prompt_tokens"],
        run["usage"]["completion_tokens"],
    )
    assert {c.id for c in chunks} == {f"chatcmpl-{run_id}"}


async def test_a_route_model_answers_without_triage(sdk: Clients, api: Isochat) -> None:
    """`isochat-general` has the general specialist answer arithmetic triage would send to
    math: no triage agent in the run's events."""
    raw = await sdk().chat.completions.with_raw_response.create(
        model="isochat-general", messages=[QUESTION]
    )
    run_id = raw.headers["X-Isochat-Run-Id"]
    run = await api.get(f"/api/runs/{run_id}")
    events = (await api.get(f"/api/runs/{run_id}/events"))["events"]
    assert run["route"] == "general"
    assert {e["agent"] for e in events} == {None, "general"}
    assert raw.parse().choices[0].message.content != "2 + 3 = 5"


# Bodies the SDK sends that isochat refuses, and the field each refusal names.
BAD_REQUESTS: list[tuple[list[Any], str]] = [
    ([], "messages"),
    ([QUESTION, {"role": "assistant", "content": "5"}], "messages[1].role"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user", "content": "   "}], "messages[0].content"),
    ([{"role": "user", "content": "x" * 8001}], "messages[0].content"),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        "messages[0].content[0].type",
    ),
    ([{"role": "robot", "content": "hi"}], "messages[0].role"),
]

# Bodies no SDK sends: not JSON, not an object, nested past the parser's depth, a lone
# surrogate, a NUL, an integer past 4,300 digits in a field nobody reads.
RAW_BAD_BODIES = [
    b'{"model": "isochat",',
    b"[1, 2]",
    b'{"model": "isochat", "messages": [{"role": "user", "content": '
    + b"[" * 5000
    + b"]" * 5000
    + b"}]}",
    b'{"model": "isochat", "messages": [{"role": "user", "content": "\\ud800 hi"}]}',
    b'{"model": "isochat", "messages": [{"role": "user", "content": "a\\u0000b"}]}',
    b'{"model": "isochat", "temperature": ' + b"9" * 5000 + b', "messages": []}',
]


async def test_refusals_are_the_sdks_errors_and_store_nothing(sdk: Clients, api: Isochat) -> None:
    """A bad key: AuthenticationError. A body that cannot be taken (no messages, the last not
    the user's, content not text, blank or too long, an image, an unknown role): the SDK's
    BadRequestError naming the field; a hostile one (``RAW_BAD_BODIES``): 400 too. An unknown
    model: NotFoundError. Each in OpenAI's error shape, and not one thread stored."""
    stranger = sdk(api_key="not-a-token")
    with pytest.raises(openai.AuthenticationError) as listed:
        await stranger.models.list()
    with pytest.raises(openai.AuthenticationError) as asked:
        await stranger.chat.completions.create(model="isochat", messages=[QUESTION])
    for unknown in (listed.value, asked.value):
        assert unknown.status_code == 401 and unknown.code == "invalid_api_key"

    for messages, param in BAD_REQUESTS:
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk().chat.completions.create(model="isochat", messages=messages)
        assert (refused.value.param, refused.value.type) == (param, "invalid_request_error")
    for body in RAW_BAD_BODIES:
        response = await api.post("/v1/chat/completions", content=body)
        assert response.status_code == 400, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    for name in ("gpt-4o", "isochat-nonsense"):
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk().chat.completions.create(model=name, messages=[QUESTION])
        assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
    assert (await api.get("/api/threads"))["threads"] == []


async def test_the_rate_limit_is_a_rate_limit_error_with_retry_after(
    container: AppContainer, sdk: Clients
) -> None:
    """The user's rate limit counts `/v1` requests like any other."""
    with_settings(container, rate_limit_burst=2)
    client = sdk().with_options(max_retries=0)
    await client.models.list()
    await client.models.list()
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="isochat", messages=[QUESTION])
    assert int(refused.value.response.headers["Retry-After"]) >= 1


async def test_a_failed_run_raises_the_sdks_error_once(
    sdk: Clients, api: Isochat, model: FakeModelServer
) -> None:
    """The model server answering 500: a whole answer is the SDK's InternalServerError (502,
    the run's `llm_error`), a stream raises APIError at the run's end; the SDK does not retry
    (one thread per request), and each run is stored failed."""
    client = sdk()
    failing: list[ChatCompletionMessageParam] = [{"role": "user", "content": "[llm:500] hello"}]
    with pytest.raises(openai.InternalServerError) as whole:
        await client.chat.completions.create(model="isochat", messages=failing)
    assert (whole.value.status_code, whole.value.code) == (502, "llm_error")
    with pytest.raises(openai.APIError) as streamed:
        async for _ in await client.chat.completions.create(
            model="isochat",
            messages=failing,
            stream=True,
        ):
            pass
    assert streamed.value.code == "llm_error"

    threads = (await api.get("/api/threads"))["threads"]
    assert len(threads) == 2
    for thread in threads:
        [question] = (await api.get(f"/api/threads/{thread['id']}/messages"))["messages"]
        run = await api.get(f"/api/runs/{question['run_id']}")
        assert (run["status"], run["error"]["code"]) == ("failed", "llm_error")
        assert run["id"] in str(whole.value.message) + str(streamed.value.message)


async def test_another_users_completion_stays_theirs(
    container: AppContainer, sdk: Clients, api: Isochat
) -> None:
    """Alice's completion is a thread and run of hers: bob lists no thread and reads neither
    its messages nor its run's events (404)."""
    raw = await sdk().chat.completions.with_raw_response.create(
        model="isochat", messages=[QUESTION]
    )
    thread_id, run_id = raw.headers["X-Isochat-Thread-Id"], raw.headers["X-Isochat-Run-Id"]
    assert (await api.get("/api/threads", "bob"))["threads"] == []
    for path in (f"/api/threads/{thread_id}/messages", f"/api/runs/{run_id}/events"):
        response = await api.http.get(path, headers=auth(container, "bob"))
        assert response.status_code == 404
    [alices] = (await api.get("/api/threads"))["threads"]
    assert alices["id"] == thread_id


async def test_a_client_leaving_its_stream_cancels_its_run(
    sdk: Clients, api: Isochat, model: FakeModelServer
) -> None:
    """The answer held by the model server; the client reads the first chunk and leaves: the
    run is cancelled (its last event `run_cancelled`), and no answer is stored."""
    raw = await sdk().chat.completions.with_raw_response.create(
        model="isochat-general",
        messages=[{"role": "user", "content": "[answer:hang] hello"}],
        stream=True,
    )
    stream = raw.parse()
    first = await anext(aiter(stream))
    assert first.choices[0].delta.role == "assistant"
    await stream.close()
    run_id = raw.headers["X-Isochat-Run-Id"]

    async def cancelled() -> bool:
        run = await api.get(f"/api/runs/{run_id}")
        return bool(run["status"] == "cancelled")

    await eventually(cancelled)
    events = (await api.get(f"/api/runs/{run_id}/events"))["events"]
    assert events[-1]["type"] == "run_cancelled"
    messages = await api.get(f"/api/threads/{raw.headers['X-Isochat-Thread-Id']}/messages")
    assert [m["role"] for m in messages["messages"]] == ["user"]


async def test_a_run_cancelled_meanwhile_is_a_conflict_error(
    sdk: Clients, api: Isochat, model: FakeModelServer
) -> None:
    """A whole answer whose run its owner cancels through isochat's API: ConflictError,
    naming the run, not retried."""
    asked = asyncio.create_task(
        sdk().chat.completions.create(
            model="isochat-general",
            messages=[{"role": "user", "content": "[answer:hang] hello"}],
        )
    )

    async def started() -> bool:
        return bool((await api.get("/api/threads"))["threads"])

    await eventually(started)
    [thread] = (await api.get("/api/threads"))["threads"]
    run_id = thread["active_run_id"]
    cancel = await api.post(f"/api/runs/{run_id}/cancel")
    assert cancel.status_code == 202
    with pytest.raises(openai.ConflictError) as refused:
        await asyncio.wait_for(asked, WITHIN_S)
    assert refused.value.code == "cancelled" and run_id in refused.value.message
    assert len((await api.get("/api/threads"))["threads"]) == 1


async def test_a_run_waiting_for_approval_says_where_to_decide(
    container: AppContainer, sdk: Clients, api: Isochat
) -> None:
    """A calculation that needs approval, asked whole and streamed: each answer ends with a
    note naming the call, the run and where to decide; the run waits (`awaiting_approval`),
    and once approved there it completes with the answer."""
    container.approvals.override(providers.Object(ApprovalPolicy(["calculator"])))
    client = sdk().chat.completions.with_raw_response
    whole = await client.create(model="isochat", messages=[QUESTION])
    streamed = await client.create(model="isochat", messages=[QUESTION], stream=True)
    answers = [
        (whole.headers, whole.parse().choices[0].message.content or ""),
        (
            streamed.headers,
            "".join([c.choices[0].delta.content or "" async for c in streamed.parse()]),
        ),
    ]

    for headers, text in answers:
        run_id, thread_id = headers["X-Isochat-Run-Id"], headers["X-Isochat-Thread-Id"]
        assert f"POST /api/runs/{run_id}/approvals" in text and "calculator" in text
        run = await api.get(f"/api/runs/{run_id}")
        assert run["status"] == "awaiting_approval"
        events = (await api.get(f"/api/runs/{run_id}/events"))["events"]
        call_id = events[-1]["data"]["call_id"]
        decided = await api.post(
            f"/api/runs/{run_id}/approvals",
            json={"decisions": [{"call_id": call_id, "decision": "approve"}]},
        )
        assert decided.status_code == 202

        async def completed(run_id: str = run_id) -> bool:
            run = await api.get(f"/api/runs/{run_id}")
            return bool(run["status"] == "completed")

        await eventually(completed)
        messages = (await api.get(f"/api/threads/{thread_id}/messages"))["messages"]
        assert messages[-1]["content"] == "2 + 3 = 5"


async def test_the_readme_example_runs_as_printed(
    container: AppContainer, live_server: str, tmp_path: Path
) -> None:
    """README's `openai` SDK example, run as it says with a token: each printed line is what
    the comment under it says."""
    [code] = blocks(section("From Open WebUI"), "python")
    script = tmp_path / "example.py"
    script.write_text(code)
    environment = {
        **os.environ,
        "ISOCHAT_TOKEN": container.tokens().issue("alice"),
        "ISOCHAT_URL": f"http://{live_server}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=environment, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), WITHIN_S)

    assert process.returncode == 0, err.decode()
    said = [line.removeprefix("# ") for line in code.splitlines() if line.startswith("# ")]
    assert out.decode().splitlines() == said
