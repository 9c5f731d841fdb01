"""Bearer tokens: HS256, `sub` is the user, `exp` honoured."""

from __future__ import annotations

import time

import jwt
import pytest

from src.drill.faults import DrillClaim
from src.services.auth import TokenService
from src.services.errors import Unauthorized
from src.settings import DEVELOPMENT_AUTH_SECRET, Settings

SECRET = "s" * 64


def test_a_token_names_its_user() -> None:
    """What `issue` signs, `user_of` reads back."""
    tokens = TokenService(secret=SECRET, ttl_s=60)
    assert tokens.user_of(tokens.issue("alice@example.com")) == "alice@example.com"


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"sub": "alice", "exp": int(time.time()) - 10}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "other" * 10, algorithm="HS256"),
        jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "a b", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS512"),
        "garbage",
    ],
)
def test_expired_foreign_or_malformed_tokens_are_refused(token: str) -> None:
    """Expired, wrongly signed, exp-less, bad-subject, wrong-algorithm and junk tokens: 401."""
    with pytest.raises(Unauthorized):
        TokenService(secret=SECRET, ttl_s=60).user_of(token)


def test_production_refuses_the_development_secret() -> None:
    """Production will not start with the built-in or a short secret, and says what to set."""
    with pytest.raises(ValueError, match="ISOCHAT_AUTH_SECRET"):
        Settings(env="production", auth_secret=DEVELOPMENT_AUTH_SECRET, _env_file=None)
    with pytest.raises(ValueError, match="ISOCHAT_AUTH_SECRET"):
        Settings(env="production", auth_secret="short", _env_file=None)
    assert Settings(env="production", auth_secret=SECRET, _env_file=None).env == "production"


def test_a_token_verified_before_still_expires() -> None:
    """Verified tokens are remembered, but never past their `exp` (real time: PyJWT reads the
    clock itself; two seconds)."""
    tokens = TokenService(secret=SECRET, ttl_s=1)
    token = tokens.issue("alice")
    expires = jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]
    assert tokens.user_of(token) == "alice"
    assert tokens.user_of(token) == "alice"  # from memory
    while time.time() < expires + 1:
        time.sleep(0.1)
    with pytest.raises(Unauthorized, match="expired"):
        tokens.user_of(token)


def test_only_a_claim_made_with_the_drill_secret_grants_drill() -> None:
    """A drill user's token is a normal token for its user; its claim grants `drill` only
    where the same drill secret is the claims hook, and never where none is."""
    claim = DrillClaim("d" * 40)
    maker = TokenService(secret=SECRET, ttl_s=60, grants=claim)
    token = maker.issue("drill-1", extend=claim.add_to)
    assert maker.caller_of(token).grants == {"drill"}
    assert maker.caller_of(maker.issue("drill-1")).grants == frozenset()
    elsewhere = TokenService(secret=SECRET, ttl_s=60, grants=DrillClaim("e" * 40))
    assert elsewhere.caller_of(token).user_id == "drill-1"
    assert elsewhere.caller_of(token).grants == frozenset()
    assert TokenService(secret=SECRET, ttl_s=60).caller_of(token).grants == frozenset()
