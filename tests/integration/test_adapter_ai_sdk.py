"""The AI SDK's chat (what ``useChat`` runs) against isochat: the ``ai`` package's own ``Chat``
logic and ``DefaultChatTransport``, run by Node (``tests/ai_sdk/client.mjs``) against a real
uvicorn. What the user sees in the chat is checked against what isochat stored: the answer,
the tool calls, the thread made for the chat id (per user), a stream resumed after a dropped
connection, approvals answered in the chat, a failed run.

The pinned ``ai`` package is installed once per test run (``npm ci`` in ``tests/ai_sdk/``,
under a file lock: two runs may share the checkout); the module is skipped, saying why, where
Node or npm is missing or the install fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from filelock import FileLock, Timeout

from src.container import AppContainer, build_container, shutdown
from src.services.database.migrations import upgrade_to_head
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import install_chaos
from tests.helpers import NO_LEAKS, auth, leaks_once_settled, serving
from tests.integration.test_readme import blocks, section
from tests.llm_server import TEXTS, FakeModelServer, served_model

ROOT = Path(__file__).resolve().parents[2]
AI_SDK = ROOT / "tests" / "ai_sdk"
CLIENT = AI_SDK / "client.mjs"
INSTALL_LOCK = AI_SDK / ".install.lock"
# Written last, naming the lock file it installed: a complete install from one cut short.
STAMP = AI_SDK / "node_modules" / ".isochat-installed"
INSTALL_BOUND_S = 600.0
WITHIN_S = 60.0  # a liveness guard only

Line = dict[str, Any]


@pytest.fixture(scope="session")
def node() -> str:
    """Node, once the pinned ``ai`` package is installed for it."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the AI SDK's client needs Node and npm, and one is missing")
    lock = (AI_SDK / "package-lock.json").read_bytes()
    stamp = hashlib.sha256(lock).hexdigest()
    try:
        with FileLock(INSTALL_LOCK, timeout=INSTALL_BOUND_S):
            if not _stamped(stamp):
                STAMP.unlink(missing_ok=True)
                done = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                    cwd=AI_SDK,
                    capture_output=True,
                    text=True,
                    timeout=INSTALL_BOUND_S,
                )
                if done.returncode != 0:
                    pytest.skip(f"npm ci failed in {AI_SDK}:\n{done.stderr[-2000:]}")
                STAMP.write_text(stamp)
    except Timeout:
        pytest.skip(f"another test run held {INSTALL_LOCK} for too long")
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the ai package could not be installed: {exc}")
    return node


def _stamped(stamp: str) -> bool:
    try:
        return STAMP.read_text() == stamp
    except FileNotFoundError:
        return False


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The suite's settings, with what a test's parameter adds (``indirect``)."""
    extra: dict[str, Any] = getattr(request, "param", {})
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        run_timeout_s=600.0,
        _env_file=None,
        **extra,
    )


APPROVALS = pytest.mark.parametrize("settings", [{"approval_tools": "calculator"}], indirect=True)


async def run_client(
    node: str,
    live_server: str,
    *,
    token: str,
    scenario: str,
    on_line: Callable[[Line], None] = lambda _: None,
    **options: Any,
) -> list[Line]:
    """What the AI SDK's client printed, line by line (``on_line`` hears each as it comes)."""
    request = {"api": f"http://{live_server}", "token": token, "scenario": scenario, **options}
    process = await asyncio.create_subprocess_exec(
        node,
        str(CLIENT),
        json.dumps(request),
        cwd=AI_SDK,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[Line] = []
    try:
        async with asyncio.timeout(WITHIN_S):
            assert process.stdout is not None and process.stderr is not None
            async for raw in process.stdout:
                lines.append(json.loads(raw))
                on_line(lines[-1])
            errors = (await process.stderr.read()).decode()
            assert await process.wait() == 0, errors
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return lines


def token_of(container: AppContainer, user_id: str) -> str:
    return container.tokens().issue(user_id)


def last(lines: list[Line], event: str) -> Line:
    return [line for line in lines if line["event"] == event][-1]


def text_of(message: Line) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


def tool_parts(message: Line) -> list[Line]:
    return [part for part in message["parts"] if part["type"].startswith("tool-")]


class Api:
    """isochat's own API, to see what a user's chat stored."""

    def __init__(self, client: httpx.AsyncClient, container: AppContainer, user_id: str) -> None:
        self.client = client
        self.headers = auth(container, user_id)

    async def get(self, path: str) -> Any:
        response = await self.client.get(path, headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def threads(self) -> list[Line]:
        threads: list[Line] = (await self.get("/api/threads"))["threads"]
        return threads

    async def messages(self, thread_id: str) -> list[Line]:
        messages: list[Line] = (await self.get(f"/api/threads/{thread_id}/messages"))["messages"]
        return messages

    async def events(self, run_id: str) -> list[Line]:
        events: list[Line] = (await self.get(f"/api/runs/{run_id}/events"))["events"]
        return events

    async def ended(self, run_id: str) -> Line:
        """The run once it has ended (polled: it ends apart from any request)."""
        async with asyncio.timeout(WITHIN_S):
            while True:
                run: Line = await self.get(f"/api/runs/{run_id}")
                if run["status"] in ("completed", "failed", "cancelled"):
                    return run
                await asyncio.sleep(0.02)


async def test_a_chat_is_answered_as_the_stored_answer(
    node: str, live_server: str, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A chat's message: a UI message stream (protocol v1) whose text is the stored answer,
    in a message named by the run; the thread made for the chat id is marked `ai_sdk` and
    titled from the question."""
    lines = await run_client(
        node,
        live_server,
        token=token_of(container, "alice"),
        scenario="send",
        chatId="chat-1",
        texts=["tell me about the sea"],
    )

    assert [
        (r["method"], r["status"], r["protocol"]) for r in lines if r["event"] == "response"
    ] == [("POST", 200, "v1")]
    done = last(lines, "done")
    assert done["status"] == "ready" and done["error"] is None
    _question, answer = done["messages"]
    assert answer["role"] == "assistant" and tool_parts(answer) == []
    api = Api(client, container, "alice")
    (thread,) = await api.threads()
    assert thread["origin"] == "ai_sdk" and thread["title"] == "tell me about the sea"
    stored = await api.messages(thread["id"])
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "tell me about the sea"),
        ("assistant", text_of(answer)),
    ]
    assert answer["id"] == stored[1]["run_id"]
    assert await leaks_once_settled(container) == NO_LEAKS | {"ws_connections": 0}


async def test_the_same_chat_id_goes_on_in_the_same_thread(
    node: str, live_server: str, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A second message of a chat (the client sends the whole conversation again) runs in the
    chat's thread, which stores each message once."""
    lines = await run_client(
        node,
        live_server,
        token=token_of(container, "alice"),
        scenario="send",
        chatId="chat-2",
        texts=["what is 2 + 2?", "what is 3 * 3?"],
    )

    messages = last(lines, "done")["messages"]
    assert [text_of(m) for m in messages] == [
        "what is 2 + 2?",
        "2 + 2 = 4",
        "what is 3 * 3?",
        "3 * 3 = 9",
    ]
    api = Api(client, container, "alice")
    (thread,) = await api.threads()
    stored = await api.messages(thread["id"])
    assert [m["content"] for m in stored] == [text_of(m) for m in messages]


async def test_tool_calls_are_tool_parts(
    node: str, live_server: str, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """The calculator's call is one tool part, its input and output those stored, named by
    the call's id."""
    lines = await run_client(
        node,
        live_server,
        token=token_of(container, "alice"),
        scenario="send",
        chatId="sums",
        texts=["what is (12 + 3) * 4?"],
    )

    answer = last(lines, "done")["messages"][-1]
    assert text_of(answer) == "(12 + 3) * 4 = 60"
    (part,) = tool_parts(answer)
    events = await Api(client, container, "alice").events(answer["id"])
    executing = next(e["data"] for e in events if e["type"] == "tool_executing")
    completed = next(e["data"] for e in events if e["type"] == "tool_completed")
    assert part["type"] == "tool-calculator" and part["state"] == "output-available"
    assert part["toolCallId"] == executing["call_id"] == completed["call_id"]
    assert part["input"] == json.loads(executing["input"])
    assert part["output"] == completed["output"]
    assert events[-1]["data"]["message"]["content"] == text_of(answer)


async def test_a_chat_id_is_one_users_own(
    node: str, live_server: str, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Two users choosing the same chat id get a thread each: neither sees the other's."""
    for user, text in (("alice", "what is 1 + 1?"), ("bob", "what is 5 + 5?")):
        await run_client(
            node,
            live_server,
            token=token_of(container, user),
            scenario="send",
            chatId="shared-id",
            texts=[text],
        )

    alice, bob = Api(client, container, "alice"), Api(client, container, "bob")
    (alices,), (bobs,) = await alice.threads(), await bob.threads()
    assert alices["id"] != bobs["id"]
    assert [m["content"] for m in await alice.messages(alices["id"])] == [
        "what is 1 + 1?",
        "1 + 1 = 2",
    ]
    assert [m["content"] for m in await bob.messages(bobs["id"])] == [
        "what is 5 + 5?",
        "5 + 5 = 10",
    ]


async def test_a_new_chat_keeps_the_messages_before_its_question(
    node: str, live_server: str, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A chat whose client already holds messages: its thread stores them before the
    question, and takes its title from the first."""
    earlier = [
        {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "my name is Ada"}]},
        {"id": "m2", "role": "assistant", "parts": [{"type": "text", "text": "Hello, Ada."}]},
    ]
    await run_client(
        node,
        live_server,
        token=token_of(container, "alice"),
        scenario="send",
        chatId="with-history",
        initialMessages=earlier,
        texts=["what is 2 + 2?"],
    )

    api = Api(client, container, "alice")
    (thread,) = await api.threads()
    assert thread["title"] == "my name is Ada"
    assert [(m["role"], m["content"]) for m in await api.messages(thread["id"])] == [
        ("user", "my name is Ada"),
        ("assistant", "Hello, Ada."),
        ("user", "what is 2 + 2?"),
        ("assistant", "2 + 2 = 4"),
    ]


@asynccontextmanager
async def isochat_on(
    model: FakeModelServer, tmp_path: Path, **extra: Any
) -> AsyncIterator[tuple[str, AppContainer]]:
    """isochat answering with ``model`` (``extra``: more settings), served on a real uvicorn:
    its address and container."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        llm_provider="openai",
        llm_base_url=model.base_url,
        llm_api_key="sk-test",
        llm_model="test-model",
        run_timeout_s=600.0,
        _env_file=None,
        **extra,
    )
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    try:
        async with serving(create_app(container)) as address:
            yield address, container
    finally:
        await shutdown(container)


async def test_a_dropped_stream_is_resumed_whole(node: str, tmp_path: Path) -> None:
    """A chat asked to go on without its client (`on_disconnect: continue`, as a resumable
    chat must), dropped once some text has come; resumed (useChat's `resume`) while the model
    is held: the message is rebuilt from the run's start, and ends with the whole answer."""
    async with served_model() as model, isochat_on(model, tmp_path) as (address, container):

        def release_once_resumed(line: Line) -> None:
            if line["event"] == "response" and line["method"] == "GET":
                assert line["status"] == 200
                model.release()

        lines = await run_client(
            node,
            address,
            token=token_of(container, "alice"),
            scenario="drop",
            chatId="long-story",
            texts=["[answer:stall] [text:story]"],
            body={"on_disconnect": "continue"},
            resume=True,
            on_line=release_once_resumed,
        )

        dropped = last(lines, "dropped")["messages"][-1]
        assert text_of(dropped) == "Once. "
        done = last(lines, "done")
        _question, answer = done["messages"]  # the answer replaced, not repeated
        assert done["status"] == "ready" and answer["id"] == dropped["id"]
        assert text_of(answer) == TEXTS["story"]
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            api = Api(client, container, "alice")
            run = await api.ended(answer["id"])
            (thread,) = await api.threads()
            stored = await api.messages(thread["id"])
        assert run["status"] == "completed" and stored[-1]["content"] == TEXTS["story"]


async def test_a_client_that_leaves_cancels_its_run(node: str, tmp_path: Path) -> None:
    """By default a chat's run belongs to its request, as isochat's own streamed messages do:
    the client dropping the stream cancels it."""
    async with served_model() as model, isochat_on(model, tmp_path) as (address, container):
        lines = await run_client(
            node,
            address,
            token=token_of(container, "alice"),
            scenario="drop",
            chatId="left",
            texts=["[answer:stall] [text:story]"],
        )

        run_id = last(lines, "dropped")["messages"][-1]["id"]
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            run = await Api(client, container, "alice").ended(run_id)
        assert run["status"] == "cancelled"
        assert await leaks_once_settled(container) == NO_LEAKS | {"ws_connections": 0}


async def test_resuming_a_chat_with_nothing_running_is_204(
    node: str, live_server: str, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Resuming a chat whose run has ended, or a chat never seen, finds nothing (204): the
    client stays as it was, and no thread is made."""
    token = token_of(container, "alice")
    await run_client(
        node, live_server, token=token, scenario="send", chatId="ended", texts=["what is 1 + 2?"]
    )
    for chat_id in ("ended", "never-seen"):
        lines = await run_client(node, live_server, token=token, scenario="resume", chatId=chat_id)
        assert [(r["method"], r["status"]) for r in lines if r["event"] == "response"] == [
            ("GET", 204)
        ]
        assert last(lines, "done")["messages"] == [] and last(lines, "done")["status"] == "ready"
    assert len(await Api(client, container, "alice").threads()) == 1


@APPROVALS
async def test_an_approval_answered_in_the_chat_runs_the_call(
    node: str, live_server: str, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A call that waits for approval is a tool part asking for it; approved in the chat
    (addToolApprovalResponse), the Chat sends the answer by itself and the same message goes
    on: the call runs, and the answer follows."""
    lines = await run_client(
        node,
        live_server,
        token=token_of(container, "alice"),
        scenario="approve",
        chatId="needs-approval",
        texts=["what is (12 + 3) * 4?"],
        answer={"approved": True},
    )

    asked = last(lines, "asked")["messages"][-1]
    (waiting,) = tool_parts(asked)
    assert waiting["state"] == "approval-requested"
    assert waiting["approval"]["id"] == waiting["toolCallId"]
    assert waiting["input"] == {"expression": "(12 + 3) * 4"}
    assert [(r["method"], r["status"]) for r in lines if r["event"] == "response"] == [
        ("POST", 200),
        ("POST", 200),
    ]
    done = last(lines, "done")
    _question, answer = done["messages"]
    assert answer["id"] == asked["id"] and done["error"] is None
    (ran,) = tool_parts(answer)
    assert ran["state"] == "output-available" and ran["toolCallId"] == waiting["toolCallId"]
    assert ran["approval"]["approved"] is True
    events = await Api(client, container, "alice").events(answer["id"])
    assert [e["data"]["decision"] for e in events if e["type"] == "approval_resolved"] == [
        "approve"
    ]
    assert ran["output"] == next(
        e["data"]["output"] for e in events if e["type"] == "tool_completed"
    )
    assert events[-1]["type"] == "run_completed"
    assert text_of(answer) == events[-1]["data"]["message"]["content"] == "(12 + 3) * 4 = 60"


@APPROVALS
async def test_an_approval_refused_in_the_chat_tells_the_model_why(
    node: str, live_server: str, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Refused with a reason: the call never runs (its part ends denied), the model is told
    the reason, and its answer ends the message."""
    lines = await run_client(
        node,
        live_server,
        token=token_of(container, "alice"),
        scenario="approve",
        chatId="refused",
        texts=["what is 6 * 7?"],
        answer={"approved": False, "reason": "not with my numbers"},
    )

    answer = last(lines, "done")["messages"][-1]
    (denied,) = tool_parts(answer)
    assert denied["state"] == "output-denied"
    events = await Api(client, container, "alice").events(answer["id"])
    (resolved,) = [e["data"] for e in events if e["type"] == "approval_resolved"]
    assert resolved["decision"] == "reject" and resolved["message"] == "not with my numbers"
    assert not [e for e in events if e["type"] == "tool_executing"]
    assert events[-1]["type"] == "run_completed"
    assert text_of(answer) == events[-1]["data"]["message"]["content"]


async def test_approvals_answered_one_by_one_resume_the_run_once(node: str, tmp_path: Path) -> None:
    """Two calls of one turn wait: the first answer, sent on its own, is decided and the
    message still waits for the other; the second answer (the client sends both again)
    resumes the run, both calls run, and the answer ends the message."""
    two_calls = (
        '[route:math] [calls:calculator={"expression": "1+1"};calculator={"expression": "2+2"}]'
    )
    async with (
        served_model() as model,
        isochat_on(model, tmp_path, approval_tools="calculator") as (address, container),
    ):
        lines = await run_client(
            node,
            address,
            token=token_of(container, "alice"),
            scenario="approve",
            chatId="two-calls",
            texts=[two_calls],
            answer={"approved": True},
            oneByOne=True,
        )

        answered = last(lines, "answered")["messages"][-1]
        assert [p["state"] for p in tool_parts(answered)] == [
            "approval-responded",
            "approval-requested",
        ]
        answer = last(lines, "done")["messages"][-1]
        assert answer["id"] == answered["id"] and last(lines, "done")["error"] is None
        assert [(p["state"], p["output"]) for p in tool_parts(answer)] == [
            ("output-available", "2"),
            ("output-available", "4"),
        ]
        assert text_of(answer) == "Model says: 2 | 4"
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            events = await Api(client, container, "alice").events(answer["id"])
        assert [e["type"] for e in events].count("approval_resolved") == 2
        assert events[-1]["data"]["message"]["content"] == text_of(answer)


@APPROVALS
async def test_resuming_a_chat_waiting_for_approval_shows_the_request_again(
    node: str, live_server: str, container: AppContainer
) -> None:
    """A page reloaded while its chat's run waits for approval: resuming replays the run up
    to its pause, so the approval request is back in the message the page shows."""
    token = token_of(container, "alice")
    sent = await run_client(
        node, live_server, token=token, scenario="send", chatId="reloaded", texts=["what is 2 * 8?"]
    )
    lines = await run_client(node, live_server, token=token, scenario="resume", chatId="reloaded")

    before = last(sent, "done")["messages"][-1]
    assert [(r["method"], r["status"]) for r in lines if r["event"] == "response"] == [("GET", 200)]
    (again,) = last(lines, "done")["messages"]
    assert again["id"] == before["id"]
    assert [p["state"] for p in tool_parts(again)] == ["approval-requested"]
    assert tool_parts(again) == tool_parts(before)


async def test_a_failed_run_is_the_chats_error(
    node: str, live_server: str, container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A run that fails ends the stream with an error part: the chat shows its code and
    message, and no answer is stored."""
    install_chaos(container)
    lines = await run_client(
        node,
        live_server,
        token=token_of(container, "alice"),
        scenario="send",
        chatId="failing",
        texts=["[drill:llm] hello"],
    )

    done = last(lines, "done")
    assert done["status"] == "error" and done["error"]["message"].startswith("llm_error: ")
    api = Api(client, container, "alice")
    (thread,) = await api.threads()
    assert [m["role"] for m in await api.messages(thread["id"])] == ["user"]


async def test_refusals_come_before_the_stream_as_isochat_errors(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """What cannot start a stream is isochat's JSON error (the client's error message is its
    body): no token, no message, a chat id with a "/", answers with nothing waiting."""
    headers = auth(container, "alice")
    user = {"role": "user", "parts": [{"type": "text", "text": "hi"}]}
    no_token = await client.post("/api/chat", json={"id": "c", "messages": [user]})
    assert no_token.status_code == 401
    cases: dict[int, list[Line]] = {
        422: [{"id": "c", "messages": []}, {"id": "a/b", "messages": [user]}],
        409: [
            {
                "id": "c",
                "messages": [
                    user,
                    {
                        "role": "assistant",
                        "parts": [
                            {
                                "type": "tool-calculator",
                                "toolCallId": "call_1",
                                "state": "approval-responded",
                                "approval": {"id": "call_1", "approved": True},
                            }
                        ],
                    },
                ],
            }
        ],
    }
    for status, bodies in cases.items():
        for body in bodies:
            response = await client.post("/api/chat", json=body, headers=headers)
            assert response.status_code == status, response.text
            assert set(response.json()["error"]) >= {"code", "message"}
    assert await Api(client, container, "alice").threads() == []


async def test_the_readme_example_runs_as_printed(
    node: str, live_server: str, container: AppContainer, tmp_path: Path
) -> None:
    """README's plain Node example, against a live server: the calculator's call and the
    answer."""
    (code,) = blocks(section("From the AI SDK's useChat"), "js")
    script = tmp_path / "chat.mjs"
    script.write_text(code)
    (tmp_path / "node_modules").symlink_to(AI_SDK / "node_modules")
    env = {**os.environ, "API": f"http://{live_server}", "TOKEN": token_of(container, "alice")}
    process = await asyncio.create_subprocess_exec(
        node,
        str(script),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), WITHIN_S)
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines()[-2:] == [
        'tool-calculator {"expression":"(12 + 3) * 4"} -> 60',
        "(12 + 3) * 4 = 60",
    ]
