"""Who is asking, for HTTP and WebSocket alike, and the endpoints that hand out credentials.

A caller is found by the first of: ``Authorization: Bearer <token>``; ``x-api-key: <token>``
(what LangGraph's clients send); for a WebSocket (a
browser cannot set its headers), the subprotocols ``isochat.bearer`` and ``<token>``, a
single-use ``ticket`` from ``POST /api/auth/ws-ticket``, or a ``token`` in the query (kept for
clients that have nothing else; redacted from every log line). A ticket names a user and grants
nothing more: a token's grants (the drill's, for one) come with the token itself.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from src.logs import bind
from src.services.auth import Caller, WsTickets, valid_user_id
from src.services.errors import Unauthorized
from src.web.answers import TicketAnswer, TokenAnswer
from src.web.bodies import DevLogin, read_json
from src.web.errors import ApiError, error_response
from src.web.openapi import Operation, documented
from src.web.requests import container_of, json_response, settings_of

# Browsers cannot set headers on a WebSocket: they send the token as a second subprotocol.
BEARER_SUBPROTOCOL = "isochat.bearer"
HTTP_HOW = "send Authorization: Bearer <token> (or x-api-key: <token>)"
WEBSOCKET_HOW = (
    "send Authorization: Bearer <token>, the subprotocols isochat.bearer and <token>, "
    "or ?ticket=<ticket from POST /api/auth/ws-ticket>"
)


def bearer_subprotocol(conn: HTTPConnection) -> str | None:
    """The token a browser sent as subprotocols ``["isochat.bearer", "<token>"]``: None when
    it offered no such pair, "" when it offered the name without a token."""
    offered = conn.scope.get("subprotocols") or []
    if BEARER_SUBPROTOCOL not in offered:
        return None
    others = [p for p in offered if p != BEARER_SUBPROTOCOL]
    return others[0] if others else ""


async def find_caller(conn: HTTPConnection) -> Caller:
    """The caller of ``conn`` (see the module's doc for the ways); ``Unauthorized`` when none
    is valid, ``TicketCheckUnavailable`` when a ticket's use cannot be checked now."""
    container = container_of(conn)
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    token = token or conn.headers.get("x-api-key", "").strip()
    if not token and conn.scope["type"] == "websocket":
        token = (bearer_subprotocol(conn) or "").strip()
        if not token and (ticket := conn.query_params.get("ticket", "").strip()):
            tickets: WsTickets = container.ws_tickets()
            return Caller(await tickets.redeem(ticket))
        token = token or conn.query_params.get("token", "").strip()
    if not token:
        raise Unauthorized(WEBSOCKET_HOW if conn.scope["type"] == "websocket" else HTTP_HOW)
    caller: Caller = container.tokens().caller_of(token)
    return caller


async def authenticated(request: Request, *, rate_limited: bool = True) -> Caller:
    """The caller, its id on every log line of the request, and the request counted against
    their rate limit unless ``rate_limited`` is False (a cancel: a user at the limit can still
    stop their runs)."""
    caller = await find_caller(request)
    bind(user_id=caller.user_id)
    if rate_limited:
        await container_of(request).rate_limiter().check(caller.user_id)
    return caller


@documented(
    Operation(
        "A token for a user (development only: 404 otherwise)",
        {200: TokenAnswer},
        body=DevLogin,
        errors=("not_found",),
        authenticated=False,
    )
)
async def dev_login(request: Request) -> Response:
    settings = settings_of(request)
    if not settings.is_development:
        return error_response("not_found", "no such path")
    body = await read_json(request, DevLogin, max_bytes=settings.max_body_bytes)
    if not valid_user_id(body.user_id):
        raise ApiError(
            "validation_error",
            "user_id: 1-200 characters of letters, digits and . _ @ -",
        )
    answer: TokenAnswer = {"token": container_of(request).tokens().issue(body.user_id)}
    return json_response(answer)


@documented(Operation("A single-use ticket that opens one WebSocket", {200: TicketAnswer}))
async def ws_ticket(request: Request) -> Response:
    """A ticket that opens one WebSocket (``/ws?ticket=...``) within ``expires_in`` seconds:
    the long-lived bearer token stays in a header, out of URLs and access logs."""
    caller = await authenticated(request)
    tickets: WsTickets = container_of(request).ws_tickets()
    answer: TicketAnswer = {
        "ticket": tickets.issue(caller.user_id),
        "expires_in": int(tickets.ttl_s),
    }
    return json_response(answer)
