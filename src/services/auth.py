"""Bearer tokens: HS256 JWTs whose ``sub`` is the user id."""

from __future__ import annotations

import re
import time

import jwt

from src.services.errors import Unauthorized

USER_ID = re.compile(r"^[A-Za-z0-9._@-]{1,200}$")


def valid_user_id(user_id: str) -> bool:
    return bool(USER_ID.match(user_id))


class TokenService:
    def __init__(self, *, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self._ttl_s = ttl_s

    def issue(self, user_id: str) -> str:
        if not valid_user_id(user_id):
            raise ValueError("a user id is 1-200 characters of letters, digits and . _ @ -")
        now = int(time.time())
        return jwt.encode(
            {"sub": user_id, "iat": now, "exp": now + self._ttl_s}, self._secret, algorithm="HS256"
        )

    def user_of(self, token: str) -> str:
        """The user a valid token names; ``Unauthorized`` for anything else."""
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
        return sub
