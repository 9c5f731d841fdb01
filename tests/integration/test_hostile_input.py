"""Random JSON values, strings, sizes and unicode at every endpoint and frame type: never a 5xx,
never a crash, nothing written for a rejected request, and the connection stays usable."""

from __future__ import annotations

import asyncio
import json
import uuid
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
from src.logs import ContextFilter
from src.runs.domain import FINAL_EVENT_TYPES
from src.services.database.models import Base, MessageRow, RunEventRow, RunRow, ThreadRow
from src.services.limits import RateLimiter
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import hold_triage
from tests.helpers import serving
from tests.ws import AsgiSocket, open_socket

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


BODY_TARGETS = ["dev-login", "threads", "messages", "foreign-messages", "rename", "foreign-rename"]


def body_endpoint(harness: Harness, target: str) -> tuple[str, str]:
    """The method and path of every endpoint that reads a body."""
    foreign = "/api/threads/00000000-0000-4000-8000-000000000000"
    return {
        "dev-login": ("POST", "/api/auth/dev-login"),
        "threads": ("POST", "/api/threads"),
        "messages": ("POST", f"/api/threads/{harness.thread_id}/messages"),
        "foreign-messages": ("POST", f"{foreign}/messages"),
        "rename": ("PATCH", f"/api/threads/{harness.thread_id}"),
        "foreign-rename": ("PATCH", foreign),
    }[target]


@EXAMPLES
@given(
    body=bodies,
    target=st.sampled_from(BODY_TARGETS),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "", "application/json; charset=utf-16"]
    ),
)
def test_random_bodies_are_rejected_cleanly(
    harness: Harness, body: str, target: str, content_type: str
) -> None:
    """Any body at any POST endpoint: a 2xx, or a 4xx error body that wrote nothing."""
    method, path = body_endpoint(harness, target)

    async def attempt() -> None:
        before = await harness.row_counts()
        response = await harness.client.request(
            method,
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


# Hostile input: JSON nested 1 to 100,000 levels deep, numbers no parser should build, unpaired
# surrogates and NUL characters, alone, as a field's value, or inside a frame of each type. Each
# is refused (a 4xx, an error frame), writes nothing, and leaves the socket answering pings.

HOSTILE_EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_BYTES = Settings(_env_file=None).max_body_bytes  # 64 KB: ~32,000 nested pairs fit
THREAD = "__THREAD__"  # replaced by the harness's own thread, so a frame could really start a run
REQUEST_ID = "hostile-1"

# Values a leaf may hold, nested a few levels in varied shapes (the deep part comes around it).
deep_leaves = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, min_size=1, max_size=2)
        | st.dictionaries(st.text(max_size=4), children, min_size=1, max_size=2)
    ),
    max_leaves=40,
)
# One level of nesting: an array, or an object holding the next level under some key.
levels = st.just(("[", "]")) | st.text(max_size=4).map(lambda key: (f"{{{json.dumps(key)}:", "}"))


@st.composite
def deep_json(draw: st.DrawFn) -> str:
    """Valid JSON nested 1 to 100,000 levels: a short pattern of levels, repeated."""
    pattern = draw(st.lists(levels, min_size=1, max_size=3))
    depth = draw(
        st.integers(1, 400)  # either side of the parser's limit (200)
        | st.integers(400, 32_000)  # deep, and within the size limit (what crashed json.loads)
        | st.integers(30_000, 34_000)  # either side of the size limit (64 KB, ~32,000 pairs)
        | st.integers(1, 100_000)
    )
    repeats = max(1, depth // len(pattern))
    opening = "".join(open_ for open_, _ in pattern) * repeats
    closing = "".join(close for _, close in reversed(pattern)) * repeats
    return opening + json.dumps(draw(deep_leaves)) + closing


# Characters that need no escape in a JSON string and cannot complete a surrogate pair.
plain_text = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters='"\\'), max_size=6
)


@st.composite
def lone_surrogates(draw: st.DrawFn) -> str:
    """A JSON string with one unpaired surrogate, escaped (``\\ud800``) or raw (which is not
    UTF-8 at all once encoded)."""
    code = draw(st.integers(0xD800, 0xDFFF))
    middle = f"\\u{code:04x}" if draw(st.booleans()) else chr(code)
    return f'"{draw(plain_text)}{middle}{draw(plain_text)}"'


@st.composite
def nul_strings(draw: st.DrawFn) -> str:
    """A JSON string with a NUL: escaped (valid JSON, but no database text holds it) or raw
    (a control character: not JSON)."""
    nul = "\\u0000" if draw(st.booleans()) else "\x00"
    return f'"{draw(plain_text)}{nul}{draw(plain_text)}"'


huge_numbers = st.one_of(
    # Past the 4,300 digits Python's int() converts, and past any float.
    st.integers(4_000, 10_000).map(lambda n: "9" * n),
    st.integers(4_000, 10_000).map(lambda n: "-1" + "0" * n),
    st.integers(309, 999_999_999).map(lambda e: f"1e{e}"),
    st.integers(309, 999_999_999).map(lambda e: f"-2.5E-{e}"),
    st.integers(1_000, 20_000).map(lambda n: "0." + "3" * n),
    st.sampled_from(["1e999999", "-1e999999", "1E+999999999"]),
)
HOSTILE_VALUES: dict[str, st.SearchStrategy[str]] = {
    "deep": deep_json(),
    "surrogate": lone_surrogates(),
    "nul": nul_strings(),
    "number": huge_numbers,
}
# Deep JSON half of the time: the widest range, and what crashed ``json.loads``. (Not one_of:
# it would flatten huge_numbers' branches into as many equal shares.)
hostile_values = st.sampled_from(["deep"] * 3 + ["surrogate", "nul", "number"]).flatmap(
    HOSTILE_VALUES.__getitem__
)
FIELDS = ["content", "title", "user_id", "thread_id", "run_id", "request_id", "type"]
FRAMES: dict[str, dict[str, str]] = {
    "chat": {"type": "chat", "thread_id": THREAD, "content": "hello", "request_id": REQUEST_ID},
    "cancel": {"type": "cancel", "run_id": str(uuid.uuid4()), "request_id": REQUEST_ID},
    "ping": {"type": "ping", "request_id": REQUEST_ID},
}


@st.composite
def hostile_documents(draw: st.DrawFn) -> str:
    """A hostile value alone, as a field of a body, in place of a field of a frame of each
    type, or as a key; or a document followed by a raw NUL."""
    value = draw(hostile_values)
    shape = draw(st.sampled_from(["alone", "field", "frame", "key", "trailing-nul"]))
    if shape == "alone":
        return value
    if shape == "field":
        return f"{{{json.dumps(draw(st.sampled_from(FIELDS)))}: {value}}}"
    if shape == "frame":
        frame = dict(FRAMES[draw(st.sampled_from(sorted(FRAMES)))])
        frame[draw(st.sampled_from(FIELDS))] = "__HOSTILE__"
        return json.dumps(frame).replace('"__HOSTILE__"', value)
    if shape == "key":
        return f'{{{draw(lone_surrogates() | nul_strings())}: "x", "content": {value}}}'
    return f'{{"content": {value}}}\x00'


def wire_bytes(document: str) -> bytes:
    """What a client puts on the wire (raw surrogates as the invalid UTF-8 they become)."""
    return document.encode("utf-8", "surrogatepass")


@HOSTILE_EXAMPLES
@given(
    document=hostile_documents(),
    target=st.sampled_from(BODY_TARGETS),
)
def test_deep_huge_and_unencodable_bodies_are_refused_cleanly(
    harness: Harness, document: str, target: str
) -> None:
    """Deep, huge-number, surrogate and NUL bodies at every POST endpoint that reads one: a
    4xx in the error shape (413 when past the size limit), never a 5xx, nothing written."""
    method, path = body_endpoint(harness, target)
    body = wire_bytes(document.replace(THREAD, harness.thread_id))

    async def attempt() -> None:
        before = await harness.row_counts()
        response = await harness.client.request(
            method,
            path,
            content=body,
            headers=harness.headers | {"Content-Type": "application/json"},
        )
        assert_clean_rejection(response)
        assert 400 <= response.status_code < 500, response.text
        if len(body) > MAX_BYTES:
            assert response.json()["error"]["code"] == "payload_too_large"
        assert await harness.row_counts() == before

    harness.run(attempt())


@HOSTILE_EXAMPLES
@given(documents=st.lists(hostile_documents(), min_size=1, max_size=3))
def test_deep_huge_and_unencodable_frames_get_error_frames_and_the_socket_lives(
    harness: Harness, documents: list[str]
) -> None:
    """The same documents as frames of each type: each gets an error frame (never
    ``internal_error``; ``payload_too_large`` past the size limit), a ping after it still gets
    its pong, and nothing is written."""

    async def attempt() -> None:
        before = await harness.row_counts()
        token = harness.container.tokens().issue("alice")
        async with AsgiSocket(create_app(harness.container), token=token) as socket:
            for document in documents:
                frame = document.replace(THREAD, harness.thread_id)
                await socket.send(frame)
                answer = await socket.recv()
                assert answer["type"] == "error", answer
                assert answer["error"]["code"] != "internal_error", answer
                if len(wire_bytes(frame)) > MAX_BYTES:
                    assert answer["error"]["code"] == "payload_too_large", answer
                await socket.send('{"type": "ping"}')
                assert await socket.recv() == {"type": "pong"}
        assert await harness.row_counts() == before

    harness.run(attempt())


def deep(depth: int, *, inside: str = "") -> str:
    return "[" * depth + inside + "]" * depth


def deep_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


TOO_DEEP = "nested too deeply (more than 200 levels)"
# (value of ``content``, code, the message's end): what docs/api.md promises for each.
PINNED_CONTENT = {
    "deep arrays": (deep(1_000), "validation_error", TOO_DEEP),
    "deep objects": (deep_objects(1_000), "validation_error", TOO_DEEP),
    "deep but within the parser's limit": (deep(150), "validation_error", "valid string"),
    "escaped lone surrogate": ('"a\\ud800b"', "invalid_json", "not valid JSON"),
    "escaped NUL": ('"a\\u0000b"', "validation_error", "must not contain NUL characters (\\u0000)"),
    "raw NUL": ('"a\x00b"', "invalid_json", "not valid JSON"),
    "float past the largest": ("1e999999", "validation_error", "valid string"),
    "10,000-digit integer": ("9" * 10_000, "invalid_json", "not valid JSON"),
    "deep past the size limit": (deep(40_000), "payload_too_large", "larger than 65536 bytes"),
}
STATUS = {"invalid_json": 400, "payload_too_large": 413, "validation_error": 422}


@pytest.mark.parametrize("case", sorted(PINNED_CONTENT))
def test_hostile_bodies_get_the_documented_errors(harness: Harness, case: str) -> None:
    """Each kind of hostile ``content`` in a message body gets the status, code and message
    docs/api.md gives for it; a bare deep array is `body: nested too deeply`."""
    value, code, message_end = PINNED_CONTENT[case]
    path = f"/api/threads/{harness.thread_id}/messages"

    async def attempt() -> None:
        response = await harness.client.post(
            path, content=f'{{"content": {value}}}'.encode(), headers=harness.headers
        )
        assert response.status_code == STATUS[code], response.text
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"].endswith(message_end)
        bare = await harness.client.post(path, content=deep(5_000), headers=harness.headers)
        assert bare.status_code == 422
        assert bare.json()["error"]["message"] == f"body: {TOO_DEEP}"

    harness.run(attempt())


@pytest.mark.parametrize("case", sorted(PINNED_CONTENT))
def test_hostile_frames_get_the_documented_error_frames(harness: Harness, case: str) -> None:
    """Each kind of hostile ``content`` in a chat frame gets the documented error frame,
    echoing the request id whenever the frame parsed; the socket goes on answering."""
    value, code, message_end = PINNED_CONTENT[case]
    frame = (
        f'{{"type": "chat", "request_id": "{REQUEST_ID}", '
        f'"thread_id": "{harness.thread_id}", "content": {value}}}'
    )
    parsed = code == "validation_error" and not message_end.startswith("nested")

    async def attempt() -> None:
        token = harness.container.tokens().issue("alice")
        async with AsgiSocket(create_app(harness.container), token=token) as socket:
            await socket.send(frame)
            answer = await socket.recv()
            assert answer["error"]["code"] == code, answer
            assert answer["error"]["message"].endswith(message_end), answer
            assert answer.get("request_id") == (REQUEST_ID if parsed else None), answer
            await socket.send(deep(5_000))
            assert (await socket.recv())["error"]["message"] == f"frame: {TOO_DEEP}"
            await socket.send('{"type": "ping"}')
            assert await socket.recv() == {"type": "pong"}

    harness.run(attempt())


class FailingLimiter:
    """A rate limiter with a bug: every check raises."""

    async def check(self, user_id: str) -> None:
        raise RuntimeError(f"a bug in the rate limiter, checking {user_id}")


def test_a_frame_that_hits_a_bug_gets_internal_error_and_the_socket_lives(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception while handling one frame: an `internal_error` error frame echoing its
    request id and saying nothing more, the traceback logged under that request id, and the
    socket still open (a ping gets its pong)."""
    caplog.handler.addFilter(ContextFilter())

    async def attempt() -> None:
        token = harness.container.tokens().issue("alice")
        with harness.container.rate_limiter.override(providers.Object(FailingLimiter())):
            app = create_app(harness.container)
            async with AsgiSocket(app, token=token) as socket:
                chat = {"type": "chat", "thread_id": harness.thread_id, "content": "2 + 2?"}
                await socket.send(json.dumps(chat | {"request_id": "buggy-1"}))
                assert await socket.recv() == {
                    "type": "error",
                    "request_id": "buggy-1",
                    "error": {"code": "internal_error", "message": "an internal error occurred"},
                }
                await socket.send(json.dumps(chat))  # no request id: none echoed, one logged
                answer = await socket.recv()
                assert answer["error"]["code"] == "internal_error" and "request_id" not in answer
                await socket.send('{"type": "ping"}')
                assert await socket.recv() == {"type": "pong"}

    harness.run(attempt())
    failures = [r for r in caplog.records if "unhandled error on a frame" in r.getMessage()]
    assert len(failures) == 2
    assert getattr(failures[0], "request_id", None) == "buggy-1"
    assert "a bug in the rate limiter" in failures[0].getMessage()
    logged_id = getattr(failures[1], "request_id", None)
    assert isinstance(logged_id, str) and logged_id != "buggy-1"


def test_deep_frames_over_a_real_socket_leave_its_run_running(harness: Harness) -> None:
    """Over a real uvicorn socket, with a run of the socket in flight: a frame nested 1,000
    levels gets an error frame, one past the size limit `payload_too_large`, a ping its pong,
    and the run goes on to `run_completed` (the socket was never dropped)."""
    gate = hold_triage(harness.container)

    async def attempt() -> None:
        token = harness.container.tokens().issue("alice")
        async with (
            serving(create_app(harness.container)) as address,
            open_socket(address, token=token) as socket,
        ):
            chat = {"type": "chat", "thread_id": harness.thread_id, "content": "what is 2 + 2?"}
            await socket.send(chat | {"request_id": "held-1"})
            await asyncio.wait_for(gate.reached.wait(), 15)
            await socket.send(deep(1_000))
            deep_answer = await socket.until(lambda f: f["type"] == "error")
            assert deep_answer["error"]["message"] == f"frame: {TOO_DEEP}"
            await socket.send(deep(40_000))
            too_large = await socket.until(lambda f: f["type"] == "error")
            assert too_large["error"]["code"] == "payload_too_large"
            await socket.send({"type": "ping"})
            await socket.until(lambda f: f["type"] == "pong")
            gate.opened.set()
            final = await socket.until(lambda f: f["type"] in FINAL_EVENT_TYPES)
            assert final["type"] == "run_completed", final

    try:
        harness.run(attempt())
    finally:
        gate.opened.set()
        harness.container.request.triage.reset_override()
