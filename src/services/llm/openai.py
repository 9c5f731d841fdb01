"""Any server that speaks OpenAI's ``/chat/completions``: OpenAI, vLLM, llama.cpp, Ollama, ...

One ``httpx.AsyncClient`` per application, with a bounded pool, serves every run. Every failure
of a call (refused connection, HTTP error, garbage, no choices, too slow) becomes an ``LLMError``
or ``LLMTimeout`` of that call alone. What the run's user sees is its short, safe message
(``str(exc)``); what went wrong (the server's URL without credentials, the status, an excerpt
of the answer) is in ``exc.detail`` and in one warning logged here, which carries the run's ids
through the log context.

``is_available`` answers readiness probes: ``GET {base_url}/models`` with the API key, bounded
by ``PROBE_TIMEOUT_S``, on a connection of its own (a pool full of runs' streams must not make
the model look down), at most one at a time, its answer kept ``PROBE_OK_TTL_S`` (or
``PROBE_FAILED_TTL_S`` after a failure, so that a recovery shows soon).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from src.services.llm.base import INVALID_REPLY, ChatMessage, LLMError, LLMTimeout

T = TypeVar("T")

log = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 10.0
# How much of a failed answer's body an operator gets in the log.
BODY_EXCERPT_CHARS = 200
# Below /health/ready's own bound on a check (2 s), so that a slow server reads "unavailable"
# from the probe itself rather than from the cut-off.
PROBE_TIMEOUT_S = 1.5
PROBE_OK_TTL_S = 30.0
PROBE_FAILED_TTL_S = 5.0


def api_base_url(base_url: str) -> str:
    """``base_url`` as the OpenAI SDK takes it (``http://host:port/v1``); a bare
    ``http://host:port`` gets ``/v1``."""
    base = base_url.rstrip("/")
    if urlsplit(base).path in ("", "/"):
        base += "/v1"
    return base


def chat_completions_url(base_url: str) -> str:
    return api_base_url(base_url) + "/chat/completions"


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
        backoff_s: float = 0.25,
    ) -> None:
        self._url = chat_completions_url(base_url)
        self._models_url = api_base_url(base_url) + "/models"
        self._shown_url = without_credentials(self._url)
        self._model = model
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._probe_client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(PROBE_TIMEOUT_S),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
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
        await self._probe_client.aclose()
        await self._client.aclose()

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
                    response = await self._probe_client.get(self._models_url)
            except Exception as exc:  # whatever stops the probe (refused, timeout, bad URL)
                ok, why = False, f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                # Anything but success means runs would fail too: a wrong path (404), a wrong
                # key (401), a server in trouble (5xx).
                ok, why = response.is_success, f"answered {response.status_code}"
            was = self._probed[0] if self._probed is not None else True
            if not ok and was:
                log.warning(
                    "the model server is unavailable: GET %s %s",
                    without_credentials(self._models_url),
                    why,
                )
            elif ok and not was:
                log.info("the model server is available again")
            ttl_s = PROBE_OK_TTL_S if ok else PROBE_FAILED_TTL_S
            self._probed = (ok, asyncio.get_running_loop().time() + ttl_s)
            return ok
        finally:
            self._probing = None

    async def complete(self, messages: Sequence[ChatMessage]) -> str:
        try:
            deadline = asyncio.get_running_loop().time() + self._timeout_s
            response = await self._open(messages, stream=False, deadline=deadline)
            try:
                body = await self._within(deadline, response.aread())
            except httpx.HTTPError as exc:
                raise LLMError(detail=f"reading the answer failed: {exc!r}") from None
            finally:
                await response.aclose()
            return _text_of(_json(body))
        except LLMError as exc:
            self._report(exc)
            raise

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        """The answer piece by piece. Close it (``contextlib.aclosing``) to stop at once: that
        closes the HTTP response, so the server stops generating for a cancelled run."""
        try:
            deadline = asyncio.get_running_loop().time() + self._timeout_s
            response = await self._open(messages, stream=True, deadline=deadline)
            try:
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    # The server does not stream: one answer, all at once.
                    yield _text_of(_json(await self._within(deadline, response.aread())))
                    return
                produced = False
                lines = response.aiter_lines()
                while (line := await self._within(deadline, anext(lines, None))) is not None:
                    piece = _piece_of(line)
                    if piece is _DONE:
                        break
                    if piece:
                        produced = True
                        yield str(piece)
                if not produced:
                    raise LLMError(INVALID_REPLY, detail="the streamed answer has no text")
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            error = LLMError(detail=f"the stream broke off: {exc!r}")
            self._report(error)
            raise error from None
        except LLMError as exc:
            self._report(exc)
            raise

    def _report(self, exc: LLMError) -> None:
        """The one line an operator gets about a failed call (the run's user gets
        ``str(exc)``); the log context adds the run's ids."""
        code = "timeout" if isinstance(exc, LLMTimeout) else "llm_error"
        log.warning("model call to %s failed (%s): %s", self._shown_url, code, exc.detail or exc)

    async def _open(
        self, messages: Sequence[ChatMessage], *, stream: bool, deadline: float
    ) -> httpx.Response:
        """Send the request; retry 429 and 5xx with backoff while time remains. The response
        returned is 200 and still open."""
        body = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": stream,
        }
        attempt = 0
        while True:
            attempt += 1
            request = self._client.build_request("POST", self._url, json=body)
            try:
                response = await self._within(deadline, self._client.send(request, stream=True))
            except httpx.ConnectError as exc:
                raise LLMError(detail=f"could not connect: {exc}") from None
            except httpx.TimeoutException as exc:
                reason = f"no answer within {self._timeout_s:g} s ({type(exc).__name__})"
                raise LLMTimeout(detail=reason) from None
            except httpx.HTTPError as exc:
                raise LLMError(detail=f"the request failed: {exc!r}") from None
            if response.status_code == 200:
                return response
            excerpt = await self._error_detail(response, deadline)
            if response.status_code not in RETRIED_STATUSES or attempt > self._max_retries:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise LLMError(detail=f"answered {response.status_code}{tries}: {excerpt}")
            pause = _retry_after(response) or self._backoff_s * 2 ** (attempt - 1)
            remaining = deadline - asyncio.get_running_loop().time()
            if pause >= remaining:
                raise LLMTimeout(
                    detail=f"answered {response.status_code} ({excerpt}); no time left to retry "
                    f"within {self._timeout_s:g} s"
                )
            await asyncio.sleep(pause)

    async def _error_detail(self, response: httpx.Response, deadline: float) -> str:
        try:
            text = (await self._within(deadline, response.aread())).decode(errors="replace")
        except (httpx.HTTPError, LLMError):
            text = ""
        finally:
            await response.aclose()
        return " ".join(text.split())[:BODY_EXCERPT_CHARS] or response.reason_phrase

    async def _within(self, deadline: float, awaitable: Awaitable[T]) -> T:
        """``awaitable``, bounded by this call's deadline. Each network wait is bounded on its
        own, never across a ``yield``: a timeout must not fire inside the caller's code."""
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError:
            raise LLMTimeout(detail=f"no answer within {self._timeout_s:g} s") from None


_DONE = object()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        excerpt = body[:BODY_EXCERPT_CHARS]
        raise LLMError(INVALID_REPLY, detail=f"the answer is not valid JSON: {excerpt!r}") from None


def _text_of(data: Any) -> str:
    try:
        choices = data["choices"]
    except (TypeError, KeyError):
        raise LLMError(INVALID_REPLY, detail="the answer has no 'choices'") from None
    if not isinstance(choices, list) or not choices:
        raise LLMError(INVALID_REPLY, detail="the answer has no choices")
    try:
        text = choices[0]["message"]["content"]
    except (TypeError, KeyError):
        raise LLMError(INVALID_REPLY, detail="the first choice has no message content") from None
    if not isinstance(text, str) or not text.strip():
        raise LLMError(INVALID_REPLY, detail="the answer has no text")
    return text


def _piece_of(line: str) -> object:
    """The text in one server-sent-events line: a str, None for nothing, or ``_DONE``."""
    if not line.startswith("data:"):
        return None  # blank separators, comments, `event:` lines
    payload = line[5:].strip()
    if payload == "[DONE]":
        return _DONE
    data = _json(payload.encode())
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        raise LLMError(INVALID_REPLY, detail="a streamed chunk has no 'choices'")
    if not choices:
        return None  # e.g. a closing usage chunk
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return None
