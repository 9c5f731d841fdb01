"""Any server that speaks OpenAI's ``/chat/completions``: OpenAI, vLLM, llama.cpp, Ollama, ...

Built on the official ``openai`` client (``AsyncOpenAI``): it sends the requests, retries 429s,
5xx and lost connections with backoff (honouring ``Retry-After``) and types the errors. Its HTTP
is aiohttp (the client's ``DefaultAioHttpClient``, its documented choice for many concurrent
requests): with the events read as below, a streamed token costs 46-61 µs of CPU against 140
through the default transport (httpcore, h11 and anyio, a layer each per token) and the
client's event decoder, with 200 answers streaming. isochat adds what a run needs around it:

- one client per application, with a bounded pool, serves every run;
- a streamed answer's events are read from the body's bytes as they come
  (``openai_wire.EventStream``);
- each call is bounded as a whole by ``timeout_s`` (retries and every wait of a stream
  included, each wait on its own, never across the caller's code);
- streamed tool-call deltas are assembled into whole calls (several per turn, by index; the
  request's and the answer's JSON are ``src/services/llm/openai_wire.py``'s);
- a server that answers a streamed request with plain JSON is taken whole;
- every failure becomes an ``LLMError`` or ``LLMTimeout`` of that call alone, whose ``str`` is
  a short, safe message for the run's user; what went wrong (the URL without credentials, the
  status, the attempts, an excerpt of the answer) is in ``detail`` and in one warning logged
  here, which carries the run's ids through the log context.

``is_available`` answers readiness probes: ``GET {base_url}/models`` with the API key, bounded
by ``PROBE_TIMEOUT_S``, on a client of its own (a pool full of runs' streams must not make the
model look down), at most one at a time, its answer kept ``PROBE_OK_TTL_S`` (or
``PROBE_FAILED_TTL_S`` after a failure, so that a recovery shows soon).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx2
import openai

from src.services.llm.base import (
    ChatMessage,
    LLMError,
    LLMTimeout,
    Reply,
    TextSink,
    ToolSpec,
)
from src.services.llm.openai_wire import (
    BODY_EXCERPT_CHARS,
    DONE,
    EventStream,
    StreamedTurn,
    chunk_of,
    json_of,
    reply_of,
    wire_message,
    wire_tool,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

# Below /health/ready's own bound on a check (2 s), so that a slow server reads "unavailable"
# from the probe itself rather than from the cut-off.
PROBE_TIMEOUT_S = 1.5
PROBE_OK_TTL_S = 30.0
PROBE_FAILED_TTL_S = 5.0
# The client needs a key; a server that wants none ignores this one.
NO_API_KEY = "no-key"


def api_base_url(base_url: str) -> str:
    """``base_url`` as the OpenAI SDK takes it (``http://host:port/v1``); a bare
    ``http://host:port`` gets ``/v1``."""
    base = base_url.rstrip("/")
    if urlsplit(base).path in ("", "/"):
        base += "/v1"
    return base


def without_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` part: fit for a log line."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


def _basic_auth(url: str) -> dict[str, str] | None:
    """The ``Authorization`` header for a ``user:password@`` in ``url``, if it has one."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


class OpenAILLM:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout_s: float,
        max_retries: int,
        max_connections: int,
    ) -> None:
        with_credentials = api_base_url(base_url)
        base = without_credentials(with_credentials)
        # Credentials in the URL are sent as basic auth (aiohttp refuses them in the URL beside
        # the client's Authorization header), as the default transport did.
        headers = _basic_auth(with_credentials)
        self._shown_url = base + "/chat/completions"
        self._models_url = base + "/models"
        self._model = model
        self._timeout_s = timeout_s
        self._client = openai.AsyncOpenAI(
            base_url=base,
            api_key=api_key or NO_API_KEY,
            timeout=timeout_s,
            max_retries=max_retries,
            default_headers=headers,
            http_client=openai.DefaultAioHttpClient(
                limits=httpx2.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                )
            ),
        )
        self._probe_client = openai.AsyncOpenAI(
            base_url=base,
            api_key=api_key or NO_API_KEY,
            timeout=PROBE_TIMEOUT_S,
            max_retries=0,
            default_headers=headers,
            http_client=openai.DefaultAioHttpClient(
                limits=httpx2.Limits(max_connections=1, max_keepalive_connections=1)
            ),
        )
        # The last probe's answer and until when (event-loop time) it holds; the probe in
        # flight, which every readiness request arriving meanwhile waits for.
        self._probed: tuple[bool, float] | None = None
        self._probing: asyncio.Task[bool] | None = None

    async def aclose(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
        await self._probe_client.close()
        await self._client.close()

    async def is_available(self) -> bool:
        now = asyncio.get_running_loop().time()
        if self._probed is not None and self._probed[1] > now:
            return self._probed[0]
        if self._probing is None:
            self._probing = asyncio.create_task(self._probe())
        # Shielded: a readiness request that gives up must not cancel the probe the others
        # wait for; it finishes (within its own bound) and its answer is kept.
        return await asyncio.shield(self._probing)

    async def _probe(self) -> bool:
        try:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await self._probe_client.models.list()
            except Exception as exc:  # whatever stops the probe (refused, timeout, 4xx, 5xx)
                ok, why = False, _reason(exc)
            else:
                ok, why = True, "answered"
            was = self._probed[0] if self._probed is not None else True
            if not ok and was:
                log.warning("the model server is unavailable: GET %s %s", self._models_url, why)
            elif ok and not was:
                log.info("the model server is available again")
            ttl_s = PROBE_OK_TTL_S if ok else PROBE_FAILED_TTL_S
            self._probed = (ok, asyncio.get_running_loop().time() + ttl_s)
            return ok
        finally:
            self._probing = None

    async def reply(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        require_tool: str | None = None,
        on_text: TextSink | None = None,
    ) -> Reply:
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        params: dict[str, Any] = {
            "model": self._model,
            "messages": [wire_message(m) for m in messages],
        }
        if tools:
            params["tools"] = [wire_tool(t) for t in tools]
        if require_tool is not None:
            params["tool_choice"] = {"type": "function", "function": {"name": require_tool}}
        try:
            if on_text is None:
                return await self._within(deadline, self._complete(params))
            return await self._stream(params, deadline=deadline, on_text=on_text)
        except LLMError as exc:
            self._report(exc)
            raise
        except openai.APIConnectionError as exc:  # APITimeoutError included
            # By what is behind it, not by its class: aiohttp's lost or refused connections
            # reach the client as a connect timeout.
            error: LLMError = (
                LLMTimeout(detail=f"no answer within {self._timeout_s:g} s")
                if _timed_out(exc)
                else LLMError(detail=f"could not connect: {_innermost(exc)}")
            )
        except openai.APIStatusError as exc:
            error = LLMError(detail=_status_detail(exc))
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            error = LLMError(detail=f"the call failed: {_reason(exc)}")
        self._report(error)
        raise error from None

    async def _complete(self, params: dict[str, Any]) -> Reply:
        # ``post`` rather than ``chat.completions.create``: the request's JSON is already made
        # (``openai_wire``), and the client's pass over it against its typed parameters was
        # about a third of what a call cost the event loop (py-spy, 200 runs at once).
        response = await self._client.post(
            "/chat/completions", body=params | {"stream": False}, cast_to=httpx2.Response
        )
        return reply_of(json_of(response.content))

    async def _stream(self, params: dict[str, Any], *, deadline: float, on_text: TextSink) -> Reply:
        """The answer piece by piece into ``on_text``. Leaving (cancelled, failed, or the
        caller's ``on_text`` raised) closes the HTTP response, so the server stops generating
        for a run that no longer wants the answer."""
        async with contextlib.AsyncExitStack() as stack:
            # Sending (with the client's retries, and its errors for a failed status) is
            # bounded like every other wait; the body is left to be read here.
            response = await self._within(
                deadline,
                self._client.post(
                    "/chat/completions",
                    body=params | {"stream": True, "stream_options": {"include_usage": True}},
                    cast_to=httpx2.Response,
                    stream=True,
                ),
            )
            stack.push_async_callback(response.aclose)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                # The server does not stream: one answer, all at once.
                reply = reply_of(json_of(await self._within(deadline, response.aread())))
                if reply.text:
                    await on_text(reply.text)
                return reply
            turn, events, done = StreamedTurn(), EventStream(), False
            pieces = response.aiter_raw()
            # After [DONE] the body is still read to its end, so that the connection is kept.
            while (piece := await self._within(deadline, anext(pieces, None))) is not None:
                if done:
                    continue
                for data in events.feed(piece):
                    if data.startswith(DONE):
                        done = True
                        break
                    text = turn.add(chunk_of(data))
                    if text:
                        await on_text(text)
            return turn.reply()
        raise AssertionError("unreachable: the exit stack does not swallow exceptions")

    def _report(self, exc: LLMError) -> None:
        """The one line an operator gets about a failed call (the run's user gets
        ``str(exc)``); the log context adds the run's ids."""
        code = "timeout" if isinstance(exc, LLMTimeout) else "llm_error"
        log.warning("model call to %s failed (%s): %s", self._shown_url, code, exc.detail or exc)

    async def _within(self, deadline: float, awaitable: Awaitable[T]) -> T:
        """``awaitable``, bounded by this call's deadline. Each network wait is bounded on its
        own, never across the caller's code: a timeout must not fire inside ``on_text``."""
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError:
            raise LLMTimeout(detail=f"no answer within {self._timeout_s:g} s") from None


def _status_detail(exc: openai.APIStatusError) -> str:
    """``answered 500 after 3 attempts: <excerpt of the body>``."""
    retries = exc.response.request.headers.get("x-stainless-retry-count", "0")
    attempts = int(retries) + 1 if retries.isdigit() else 1
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    try:
        body = exc.response.text
    except httpx2.ResponseNotRead:
        body = ""
    excerpt = " ".join(body.split())[:BODY_EXCERPT_CHARS] or exc.response.reason_phrase
    return f"answered {exc.status_code}{tries}: {excerpt}"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from, outermost first."""
    chain = [exc]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(cause)
    return chain


def _timed_out(exc: BaseException) -> bool:
    """Whether a time limit, rather than a lost connection, is behind ``exc``."""
    return any(isinstance(cause, TimeoutError) for cause in _causes(exc))


def _innermost(exc: BaseException) -> str:
    """The first error of ``exc``'s chain, in a few words (the socket's own, for a refused
    connection)."""
    cause = _causes(exc)[-1]
    return f"{type(cause).__name__}: {cause}".rstrip(": ")


def _reason(exc: BaseException) -> str:
    """``exc`` in a few words, with the underlying network error where there is one."""
    cause = exc.__cause__ or exc.__context__
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, openai.APIStatusError):
        return f"answered {exc.status_code}"
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text
