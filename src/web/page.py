"""The chat page (``GET /``) and its files, its icon (``GET /favicon.ico``), and the page to try
the API (``GET /docs``)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from src.web.openapi import Operation, documented

STATIC = Path(__file__).parent / "static"
# Everything the page loads comes from this server: no CDN, no inline script.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# Swagger UI sets styles inline.
DOCS_HEADERS = PAGE_HEADERS | {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
}
HTML = {200: {"text/html": {"schema": {"type": "string"}}}}
SVG = {200: {"image/svg+xml": {"schema": {"type": "string"}}}}
# The icon is the page's own SVG, also where browsers and other clients look for it unasked.
ICON = STATIC / "favicon.svg"
ICON_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}


@documented(Operation("The chat page", {200: None}, authenticated=False, media=HTML))
async def chat_page(_: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


@documented(
    Operation("A page to try the API (Swagger UI)", {200: None}, authenticated=False, media=HTML)
)
async def docs_page(_: Request) -> Response:
    return FileResponse(STATIC / "docs.html", headers=DOCS_HEADERS)


@documented(Operation("The chat page's icon (SVG)", {200: None}, authenticated=False, media=SVG))
async def favicon(_: Request) -> Response:
    return FileResponse(ICON, media_type="image/svg+xml", headers=ICON_HEADERS)
