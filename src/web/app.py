"""``create_app(container)``: the one place the web application is assembled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

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
            # Stopped and waited for before anything they use is closed: a lease renewal
            # must not find the database disposed under it.
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await shutdown(container)

    settings = container.settings()
    middleware = [Middleware(RequestScopeMiddleware, container=container)]
    if settings.cors_origin_list:
        # Outermost: a preflight is answered before anything else sees it.
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origin_list,
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "X-Request-ID",
                    "Last-Event-ID",
                    "x-api-key",
                ],
                expose_headers=[
                    "X-Request-ID",
                    "Retry-After",
                    "x-vercel-ai-ui-message-stream",
                    "X-Isochat-Thread-Id",
                    "X-Isochat-Run-Id",
                    "Location",
                    "Content-Location",
                ],
                max_age=600,
            ),
        )
    app = Starlette(
        routes=ROUTES,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.container = container
    return app
