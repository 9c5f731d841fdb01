"""Per-user limits that hold across workers and hosts: a request rate, and open sockets.

Both are kept in the broker's Redis when ``ISOCHAT_BROKER_URL`` is ``redis://`` (every worker of
every host counts against the same numbers), in process memory otherwise (one process: the
settings refuse ``WORKERS`` > 1 without Redis). One user's limits never touch another's.

Request rate
    The maintained ``limits`` library (``limits.aio``; ``async+redis://`` storage on redis-py,
    or ``memory://``). The settings describe a token bucket: ``rate_limit_burst`` requests at once,
    ``rate_limit_per_minute`` sustained. ``limits`` has no token bucket; its moving window ("at
    most N hits in any W seconds", exact, one short Redis list per user) keeps both promises
    with N = burst and W = 60 * burst / per_minute seconds: never more than ``burst`` at once,
    and ``per_minute`` a minute over time. The defaults (60 / 300) give 60 hits in any 12 s. W is
    rounded up to whole seconds (the library's unit), which can only lower the sustained rate
    (burst 7 at 300 a minute: 7 per 2 s, 210 a minute). Where a bucket hands a token back every
    60 / per_minute s, the window frees a slot when the oldest hit in it is W s old; a refusal's
    ``Retry-After`` says when that is.

Open sockets
    In Redis, one sorted set per user: members are socket ids, scored by the time (Redis's own
    clock, so hosts' clocks do not matter) until which each one counts. A socket renews its score
    every ``ttl_s / 3``; a host that dies stops renewing, so its sockets stop counting within
    ``ttl_s``. The count is the members whose score is in the future; admitting a socket checks
    and adds it in one script, so two workers cannot both take the last place.

Redis down
    Limits fail open: a Redis call that fails or takes longer than ``ISOCHAT_REDIS_TIMEOUT_S``
    lets the request or socket through, one warning is logged when the outage starts (and one
    line when it ends), and Redis is left alone for ``RETRY_S`` so that a hung Redis costs at
    most one timeout per ``RETRY_S``, not one per request. Never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import redis.exceptions
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from src.services.errors import RateLimited
from src.services.redis_client import redis_client

log = logging.getLogger(__name__)

# After a failure, Redis is not asked again for this long: requests pass without waiting.
RETRY_S = 5.0
SOCKET_TTL_S = 30.0

_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    StorageError,
    redis.exceptions.RedisError,
    OSError,
    TimeoutError,
)

T = TypeVar("T")


class FailOpen:
    """Runs Redis calls for a limit; while Redis is unreachable, answers ``fallback`` instead.
    A call is unreachable Redis too when it takes longer than ``timeout_s`` (None: no bound,
    for storage in memory, which never waits)."""

    def __init__(
        self, what: str, *, timeout_s: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._what = what
        self._timeout_s = timeout_s
        self._clock = clock
        self._down_until: float | None = None

    async def call(self, operation: Callable[[], Awaitable[T]], *, fallback: T) -> T:
        if self._down_until is not None and self._clock() < self._down_until:
            return fallback
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await operation()
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return fallback
        self._recovered()
        return result

    def _failed(self, exc: BaseException) -> None:
        if self._down_until is None:  # once per outage, not once per request
            log.warning("%s: Redis is unreachable (%r); allowing until it is back", self._what, exc)
        self._down_until = self._clock() + RETRY_S

    def _recovered(self) -> None:
        if self._down_until is not None:
            log.info("%s: Redis is reachable again", self._what)
            self._down_until = None


def window_seconds(*, per_minute: int, burst: int) -> int:
    """W in "``burst`` hits in any W seconds": the time a bucket takes to refill, rounded up."""
    return max(1, math.ceil(60 * burst / per_minute))


class RateLimiter:
    """Counts each user's requests against a moving window shared by every worker using
    ``storage_url`` (the broker's URL: ``memory://`` or ``redis://``). With Redis, ``timeout_s``
    (``ISOCHAT_REDIS_TIMEOUT_S``) bounds each call."""

    def __init__(
        self,
        *,
        per_minute: int,
        burst: int,
        storage_url: str = "memory://",
        key_prefix: str = "isochat:limits",
        timeout_s: float | None = None,
    ) -> None:
        self._item = RateLimitItemPerSecond(
            burst, window_seconds(per_minute=per_minute, burst=burst), namespace="rate"
        )
        self._storage, self._client = _storage_for(
            storage_url, key_prefix=key_prefix, timeout_s=timeout_s
        )
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._redis = FailOpen("rate limiter", timeout_s=timeout_s)

    async def check(self, user_id: str) -> None:
        """Count one request of ``user_id``, or raise ``RateLimited`` saying when to retry."""
        allowed = await self._redis.call(
            lambda: self._strategy.hit(self._item, user_id), fallback=True
        )
        if not allowed:
            retry_after = await self._retry_after(user_id)
            raise RateLimited(
                f"too many requests; retry in {retry_after} s", retry_after_s=retry_after
            )

    async def _retry_after(self, user_id: str) -> int:
        stats = await self._redis.call(
            lambda: self._strategy.get_window_stats(self._item, user_id), fallback=None
        )
        if stats is None:
            return 1
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class SparseExpiryMemoryStorage(MemoryStorage):
    """``limits``' storage in memory, dropping expired hits at most once per
    ``EXPIRY_INTERVAL_S``. As shipped, every hit starts a pass over all the users (unless one
    is under way) that hands each user's list to a thread and back (``asyncio.to_thread``): under
    steady traffic the passes never stop (13 % of one profile's samples with 200 users arriving
    at once; no difference measured in a whole streaming run). A window's count does not depend
    on them (each hit's time is compared); they only keep memory bounded, which a pass a second
    does as well."""

    EXPIRY_INTERVAL_S = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._next_expiry = 0.0

    # The storage's own (name-mangled) hook, which every hit calls before it counts.
    async def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + self.EXPIRY_INTERVAL_S
        await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


def _storage_for(
    url: str, *, key_prefix: str, timeout_s: float | None
) -> tuple[Storage, Redis | None]:
    """``limits`` storage for the broker URL, and the Redis client whose pool it uses (ours to
    close, not the library's, so that closing does not depend on its internals)."""
    if url.startswith("memory://"):
        return SparseExpiryMemoryStorage(), None
    if timeout_s is None:
        raise ValueError("a rate limiter on Redis needs timeout_s (ISOCHAT_REDIS_TIMEOUT_S)")
    client = redis_client(url, timeout_s=timeout_s, client_name="isochat-limits")
    # implementation="redispy": the library's client is redis-py's, on our pool, so its
    # connections have our timeout and name, and its errors are the ones caught above.
    # (Passed through **options, which the library types as scalars only.)
    options: dict[str, Any] = {"connection_pool": client.connection_pool}
    storage = RedisStorage(
        f"async+{url}",
        implementation="redispy",
        wrap_exceptions=True,
        key_prefix=key_prefix,
        **options,
    )
    return storage, client


class SocketCounter(Protocol):
    """The open WebSocket connections of each user."""

    # How often an open socket must call ``renew`` to go on counting; None: never.
    renew_every_s: float | None

    async def admit(self, user_id: str, socket_id: str, *, limit: int) -> bool:
        """Count ``socket_id`` as open, unless ``user_id`` already has ``limit`` open."""
        ...

    async def renew(self, user_id: str, socket_id: str) -> None: ...

    async def release(self, user_id: str, socket_id: str) -> None: ...

    async def aclose(self) -> None: ...


class InProcessSocketCounter:
    """Counts the sockets of this process: right for one worker."""

    renew_every_s: float | None = None

    def __init__(self) -> None:
        self._open: defaultdict[str, set[str]] = defaultdict(set)

    async def admit(self, user_id: str, socket_id: str, *, limit: int) -> bool:
        sockets = self._open[user_id]
        if len(sockets) >= limit:
            return False
        sockets.add(socket_id)
        return True

    async def renew(self, user_id: str, socket_id: str) -> None:
        return None  # a socket of this process cannot outlive it

    async def release(self, user_id: str, socket_id: str) -> None:
        sockets = self._open.get(user_id)
        if sockets is None:
            return
        sockets.discard(socket_id)
        if not sockets:
            del self._open[user_id]

    async def aclose(self) -> None:
        return None


# Redis's clock (ms), so that the expiry times of every host's sockets compare.
_NOW_MS = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
"""
# KEYS[1]: the user's set. ARGV: socket id, limit, ttl in ms. 1 if admitted.
_ADMIT = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
)
# KEYS[1]: the user's set. ARGV: socket id, ttl in ms. Re-adds a socket dropped as expired
# (its event loop stalled past the ttl): it is open, so it counts.
_RENEW = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
)


class RedisSocketCounter:
    """Counts every worker's and host's sockets in the broker's Redis (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        ttl_s: float = SOCKET_TTL_S,
        prefix: str = "isochat:sockets:",
    ) -> None:
        """``timeout_s`` (``ISOCHAT_REDIS_TIMEOUT_S``) bounds each Redis call."""
        self._redis = redis_client(url, timeout_s=timeout_s, client_name="isochat-sockets")
        self._ttl_ms = math.ceil(ttl_s * 1000)
        self._prefix = prefix
        self.renew_every_s: float | None = ttl_s / 3
        self._admit = self._redis.register_script(_ADMIT)
        self._renew = self._redis.register_script(_RENEW)
        self._guard = FailOpen("socket limit", timeout_s=timeout_s)

    def key(self, user_id: str) -> str:
        return self._prefix + user_id

    async def admit(self, user_id: str, socket_id: str, *, limit: int) -> bool:
        async def admit() -> bool:
            admitted = await self._admit(
                keys=[self.key(user_id)], args=[socket_id, limit, self._ttl_ms]
            )
            return bool(admitted)

        return await self._guard.call(admit, fallback=True)

    async def renew(self, user_id: str, socket_id: str) -> None:
        async def renew() -> None:
            await self._renew(keys=[self.key(user_id)], args=[socket_id, self._ttl_ms])

        await self._guard.call(renew, fallback=None)

    async def release(self, user_id: str, socket_id: str) -> None:
        async def release() -> None:
            await self._redis.zrem(self.key(user_id), socket_id)

        # Unreachable: the entry stops counting by itself once its ttl is over.
        await self._guard.call(release, fallback=None)

    async def aclose(self) -> None:
        await self._redis.aclose()
