"""No secret ever reaches a log line, and browsers get a way to open a socket that keeps
long-lived tokens out of URLs.

The log tests configure logging as ``isochat serve`` does (``src.logs.logging_config``, also
handed to a real uvicorn on loopback, with its access log on) at ``debug``, in both formats, and
capture everything written: isochat's lines, uvicorn's access and error lines, SQLAlchemy's,
alembic's, httpx's and the websockets client's. Then they look for every secret involved:
bearer tokens (in a header, in ``?token=``, in the ``isochat.bearer`` subprotocol), WebSocket
tickets, the model's API key, the auth secret and a database password.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from dependency_injector import providers
from starlette.types import ASGIApp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from src.container import AppContainer, build_container, shutdown
from src.logs import REDACTED, Redactor, configured_secrets, log_failure, logging_config
from src.services.auth import InProcessUsedTickets, RedisUsedTickets, WsTickets
from src.services.database.engine import create_engine
from src.services.database.migrations import upgrade_to_head
from src.services.errors import Unauthorized
from src.settings import Settings
from src.web.app import create_app
from tests.helpers import (
    POSTGRES_ADMIN_URL,
    REDIS_TIMEOUT_S,
    auth,
    postgres_admin,
    reachable_redis,
    serving,
)
from tests.llm_server import FakeModelServer

API_KEY = "sk-isochat-test-key-0123456789abcdef"  # caught only as a literal: no pattern fits
AUTH_SECRET = "isochat-test-auth-secret-" + "k" * 40
DATABASE_PASSWORD = "pg-S3cret/@:pass-7f3a9c"

FORMATS = ["console", "json"]


# Capturing everything that is logged.


@contextmanager
def logging_restored() -> Iterator[None]:
    """Put every logger back as it was: the test reconfigures logging for the whole process."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    saved = [
        (lg, lg.handlers[:], lg.filters[:], lg.level, lg.propagate, lg.disabled) for lg in loggers
    ]
    try:
        yield
    finally:
        for logger, handlers, filters, level, propagate, disabled in saved:
            logger.handlers[:] = handlers
            logger.filters[:] = filters
            logger.setLevel(level)
            logger.propagate = propagate
            logger.disabled = disabled


class LogSink:
    """Where every line goes: the streams of the handlers ``config`` created, each time it is
    applied (by the test as by ``isochat serve``, and again by each uvicorn server)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self._buffer = io.StringIO()

    def attach(self) -> None:
        names = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
        for handler in {h for name in names for h in logging.getLogger(name).handlers}:
            assert isinstance(handler, logging.StreamHandler)
            handler.setStream(self._buffer)

    def text(self) -> str:
        return self._buffer.getvalue()

    def readable(self, fmt: str) -> str:
        """The lines as an operator reads them (JSON lines decoded), for looking things up."""
        if fmt == "console":
            return self.text()
        lines = [json.loads(line) for line in self.text().splitlines() if line.strip()]
        return "\n".join(f"{line['message']} {line.get('exception', '')}" for line in lines)


@asynccontextmanager
async def everything_logged(fmt: str, *, secrets: list[str]) -> AsyncIterator[LogSink]:
    with logging_restored():
        config = logging_config(level="debug", fmt=fmt, secrets=secrets)
        logging.config.dictConfig(config)
        # SQLAlchemy quiets its own loggers at import (WARNING); here it says all it can.
        logging.getLogger("sqlalchemy").setLevel(logging.DEBUG)
        sink = LogSink(config)
        sink.attach()
        yield sink


@asynccontextmanager
async def served(app: ASGIApp, sink: LogSink) -> AsyncIterator[str]:
    """``app`` on a real uvicorn on loopback, with isochat's logging config and access log."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=sink.config, log_level="debug",
        access_log=True, lifespan="off",
    )  # fmt: skip
    sink.attach()  # uvicorn applied the config again: new handlers
    async with serving(app, config) as address:
        yield address


@asynccontextmanager
async def isochat(settings: Settings, sink: LogSink) -> AsyncIterator[tuple[AppContainer, str]]:
    """Migrations, a container and the app served on loopback, all logged into ``sink``."""
    await asyncio.to_thread(upgrade_to_head, settings.database_url)
    container = build_container(settings)
    try:
        async with served(create_app(container), sink) as address:
            yield container, address
    finally:
        await shutdown(container)


def log_secrets_everywhere(*, database_url: str, token: str) -> None:
    """Secrets in every place a record holds text, on the loggers that write them in real
    life: the message, its args (a tuple and a mapping), a traceback (``exc_info``) and an
    exception's text (``log_failure``)."""
    names = ("src.web", "uvicorn.error", "uvicorn.access", "sqlalchemy.engine.Engine",
             "alembic.runtime.migration", "httpx")  # fmt: skip
    for name in names:
        logger = logging.getLogger(name)
        logger.debug("connecting to %s with key %s (secret %s)", database_url, API_KEY, AUTH_SECRET)
        logger.info('127.0.0.1:1 - "WebSocket /ws?token=%s" [accepted]', token)
        logger.info(f"headers {{'authorization': 'Bearer {token}'}} key={API_KEY}")
        logger.warning("%(url)s said no", {"url": database_url})
        try:
            raise ConnectionError(f"could not connect to {database_url} with {API_KEY}")
        except ConnectionError as exc:
            logger.exception("connection failed")
            log_failure(logger, "connection failed for %s", token, exc=exc)


def assert_none_of(secrets: list[str], text: str) -> None:
    found = [s for s in secrets if s in text]
    assert found == [], f"secrets in the logs: {found}"


def secrets_of_tokens(tokens: list[str]) -> list[str]:
    """Each token, and its payload and signature alone: neither may appear, even cut off."""
    return [part for t in tokens for part in (t, *t.split(".")[1:])]


# Browsers' ways in, and the old one.


async def run_one_chat(connection: ClientConnection, thread_id: str, content: str) -> None:
    await connection.send(json.dumps({"type": "chat", "thread_id": thread_id, "content": content}))
    async with asyncio.timeout(30):
        while True:
            frame = json.loads(await connection.recv())
            assert frame["type"] != "error", frame
            if frame["type"] in ("run_completed", "run_failed", "run_cancelled"):
                assert frame["type"] == "run_completed", frame
                return


async def new_thread_over(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await http.post("/api/threads", json={}, headers=headers)
    assert response.status_code == 201, response.text
    thread_id: str = response.json()["id"]
    return thread_id


async def ticket_for(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await http.post("/api/auth/ws-ticket", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 30
    ticket: str = response.json()["ticket"]
    return ticket


async def closed_with(url: str, **kwargs: Any) -> int | None:
    """The close code of a socket opened at ``url`` before it sent anything."""
    async with connect(url, open_timeout=10, **kwargs) as connection:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(connection.recv(), 15)
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


async def pong(connection: ClientConnection) -> bool:
    await connection.send('{"type": "ping"}')
    frame: Any = json.loads(await asyncio.wait_for(connection.recv(), 15))
    return bool(frame == {"type": "pong"})


@dataclass
class Secrets:
    tokens: list[str]
    literals: list[str]

    def all(self) -> list[str]:
        return [*secrets_of_tokens(self.tokens), *self.literals]


# The tests.


@pytest.mark.parametrize("fmt", FORMATS)
async def test_no_secret_reaches_the_logs(tmp_path: Path, fmt: str) -> None:
    """Chats over HTTP (bearer header) and over /ws by header, `?token=`, ticket and
    subprotocol, a model called with an API key (one call failing, so its details are
    logged), a token in an HTTP query, and secrets planted in messages, args and tracebacks:
    at debug level, nothing logged anywhere holds a token, a ticket, the API key, the auth
    secret or a URL's password."""
    secrets = Secrets(tokens=[], literals=[API_KEY, AUTH_SECRET, DATABASE_PASSWORD])
    planted_url = f"postgresql+asyncpg://isochat:{quote(DATABASE_PASSWORD, safe='')}@db:5432/x"
    model = FakeModelServer()
    async with (
        everything_logged(fmt, secrets=[API_KEY, AUTH_SECRET]) as sink,
        served(model.app, sink) as model_address,
    ):
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
            auth_secret=AUTH_SECRET, llm_provider="openai",
            llm_base_url=f"http://{model_address}/v1", llm_api_key=API_KEY,
            llm_timeout_s=10, llm_max_retries=0, _env_file=None,
        )  # fmt: skip
        async with (
            isochat(settings, sink) as (container, address),
            httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as http,
        ):
            tokens = {u: container.tokens().issue(u) for u in ("ann", "bo", "cy", "di", "ed")}
            secrets.tokens.extend(tokens.values())
            headers = {"Authorization": f"Bearer {tokens['ann']}"}

            thread_id = await new_thread_over(http, headers)
            body = {"content": "tell me about the sea"}
            answered = await http.post(
                f"/api/threads/{thread_id}/messages", json=body, headers=headers
            )
            assert answered.json()["run"]["status"] == "completed", answered.text
            body = {"content": "and now? [answer:500]"}
            failed = await http.post(
                f"/api/threads/{thread_id}/messages", json=body, headers=headers
            )
            failed_run = failed.json()["run"]
            assert failed_run["error"]["code"] == "llm_error"
            # HTTP takes the header only, but a token in the query is still logged by
            # uvicorn's access log: redacted there.
            refused = await http.get(f"/api/threads?token={tokens['bo']}")
            assert refused.status_code == 401

            ws = f"ws://{address}/ws"
            ticket = await ticket_for(http, headers)
            secrets.tokens.append(ticket)
            ways: list[tuple[str, str, dict[str, Any]]] = [
                ("cy", ws, {"additional_headers": {"Authorization": f"Bearer {tokens['cy']}"}}),
                ("di", f"{ws}?token={tokens['di']}", {}),
                ("ann", f"{ws}?ticket={ticket}", {}),
                ("ed", ws, {"subprotocols": ["isochat.bearer", tokens["ed"]]}),
            ]
            for user, url, kwargs in ways:
                own = await new_thread_over(http, {"Authorization": f"Bearer {tokens[user]}"})
                async with connect(url, open_timeout=10, **kwargs) as connection:
                    await run_one_chat(connection, own, "what is 6 * 7?")
            log_secrets_everywhere(database_url=planted_url, token=tokens["ann"])

    assert_none_of(secrets.all(), sink.text())
    assert quote(DATABASE_PASSWORD, safe="") not in sink.text()

    # It was all there, only without the secrets.
    if fmt == "json":
        assert all(json.loads(line) for line in sink.text().splitlines() if line.strip())
    seen = sink.readable(fmt)
    assert f'"WebSocket /ws?token={REDACTED}" [accepted]' in seen
    assert f'"WebSocket /ws?ticket={REDACTED}" [accepted]' in seen
    assert f"GET /api/threads?token={REDACTED} HTTP/1.1" in seen
    assert "POST /v1/chat/completions HTTP/1.1" in seen  # the model server's access log
    assert f"model call to http://{model_address}/v1/chat/completions failed" in seen
    assert "model crashed" in seen
    assert "postgresql+asyncpg://isochat:***@db:5432/x" in seen
    assert f"key={REDACTED}" in seen


@pytest.mark.postgres
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_database_password_never_reaches_the_logs(fmt: str) -> None:
    """On PostgreSQL, as a role with a password (in the URL, with characters that must be
    escaped): migrations, a chat, a failed connection and the URL planted in args and
    tracebacks, at debug level where SQLAlchemy and alembic say the most: the password is
    never written, raw or URL-encoded."""
    async with postgres_admin() as admin:
        name = f"isochat_secret_{uuid.uuid4().hex[:12]}"
        escaped = DATABASE_PASSWORD.replace("'", "''")
        await admin.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{escaped}'")
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        host = POSTGRES_ADMIN_URL.rsplit("@", 1)[1].rsplit("/", 1)[0]
        url = f"postgresql+asyncpg://{name}:{quote(DATABASE_PASSWORD, safe='')}@{host}/{name}"
        settings = Settings(
            database_url=url, auth_secret=AUTH_SECRET, run_timeout_s=60, _env_file=None
        )
        try:
            async with (
                everything_logged(fmt, secrets=configured_secrets(settings)) as sink,
                isochat(settings, sink) as (container, address),
                httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as http,
            ):
                headers = auth(container, "pg")
                thread_id = await new_thread_over(http, headers)
                body = {"content": "what is 6 * 7?"}
                answered = await http.post(
                    f"/api/threads/{thread_id}/messages", json=body, headers=headers
                )
                assert answered.json()["message"]["content"] == "6 * 7 = 42"
                # The same role at a port where nothing listens: the driver's error, logged.
                unreachable = create_engine(url.replace(host, "127.0.0.1:1"), timeout_s=2)
                try:
                    async with unreachable.connect():
                        pass
                except Exception as exc:  # whatever the driver raises for a refused connection
                    log_failure(logging.getLogger("src.cli"), "cannot reach %s", url, exc=exc)
                finally:
                    await unreachable.dispose()
                log_secrets_everywhere(database_url=url, token=headers["Authorization"][7:])
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')

    text = sink.text()
    assert DATABASE_PASSWORD not in text
    assert quote(DATABASE_PASSWORD, safe="") not in text
    assert AUTH_SECRET not in text
    seen = sink.readable(fmt)
    assert "Running upgrade" in seen  # alembic, at info
    assert "SELECT" in seen  # SQLAlchemy's statements, at debug
    assert f"cannot reach postgresql+asyncpg://{name}:***@{host}/{name}" in seen


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('"WebSocket /ws?token=abc.def-ghi" [accepted]', f'"WebSocket /ws?token={REDACTED}"'),
        ("GET /x?a=1&ticket=t0k3n&b=2", f"ticket={REDACTED}&b=2"),
        ("Authorization: Bearer sk-live-abcdefgh", f"Authorization: Bearer {REDACTED}"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", REDACTED),
        ("cut short: eyJhbGciOiJIUzI1NiJ9.eyJzdW", f"cut short: {REDACTED}"),
        ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
        ("postgresql://me:p@ss/w0rd@db/x", "postgresql://me:***@db/x"),
        ("{'password': 'hunter2', 'api_key': 'k'}", f"{{'password': '{REDACTED}'"),
        ("Sec-WebSocket-Protocol: isochat.bearer, abc", f"isochat.bearer, {REDACTED}"),
        (f"key {API_KEY} and {quote(AUTH_SECRET)}", f"key {REDACTED} and {REDACTED}"),
    ],
)
def test_each_form_of_secret_is_redacted(text: str, shown: str) -> None:
    """Tokens in queries and headers, JWTs whole or cut, URL passwords (even unescaped),
    secret-named keys, the subprotocol's token and the configured literals go; the rest of the
    line stays, and redacting twice changes nothing (a line passes filter and formatter)."""
    redact = Redactor([API_KEY, AUTH_SECRET])
    assert shown in redact(text)
    assert redact(redact(text)) == redact(text)


def test_the_configured_secrets_are_those_of_the_settings() -> None:
    """The API key, the auth secret and the passwords of the database, broker and model URLs."""
    settings = Settings(
        database_url=f"postgresql+asyncpg://u:{quote(DATABASE_PASSWORD, safe='')}@db/x",
        broker_url="redis://:redis-pass-123456@redis:6379/0", auth_secret=AUTH_SECRET,
        llm_provider="openai", llm_base_url="https://u:model-pass-123456@llm/v1",
        llm_api_key=API_KEY, _env_file=None,
    )  # fmt: skip
    assert sorted(configured_secrets(settings)) == sorted(
        [AUTH_SECRET, API_KEY, DATABASE_PASSWORD, "redis-pass-123456", "model-pass-123456"]
    )


async def test_a_ticket_opens_one_socket_once(
    container: AppContainer, live_server: str, client: httpx.AsyncClient
) -> None:
    """A ticket, bought with the bearer header, opens a socket for its user; presented again,
    the socket is closed 4401. It is not a bearer token, and a bearer token is not a ticket."""
    headers = auth(container, "alice")
    ticket = await ticket_for(client, headers)
    async with connect(f"ws://{live_server}/ws?ticket={ticket}", open_timeout=10) as socket:
        assert await pong(socket)
    assert await closed_with(f"ws://{live_server}/ws?ticket={ticket}") == 4401

    as_bearer = await client.get("/api/threads", headers={"Authorization": f"Bearer {ticket}"})
    assert as_bearer.status_code == 401
    bearer = headers["Authorization"].removeprefix("Bearer ")
    assert await closed_with(f"ws://{live_server}/ws?ticket={bearer}") == 4401
    assert (await client.post("/api/auth/ws-ticket")).status_code == 401


async def test_an_expired_ticket_is_refused(container: AppContainer, live_server: str) -> None:
    """A ticket past its 30 s is refused (4401) even if it was never used."""
    issued_long_ago = WsTickets(
        secret=container.settings().auth_secret,
        used=InProcessUsedTickets(),
        clock=lambda: time.time() - 120,
    )
    ticket = issued_long_ago.issue("alice")
    assert await closed_with(f"ws://{live_server}/ws?ticket={ticket}") == 4401


async def test_the_bearer_subprotocol_is_answered_without_the_token(
    container: AppContainer, live_server: str
) -> None:
    """A browser's subprotocols `["isochat.bearer", token]`: the server picks
    `isochat.bearer` (never echoing the token) and the socket is the token's user's; a bad
    token that way is closed 4401 like any other."""
    token = container.tokens().issue("alice")
    url = f"ws://{live_server}/ws"
    offered = [Subprotocol("isochat.bearer"), Subprotocol(token)]
    async with connect(url, subprotocols=offered, open_timeout=10) as socket:
        assert socket.subprotocol == "isochat.bearer"
        assert await pong(socket)
    bad = [Subprotocol("isochat.bearer"), Subprotocol("not-a-token")]
    assert await closed_with(url, subprotocols=bad) == 4401


async def test_used_tickets_are_forgotten_once_they_would_have_expired() -> None:
    """The in-process record of used tickets holds each one as long as it could be presented,
    and no longer: memory does not grow with the tickets ever used."""
    now = [1000.0]
    used = InProcessUsedTickets(clock=lambda: now[0])
    assert await used.first_use("a", ttl_s=31)
    assert not await used.first_use("a", ttl_s=31)
    now[0] += 32
    assert await used.first_use("b", ttl_s=31)
    assert await used.first_use("a", ttl_s=31)  # forgotten: its ticket has expired by now


@pytest.mark.redis
async def test_a_ticket_is_single_use_across_workers() -> None:
    """Two workers sharing Redis, presented the same ticket at the same moment: exactly one
    lets it in; a worker that cannot reach Redis lets no ticket in."""
    redis_url = await reachable_redis()
    prefix = f"isochat-test:{uuid.uuid4().hex}:"
    workers = [
        WsTickets(
            secret=AUTH_SECRET,
            used=RedisUsedTickets(redis_url, timeout_s=REDIS_TIMEOUT_S, prefix=prefix),
        )
        for _ in range(2)
    ]
    try:
        ticket = workers[0].issue("alice")
        results = await asyncio.gather(*(w.redeem(ticket) for w in workers), return_exceptions=True)
        assert [r for r in results if r == "alice"] == ["alice"]
        assert [type(r) for r in results if r != "alice"] == [Unauthorized]
    finally:
        for worker in workers:
            await worker.aclose()


async def test_no_ticket_passes_while_its_use_cannot_be_recorded(
    container: AppContainer, live_server: str
) -> None:
    """With the Redis that records used tickets unreachable, a valid ticket is refused with
    1013 (try again later), never let in unchecked: it could be a replay."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    unreachable = WsTickets(
        secret=container.settings().auth_secret,
        used=RedisUsedTickets(f"redis://127.0.0.1:{closed_port}/0", timeout_s=REDIS_TIMEOUT_S),
    )
    container.ws_tickets.override(providers.Object(unreachable))
    try:
        ticket = unreachable.issue("alice")
        assert await closed_with(f"ws://{live_server}/ws?ticket={ticket}") == 1013
    finally:
        container.ws_tickets.reset_override()
        await unreachable.aclose()
