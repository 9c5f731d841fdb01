"""Health and metrics: liveness, readiness with each check named, Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from src.services.database import repositories as repo
from src.services.llm import LLM
from src.web.answers import Live, Ready
from src.web.openapi import Operation, documented
from src.web.requests import container_of, json_response

READY_CHECK_TIMEOUT_S = 2.0
T = TypeVar("T")


@documented(Operation("The process answers", {200: Live}, authenticated=False))
async def live(_: Request) -> Response:
    body: Live = {"status": "ok"}
    return json_response(body)


@documented(
    Operation("Ready to serve: each check named", {200: Ready, 503: Ready}, authenticated=False)
)
async def ready(request: Request) -> Response:
    """Ready when the database answers a new client, its schema is at the newest migration,
    events can be delivered and the language model answers; otherwise 503 naming the failing
    checks. The checks run side by side, so the answer takes as long as the slowest one."""
    container = container_of(request)
    llm: LLM = container.llm()
    # The model caches its answer (and probes once at a time), so frequent readiness probes
    # from every load balancer cost the model server almost nothing.
    schema_current, broker_up, model_up = await asyncio.gather(
        _probe(container.database().schema_is_current),
        _probe(container.broker().ping),
        _probe(llm.is_available),
    )
    checks = {
        "database": "unavailable" if schema_current is None else "ok",
        "migrations": "unknown" if schema_current is None else "ok" if schema_current else "behind",
        "broker": "ok" if broker_up is not None else "unavailable",
        "model": "ok" if model_up else "unavailable",
    }
    failing = [name for name, state in checks.items() if state != "ok"]
    if not failing:
        healthy: Ready = {"status": "ok", "checks": checks}
        return json_response(healthy)
    body: Ready = {
        "status": "unavailable",
        "checks": checks,
        "error": {"code": "unavailable", "message": f"failing checks: {', '.join(failing)}"},
    }
    return json_response(body, 503)


async def _probe(check: Callable[[], Awaitable[T]]) -> T | bool | None:
    """What ``check`` answered (True when it answers nothing), or None when it failed or took
    longer than ``READY_CHECK_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            answer = await check()
    except Exception:
        return None
    return True if answer is None else answer


@documented(
    Operation(
        "Prometheus metrics",
        {200: None},
        authenticated=False,
        media={200: {"text/plain": {"schema": {"type": "string"}}}},
    )
)
async def metrics(request: Request) -> Response:
    container = container_of(request)
    paused = await _probe(
        lambda: container.database().read(repo.count_awaiting_approval)
    )  # counted in the database, so that every host says the same
    if isinstance(paused, int) and not isinstance(paused, bool):
        container.metrics().runs_awaiting_approval.set(paused)
    return Response(
        container.metrics().render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
