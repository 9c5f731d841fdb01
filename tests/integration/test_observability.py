"""What operators see: metrics moved by the code paths, ids on every log line, readiness that
follows the database, and scopes that never close reported as leaks."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from dependency_injector import providers
from prometheus_client.parser import text_string_to_metric_families

from src.container import AppContainer, build_container, request_scope
from src.logs import ConsoleFormatter, ContextFilter, JsonFormatter, bind, fresh_context
from src.services.database.engine import Database
from src.services.database.migrations import upgrade_to_head
from src.services.scope_monitor import ScopeMonitor
from src.settings import Settings
from src.web.app import create_app
from tests.fakes import install_chaos
from tests.helpers import NO_LEAKS, auth, leaks, new_thread, send, wait_for_run
from tests.ws import AsgiSocket

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    text = (await client.get("/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_metrics_move_by_the_right_amounts(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A completed, a failed, a timed-out and a cancelled run move the run counters, the
    duration histogram and the failure counters by exactly their share; afterwards the scope,
    agent and session gauges are back to 0, and a socket counts while it is open."""
    install_chaos(container)
    container.settings.override(
        providers.Object(container.settings().model_copy(update={"run_timeout_s": 1.0}))
    )
    headers = auth(container, "olive")
    threads = [await new_thread(client, headers) for _ in range(4)]
    before = await scrape(client)

    await send(client, headers, threads[0], "what is 2 + 2?")
    await send(client, headers, threads[1], "what is 2 / 0?")
    await send(client, headers, threads[2], "[drill:hang] slow")
    hanging = asyncio.create_task(send(client, headers, threads[3], "[drill:hang] cancel me"))
    run_id = await wait_for_run(client, headers, threads[3])
    await client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    await hanging
    assert leaks(container) == NO_LEAKS
    after = await scrape(client)

    assert moved(before, after, "isochat_runs_total", status="completed") == 1
    assert moved(before, after, "isochat_runs_total", status="failed") == 2
    assert moved(before, after, "isochat_runs_total", status="cancelled") == 1
    assert moved(before, after, "isochat_run_seconds_count") == 4
    assert moved(before, after, "isochat_run_seconds_sum") >= 1.0  # the timed-out one alone
    failures = "isochat_agent_failures_total"
    assert moved(before, after, failures, agent="math", code="tool_error") == 1
    assert moved(before, after, failures, agent="triage", code="timeout") == 1
    # Every request that used the container opened one scope: 4 messages, the cancel, and
    # the run lookups while waiting; each one was observed when it was disposed.
    assert moved(before, after, "isochat_request_scope_seconds_count") >= 5
    for gauge in (
        "isochat_request_scopes_open",
        "isochat_agent_instances_live",
        "isochat_db_sessions_open",
        "isochat_ws_connections",
    ):
        assert after[(gauge, ())] == 0, gauge

    socket = AsgiSocket(create_app(container), token=container.tokens().issue("olive"))
    async with socket:
        await socket.send('{"type": "ping"}')
        await socket.recv()
        assert (await scrape(client))[("isochat_ws_connections", ())] == 1
    assert (await scrape(client))[("isochat_ws_connections", ())] == 0


async def test_every_log_line_of_a_run_carries_its_ids(
    container: AppContainer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Each line logged while a run works carries that run's request, user, thread and run
    ids, and two concurrent runs never log each other's."""
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(ContextFilter())
    users = ("ann", "ben")
    threads = {u: await new_thread(client, auth(container, u)) for u in users}

    async def chat(user: str) -> dict[str, str]:
        response = await client.post(
            f"/api/threads/{threads[user]}/messages",
            json={"content": "what is 12 * 12?"},
            headers=auth(container, user) | {"X-Request-ID": f"req-{user}"},
        )
        run = response.json()["run"]
        return {"request_id": f"req-{user}", "user_id": user, "thread_id": threads[user],
                "run_id": run["id"]}  # fmt: skip

    caplog.clear()
    expected = await asyncio.gather(*(chat(u) for u in users))

    run_lines = [r for r in caplog.records if r.name.startswith(("src.agents", "src.services"))]
    assert len(run_lines) >= 2 * 6  # run started/ended and each agent's start and end
    seen = {
        (r.request_id, r.user_id, r.thread_id, r.run_id)  # type: ignore[attr-defined]
        for r in run_lines
    }
    assert seen == {(e["request_id"], e["user_id"], e["thread_id"], e["run_id"]) for e in expected}
    access = [
        r for r in caplog.records if r.name == "isochat.access" and "messages" in r.msg % r.args
    ]
    assert {r.request_id for r in access} == {"req-ann", "req-ben"}  # type: ignore[attr-defined]


def test_log_lines_render_as_json_or_console_with_their_ids() -> None:
    """`LOG_FORMAT=json` gives one JSON object a line; console shows the ids at the end."""
    record = logging.LogRecord("src.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    with fresh_context(request_id="r-1"):
        bind(run_id="run-1")
        ContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello you"
    assert line["request_id"] == "r-1"
    assert line["run_id"] == "run-1"
    assert "user_id" not in line
    assert ConsoleFormatter().format(record).endswith("hello you [request_id=r-1 run_id=run-1]")


async def test_readiness_follows_the_database_file(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """Readiness is 503 naming the database while its file is gone, liveness stays 200, and
    readiness is 200 again once the file is back."""
    path = Path(container.settings().database_url.removeprefix("sqlite+aiosqlite:///"))
    assert (await client.get("/health/ready")).status_code == 200
    aside = path.with_suffix(".aside")
    path.rename(aside)  # noqa: ASYNC240 - a rename, nothing to wait for
    try:
        down = await client.get("/health/ready")
        assert down.status_code == 503
        assert down.json()["checks"]["database"] == "unavailable"
        assert "database" in down.json()["error"]["message"]
        assert (await client.get("/health/live")).status_code == 200
    finally:
        aside.rename(path)
    up = await client.get("/health/ready")
    assert up.status_code == 200
    assert up.json()["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "broker": "ok",
        "model": "ok",
    }


async def test_readiness_reports_a_schema_behind_the_migrations(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """A database whose schema is not at the newest migration is not ready."""
    async with container.database().engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'older'")
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"] == "behind"


async def test_a_scope_open_past_the_run_timeout_is_logged_as_a_leak(
    container: AppContainer, caplog: pytest.LogCaptureFixture
) -> None:
    """A scope still open after the run timeout plus the margin is logged once, with its
    request id; scopes that close in time are never reported."""
    now = [0.0]
    monitor = ScopeMonitor(container.metrics(), run_timeout_s=10, margin_s=5, clock=lambda: now[0])
    container.scope_monitor.override(providers.Object(monitor))
    async with request_scope(container, request_id="closes-in-time"):
        container.request.session()
    stuck = request_scope(container, request_id="stuck-request")
    async with stuck:
        container.request.session()
        now[0] = 14.0
        assert monitor.report_leaks() == []
        now[0] = 16.0
        with caplog.at_level(logging.WARNING):
            assert monitor.report_leaks() == [stuck]
            assert monitor.report_leaks() == []  # once
        [line] = [r for r in caplog.records if "leak" in r.getMessage()]
        assert "stuck-request" in line.getMessage()
        assert line.request_id == "stuck-request"  # type: ignore[attr-defined]
    assert "closes-in-time" not in caplog.text
    assert leaks(container) == NO_LEAKS


def background_tasks() -> list[asyncio.Task[object]]:
    """The app's watchers: the lease keeper and the scope watch."""
    names = ("LeaseKeeper.keep", "ScopeMonitor.watch")
    return [t for t in asyncio.all_tasks() if any(n in repr(t.get_coro()) for n in names)]


class DisposalWatch(Database):
    """The database, noting which of the app's watchers were still running when it was
    disposed."""

    running_at_dispose: list[str] | None = None

    async def dispose(self) -> None:
        DisposalWatch.running_at_dispose = [repr(t.get_coro()) for t in background_tasks()]
        await super().dispose()


async def test_the_apps_watchers_are_stopped_before_the_database_is_disposed(
    settings: Settings,
) -> None:
    """At shutdown the lease keeper and the scope watch are stopped and waited for before the
    database is disposed: a lease renewal never finds the database gone under it."""
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    container.database.override(
        providers.Singleton(
            DisposalWatch,
            engine=container.engine,
            metrics=container.metrics,
            timeout_s=settings.db_timeout_s,
        )
    )
    app = create_app(container)  # its lifespan's end shuts the container down
    async with app.router.lifespan_context(app):
        assert len(background_tasks()) == 2
    assert DisposalWatch.running_at_dispose == []
