"""One run through each way a client can reach isochat, for the benchmarks: isochat's own
``/ws`` and SSE, and the adapters of existing clients with those clients' own packages where
they are Python (the ``openai`` SDK, ``langgraph_sdk``) and the AI SDK's UI message stream read
as its reader reads it (the ``ai`` package is JavaScript; its tests drive it under Node).

Every protocol's ``Client`` is made for one user before the clock starts (its connections
open), then does runs one after the other: a run on a new thread, read to its end. What a run
gives back is what its user saw: the answer as the client put it together, and every run id the
stream named (a run id not the user's own would be another user's data). After the load,
``stored_problems`` reads each run's stored events through isochat's own API: seq 1, 2, 3, ...
with no gap and one final event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import openai
from langgraph_sdk import get_client
from websockets.asyncio.client import ClientConnection, connect

from src.drill.checks import sequence_problems
from src.runs.domain import FINAL_EVENT_TYPES

PROTOCOLS = ("ws", "sse", "openai", "agent_protocol", "ai_sdk")
ADAPTERS = ("openai", "agent_protocol", "ai_sdk")
TIMEOUT_S = 120.0
OPEN_TIMEOUT_S = 60.0


@dataclass(slots=True)
class Seen:
    """One run as its user saw it."""

    answer: str | None = None
    run_ids: set[str] = field(default_factory=set)
    ended: str | None = None  # how the client was told it ended (a final event type, "stop")
    problem: str | None = None


class Client(Protocol):
    async def open(self) -> None:
        """Its connection opened (before the clock starts)."""
        ...

    async def run(self, question: str) -> Seen:
        """A run of ``question`` on a new thread, read to its end."""
        ...

    async def aclose(self) -> None: ...


def _http(url: str, token: str) -> httpx.AsyncClient:
    """One keep-alive connection per user, as each browser or app has its own."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(
        base_url=url,
        timeout=TIMEOUT_S,
        limits=limits,
        headers={"Authorization": f"Bearer {token}"},
    )


async def _new_thread(http: httpx.AsyncClient) -> str:
    made = await http.post("/api/threads", json={"title": "bench"})
    thread_id: str = made.raise_for_status().json()["id"]
    return thread_id


def _from_events(seen: Seen, frame: dict[str, Any]) -> None:
    """isochat's own events: the run ids, and the answer from the final event."""
    if isinstance(frame.get("run_id"), str):
        seen.run_ids.add(frame["run_id"])
    if frame.get("type") in FINAL_EVENT_TYPES:
        seen.ended = frame["type"]
        seen.answer = ((frame.get("data") or {}).get("message") or {}).get("content")


class WsClient:
    """isochat's ``/ws``: one socket per user, a ``chat`` frame per run."""

    def __init__(self, url: str, token: str) -> None:
        self._url, self._token = url, token
        self._http = _http(url, token)
        self._ws: ClientConnection | None = None

    async def open(self) -> None:
        ws_url = "ws" + self._url.removeprefix("http")
        self._ws = await connect(f"{ws_url}/ws?token={self._token}", open_timeout=OPEN_TIMEOUT_S)

    async def run(self, question: str) -> Seen:
        assert self._ws is not None
        thread_id = await _new_thread(self._http)
        seen = Seen()
        await self._ws.send(
            json.dumps({"type": "chat", "thread_id": thread_id, "content": question})
        )
        while seen.ended is None:
            frame = json.loads(await self._ws.recv())
            if frame.get("type") == "error":
                seen.problem = f"ws error frame {frame}"
                return seen
            _from_events(seen, frame)
        return seen

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self._http.aclose()


class SseClient:
    """isochat's ``POST /api/threads/{id}/messages`` with ``Accept: text/event-stream``."""

    def __init__(self, url: str, token: str) -> None:
        self._http = _http(url, token)

    async def open(self) -> None:
        await self._http.get("/health/live")

    async def run(self, question: str) -> Seen:
        thread_id = await _new_thread(self._http)
        seen = Seen()
        async with self._http.stream(
            "POST",
            f"/api/threads/{thread_id}/messages",
            json={"content": question},
            headers={"Accept": "text/event-stream"},
        ) as answer:
            answer.raise_for_status()
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    _from_events(seen, json.loads(line[6:]))
        return seen

    async def aclose(self) -> None:
        await self._http.aclose()


class OpenAIClient:
    """``/v1/chat/completions`` streamed, through the ``openai`` SDK: each request a new
    thread; the answer is the deltas joined; the run is named in each chunk's id."""

    def __init__(self, url: str, token: str) -> None:
        self._sdk = openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=TIMEOUT_S
        )

    async def open(self) -> None:
        await self._sdk.models.list()

    async def run(self, question: str) -> Seen:
        seen, parts = Seen(), []
        stream = await self._sdk.chat.completions.create(
            model="isochat", messages=[{"role": "user", "content": question}], stream=True
        )
        async for chunk in stream:
            seen.run_ids.add(chunk.id.removeprefix("chatcmpl-"))
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                seen.ended = choice.finish_reason or seen.ended
        seen.answer = "".join(parts)
        return seen

    async def aclose(self) -> None:
        await self._sdk.close()


class AgentProtocolClient:
    """A thread, then a run streamed in ``values`` mode, through ``langgraph_sdk``: the answer
    is the last message of the last values; the run is named by the ``metadata`` event."""

    def __init__(self, url: str, token: str) -> None:
        self._sdk = get_client(url=url, api_key=token, timeout=TIMEOUT_S)

    async def open(self) -> None:
        await self._sdk.assistants.search()

    async def run(self, question: str) -> Seen:
        seen = Seen()
        thread = await self._sdk.threads.create()
        request: dict[str, Any] = {"messages": [{"role": "user", "content": question}]}
        async for part in self._sdk.runs.stream(
            thread["thread_id"], "isochat", input=request, stream_mode="values"
        ):
            if part.event == "metadata":
                seen.run_ids.add(part.data["run_id"])
            elif part.event == "values":
                messages = part.data.get("messages") or []
                if messages and messages[-1].get("type") == "ai":
                    seen.answer, seen.ended = messages[-1]["content"], "values"
            elif part.event == "error":
                seen.problem = f"error {part.data}"
        return seen

    async def aclose(self) -> None:
        await self._sdk.http.client.aclose()


class AiSdkClient:
    """``POST /api/chat`` with a new chat id per run, read as the AI SDK's UI message stream:
    ``data:`` lines of parts, the text deltas joined, until ``[DONE]``."""

    def __init__(self, url: str, token: str) -> None:
        self._http = _http(url, token)

    async def open(self) -> None:
        await self._http.get("/health/live")

    async def run(self, question: str) -> Seen:
        seen, parts = Seen(), []
        message = {
            "id": str(uuid.uuid4()),
            "role": "user",
            "parts": [{"type": "text", "text": question}],
        }
        body = {"id": str(uuid.uuid4()), "messages": [message], "trigger": "submit-message"}
        async with self._http.stream("POST", "/api/chat", json=body) as answer:
            answer.raise_for_status()
            async for line in answer.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    break
                part = json.loads(line[6:])
                kind = part.get("type")
                if kind == "text-delta":
                    parts.append(part.get("delta", ""))
                elif kind == "start" and isinstance(part.get("messageId"), str):
                    seen.run_ids.add(part["messageId"])
                elif kind in ("finish", "error", "abort"):
                    seen.ended = kind
                if kind == "error":
                    seen.problem = f"error part {part}"
        seen.answer = "".join(parts)
        return seen

    async def aclose(self) -> None:
        await self._http.aclose()


CLIENTS: dict[str, Callable[[str, str], Client]] = {
    "ws": WsClient,
    "sse": SseClient,
    "openai": OpenAIClient,
    "agent_protocol": AgentProtocolClient,
    "ai_sdk": AiSdkClient,
}


async def client_for(protocol: str, url: str, token: str) -> Client:
    """A user's client of ``protocol``, its connection open."""
    client = CLIENTS[protocol](url, token)
    await client.open()
    return client


async def stored_problems(url: str, token: str, run_ids: Sequence[str]) -> list[str]:
    """What is wrong with the stored events of the user's runs: a seq gap or repeat, not one
    final event, or a run the user cannot read (not theirs)."""
    problems: list[str] = []
    async with _http(url, token) as http:
        for run_id in run_ids:
            answer = await http.get(f"/api/runs/{run_id}/events")
            if answer.status_code != 200:
                problems.append(f"run {run_id}: {answer.status_code} reading its events")
                continue
            events = answer.json()["events"]
            if count := sequence_problems(events):
                problems.append(f"run {run_id}: {count} seq problem(s)")
    return problems
