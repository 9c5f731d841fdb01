"""``create_app(container)``: the one place the web application is assembled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from src.container import AppContainer, shutdown, startup
from src.web.errors import EXCEPTION_HANDLERS
from src.web.middleware import RequestScopeMiddleware
from src.web.routes import ROUTES


def create_app(container: AppContainer) -> Starlette:
    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await startup(container)
        # Runs that died with their process and whose leases have expired are ended before the
        # first request; then this process renews its leases and sweeps every third of a lease.
        await container.lease_keeper().beat()
        watchers = [
            asyncio.create_task(container.scope_monitor().watch()),
            asyncio.create_task(container.lease_keeper().keep()),
        ]
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            await shutdown(container)

    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(RequestScopeMiddleware, container=container)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.container = container
    return app
