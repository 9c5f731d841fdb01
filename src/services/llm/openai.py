"""Any server that speaks OpenAI's ``/chat/completions``: OpenAI, vLLM, llama.cpp, Ollama, ...

One ``httpx.AsyncClient`` per application, with a bounded pool, serves every run. Every failure
of a call (refused connection, HTTP error, garbage, no choices, too slow) becomes an ``LLMError``
or ``LLMTimeout`` of that call alone, with a message that tells an operator what went wrong.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from src.services.llm.base import ChatMessage, LLMError, LLMTimeout

T = TypeVar("T")

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 10.0


def chat_completions_url(base_url: str) -> str:
    """``base_url`` as the OpenAI SDK takes it (``http://host:port/v1``); a bare
    ``http://host:port`` gets ``/v1``."""
    base = base_url.rstrip("/")
    if urlsplit(base).path in ("", "/"):
        base += "/v1"
    return base + "/chat/completions"


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
        self._model = model
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(self, messages: Sequence[ChatMessage]) -> str:
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        response = await self._open(messages, stream=False, deadline=deadline)
        try:
            body = await self._within(deadline, response.aread())
        except httpx.HTTPError as exc:
            raise LLMError(f"reading the model's answer from {self._url} failed: {exc!r}") from None
        finally:
            await response.aclose()
        return _text_of(_json(body))

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        """The answer piece by piece. Close it (``contextlib.aclosing``) to stop at once: that
        closes the HTTP response, so the server stops generating for a cancelled run."""
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
                raise LLMError("the model's streamed answer has no text")
        except httpx.HTTPError as exc:
            raise LLMError(f"the stream from {self._url} broke off: {exc!r}") from None
        finally:
            await response.aclose()

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
                reason = f"could not connect to the model server at {self._url}: {exc}"
                raise LLMError(reason) from None
            except httpx.TimeoutException:
                reason = f"no answer in time from the model server at {self._url}"
                raise LLMTimeout(reason) from None
            except httpx.HTTPError as exc:
                raise LLMError(f"the request to {self._url} failed: {exc!r}") from None
            if response.status_code == 200:
                return response
            detail = await self._error_detail(response, deadline)
            if response.status_code not in RETRIED_STATUSES or attempt > self._max_retries:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise LLMError(
                    f"the model server at {self._url} answered {response.status_code}{tries}: "
                    f"{detail}"
                )
            pause = _retry_after(response) or self._backoff_s * 2 ** (attempt - 1)
            remaining = deadline - asyncio.get_running_loop().time()
            if pause >= remaining:
                raise LLMTimeout(
                    f"the model server at {self._url} answered {response.status_code}; "
                    "no time left to retry"
                )
            await asyncio.sleep(pause)

    async def _error_detail(self, response: httpx.Response, deadline: float) -> str:
        try:
            text = (await self._within(deadline, response.aread())).decode(errors="replace")
        except (httpx.HTTPError, LLMError):
            text = ""
        finally:
            await response.aclose()
        return " ".join(text.split())[:200] or response.reason_phrase

    async def _within(self, deadline: float, awaitable: Awaitable[T]) -> T:
        """``awaitable``, bounded by this call's deadline. Each network wait is bounded on its
        own, never across a ``yield``: a timeout must not fire inside the caller's code."""
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError:
            raise LLMTimeout(
                f"the model did not answer within {self._timeout_s:g} s ({self._url})"
            ) from None


_DONE = object()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise LLMError(f"the model's answer is not valid JSON: {body[:80]!r}") from None


def _text_of(data: Any) -> str:
    try:
        choices = data["choices"]
    except (TypeError, KeyError):
        raise LLMError("the model's answer has no 'choices'") from None
    if not isinstance(choices, list) or not choices:
        raise LLMError("the model's answer has no choices")
    try:
        text = choices[0]["message"]["content"]
    except (TypeError, KeyError):
        raise LLMError("the model's first choice has no message content") from None
    if not isinstance(text, str) or not text.strip():
        raise LLMError("the model's answer has no text")
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
        raise LLMError("a streamed chunk of the model's answer has no 'choices'")
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
