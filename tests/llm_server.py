"""A real OpenAI-compatible model server for tests, on 127.0.0.1, whose behaviour each message
chooses with markers:

- ``[llm:MODE]`` applies to every call of the run (triage's route choice and the answer);
- ``[answer:MODE]`` applies only to the specialist's calls;
- ``[route:NAME]`` makes triage call ``choose_route`` with ``NAME`` (default ``general``);
  ``[route:prose]`` makes it answer in words instead, calling nothing;
- ``[calls:SCRIPT]`` makes the specialist's first turn call tools: ``SCRIPT`` is
  ``name=json-arguments`` items joined by ``;``, e.g. ``[calls:calculator={"expression":"2+2"}]``,
  several in one turn; once the results are back it answers
  ``Model says: <results joined by " | ">``;
- ``[calls-forever:NAME=JSON]`` calls that tool again at every turn, never answering;
- ``[text:KEY]`` answers with ``TEXTS[KEY]`` exactly (white space, newlines, code).

MODEs: ``nostream`` (plain JSON even when a stream is asked for), ``500``, ``429-then-ok`` (each
distinct request is refused once with 429, then served), ``hang`` (never answers), ``stall``
(streams one piece, then nothing), ``garbage`` (200 with a body that is not JSON),
``no-choices``, ``bad-chunk`` (a stream chunk that is not JSON), ``error`` (an error event after
the first piece, as OpenAI reports a failure mid-stream).

Every answer reports ``usage``: ``PROMPT_TOKENS`` and ``COMPLETION_TOKENS`` per call.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from src.agents.triage import ROUTE_TOOL
from src.settings import Settings
from tests.helpers import serving

_MARKER = re.compile(r"\[(llm|answer|route|text):([a-z0-9-]+)\]")
_CALLS = re.compile(r"\[(calls|calls-forever):([^\]]+)\]")
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7
TEXTS = {
    "spaces": "  Leading and trailing spaces.  ",
    "newlines": "\n\nFirst line.\nSecond line,\n\n  indented third.\n",
    "code": (
        "Here is the code:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
        "Call `add(1, 2)`.\t"
    ),
    # A first piece that goes out as an event at once (then ``stall``).
    "story": "Once. Upon a time there was a long story that went on and on.",
    # Markdown whose first piece is whole: a page shows it as Markdown while it streams.
    "bold": "**Once.** Upon a time there was a story told in *Markdown*.",
    # Markdown, as a page renders it: a heading, lists, emphasis, a code block, a link.
    "markdown": (
        "## Adding up\n\nTwo steps:\n\n1. Add the **numbers**.\n2. Check the sum.\n\n"
        "- one\n- two\n\n```python\nprint(1 + 2)\n```\n\n"
        "More in [the guide](https://example.com/guide)."
    ),
    # What a page must show as inert text: scripts, handlers, javascript: links, a remote
    # image, a frame, a form, a style (each sets window.pwned if it ever runs).
    "hostile": (
        "<script>window.pwned = 'script'</script>\n\n"
        "<img src=x onerror=\"window.pwned = 'img'\">\n\n"
        "[x](javascript:window.pwned='link')\n\n"
        "<a href=\"javascript:window.pwned='a'\">click me</a>\n\n"
        "![a](http://example.com/x.png)\n\n"
        '<iframe src="http://example.com/frame"></iframe>\n\n'
        '<form action="http://example.com/post"><input name=q><button>go</button></form>\n\n'
        '<p style="color: red" onmouseover="window.pwned = \'p\'">styled</p>\n\n'
        "<svg><script>window.pwned = 'svg'</script></svg>\n\n"
        "Still here."
    ),
}


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
        messages = body["messages"]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        user = messages[last_user]["content"]
        markers = dict(_MARKER.findall(user))
        route_choice = _is_route_choice(body)
        mode = markers.get("llm") or (None if route_choice else markers.get("answer"))
        turn = self._turn(user, markers, messages[last_user + 1 :], route_choice=route_choice)
        return await self._respond(mode, turn, stream=bool(body.get("stream")), raw=raw.decode())

    def _turn(
        self,
        user: str,
        markers: dict[str, str],
        this_run: list[dict[str, Any]],
        *,
        route_choice: bool,
    ) -> dict[str, Any]:
        """The assistant message this call answers with: ``content`` and ``tool_calls``."""
        if route_choice:
            route = markers.get("route", "general")
            if route == "prose":
                return {"content": "I think this is about math.", "tool_calls": []}
            return {"content": "", "tool_calls": [(ROUTE_TOOL, json.dumps({"route": route}))]}
        script = dict(_CALLS.findall(user))
        results = [m["content"] for m in this_run if m["role"] == "tool"]
        if "calls-forever" in script:
            return {"content": "", "tool_calls": [_parse_call(script["calls-forever"])]}
        if "calls" in script and not results:
            return {
                "content": "",
                "tool_calls": [_parse_call(c) for c in script["calls"].split(";")],
            }
        if results:
            return {"content": "Model says: " + " | ".join(results), "tool_calls": []}
        if "text" in markers:
            return {"content": TEXTS[markers["text"]], "tool_calls": []}
        plain = _CALLS.sub("", _MARKER.sub("", user)).strip()
        return {"content": "Model says: " + plain, "tool_calls": []}

    async def _respond(
        self, mode: str | None, turn: dict[str, Any], *, stream: bool, raw: str
    ) -> Response:
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
                self._chunks(
                    turn, stall=mode == "stall", bad=mode == "bad-chunk", error=mode == "error"
                ),
                media_type="text/event-stream",
            )
        calls = [_wire_call(i, name, args) for i, (name, args) in enumerate(turn["tool_calls"])]
        message: dict[str, Any] = {"role": "assistant", "content": turn["content"] or None}
        if calls:
            message["tool_calls"] = calls
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": _usage(),
            }
        )

    async def _chunks(
        self, turn: dict[str, Any], *, stall: bool, bad: bool, error: bool
    ) -> AsyncIterator[bytes]:
        self.streams_started += 1
        self.stream_started.set()
        try:
            yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for piece in re.findall(r"\S+\s*|\s+", turn["content"]):
                yield _sse({"choices": [{"index": 0, "delta": {"content": piece}}]})
                if stall:
                    await self._release.wait()
                if bad:
                    yield b"data: {not json\n\n"
                if error:  # as OpenAI reports a failure after the stream began
                    yield _sse({"error": {"message": "model overloaded", "type": "server_error"}})
            # Tool calls as real servers stream them: the id and name first, then the
            # arguments in small pieces, calls interleaved by index.
            calls = turn["tool_calls"]
            for index, (name, _) in enumerate(calls):
                head = {"index": index, "id": f"call_{index}", "type": "function",
                        "function": {"name": name, "arguments": ""}}  # fmt: skip
                yield _sse({"choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
            longest = max((len(args) for _, args in calls), default=0)
            for start in range(0, longest, 5):
                for index, (_, args) in enumerate(calls):
                    if start < len(args):
                        part = {"index": index, "function": {"arguments": args[start : start + 5]}}
                        yield _sse({"choices": [{"index": 0, "delta": {"tool_calls": [part]}}]})
            finish = "tool_calls" if calls else "stop"
            yield _sse({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            yield _sse({"choices": [], "usage": _usage()})
            yield b"data: [DONE]\n\n"
        finally:
            self.streams_closed += 1
            self.stream_closed.set()


M = TypeVar("M", bound=FakeModelServer)


@asynccontextmanager
async def serving_model(server: M) -> AsyncIterator[M]:
    """``server`` on a free loopback port in the test's event loop, for the block
    (``base_url`` set); the answers it holds (``hang``) are released when the block ends."""
    async with serving(server.app) as address:
        server.base_url = f"http://{address}/v1"
        try:
            yield server
        finally:
            server.release()


def served_model() -> AbstractAsyncContextManager[FakeModelServer]:
    """A fake model server, served for the block (``serving_model``)."""
    return serving_model(FakeModelServer())


def _parse_call(item: str) -> tuple[str, str]:
    name, _, arguments = item.partition("=")
    return name.strip(), arguments


def _wire_call(index: int, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


def _is_route_choice(body: dict[str, Any]) -> bool:
    choice = body.get("tool_choice")
    return isinstance(choice, dict) and choice.get("function", {}).get("name") == ROUTE_TOOL


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


@asynccontextmanager
async def settings_on_a_model_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[Settings]:
    """Settings for an app on a SQLite file in ``tmp_path`` whose model is a fake model
    server, served for the block; runs may last (a test holds them as long as it needs)."""
    async with served_model() as model:
        yield Settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
            run_timeout_s=600.0,
            llm_provider="openai",
            llm_base_url=model.base_url,
            _env_file=None,
            **overrides,
        )
