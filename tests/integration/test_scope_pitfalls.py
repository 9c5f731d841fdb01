"""Each measured pitfall of dependency-injector request scopes (DESIGN.md, "Scopes") has a test
here that fails if it comes back."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.triage import TriageAgent
from src.container import AppContainer, RequestContainer, build_container, request_scope
from src.runs.domain import RunContext, utcnow
from src.scoping import RequestScope, ScopeError, current_scope
from src.services.database.models import Base, ThreadRow
from src.settings import Settings
from tests.helpers import NO_LEAKS, leaks


def _context() -> RunContext:
    return RunContext(run_id=str(uuid.uuid4()), thread_id=str(uuid.uuid4()), user_id="u")


async def _thread_count(container: AppContainer) -> int:
    async with container.database().engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(ThreadRow))).scalar_one())


async def test_disposing_a_scope_never_shuts_the_app_engine_down(container: AppContainer) -> None:
    """Pitfall 1: a scope disposes its own session only; the app's engine (and its pool: a
    dispose would replace it) is the same object before and after, and keeps serving."""
    engine = container.database().engine
    pool = engine.pool
    for _ in range(3):
        async with request_scope(container):
            session = container.request.session()
            async with session.begin():
                await session.execute(text("SELECT 1"))
    assert container.engine() is engine and container.database().engine is engine
    assert engine.pool is pool
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    assert leaks(container) == NO_LEAKS


async def test_scopes_leave_nothing_registered_on_the_app(container: AppContainer) -> None:
    """Pitfall 2: thousands of scopes leave no scope alive and nothing registered on the
    app's providers, so the per-request cost cannot grow with traffic."""
    request = container.request

    def registrations() -> dict[str, Any]:
        """What every app and request provider has registered on it (overrides, parents)."""
        app_level = {f"app.{n}": p.overridden for n, p in container.providers.items()}
        request_level = {f"request.{n}": p.overridden for n, p in request().providers.items()}
        return app_level | request_level

    before = registrations()
    scopes: list[weakref.ref[RequestScope]] = []
    for _ in range(2000):
        async with request_scope(container) as scope:
            current_scope().set(request.run_context, _context())
            request.supervisor()
            request.chat()
        scopes.append(weakref.ref(scope))
    del scope
    gc.collect()
    assert [ref for ref in scopes if ref() is not None] == []
    assert registrations() == before
    assert leaks(container) == NO_LEAKS


async def test_a_scope_with_nothing_async_opened_disposes_cleanly(container: AppContainer) -> None:
    """Pitfall 3: a scope that opened nothing, or only synchronous objects, exits without
    awaiting a None, and an unused scope is not even counted as opened."""
    async with request_scope(container) as unused:
        pass
    assert not unused.is_open and unused.closed

    async with request_scope(container) as scope:
        assert container.request.calculator() is not container.request.calculator()
        assert not scope.is_open  # factories alone store nothing in the scope
    metrics = container.metrics()
    assert metrics.value("isochat_request_scope_seconds_count") == 0
    assert leaks(container) == NO_LEAKS


async def test_session_is_closed_and_uncommitted_work_rolled_back_after_an_exception(
    container: AppContainer,
) -> None:
    """Pitfall 4: the scope never sees the request's exception, so it never commits; closing
    the session rolls back whatever the use case did not commit itself."""
    with pytest.raises(RuntimeError, match="request failed"):  # noqa: PT012 - a whole request
        async with request_scope(container):
            session = container.request.session()
            await session.begin()
            session.add(
                ThreadRow(id=str(uuid.uuid4()), user_id="u", title="t", created_at=utcnow())
            )
            await session.flush()
            raise RuntimeError("request failed")
    assert await _thread_count(container) == 0
    assert leaks(container) == NO_LEAKS


async def test_calling_a_request_provider_on_the_class_fails_clearly_and_breaks_nothing(
    settings: Settings,
) -> None:
    """Pitfall 5: a request provider called on the class (or outside any scope) raises a clear
    error and changes no state: later containers and scopes work."""
    with pytest.raises(ScopeError, match="no request scope is active"):
        RequestContainer.session()
    with pytest.raises(ScopeError):
        RequestContainer.emitter()

    container = build_container(settings)
    try:
        with pytest.raises(ScopeError):
            container.request.session()
        async with container.database().engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with request_scope(container):
            thread = await container.request.threads().create_thread(user_id="u", title="ok")
        assert thread.title == "ok"
        assert leaks(container) == NO_LEAKS
    finally:
        await container.database().dispose()


async def test_session_first_used_in_a_child_task_is_disposed_by_the_scope(
    container: AppContainer,
) -> None:
    """Pitfall 6: a session first resolved inside a child task (a streaming body, a
    create_task) belongs to the request's scope and is closed with it."""
    async with request_scope(container):

        async def child() -> AsyncSession:
            session: AsyncSession = container.request.session()
            async with session.begin():
                await session.execute(text("SELECT 1"))
            return session

        from_child = await asyncio.create_task(child())
        assert container.request.session() is from_child  # the same scope, the same session
        assert container.metrics().value("isochat_db_sessions_open") == 1
    assert leaks(container) == NO_LEAKS


async def test_each_scope_builds_its_own_objects(container: AppContainer) -> None:
    """Within a scope one session and one emitter; across scopes, never the same; agents are
    new at every call."""
    seen = []
    for _ in range(2):
        async with request_scope(container):
            current_scope().set(container.request.run_context, _context())
            request = container.request
            assert request.session() is request.session()
            assert request.emitter() is request.emitter()
            assert request.triage() is not request.triage()
            assert isinstance(request.triage(), TriageAgent)
            seen.append((request.session(), request.emitter()))
    assert seen[0][0] is not seen[1][0]
    assert seen[0][1] is not seen[1][1]


async def test_a_scope_runs_one_run(container: AppContainer) -> None:
    """The run context is set once per scope: a second run needs a scope of its own."""
    async with request_scope(container):
        current_scope().set(container.request.run_context, _context())
        with pytest.raises(ScopeError, match="already set"):
            current_scope().set(container.request.run_context, _context())


async def test_a_closer_that_fails_does_not_keep_the_others_open(container: AppContainer) -> None:
    """One object that fails to close is logged; the scope still closes everything else."""
    closed: list[str] = []

    async def broken() -> None:
        raise OSError("close failed")

    async def fine() -> None:
        closed.append("fine")

    async with request_scope(container) as scope:
        scope.store("a", object(), closer=fine)
        scope.store("b", object(), closer=broken)
    assert closed == ["fine"]
    assert leaks(container) == NO_LEAKS


async def test_a_cancelled_request_still_closes_its_session(container: AppContainer) -> None:
    """A request cancelled mid-transaction gives its connection back and closes its session."""
    started = asyncio.Event()

    async def request() -> None:
        async with request_scope(container):
            session = container.request.session()
            async with session.begin():
                await session.execute(text("SELECT 1"))
                started.set()
                await asyncio.Event().wait()

    task = asyncio.create_task(request())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leaks(container) == NO_LEAKS
