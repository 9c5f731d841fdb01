"""A real OpenAI-compatible model server for tests, on 127.0.0.1, whose behaviour each message
chooses with a marker:

- ``[llm:MODE]`` applies to every call of the run (triage's route choice and the answer);
- ``[answer:MODE]`` applies only to the answer (the ``general`` agent's call);
- ``[route:NAME]`` makes triage answer ``NAME`` (default ``general``).

MODEs: ``nostream`` (plain JSON even when a stream is asked for), ``500``, ``429-then-ok`` (each
distinct request is refused once with 429, then served), ``hang`` (never answers), ``stall``
(streams one piece, then nothing), ``garbage`` (200 with a body that is not JSON),
``no-choices``, ``bad-chunk`` (a stream chunk that is not JSON).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from src.services.llm.offline import ROUTE_CHOICE_MARKER

_MARKER = re.compile(r"\[(llm|answer|route):([a-z0-9-]+)\]")


class FakeModelServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.attempts: Counter[str] = Counter()
        self.streams_started = 0
        self.streams_closed = 0
        self.stream_started = asyncio.Event()
        self.stream_closed = asyncio.Event()
        self._release = asyncio.Event()
        self.base_url = ""  # set once it is served
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                # What readiness asks an OpenAI-compatible server.
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def release(self) -> None:
        """Let hanging handlers return, so that the server can stop."""
        self._release.set()

    def answer_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if not _is_route_choice(r)]

    async def _models(self, _: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        body: dict[str, Any] = json.loads(raw)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.attempts[raw.decode()] += 1
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        markers = dict(_MARKER.findall(user))
        route_choice = _is_route_choice(body)
        mode = markers.get("llm") or (None if route_choice else markers.get("answer"))
        if route_choice:
            text = markers.get("route", "general")
        else:
            text = "Model says: " + _MARKER.sub("", user).strip()
        return await self._respond(mode, text, stream=bool(body.get("stream")), raw=raw.decode())

    async def _respond(self, mode: str | None, text: str, *, stream: bool, raw: str) -> Response:
        if mode == "500":
            return JSONResponse({"error": {"message": "model crashed"}}, status_code=500)
        if mode == "429-then-ok" and self.attempts[raw] == 1:
            return JSONResponse({"error": {"message": "slow down"}}, 429, {"Retry-After": "0"})
        if mode == "hang":
            await self._release.wait()
            return Response(status_code=503)
        if mode == "garbage":
            return Response(b"<html>oops</html>", media_type="application/json")
        if mode == "no-choices":
            return JSONResponse({"id": "x", "choices": []})
        if stream and mode != "nostream":
            return StreamingResponse(
                self._chunks(text, stall=mode == "stall", bad=mode == "bad-chunk"),
                media_type="text/event-stream",
            )
        return JSONResponse(
            {
                "id": "x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            }
        )

    async def _chunks(self, text: str, *, stall: bool, bad: bool) -> AsyncIterator[bytes]:
        self.streams_started += 1
        self.stream_started.set()
        try:
            yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for i, word in enumerate(text.split(" ")):
                piece = word if i == 0 else " " + word
                yield _sse({"choices": [{"index": 0, "delta": {"content": piece}}]})
                if stall:
                    await self._release.wait()
                if bad:
                    yield b"data: {not json\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            self.streams_closed += 1
            self.stream_closed.set()


def _is_route_choice(body: dict[str, Any]) -> bool:
    return any(
        m["role"] == "system" and ROUTE_CHOICE_MARKER in m["content"] for m in body["messages"]
    )


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()
