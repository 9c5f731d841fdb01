"""Per-user request rate limits (token buckets), in process memory.

Each user has a bucket of ``burst`` tokens refilled at ``per_minute`` a minute; a request takes
one. A user who runs dry waits; nobody else notices. With several workers each holds its own
buckets, so the effective limit is per worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from src.services.errors import RateLimited

# Past this many tracked users, buckets that have refilled completely are forgotten.
_PRUNE_ABOVE = 10_000


class RateLimiter:
    def __init__(
        self,
        *,
        per_minute: int,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at)

    def check(self, user_id: str) -> None:
        """Take one token for ``user_id``, or raise ``RateLimited`` saying when to retry."""
        now = self._clock()
        tokens, at = self._buckets.get(user_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[user_id] = (tokens, now)
            retry_after = math.ceil((1.0 - tokens) / self._rate)
            raise RateLimited(
                f"too many requests; retry in {retry_after} s", retry_after_s=retry_after
            )
        self._buckets[user_id] = (tokens - 1.0, now)
        if len(self._buckets) > _PRUNE_ABOVE:
            self._prune(now)

    def _prune(self, now: float) -> None:
        full = [
            user
            for user, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self._rate >= self._burst
        ]
        for user in full:
            del self._buckets[user]
