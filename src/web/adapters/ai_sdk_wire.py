"""A run's events as the AI SDK's UI message stream (protocol ``v1``: server-sent events whose
``data:`` is one chunk as JSON, ending with ``data: [DONE]``), which ``useChat`` and
``readUIMessageStream`` build one assistant message from.

    start (messageId: the run's id) -> start-step
      -> text-start / text-delta... / text-end   the answering agent's agent_thinking texts
      -> tool-input-available / tool-output-available (or tool-output-error)   tool calls
      -> tool-input-available + tool-approval-request   a call that waits for a person
      -> tool-approval-response (+ tool-output-denied)   the person's decision
      -> error (a failed run) -> finish-step -> finish (finishReason) -> [DONE]

The message's id is the run's: a resumed stream (a replay from the run's start) and the
continuation after an approval build the same message the client already has.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic_core import from_json

from src.agents.triage import TriageAgent
from src.runs.follower import Follower
from src.services.broker import Frame
from src.web.sse import HEADERS

UI_MESSAGE_STREAM_HEADERS: Mapping[str, str] = {
    **HEADERS,
    "x-vercel-ai-ui-message-stream": "v1",
}
DONE = b"data: [DONE]\n\n"

# How each way a run ends finishes the message. A cancelled run's answer is incomplete:
# "interrupted" also keeps the client's automatic sends (sendAutomaticallyWhen) from going on.
FINISH_REASON_OF = {
    "run_completed": "stop",
    "run_failed": "error",
    "run_cancelled": "interrupted",
}


def chunk(part: Mapping[str, Any]) -> bytes:
    data = json.dumps(part, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def tool_input(arguments: object) -> object:
    """A call's arguments as the client shows them: the JSON the model wrote, as an object;
    as text when it is not JSON (cut at the event cap, or the model's mistake)."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return from_json(arguments)
    except ValueError:
        return arguments


class UiMessageStreamWire:
    """One stream's writer (it remembers the text part it has open). ``continuing``: the
    stream goes on with a message the client has up to a pause for approval, so it starts no
    new step (the waiting calls' parts are found in the step they were asked in)."""

    media_type = "text/event-stream"
    headers: Mapping[str, str] = UI_MESSAGE_STREAM_HEADERS

    def __init__(self, *, message_id: str, continuing: bool = False) -> None:
        self._message_id = message_id
        self._continuing = continuing
        self._open_text: str | None = None
        self._finished = False

    def opening(self) -> bytes:
        opening = chunk({"type": "start", "messageId": self._message_id})
        if not self._continuing:
            opening += chunk({"type": "start-step"})
        return opening

    def event(self, event: Frame) -> bytes:
        kind, data = event.get("type"), event.get("data") or {}
        if event.get("agent") == TriageAgent.name:
            return b""  # choosing the specialist is not part of the answer
        if kind == "agent_thinking":
            return self._text(str(data.get("text", "")), seq=event["seq"])
        if kind == "tool_executing":
            return self._end_text() + self._tool_input(data)
        if kind == "tool_completed":
            return self._end_text() + self._tool_output(data)
        if kind == "approval_requested":
            return (
                self._end_text()
                + self._tool_input(data)
                + chunk(
                    {
                        "type": "tool-approval-request",
                        "approvalId": data["call_id"],
                        "toolCallId": data["call_id"],
                    }
                )
            )
        if kind == "approval_resolved":
            return self._end_text() + self._decision(data)
        if kind in FINISH_REASON_OF:
            return self._finish(kind, data)
        return b""

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def closing(self, follower: Follower) -> bytes:
        """After the final event's finish, only ``[DONE]``; after a pause for approval, the
        message is finished for now (``tool-calls``: the next request answers them); a run
        that is gone (rolled back by a newer message, its thread deleted) ends interrupted."""
        if self._finished:
            return DONE
        if follower.paused:
            return self.waiting()
        return self._end_text() + self._end_message("interrupted") + DONE

    def waiting(self) -> bytes:
        """The end of the message for now: calls wait for a person (``tool-calls``: the next
        request answers them)."""
        return self._end_text() + self._end_message("tool-calls") + DONE

    def _text(self, text: str, *, seq: int) -> bytes:
        if not text:
            return b""
        out = b""
        if self._open_text is None:
            self._open_text = f"text-{seq}"
            out = chunk({"type": "text-start", "id": self._open_text})
        return out + chunk({"type": "text-delta", "id": self._open_text, "delta": text})

    def _end_text(self) -> bytes:
        if self._open_text is None:
            return b""
        ended = chunk({"type": "text-end", "id": self._open_text})
        self._open_text = None
        return ended

    def _tool_input(self, data: Mapping[str, Any]) -> bytes:
        return chunk(
            {
                "type": "tool-input-available",
                "toolCallId": data["call_id"],
                "toolName": data["tool"],
                "input": tool_input(data.get("input")),
            }
        )

    def _tool_output(self, data: Mapping[str, Any]) -> bytes:
        if data.get("ok", True):
            return chunk(
                {
                    "type": "tool-output-available",
                    "toolCallId": data["call_id"],
                    "output": data.get("output", ""),
                }
            )
        return chunk(
            {
                "type": "tool-output-error",
                "toolCallId": data["call_id"],
                "errorText": str(data.get("output", "")),
            }
        )

    def _decision(self, data: Mapping[str, Any]) -> bytes:
        rejected = data.get("decision") == "reject"
        response: dict[str, Any] = {
            "type": "tool-approval-response",
            "approvalId": data["call_id"],
            "approved": not rejected,
        }
        if rejected and data.get("message"):
            response["reason"] = data["message"]
        out = chunk(response)
        if rejected:
            # A rejected call never runs (no tool events): its part ends here.
            out += chunk({"type": "tool-output-denied", "toolCallId": data["call_id"]})
        return out

    def _finish(self, kind: str, data: Mapping[str, Any]) -> bytes:
        out = self._end_text()
        if kind == "run_failed":
            error = data.get("error") or {}
            text = f"{error.get('code', 'internal_error')}: {error.get('message', '')}"
            out += chunk({"type": "error", "errorText": text})
        return out + self._end_message(FINISH_REASON_OF[kind])

    def _end_message(self, reason: str) -> bytes:
        self._finished = True
        return chunk({"type": "finish-step"}) + chunk({"type": "finish", "finishReason": reason})
