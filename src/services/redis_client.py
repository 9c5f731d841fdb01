"""The one way isochat connects to the broker's Redis (``ISOCHAT_BROKER_URL=redis://...``).

Every user of Redis (the event broker, the rate limiter, the socket counter, the WebSocket
tickets) gets its client here, so that they all speak redis-py, wait at most
``ISOCHAT_REDIS_TIMEOUT_S`` for a connection or a reply, and show up by name in Redis's
``CLIENT LIST`` (an operator counting isochat's connections sees whose they are).

Each client has a pool of its own and closes it with ``aclose()``: what fails or hangs for one
user (a pub/sub connection being replaced, a limit call timed out) never takes a connection
from another.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def redis_client(url: str, *, timeout_s: float, client_name: str, reconnect: bool = True) -> Redis:
    """A client of the Redis at ``url``: connecting and every reply bounded by ``timeout_s``.

    ``reconnect=False`` is for a connection whose state matters to its owner (the broker's
    pub/sub): a retry policy (redis-py's defaults have changed between versions) would
    reconnect after an error and subscribe again by itself, and what was published meanwhile
    would be lost without its owner being told. With no error to retry on, every loss reaches
    the owner, who starts again knowing it.

    No I/O here: the first command connects.
    """
    options: dict[str, Any] = {}
    if not reconnect:
        options["retry"] = Retry(NoBackoff(), 0, supported_errors=())
    client: Redis = Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        client_name=client_name,
        **options,
    )
    return client
