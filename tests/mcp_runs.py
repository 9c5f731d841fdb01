"""What the MCP tests do over and over: start runs that call a server's tools, wait for what a
server process recorded or a run's end, and read the calls' results."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from dependency_injector import providers

from src.container import AppContainer
from tests.helpers import auth, new_thread, send

WITHIN_S = 60.0  # liveness guards only: a deadlock fails here instead of hanging the suite


def with_settings(container: AppContainer, **changes: Any) -> None:
    """The container's settings, with ``changes`` (for what one test sets differently)."""
    container.settings.override(providers.Object(container.settings().model_copy(update=changes)))


async def ask(
    container: AppContainer, client: httpx.AsyncClient, user: str, content: str
) -> dict[str, Any]:
    headers = auth(container, user)
    thread = await new_thread(client, headers)
    return await asyncio.wait_for(send(client, headers, thread, content), WITHIN_S)


async def start(container: AppContainer, client: httpx.AsyncClient, user: str, content: str) -> str:
    """A run started in the background: its id."""
    headers = auth(container, user)
    thread = await new_thread(client, headers)
    response = await client.post(
        f"/api/threads/{thread}/runs", json={"content": content}, headers=headers
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run"]["id"]
    return run_id


async def run_of(
    container: AppContainer, client: httpx.AsyncClient, user: str, run_id: str
) -> dict[str, Any]:
    response = await client.get(f"/api/runs/{run_id}", headers=auth(container, user))
    body: dict[str, Any] = response.json()
    return body


async def until(condition: Any, what: str) -> Any:
    """``condition()``'s first true value, awaited if it is a coroutine (polled: it reads
    another process's records, or what a run's teardown has released)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN_S
    while True:
        found = condition()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


async def ended(
    container: AppContainer, client: httpx.AsyncClient, user: str, run_id: str
) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        run = await run_of(container, client, user, run_id)
        return run if run["status"] in ("completed", "failed", "cancelled") else None

    run: dict[str, Any] = await until(finished, f"run {run_id} ends")
    return run


async def events_of(
    container: AppContainer, client: httpx.AsyncClient, user: str, run_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/api/runs/{run_id}/events", headers=auth(container, user))
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def completed_calls(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == "tool_completed"]
