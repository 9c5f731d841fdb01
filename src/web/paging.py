"""Lists a page at a time: ``?limit=N&cursor=C``, answered with ``next_cursor`` (null on the
last page). A cursor is opaque to clients: the ``(created_at, id)`` of the page's last item,
after which the next page starts (keyset paging: no item is skipped or repeated when items are
added meanwhile)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from starlette.requests import Request

from src.runs.domain import iso
from src.services.database.repositories import Page
from src.web.errors import ApiError

THREADS_PAGE, MAX_THREADS_PAGE = 50, 200
MESSAGES_PAGE, MAX_MESSAGES_PAGE = 100, 500
MAX_CURSOR_CHARS = 200


def page_query(
    request: Request, *, default: int, maximum: int
) -> tuple[int, tuple[datetime, str] | None]:
    """``limit`` (1..``maximum``, ``default`` when absent) and where to start."""
    raw_limit = request.query_params.get("limit")
    limit = default
    if raw_limit is not None:
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= maximum:
            raise ApiError("validation_error", f"limit: must be a whole number from 1 to {maximum}")
        limit = int(raw_limit)
    raw_cursor = request.query_params.get("cursor")
    return limit, None if raw_cursor is None else _decode(raw_cursor)


def cursor(page: Page[Any]) -> str | None:
    if page.next_after is None:
        return None
    at, last_id = page.next_after
    raw = json.dumps([iso(at), last_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(value: str) -> tuple[datetime, str]:
    try:
        if len(value) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        at, last_id = json.loads(raw)
        if not isinstance(at, str) or not isinstance(last_id, str):
            raise ValueError("not a cursor")
        return datetime.fromisoformat(at.replace("Z", "+00:00")), last_id
    except (ValueError, TypeError, binascii.Error):
        raise ApiError("validation_error", "cursor: not a cursor this server gave") from None
