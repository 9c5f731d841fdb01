"""Bearer tokens (HS256 JWTs whose ``sub`` is the user id) and WebSocket tickets.

A browser cannot set headers on a WebSocket, and a bearer token in a URL ends up in proxies'
and servers' access logs and in browser history, valid for days. So a client trades its token
(in a header) for a ticket: a JWT of its own audience that lives ``WS_TICKET_TTL_S`` seconds and
opens one socket. A ticket is not a bearer token (``user_of`` refuses anything with an audience)
and a bearer token is not a ticket (``redeem`` requires the audience).

Single use must hold across workers and hosts: the ticket's ``jti`` is recorded when it is
redeemed, where the broker is (Redis, ``SET NX`` with the ticket's remaining lifetime), or in
process memory with the in-process broker (one process: the settings refuse more). While Redis
cannot be reached no ticket is accepted (``TicketCheckUnavailable``): a replay must never pass.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
import redis.exceptions

from src.services.errors import Unauthorized
from src.services.redis_client import redis_client

USER_ID = re.compile(r"^[A-Za-z0-9._@-]{1,200}$")

WS_TICKET_AUDIENCE = "isochat:ws-ticket"
WS_TICKET_TTL_S = 30


def valid_user_id(user_id: str) -> bool:
    return bool(USER_ID.match(user_id))


# Tokens already verified, and their user and expiry: a client sends the same token with every
# request, and verifying it again (base64, JSON, HMAC) cost a third of a millisecond each time.
VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a bearer token names: the user, and what the token's other claims grant them
    (``TokenGrants``; none unless a plug-in says so)."""

    user_id: str
    grants: frozenset[str] = frozenset()


class TokenGrants(Protocol):
    """The claims hook: what a verified token's claims grant its user beyond being who they
    are (a plug-in's; the drill's faults are one: ``src/drill/faults.py``)."""

    def grants(self, claims: Mapping[str, Any]) -> frozenset[str]: ...


class NoGrants:
    """isochat's own: a token names a user, nothing more."""

    def grants(self, claims: Mapping[str, Any]) -> frozenset[str]:
        return frozenset()


class TokenService:
    def __init__(self, *, secret: str, ttl_s: int, grants: TokenGrants | None = None) -> None:
        self._secret = secret
        self._ttl_s = ttl_s
        self._grants = grants or NoGrants()
        self._verified: dict[str, tuple[Caller, float]] = {}  # token -> (caller, exp)

    def issue(self, user_id: str, *, extend: Callable[[dict[str, Any]], None] | None = None) -> str:
        """A bearer token for ``user_id``; ``extend`` adds claims of its own to the standard
        ones (``sub``, ``iat``, ``exp``) before they are signed."""
        if not valid_user_id(user_id):
            raise ValueError("a user id is 1-200 characters of letters, digits and . _ @ -")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + self._ttl_s}
        if extend is not None:
            extend(claims)
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def user_of(self, token: str) -> str:
        """The user a valid token names; ``Unauthorized`` for anything else (a WebSocket
        ticket included: PyJWT refuses a token with an audience when none is expected)."""
        return self.caller_of(token).user_id

    def caller_of(self, token: str) -> Caller:
        """``user_of``, and what the token grants."""
        known = self._verified.get(token)
        if known is not None and time.time() < known[1]:
            return known[0]
        caller, exp = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()  # simple and bounded; the next requests verify again
        self._verified[token] = (caller, exp)
        return caller

    def _verify(self, token: str) -> tuple[Caller, float]:
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["sub", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("the token is not valid") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not valid_user_id(sub):
            raise Unauthorized("the token names no valid user")
        return Caller(sub, grants=self._grants.grants(claims)), float(claims["exp"])


class TicketCheckUnavailable(Exception):
    """Whether a ticket was already used cannot be checked now (Redis is unreachable)."""


class UsedTickets(Protocol):
    """Where redeemed tickets are recorded until they would have expired anyway."""

    async def first_use(self, ticket_id: str, *, ttl_s: int) -> bool:
        """True the first time ``ticket_id`` is presented, False ever after (within
        ``ttl_s``); ``TicketCheckUnavailable`` when that cannot be known."""
        ...

    async def aclose(self) -> None: ...


class InProcessUsedTickets:
    """One process's record (the in-process broker means one process)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # ticket id -> when it may be forgotten. Every ticket lives as long, so insertion order
        # is expiry order and forgetting pops from the front: O(1) per ticket.
        self._until: dict[str, float] = {}

    async def first_use(self, ticket_id: str, *, ttl_s: int) -> bool:
        now = self._clock()
        while self._until:
            oldest = next(iter(self._until))
            if self._until[oldest] > now:
                break
            del self._until[oldest]
        if ticket_id in self._until:
            return False
        self._until[ticket_id] = now + ttl_s
        return True

    async def aclose(self) -> None:
        return None


class RedisUsedTickets:
    """Every worker's and host's record, in the broker's Redis. A Redis call that takes
    longer than ``timeout_s`` (``ISOCHAT_REDIS_TIMEOUT_S``) refuses the ticket for now: fail
    closed."""

    def __init__(self, url: str, *, timeout_s: float, prefix: str = "isochat:ws-ticket:") -> None:
        self._redis = redis_client(url, timeout_s=timeout_s, client_name="isochat-tickets")
        self._prefix = prefix

    async def first_use(self, ticket_id: str, *, ttl_s: int) -> bool:
        try:
            # SET NX: of two workers presented the same ticket at once, exactly one wins.
            created = await self._redis.set(self._prefix + ticket_id, b"1", nx=True, ex=ttl_s)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise TicketCheckUnavailable(type(exc).__name__) from None
        return bool(created)

    async def aclose(self) -> None:
        await self._redis.aclose()


class WsTickets:
    """Short-lived, single-use tickets that open one WebSocket (see the module's doc)."""

    def __init__(
        self,
        *,
        secret: str,
        used: UsedTickets,
        ttl_s: int = WS_TICKET_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._used = used
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, user_id: str) -> str:
        if not valid_user_id(user_id):
            raise ValueError("a user id is 1-200 characters of letters, digits and . _ @ -")
        now = int(self._clock())
        claims = {
            "sub": user_id,
            "aud": WS_TICKET_AUDIENCE,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + self.ttl_s,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    async def redeem(self, ticket: str) -> str:
        """The user a valid, unexpired, unused ticket names; the ticket is used up.
        ``Unauthorized`` for anything else; ``TicketCheckUnavailable`` when its use cannot be
        recorded."""
        try:
            claims = jwt.decode(
                ticket,
                self._secret,
                algorithms=["HS256"],
                audience=WS_TICKET_AUDIENCE,
                options={"require": ["sub", "exp", "aud", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the ticket has expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("the ticket is not valid") from None
        sub, jti, exp = claims.get("sub"), claims.get("jti"), claims.get("exp")
        if not isinstance(sub, str) or not valid_user_id(sub) or not isinstance(jti, str):
            raise Unauthorized("the ticket is not valid")
        # Remembered until it would have expired anyway (at least a second: exp is whole
        # seconds and the check above may have passed in exp's last fraction).
        remaining = max(1, math.ceil(float(exp) - self._clock()) + 1) if exp else self.ttl_s
        if not await self._used.first_use(jti, ttl_s=remaining):
            raise Unauthorized("the ticket has already been used")
        return sub

    async def aclose(self) -> None:
        await self._used.aclose()
