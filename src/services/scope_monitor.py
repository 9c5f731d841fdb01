"""Watches request scopes: counts them for the metrics and reports the ones that never close.

A scope should close when its request or run ends, and a run ends by ``RUN_TIMEOUT_S``. One
still open well past that (``leak_after_s``) is a leak: it is logged once, with its request id,
so an operator can find the request that caused it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from src.scoping import RequestScope
from src.services.metrics import Metrics

log = logging.getLogger(__name__)


class ScopeMonitor:
    def __init__(
        self,
        metrics: Metrics,
        *,
        run_timeout_s: float,
        margin_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self.leak_after_s = run_timeout_s + margin_s
        self._clock = clock
        # Strong references on purpose: a scope dropped without being closed stays visible.
        self._open: dict[RequestScope, float] = {}
        self._reported: set[RequestScope] = set()

    def scope_opened(self, scope: RequestScope) -> None:
        self._metrics.request_scopes_open.inc()
        self._open[scope] = self._clock()

    def scope_closed(self, scope: RequestScope, seconds: float) -> None:
        self._metrics.request_scopes_open.dec()
        self._metrics.request_scope_seconds.observe(seconds)
        self._open.pop(scope, None)
        self._reported.discard(scope)

    def report_leaks(self) -> list[RequestScope]:
        """Log each scope open longer than ``leak_after_s`` (once); the ones found this time."""
        now = self._clock()
        leaked = [
            scope
            for scope, opened_at in self._open.items()
            if now - opened_at > self.leak_after_s and scope not in self._reported
        ]
        for scope in leaked:
            self._reported.add(scope)
            log.warning(
                "request scope leak: open for %.0f s, longer than the run timeout and its margin"
                " (%.0f s); request_id=%s",
                now - self._open[scope],
                self.leak_after_s,
                scope.label,
                extra={"request_id": scope.label},
            )
        return leaked

    async def watch(self) -> None:
        """Look for leaks a few times per ``leak_after_s``, until cancelled (app shutdown)."""
        interval = max(1.0, min(30.0, self.leak_after_s / 4))
        while True:
            await asyncio.sleep(interval)
            self.report_leaks()
