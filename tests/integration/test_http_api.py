"""The HTTP contract of docs/api.md, through the real app on a real SQLite file."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from dependency_injector import providers
from prometheus_client.parser import text_string_to_metric_families

from src.container import AppContainer
from src.runs.domain import FINAL_EVENT_TYPES
from src.services.database.engine import Database, create_engine
from tests.fakes import install_chaos
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, orphan_run, send, wait_for_run

READY = {"database": "ok", "migrations": "ok", "broker": "ok", "model": "ok"}
# An id no object has (the same in every test process: pytest-xdist compares the test ids).
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def test_health_and_metrics(container: AppContainer, client: httpx.AsyncClient) -> None:
    """Liveness, readiness with its checks, and Prometheus text with samples of the contract's
    metrics (a name in a `# HELP` line alone is not a metric); a completed run is counted."""
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": READY}
    headers = auth(container, "alice")
    await send(client, headers, await new_thread(client, headers), "what is 1 + 1?")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
    }
    for name in ("isochat_request_scopes_open", "isochat_runs_total", "isochat_ws_connections"):
        assert [key for key in samples if key[0] == name], f"no sample of {name}"
    assert samples[("isochat_runs_total", (("status", "completed"),))] == 1


async def test_readiness_names_the_failing_database(
    container: AppContainer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """With the database unreachable readiness is 503 and names the check; liveness stays 200."""
    # A directory where the database file should be: every connection attempt fails.
    unreachable = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path}"), container.metrics())
    container.database.override(providers.Object(unreachable))
    try:
        response = await client.get("/health/ready")
        assert_error(response, 503, "unavailable")
        assert response.json()["checks"] == READY | {
            "database": "unavailable",
            "migrations": "unknown",
        }
        assert (await client.get("/health/live")).status_code == 200
    finally:
        container.database.reset_override()
        await unreachable.dispose()
    assert (await client.get("/health/ready")).status_code == 200


async def test_dev_login_issues_a_token_that_works(client: httpx.AsyncClient) -> None:
    """A development token authenticates its user."""
    response = await client.post("/api/auth/dev-login", json={"user_id": "alice"})
    assert response.status_code == 200
    headers = {"Authorization": f"Bearer {response.json()['token']}"}
    assert (await client.get("/api/threads", headers=headers)).json() == {
        "threads": [],
        "next_cursor": None,
    }


async def test_threads_are_created_listed_newest_first_and_read(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Threads: 201 with the object, newest first in the list, one by id."""
    headers = auth(container, "alice")
    first = await client.post("/api/threads", json={"title": "first"}, headers=headers)
    second = await client.post("/api/threads", headers=headers)
    assert first.status_code == second.status_code == 201
    assert set(first.json()) == {
        "id",
        "title",
        "created_at",
        "active_run_id",
        "queued_run_ids",
        "origin",
    }
    assert first.json()["origin"] == "api"
    assert second.json()["title"] == "New chat"
    listed = (await client.get("/api/threads", headers=headers)).json()["threads"]
    assert [t["id"] for t in listed] == [second.json()["id"], first.json()["id"]]
    one = await client.get(f"/api/threads/{first.json()['id']}", headers=headers)
    assert one.json() == first.json()


async def test_a_message_runs_the_agents_and_replays_its_events(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A message runs triage then the specialist; the run's events are stored in order with
    seq 1..n and exactly one final event, and `after` replays from any point."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    body = await send(client, headers, thread_id, "What is (12 + 3) * 4?")

    run, message = body["run"], body["message"]
    assert run["status"] == "completed" and run["route"] == "math" and run["error"] is None
    assert run["finished_at"] is not None
    assert message["role"] == "assistant" and message["content"] == "(12 + 3) * 4 = 60"
    assert message["run_id"] == run["id"] and message["thread_id"] == thread_id

    events = (await client.get(f"/api/runs/{run['id']}/events", headers=headers)).json()["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [(e["type"], e["agent"]) for e in events] == [
        ("run_started", None),
        ("agent_started", "triage"),
        ("agent_completed", "triage"),
        ("agent_started", "math"),
        ("tool_executing", "math"),
        ("tool_completed", "math"),
        ("agent_thinking", "math"),
        ("agent_completed", "math"),
        ("run_completed", None),
    ]
    assert events[0]["data"]["request_id"]
    call_id = events[4]["data"]["call_id"]
    assert events[4]["data"] == {
        "tool": "calculator",
        "input": '{"expression": "(12 + 3) * 4"}',
        "call_id": call_id,
    }
    assert events[5]["data"] == {
        "tool": "calculator",
        "output": "60",
        "call_id": call_id,
        "ok": True,
    }
    assert events[6]["data"] == {"text": "(12 + 3) * 4 = 60"}
    assert events[-1]["data"]["message"] == message
    assert events[-1]["data"]["usage"] == run["usage"]
    assert run["usage"]["prompt_tokens"] > 0 and run["usage"]["completion_tokens"] > 0
    assert all(e["run_id"] == run["id"] and e["thread_id"] == thread_id for e in events)

    after = await client.get(f"/api/runs/{run['id']}/events?after=5", headers=headers)
    assert [e["seq"] for e in after.json()["events"]] == [6, 7, 8, 9]
    assert (await client.get(f"/api/runs/{run['id']}", headers=headers)).json() == run

    messages = (await client.get(f"/api/threads/{thread_id}/messages", headers=headers)).json()
    assert [(m["role"], m["run_id"]) for m in messages["messages"]] == [
        ("user", run["id"]),
        ("assistant", run["id"]),
    ]


async def test_history_and_general_routes(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """`history` answers from the user's own earlier messages; `general` from the model."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    await send(client, headers, thread_id, "what is 2 + 2?")
    history = await send(client, headers, thread_id, "What did I ask before?")
    assert history["run"]["route"] == "history"
    assert "what is 2 + 2?" in history["message"]["content"]
    general = await send(client, headers, thread_id, "Tell me about the sea")
    assert general["run"]["route"] == "general"
    assert "Tell me about the sea" in general["message"]["content"]


async def test_a_failed_run_is_200_with_its_error_and_no_assistant_message(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A failed run answers 200 with `failed` and its error; the user's message stays stored,
    no assistant message is written, and the final event says why."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    body = await send(client, headers, thread_id, "what is 5 / 0?")
    assert body["run"]["status"] == "failed"
    assert body["run"]["error"] == {"code": "tool_error", "message": "division by zero"}
    assert body["message"] is None
    messages = (await client.get(f"/api/threads/{thread_id}/messages", headers=headers)).json()
    assert [m["role"] for m in messages["messages"]] == ["user"]
    events = (await client.get(f"/api/runs/{body['run']['id']}/events", headers=headers)).json()[
        "events"
    ]
    assert [e["type"] for e in events if e["type"] in FINAL_EVENT_TYPES] == ["run_failed"]
    assert events[-1]["data"] == {"error": body["run"]["error"]}


async def test_one_run_at_a_time_per_thread(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """While a thread's run is running a second message is 409 `run_in_progress` and stores
    nothing; another thread of the same user is not blocked; after the cancel it works again."""
    install_chaos(container)
    headers = auth(container, "alice")
    busy, other = await new_thread(client, headers), await new_thread(client, headers)
    hanging = asyncio.create_task(send(client, headers, busy, "[drill:hang]"))
    run_id = await wait_for_run(client, headers, busy)

    second = await client.post(
        f"/api/threads/{busy}/messages", json={"content": "hello?"}, headers=headers
    )
    assert_error(second, 409, "run_in_progress")
    assert second.json()["error"]["run_id"] == run_id  # the run to follow or cancel
    thread = (await client.get(f"/api/threads/{busy}", headers=headers)).json()
    assert thread["active_run_id"] == run_id
    assert (await send(client, headers, other, "what is 1 + 1?"))["run"]["status"] == "completed"

    cancelled = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    assert cancelled.status_code == 202
    assert cancelled.json()["run"]["status"] == "cancelled"
    assert (await hanging)["run"]["status"] == "cancelled"
    thread = (await client.get(f"/api/threads/{busy}", headers=headers)).json()
    assert thread["active_run_id"] is None
    again = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    assert_error(again, 409, "conflict")
    assert (await send(client, headers, busy, "what is 3 + 3?"))["message"][
        "content"
    ] == "3 + 3 = 6"

    messages = (await client.get(f"/api/threads/{busy}/messages", headers=headers)).json()
    assert "hello?" not in [m["content"] for m in messages["messages"]]
    events = (await client.get(f"/api/runs/{run_id}/events", headers=headers)).json()["events"]
    assert [e["type"] for e in events][-1] == "run_cancelled"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert leaks(container) == NO_LEAKS


async def test_another_users_objects_are_not_found(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Another user's thread, messages, run, events and cancel are 404, as if absent."""
    alice, mallory = auth(container, "alice"), auth(container, "mallory")
    thread_id = await new_thread(client, alice)
    run_id = (await send(client, alice, thread_id, "what is 1 + 2?"))["run"]["id"]
    for method, path, body in [
        ("GET", f"/api/threads/{thread_id}", None),
        ("GET", f"/api/threads/{thread_id}/messages", None),
        ("POST", f"/api/threads/{thread_id}/messages", {"content": "hi"}),
        ("GET", f"/api/runs/{run_id}", None),
        ("GET", f"/api/runs/{run_id}/events", None),
        ("POST", f"/api/runs/{run_id}/cancel", None),
    ]:
        response = await client.request(method, path, json=body, headers=mallory)
        assert_error(response, 404, "not_found")
    assert (await client.get("/api/threads", headers=mallory)).json() == {
        "threads": [],
        "next_cursor": None,
    }
    messages = (await client.get(f"/api/threads/{thread_id}/messages", headers=alice)).json()
    assert len(messages["messages"]) == 2  # mallory's message was not stored


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/threads/not-a-uuid"),
        ("GET", "/api/threads/not-a-uuid/messages"),
        ("GET", f"/api/threads/{UNKNOWN_ID}"),
        ("GET", "/api/runs/%20"),
        ("GET", f"/api/runs/{UNKNOWN_ID}/events"),
        ("POST", "/api/runs/1234/cancel"),
        ("GET", "/api/nowhere"),
    ],
)
async def test_unknown_and_malformed_ids_are_404(
    container: AppContainer, client: httpx.AsyncClient, method: str, path: str
) -> None:
    """A malformed or unknown id is 404 `not_found`, never a 500."""
    assert_error(
        await client.request(method, path, headers=auth(container, "alice")), 404, "not_found"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic YWxpY2U6eA=="},
        {"Authorization": "Bearer not.a.jwt"},
    ],
)
async def test_requests_without_a_valid_token_are_401(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """Missing, malformed or foreign tokens are 401 `unauthorized`."""
    assert_error(await client.get("/api/threads", headers=headers), 401, "unauthorized")


async def test_bad_bodies_get_the_contracts_error_codes(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Bad JSON is 400, a bad field 422 naming it, an oversized body 413; nothing is stored."""
    headers = auth(container, "alice") | {"Content-Type": "application/json"}
    thread_id = await new_thread(client, headers)
    url = f"/api/threads/{thread_id}/messages"
    settings = container.settings()

    assert_error(await client.post(url, content=b"{not json", headers=headers), 400, "invalid_json")
    for body, field in [
        ({}, "content"),
        ({"content": 5}, "content"),
        ({"content": ""}, "content"),
        ({"content": "   "}, "content"),
        ({"content": "x" * (settings.max_message_chars + 1)}, "content"),
        ({"content": "hi", "extra": 1}, "extra"),
        ([1, 2], "body"),
    ]:
        response = await client.post(url, json=body, headers=headers)
        assert_error(response, 422, "validation_error")
        assert response.json()["error"]["message"].startswith(field)
    huge = b'{"content": "' + b"x" * settings.max_body_bytes + b'"}'
    assert_error(await client.post(url, content=huge, headers=headers), 413, "payload_too_large")
    title = await client.post("/api/threads", json={"title": 7}, headers=headers)
    assert_error(title, 422, "validation_error")
    for after in ("-1", "\u00b2", "1.5", "x"):
        assert_error(
            await client.get(
                f"/api/runs/{uuid.uuid4()}/events", params={"after": after}, headers=headers
            ),
            422,
            "validation_error",
        )
    messages = (await client.get(f"/api/threads/{thread_id}/messages", headers=headers)).json()
    assert messages == {"messages": [], "next_cursor": None}


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    """A valid incoming X-Request-ID is echoed; otherwise a new UUID is given, even on errors."""
    echoed = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    made = await client.get("/api/threads", headers={"X-Request-ID": "bad id with spaces"})
    assert made.status_code == 401
    uuid.UUID(made.headers["x-request-id"])


async def test_a_server_error_is_500_internal_error_without_details(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """An unexpected exception is a JSON 500 `internal_error` with the request id and no trace,
    and the next request is served normally."""

    def explode() -> None:
        raise RuntimeError("secret internal detail")

    container.request.threads.override(providers.Callable(explode))
    headers = auth(container, "alice")
    response = await client.get("/api/threads", headers=headers | {"X-Request-ID": "req-500"})
    assert_error(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "req-500"
    assert "secret" not in response.text and "Traceback" not in response.text
    container.request.threads.reset_override()
    assert (await client.get("/api/threads", headers=headers)).status_code == 200
    assert leaks(container) == NO_LEAKS


async def test_a_handlers_own_connection_error_is_500_not_unavailable(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Only the database's failures to connect are 503 `unavailable`: any other
    `ConnectionError` (or `TimeoutError`) in a handler is a bug, 500 `internal_error`."""
    for error in (ConnectionError("a socket of its own"), TimeoutError("a wait of its own")):

        def fail(error: Exception = error) -> None:
            raise error

        container.request.threads.override(providers.Callable(fail))
        response = await client.get("/api/threads", headers=auth(container, "alice"))
        assert_error(response, 500, "internal_error")
        container.request.threads.reset_override()
    assert leaks(container) == NO_LEAKS


async def test_wrong_method_is_a_json_405(client: httpx.AsyncClient) -> None:
    """A wrong method gets the contract's error body."""
    assert_error(await client.delete("/api/threads"), 405, "method_not_allowed")


async def test_cancelling_a_run_no_live_task_owns_ends_it_in_the_database(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A run executing in no task of this process (another worker's, a dead one's) is still
    cancelled: terminal state plus one final event numbered after the stored ones."""
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    run_id = await orphan_run(container, thread_id=thread_id, user_id="alice", events=1)

    response = await client.post(f"/api/runs/{run_id}/cancel", headers=headers)

    assert response.status_code == 202
    assert response.json()["run"]["status"] == "cancelled"
    events = (await client.get(f"/api/runs/{run_id}/events", headers=headers)).json()["events"]
    assert [(e["seq"], e["type"]) for e in events] == [(1, "run_started"), (2, "run_cancelled")]


async def test_a_run_whose_agents_cannot_be_built_still_ends(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """If building a run's agents fails, the run ends `failed` with one final event and its
    thread is not left locked."""

    def broken() -> None:
        raise RuntimeError("misconfigured agent")

    container.request.supervisor.override(providers.Callable(broken))
    headers = auth(container, "alice")
    thread_id = await new_thread(client, headers)
    body = await send(client, headers, thread_id, "what is 1 + 1?")
    container.request.supervisor.reset_override()

    assert body["run"]["status"] == "failed"
    assert body["run"]["error"]["code"] == "internal_error"
    events = (await client.get(f"/api/runs/{body['run']['id']}/events", headers=headers)).json()
    assert [e["type"] for e in events["events"]] == ["run_failed"]
    assert (await send(client, headers, thread_id, "what is 1 + 1?"))["run"][
        "status"
    ] == "completed"
    assert leaks(container) == NO_LEAKS


async def test_the_chat_page_and_its_assets_are_served_without_a_cdn(
    client: httpx.AsyncClient,
) -> None:
    """`GET /` is the page, with a policy that lets it load only from this server; its script
    and styles come from /static; no token is needed."""
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/app.js">' in page.text
    assert "http://" not in page.text and "https://" not in page.text
    script = await client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "https://" not in script.text
    assert (await client.get("/static/style.css")).status_code == 200
    assert (await client.get("/static/nothing.js")).status_code == 404


async def test_the_chat_page_links_its_icon_and_favicon_ico_answers_it(
    client: httpx.AsyncClient,
) -> None:
    """The page links its SVG icon; `/favicon.ico`, where browsers and other clients look for an
    icon unasked, answers the same SVG, with no token."""
    page = await client.get("/")
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page.text
    linked = await client.get("/static/favicon.svg")
    icon = await client.get("/favicon.ico")
    for answer in (linked, icon):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("image/svg+xml")
    assert icon.content == linked.content and icon.content.startswith(b"<svg")
    assert icon.headers["x-content-type-options"] == "nosniff"
