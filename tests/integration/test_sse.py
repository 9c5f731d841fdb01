"""Runs over HTTP as they happen: a message answered as server-sent events, a run followed
and resumed by ``Last-Event-ID`` (every event exactly once), a background run followed to its
end, keep-alives on an idle stream, and a client that goes away (the run cancelled, unless it
asked to continue); CORS for configured origins only. Real uvicorn, a real HTTP client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers

from src.agents.approval import ApprovalPolicy
from src.container import AppContainer, build_container, shutdown
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import hold_triage
from tests.helpers import NO_LEAKS, auth, leaks, new_thread

WITHIN_S = 30.0  # a liveness guard only
KEEPALIVE_S = 0.2


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        run_timeout_s=600.0,
        sse_keepalive_s=KEEPALIVE_S,
        _env_file=None,
    )


@pytest.fixture
async def http(live_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{live_server}", timeout=WITHIN_S) as client:
        yield client


async def read_sse(lines: AsyncIterator[str], *, stop_after: int | None = None) -> list[Any]:
    """The events of an SSE body (``id``, ``event``, ``data``) and its comments, in order."""
    items: list[Any] = []
    fields: dict[str, str] = {}
    async for line in lines:
        if line.startswith(":"):
            items.append(("comment", line[1:].strip()))
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif fields:
            event = json.loads(fields["data"])
            assert fields["id"] == str(event["seq"]) and fields["event"] == event["type"]
            items.append(event)
            fields = {}
            if stop_after is not None and len(events(items)) == stop_after:
                break
    return items


def events(items: list[Any]) -> list[dict[str, Any]]:
    return [i for i in items if isinstance(i, dict)]


async def test_a_message_is_answered_as_server_sent_events(
    container: AppContainer, http: httpx.AsyncClient
) -> None:
    """`Accept: text/event-stream`: every event of the run, seq 1..n, from run_started to
    run_completed with the answer; the stream then ends."""
    headers = auth(container, "alice") | {"Accept": "text/event-stream"}
    thread_id = await new_thread(http, headers)
    async with http.stream(
        "POST",
        f"/api/threads/{thread_id}/messages",
        json={"content": "what is 6 * 7?"},
        headers=headers,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = events(await asyncio.wait_for(read_sse(response.aiter_lines()), WITHIN_S))

    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert received[0]["type"] == "run_started"
    assert received[-1]["type"] == "run_completed"
    assert received[-1]["data"]["message"]["content"] == "6 * 7 = 42"
    stored = (await http.get(f"/api/runs/{received[0]['run_id']}/events", headers=headers)).json()
    assert stored["events"] == received
    assert leaks(container) == NO_LEAKS


async def test_a_resumed_stream_gives_every_event_exactly_once(
    container: AppContainer, http: httpx.AsyncClient
) -> None:
    """A background run held mid-way: a stream read to its second event and dropped, then one
    resumed with `Last-Event-ID: 2` that waits on the idle run with keep-alives: together,
    every event once, in order, to the final one."""
    gate = hold_triage(container)
    headers = auth(container, "alice")
    thread_id = await new_thread(http, headers)
    started = await http.post(
        f"/api/threads/{thread_id}/runs", json={"content": "what is 2 + 2?"}, headers=headers
    )
    assert started.status_code == 202
    run = started.json()["run"]
    assert run["status"] == "running" and run["thread_id"] == thread_id
    await asyncio.wait_for(gate.reached.wait(), WITHIN_S)

    async with http.stream("GET", f"/api/runs/{run['id']}/stream", headers=headers) as first:
        before = events(await read_sse(first.aiter_lines(), stop_after=2))
    resumed_headers = headers | {"Last-Event-ID": "2"}
    async with http.stream(
        "GET", f"/api/runs/{run['id']}/stream", headers=resumed_headers
    ) as again:
        lines = again.aiter_lines()
        idle = await read_sse(_until_comment(lines))  # the run is held: keep-alives only
        gate.opened.set()
        after = await asyncio.wait_for(read_sse(lines), WITHIN_S)

    assert idle[-1] == ("comment", "keep-alive") and not events(idle)
    seqs = [e["seq"] for e in before + events(after)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert events(after)[-1]["type"] == "run_completed"
    polled = (await http.get(f"/api/runs/{run['id']}", headers=headers)).json()
    assert polled["status"] == "completed"


async def _until_comment(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    async for line in lines:
        yield line
        if line.startswith(":"):
            yield ""
            return


async def test_a_finished_run_streams_its_record_and_ends(
    container: AppContainer, http: httpx.AsyncClient
) -> None:
    """`?after=N` on a run that has ended: the stored events after N, then the end."""
    headers = auth(container, "alice")
    thread_id = await new_thread(http, headers)
    body = (
        await http.post(
            f"/api/threads/{thread_id}/messages", json={"content": "hi"}, headers=headers
        )
    ).json()
    run_id = body["run"]["id"]
    async with http.stream("GET", f"/api/runs/{run_id}/stream?after=3", headers=headers) as tail:
        received = events(await asyncio.wait_for(read_sse(tail.aiter_lines()), WITHIN_S))
    assert received[0]["seq"] == 4 and received[-1]["type"] == "run_completed"


@pytest.mark.parametrize(
    ("on_disconnect", "ends"), [("cancel", "cancelled"), ("continue", "completed")]
)
async def test_a_client_that_goes_away_cancels_its_run_unless_asked_to_continue(
    container: AppContainer, http: httpx.AsyncClient, on_disconnect: str, ends: str
) -> None:
    """The streamed run's client reads its first event and leaves while the run is held:
    with `on_disconnect: cancel` (the default) the run ends `cancelled`; with `continue` it
    completes once let go."""
    gate = hold_triage(container)
    headers = auth(container, "alice")
    thread_id = await new_thread(http, headers)
    content = {"content": "what is 1 + 1?", "on_disconnect": on_disconnect}
    async with http.stream(
        "POST",
        f"/api/threads/{thread_id}/messages",
        json=content,
        headers=headers | {"Accept": "text/event-stream"},
    ) as response:
        # Held in a name: an iterator left to the garbage collector closes the response, and
        # the client must leave only once the run is held (its cancel would beat the gate).
        lines = response.aiter_lines()
        [started] = events(await read_sse(lines, stop_after=1))
        await asyncio.wait_for(gate.reached.wait(), WITHIN_S)
    broker = container.broker()
    await eventually(lambda: broker.subscriber_count("alice") == 0)  # the server saw it leave
    gate.opened.set()

    async def ended() -> bool:
        run = (await http.get(f"/api/runs/{started['run_id']}", headers=headers)).json()
        return bool(run["status"] != "running")

    await eventually(ended)
    run = (await http.get(f"/api/runs/{started['run_id']}", headers=headers)).json()
    assert run["status"] == ends
    assert leaks(container) == NO_LEAKS


async def test_a_client_that_leaves_the_stream_of_its_queued_run_cancels_it(
    container: AppContainer, http: httpx.AsyncClient
) -> None:
    """A message enqueued behind a held run, streamed: the client reads the stream's first
    keep-alive and leaves while its run waits its turn. The queued run is cancelled (its one
    event is `run_cancelled`), and once the held run ends nothing starts in its place."""
    gate = hold_triage(container, only="hold")
    headers = auth(container, "alice")
    thread_id = await new_thread(http, headers)
    held = await http.post(
        f"/api/threads/{thread_id}/runs", json={"content": "hold on"}, headers=headers
    )
    await asyncio.wait_for(gate.reached.wait(), WITHIN_S)
    content = {"content": "what is 1 + 1?", "multitask": "enqueue"}
    async with http.stream(
        "POST",
        f"/api/threads/{thread_id}/messages",
        json=content,
        headers=headers | {"Accept": "text/event-stream"},
    ) as response:
        # Stored before the answer began: the thread lists it (read first: leaving the
        # stream cancels it).
        thread = (await http.get(f"/api/threads/{thread_id}", headers=headers)).json()
        [queued] = thread["queued_run_ids"]
        async for line in response.aiter_lines():
            if line.startswith(":"):
                break  # a keep-alive: the run waits its turn; the client leaves

    async def cancelled() -> bool:
        run = (await http.get(f"/api/runs/{queued}", headers=headers)).json()
        return bool(run["status"] == "cancelled")

    await eventually(cancelled)
    gate.opened.set()
    held_id = held.json()["run"]["id"]

    async def held_ended() -> bool:
        run = (await http.get(f"/api/runs/{held_id}", headers=headers)).json()
        return bool(run["status"] == "completed")

    await eventually(held_ended)
    stored = (await http.get(f"/api/runs/{queued}/events", headers=headers)).json()["events"]
    assert [e["type"] for e in stored] == ["run_cancelled"]


async def eventually(condition: Callable[[], bool | Awaitable[bool]]) -> None:
    """Until ``condition`` holds: a liveness guard of WITHIN_S, not a timing."""
    for _ in range(int(WITHIN_S / 0.02)):
        held = condition()
        if held if isinstance(held, bool) else await held:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


async def test_streams_refuse_what_is_not_theirs(
    container: AppContainer, http: httpx.AsyncClient
) -> None:
    """Another user's run is 404; a Last-Event-ID that is not a seq is 422; a background run
    on another user's thread is 404 and starts nothing."""
    alice, bob = auth(container, "alice"), auth(container, "bob")
    thread_id = await new_thread(http, alice)
    body = (
        await http.post(f"/api/threads/{thread_id}/messages", json={"content": "hi"}, headers=alice)
    ).json()
    run_id = body["run"]["id"]

    assert (await http.get(f"/api/runs/{run_id}/stream", headers=bob)).status_code == 404
    bad = await http.get(f"/api/runs/{run_id}/stream", headers=alice | {"Last-Event-ID": "x"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["error"]["message"]
    refused = await http.post(f"/api/threads/{thread_id}/runs", json={"content": "hi"}, headers=bob)
    assert refused.status_code == 404
    assert (
        len(
            (await http.get(f"/api/threads/{thread_id}/messages", headers=alice)).json()["messages"]
        )
        == 2
    )


@pytest.mark.parametrize("configured", ["https://app.example.com", ""])
async def test_cors_preflight_is_allowed_only_for_configured_origins(
    tmp_path: Path, configured: str
) -> None:
    """With CORS_ORIGINS set, a preflight from that origin is allowed (methods, the
    Authorization header) and another origin is refused; unset, no origin is allowed."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db", cors_origins=configured, _env_file=None
    )
    container = build_container(settings)
    transport = httpx.ASGITransport(app=create_app(container))
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            allowed = await client.options(
                "/api/threads", headers=preflight | {"Origin": "https://app.example.com"}
            )
            other = await client.options(
                "/api/threads", headers=preflight | {"Origin": "https://evil.example.com"}
            )
            simple = await client.get("/health/live", headers={"Origin": "https://app.example.com"})
    finally:
        await shutdown(container)

    if configured:
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    else:
        assert allowed.status_code == 405
        assert "access-control-allow-origin" not in simple.headers
    assert other.status_code in (400, 405)
    assert "access-control-allow-origin" not in other.headers


async def test_a_stream_ends_when_its_run_pauses_and_goes_on_after_the_decision(
    container: AppContainer, http: httpx.AsyncClient
) -> None:
    """A run that waits for approval ends its stream after its `approval_requested` events
    (a person may take a day); after the decision, following it again from `Last-Event-ID`
    gives the rest, each event once, to the final one."""
    container.approvals.override(providers.Object(ApprovalPolicy(["calculator"])))
    headers = auth(container, "alice")
    thread_id = await new_thread(http, headers)
    streamed = headers | {"Accept": "text/event-stream"}
    async with http.stream(
        "POST",
        f"/api/threads/{thread_id}/messages",
        json={"content": "what is 6 * 7?"},
        headers=streamed,
    ) as response:
        before = events(await read_sse(response.aiter_lines()))
    assert before[-1]["type"] == "approval_requested"
    assert [e["seq"] for e in before] == list(range(1, len(before) + 1))
    run_id, call_id = before[-1]["run_id"], before[-1]["data"]["call_id"]

    decided = await http.post(
        f"/api/runs/{run_id}/approvals",
        json={"decisions": [{"call_id": call_id, "decision": "approve"}]},
        headers=headers,
    )
    assert decided.status_code == 202
    resumed = streamed | {"Last-Event-ID": str(before[-1]["seq"])}
    async with http.stream("GET", f"/api/runs/{run_id}/stream", headers=resumed) as response:
        after = events(await read_sse(response.aiter_lines()))
    assert [e["seq"] for e in before + after] == list(range(1, len(before) + len(after) + 1))
    assert after[0]["type"] == "approval_resolved"
    assert after[-1]["type"] == "run_completed"
    assert after[-1]["data"]["message"]["content"] == "6 * 7 = 42"
