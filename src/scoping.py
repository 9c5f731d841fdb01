"""Request scopes for dependency-injector providers.

isochat keeps ONE long-lived ``RequestContainer`` per application. Its request-scoped providers
(``Scoped``, ``RequestResource``, ``ScopeValue``) keep their objects in the *current*
``RequestScope``, which a ``ContextVar`` points at. This avoids the measured pitfalls of a child
container per request:

- nothing is deep-copied per request (a child container costs 180-310 us; this costs a few us);
- nothing registers itself on the app's providers, so nothing accumulates request after request;
- ``shutdown_resources()`` is never used for request objects, so a scope can never shut the app's
  engine down: the scope disposes exactly the objects it opened, and nothing else;
- the ContextVar holds a *mutable* scope object, so a child task (a streaming body, a
  ``create_task``) that resolves a provider first still registers it on the same scope, which
  disposes it. ``ContextLocalResource`` loses such objects.

A provider called outside any scope raises ``ScopeError`` and changes no state, so calling one on
the container class by mistake cannot break later requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol

from dependency_injector import providers

log = logging.getLogger(__name__)

_current_scope: ContextVar[RequestScope | None] = ContextVar("isochat_request_scope", default=None)


class ScopeError(RuntimeError):
    """A request-scoped provider was used outside a request scope, or its value is missing."""


class ScopeObserver(Protocol):
    """Told when a scope really opens (its first object) and when it has been disposed."""

    def scope_opened(self, scope: RequestScope) -> None: ...

    def scope_closed(self, scope: RequestScope, seconds: float) -> None: ...


Closer = Callable[[], Awaitable[None]]


class RequestScope:
    """The objects of one request, and how to dispose of them: ``async with RequestScope():``.

    A scope costs nothing until a provider first resolves in it ("opens" it); a request that
    needs nothing from the container never opens one, and is not counted as an open scope.
    """

    __slots__ = (
        "__weakref__", "_closers", "_objects", "_observer", "_opened_at", "_token", "closed",
        "label",
    )  # fmt: skip

    def __init__(self, observer: ScopeObserver | None = None, *, label: str | None = None) -> None:
        self.label = label  # the request id, for logs about this scope
        self._objects: dict[object, Any] = {}
        self._closers: list[Closer] = []
        self._observer = observer
        self._opened_at: float | None = None
        self.closed = False

    async def __aenter__(self) -> RequestScope:
        """Make this the current scope of this context and of the tasks created inside it."""
        self._token = _current_scope.set(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        _current_scope.reset(self._token)
        await self.aclose()

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None and not self.closed

    def _ensure_open(self) -> None:
        if self.closed:
            raise ScopeError("this request scope has already been disposed")
        if self._opened_at is None:
            self._opened_at = time.perf_counter()
            if self._observer is not None:
                self._observer.scope_opened(self)

    def lookup(self, key: object) -> Any:
        """The object stored for ``key``; ``KeyError`` when there is none yet."""
        return self._objects[key]

    def store(self, key: object, value: Any, closer: Closer | None = None) -> None:
        self._ensure_open()
        self._objects[key] = value
        if closer is not None:
            self._closers.append(closer)

    def set(self, provider: providers.Provider[Any], value: Any) -> None:
        """Give the scope a value that ``provider`` returns from now on (e.g. the RunContext).

        Once only: objects built from the first value (an emitter bound to a run) would not
        follow a second one. A second run needs a scope of its own.
        """
        if not isinstance(provider, ScopeValue):
            raise TypeError(f"only a ScopeValue takes a value from the scope, not {provider!r}")
        if provider in self._objects:
            raise ScopeError(f"{provider.name} is already set in this request scope")
        self.store(provider, value)

    async def aclose(self) -> None:
        """Dispose every object this scope opened, newest first; safe to call twice.

        A closer that fails is logged and the others still run: one broken object must not
        leave the rest of the request's resources open. A closer must itself finish what it
        starts if cancelled (see ``Database.close_session``); a cancellation that arrives
        meanwhile is re-raised once every closer has run.
        """
        if self.closed:
            return
        self.closed = True
        closers, self._closers = self._closers, []
        self._objects.clear()
        cancelled = False
        try:
            for closer in reversed(closers):
                try:
                    await closer()
                except asyncio.CancelledError:
                    cancelled = True
                except Exception:
                    log.exception("a request-scoped object failed to close")
            if cancelled:
                raise asyncio.CancelledError
        finally:
            if self._opened_at is not None and self._observer is not None:
                self._observer.scope_closed(self, time.perf_counter() - self._opened_at)


def current_scope() -> RequestScope:
    scope = _current_scope.get()
    if scope is None:
        raise ScopeError(
            "no request scope is active: request-scoped providers can only be resolved inside "
            "`async with request_scope(...)` (the web middleware opens one per HTTP request)"
        )
    return scope


class _ScopeProvider(providers.Provider[Any]):
    """What the request-scoped providers share: how dependency-injector copies them when a
    container is instantiated."""

    def _copy(self, memo: dict[Any, Any]) -> _ScopeProvider:
        raise NotImplementedError

    def __deepcopy__(self, memo: dict[Any, Any] | None) -> _ScopeProvider:
        memo = {} if memo is None else memo
        copied: _ScopeProvider | None = memo.get(id(self))
        if copied is None:
            copied = memo[id(self)] = self._copy(memo)
            self._copy_overridings(copied, memo)
        return copied


class Scoped(_ScopeProvider):
    """One object per request scope: ``provides`` runs at the first use in each scope."""

    def __init__(self, provides: providers.Provider[Any]) -> None:
        self._provides = provides
        super().__init__()

    def _copy(self, memo: dict[Any, Any]) -> Scoped:
        return Scoped(providers.deepcopy(self._provides, memo))

    @property
    def related(self) -> Iterator[providers.Provider[Any]]:
        yield self._provides
        yield from super().related

    def _provide(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = current_scope()
        try:
            return scope.lookup(self)
        except KeyError:
            value = self._provides(*args, **kwargs)
            scope.store(self, value, closer=self._closer_for(value))
            return value

    def _closer_for(self, value: Any) -> Closer | None:
        return None


class RequestResource(Scoped):
    """A resource opened at its first use in a scope and closed when that scope is disposed.

    ``opener`` provides the object (synchronously: constructing an ``AsyncSession`` does no I/O,
    so dependants stay cheap synchronous calls); ``closer``, called with the object, returns the
    awaitable that closes it. The scope always runs the closer, whatever the request did. It
    never commits: closing a session rolls back what the use case did not commit itself.
    """

    def __init__(self, opener: providers.Provider[Any], *, closer: providers.Provider[Any]) -> None:
        self._closer = closer
        super().__init__(opener)

    def _copy(self, memo: dict[Any, Any]) -> RequestResource:
        return RequestResource(
            providers.deepcopy(self._provides, memo), closer=providers.deepcopy(self._closer, memo)
        )

    @property
    def related(self) -> Iterator[providers.Provider[Any]]:
        yield self._closer
        yield from super().related

    def _closer_for(self, value: Any) -> Closer:
        closer = self._closer
        return lambda: closer(value)


class ScopeValue(_ScopeProvider):
    """A value handed to the scope rather than made by it (``scope.set(provider, value)``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def _copy(self, memo: dict[Any, Any]) -> ScopeValue:
        return ScopeValue(self.name)

    def _provide(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return current_scope().lookup(self)
        except KeyError:
            raise ScopeError(f"{self.name} has not been set in this request scope") from None


class WithScopeValue:
    """Hands a value to the current scope, then builds what depends on it there:
    ``WithScopeValue(run_context, supervisor)(context)`` is the run's supervisor."""

    def __init__(self, value: ScopeValue, build: providers.Provider[Any]) -> None:
        self._value = value
        self._build = build

    def __call__(self, value: Any, *args: Any) -> Any:
        current_scope().set(self._value, value)
        return self._build(*args)
