"""isochat's runs as OpenAI's wire writes them: a run's answer as a ``chat.completion``, its live
text as ``chat.completion.chunk`` deltas (``ChunkWire``, a ``Wire`` for ``src/web/sse.py``),
and errors as ``{"error": {"message", "type", "param", "code"}}``.

Only the answer's text is shown: the stored ``agent_thinking`` texts of the answering agent
(triage's choice is not part of the answer). Tool calls are not sent as ``tool_calls``: isochat
runs its own tools, and a client given ``tool_calls`` would take them as its to run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NotRequired

from starlette.responses import JSONResponse, Response
from typing_extensions import TypedDict

from src.agents.triage import TriageAgent
from src.runs.domain import Run
from src.runs.follower import Follower
from src.services.broker import Frame
from src.web.sse import HEADERS

COMPLETION_ID_PREFIX = "chatcmpl-"
THREAD_HEADER = "X-Isochat-Thread-Id"
RUN_HEADER = "X-Isochat-Run-Id"
# The SDKs retry 409 and 5xx answers on their own; a run that ended is stored, and a retry
# would store another thread and run: they are told not to.
NO_RETRY = {"x-should-retry": "false"}
# What a failed run answers, by its error code: the model server failed (502), the run ran
# out of time (504); anything else is isochat's own failure (500).
STATUS_OF_RUN_ERROR = {"llm_error": 502, "timeout": 504}
# A run cancelled (by its owner, a shutdown) is no answer, and no server fault either.
CANCELLED_STATUS = 409
# How much of a waiting call's input the answer shows.
SHOWN_INPUT_CHARS = 200
DONE = b"data: [DONE]\n\n"


class OpenAIErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(TypedDict):
    """The body of every error answer under ``/v1``."""

    error: OpenAIErrorDetail


class OpenAIUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: str


class Choice(TypedDict):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"]
    logprobs: None


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    # Absent when the model reported none (or the run waits for approval: not ended).
    usage: NotRequired[OpenAIUsage]


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


def openai_error(
    message: str, *, kind: str, code: str | None, param: str | None = None
) -> OpenAIError:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, error: OpenAIError, *, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(error, status_code=status, headers=dict(headers or {}))


def ids_headers(run: Run) -> dict[str, str]:
    """Where the request's thread and run are, for isochat's own API."""
    return {THREAD_HEADER: run.thread_id, RUN_HEADER: run.id}


def completion_id(run: Run) -> str:
    return COMPLETION_ID_PREFIX + run.id


def created(run: Run) -> int:
    return int(run.created_at.timestamp())


def usage_of(usage: Mapping[str, Any] | None) -> OpenAIUsage | None:
    """OpenAI's usage (with the total) from a run's; None when its model reported none."""
    if not usage:
        return None
    prompt, completion = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(run: Run, *, model: str, content: str) -> ChatCompletion:
    answer: ChatCompletion = {
        "id": completion_id(run),
        "object": "chat.completion",
        "created": created(run),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
    }
    if (usage := usage_of(None if run.usage is None else run.usage.to_json())) is not None:
        answer["usage"] = usage
    return answer


def run_error(run_id: str, *, error: Mapping[str, Any] | None) -> tuple[int, OpenAIError]:
    """What a run that ended without an answer is: failed (``error``: its code and message)
    or, with no error, cancelled; the run's id in the message, to find it in isochat's own
    API."""
    if error is None:
        message = f"the run was cancelled before it answered (run {run_id})"
        return CANCELLED_STATUS, openai_error(message, kind="run_error", code="cancelled")
    code = str(error.get("code") or "internal_error")
    message = f"{error.get('message') or 'the run failed'} (run {run_id})"
    status = STATUS_OF_RUN_ERROR.get(code, 500)
    return status, openai_error(message, kind="run_error", code=code)


def answer_text(events: Iterable[Mapping[str, Any]]) -> str:
    """The answer as far as the events go: the answering agent's live texts, joined."""
    return "".join(_live_text(event) for event in events)


def waiting_calls(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The calls a paused run waits on: requested, not yet decided."""
    requested: dict[str, Mapping[str, Any]] = {}
    for event in events:
        data = event.get("data") or {}
        if event["type"] == "approval_requested":
            requested[str(data.get("call_id"))] = data
        elif event["type"] == "approval_resolved":
            requested.pop(str(data.get("call_id")), None)
    return list(requested.values())


def waiting_note(run: Run, calls: Iterable[Mapping[str, Any]], *, after: str = "") -> str:
    """What an answer says of a run paused for approval, which an OpenAI client cannot give:
    which calls wait, and where a person decides (isochat's own API), set apart from the
    answer so far (``after``)."""
    named = "; ".join(f"{call.get('tool')} {_shown(call.get('input'))}" for call in calls)
    note = (
        f"[The run {run.id} waits for a person to approve {named or 'a tool call'} before it "
        f"goes on: decide at POST /api/runs/{run.id}/approvals, then read the answer at "
        f"GET /api/runs/{run.id}/stream.]"
    )
    separator = "\n\n" if after and not after.endswith("\n\n") else ""
    return separator + note


class ChunkWire:
    """A run as ``chat.completion.chunk`` deltas: the role first, the answer's text as it
    comes, then the end: ``finish_reason`` "stop" (and the usage chunk when asked for) on
    completion or at a pause for approval (with the note that says so); an ``error`` object
    when the run failed or was cancelled; ``[DONE]`` last."""

    media_type = "text/event-stream"

    def __init__(self, run: Run, *, model: str, include_usage: bool) -> None:
        self.headers: Mapping[str, str] = {**HEADERS, **ids_headers(run)}
        self._run = run
        self._include_usage = include_usage
        self._base: dict[str, Any] = {
            "id": completion_id(run),
            "object": "chat.completion.chunk",
            "created": created(run),
            "model": model,
        }
        self._said: list[str] = []
        self._events: list[Frame] = []  # the pause's, to name the calls that wait
        self._ended = False  # its final event was written

    def opening(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, event: Frame) -> bytes:
        kind, data = event["type"], event.get("data") or {}
        if text := _live_text(event):
            self._said.append(text)
            return self._chunk({"content": text})
        if kind in ("approval_requested", "approval_resolved"):
            self._events.append(event)
        elif kind == "run_completed":
            self._ended = True
            answer = str((data.get("message") or {}).get("content", ""))
            said = "".join(self._said)
            # The texts are the answer; should a run end with more, the rest still goes out.
            rest = answer[len(said) :] if answer.startswith(said) else ""
            return (self._chunk({"content": rest}) if rest else b"") + self._end(
                usage_of(data.get("usage"))
            )
        elif kind in ("run_failed", "run_cancelled"):
            # The SDKs raise an ``error`` object met in a stream (``APIError``).
            self._ended = True
            failed = data.get("error") or {"code": "internal_error"}
            _, error = run_error(self._run.id, error=failed if kind == "run_failed" else None)
            return _data(error) + DONE
        return b""

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def closing(self, follower: Follower) -> bytes:
        if self._ended:
            return b""
        if not follower.paused:
            # Gone without a final event: rolled back by a newer message on its thread.
            _, error = run_error(self._run.id, error=None)
            return _data(error) + DONE
        note = waiting_note(self._run, waiting_calls(self._events), after="".join(self._said))
        return self._chunk({"content": note}) + self._end(None)

    def _end(self, usage: OpenAIUsage | None) -> bytes:
        out = self._chunk({}, finish_reason="stop")
        if self._include_usage:
            out += _data({**self._base, "choices": [], "usage": usage})
        return out + DONE

    def _chunk(self, delta: dict[str, str], *, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._base, "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None  # OpenAI's: null on every chunk but the last
        return _data(chunk)


def _live_text(event: Mapping[str, Any]) -> str:
    if event["type"] != "agent_thinking" or event.get("agent") == TriageAgent.name:
        return ""
    return str((event.get("data") or {}).get("text", ""))


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= SHOWN_INPUT_CHARS else text[:SHOWN_INPUT_CHARS] + "..."


def _data(payload: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()
