"""A run's events as LangGraph's server streams them: a ``Wire`` (``src/web/sse.py``) fed by
the one follower, from the run's first event.

One isochat event (seq N) becomes, in this order, what each stream mode shows of it:
``values`` (the thread's messages), ``updates`` (what a node did), ``messages``
(``messages-tuple``: ``[message chunk, metadata]``), ``custom`` (the isochat event itself),
and ``error`` (a failed run, whatever the modes). The k-th of them carries the SSE id ``N-k``,
k counted over all of them whether asked for or not, so ids do not depend on the modes. A
client that resumes after ``N-k`` (``Last-Event-ID``) gets what comes after it once and
nothing before: the run is followed again from its first event (the wire's state, the
messages so far and the calls waiting, is rebuilt from them) and what the client had is not
written. A bare ``N`` (an isochat seq) means all of seq N.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import pydantic_core

from src.runs.domain import Message, Run
from src.runs.follower import Follower
from src.services.broker import Frame
from src.web.adapters.agent_protocol_shapes import (
    ASSISTANT_ID,
    GRAPH_ID,
    ai,
    interrupt,
    langchain_message,
    run_location,
    tool_call,
    tool_message,
)
from src.web.errors import ApiError
from src.web.sse import HEADERS

# The SSE events of one seq are numbered below this (an id's ``k``).
PER_SEQ = 1000
EVERYTHING_OF_SEQ = PER_SEQ - 1


def parse_event_id(raw: str) -> tuple[int, int]:
    """``N-k`` (or ``N``: all of seq N) as (N, k); 422 for anything else."""
    seq, dash, index = raw.strip().partition("-")
    parts = [seq, index] if dash else [seq]
    if not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts):
        raise ApiError("validation_error", "Last-Event-ID: must be N or N-k (an event's id)")
    return int(seq), int(index) if dash else EVERYTHING_OF_SEQ


def stream_location(run: Run, modes: frozenset[str]) -> dict[str, str]:
    """Headers that tell the SDK where the run's stream goes on (it reconnects there, with
    ``Last-Event-ID``, when the stream is cut) and where the run is."""
    query = urlencode([("stream_mode", mode) for mode in sorted(modes)])
    return {
        "Location": f"/threads/{run.thread_id}/runs/{run.id}/stream?{query}",
        **run_location(run),
    }


def sse_event(name: str, data: Any, event_id: str | None = None) -> bytes:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {text}\n\n".encode()


class LangGraphWire:
    """One run's events in the stream modes ``modes``, after ``resume_after`` ((seq, k));
    ``base`` is the thread's messages up to the run's question (its state when it began)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        run: Run,
        *,
        base: list[Message],
        modes: frozenset[str],
        resume_after: tuple[int, int] = (0, EVERYTHING_OF_SEQ),
        announce: bool = False,
    ) -> None:
        self.headers: Mapping[str, str] = {**HEADERS, **stream_location(run, modes)}
        self._run = run
        self._messages = [langchain_message(m) for m in base]
        self._modes = modes
        self._after = resume_after
        self._announce = announce
        self._thought: set[str] = set()  # agents that streamed text: the answering ones
        self._pending: dict[str, dict[str, Any]] = {}  # call id -> its approval_requested
        self._end_id: tuple[int, int] | None = None  # the id ``end`` would carry now

    def opening(self) -> bytes:
        """A new run's stream begins as LangGraph's does: ``metadata`` with the run's id (no
        SSE id: it is no event of the run's, and a resume must not skip anything for it)."""
        if not self._announce:
            return b""
        return sse_event("metadata", {"run_id": self._run.id, "attempt": 1})

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def closing(self, follower: Follower) -> bytes:
        """``end`` once the run has ended or paused: the SDK then knows the stream is over and
        does not ask the run whether to reconnect (a stream cut short sends none). Its id is
        the next of the last event's, so that a resume after it gets nothing more."""
        if not follower.done or self._end_id is None or self._end_id <= self._after:
            return b""
        seq, index = self._end_id
        return sse_event("end", None, f"{seq}-{index}")

    def event(self, event: Frame) -> bytes:
        seq = int(event["seq"])
        out = bytearray()
        renderings = self._renderings(event)
        self._end_id = (seq, len(renderings))
        for index, (mode, name, data) in enumerate(renderings):
            if (seq, index) <= self._after:
                continue  # the resuming client has it
            if mode is None or mode in self._modes:
                out += sse_event(name, data, f"{seq}-{index}")
        return bytes(out)

    def _renderings(self, event: Frame) -> list[tuple[str | None, str, Any]]:
        """Every mode's view of the event, in the fixed order (also the ones not asked for:
        their places number the ids). The wire's state is updated here, once per event."""
        kind, agent, data = event["type"], event.get("agent"), event.get("data") or {}
        node = agent or GRAPH_ID
        values: Any = None
        updates: Any = None
        chunk: Any = None
        error: Any = None
        if kind == "run_started":
            values = self._values()
        elif kind == "tool_executing":
            call = tool_call(
                call_id=str(data.get("call_id")),
                tool=str(data.get("tool")),
                arguments=_arguments(data.get("input")),
            )
            message_id = f"run-{self._run.id}-call-{data.get('call_id')}"
            updates = {node: {"messages": [ai("", message_id, tool_calls=[call])]}}
            chunk = ai("", message_id, tool_calls=[call], chunk=True)
        elif kind == "tool_completed":
            returned = tool_message(
                call_id=str(data.get("call_id")),
                tool=str(data.get("tool")),
                output=data.get("output"),
                ok=bool(data.get("ok", True)),
                run_id=self._run.id,
            )
            updates = {"tools": {"messages": [returned]}}
            chunk = returned
        elif kind == "agent_thinking":
            self._thought.add(node)
            chunk = ai(str(data.get("text", "")), f"run-{self._run.id}", chunk=True)
        elif kind == "agent_completed":
            result = data.get("result")
            if node in self._thought:
                answer = ai(str(result), f"run-{self._run.id}")
                updates = {node: {"messages": [answer]}}
            else:  # an agent that answered nothing, only chose (triage's route)
                updates = {node: {"result": result}}
        elif kind == "approval_requested":
            self._pending[str(data.get("call_id"))] = dict(data)
            pending = [interrupt(p) for p in self._pending.values()]
            values = self._values() | {"__interrupt__": pending}
            updates = {"__interrupt__": [interrupt(dict(data))]}
        elif kind == "approval_resolved":
            self._pending.pop(str(data.get("call_id")), None)
        elif kind in ("run_completed", "run_cancelled") and data.get("message"):
            answer = data["message"]
            final = ai(
                str(answer.get("content", "")),
                f"run-{self._run.id}",
                interrupted=bool(answer.get("interrupted")),
            )
            values = {"messages": [*self._messages, final]}
        elif kind == "run_failed":
            failure = data.get("error") or {}
            error = {"error": failure.get("code"), "message": failure.get("message")}
        metadata = {
            "langgraph_node": node,
            "langgraph_step": event["seq"],
            "run_id": self._run.id,
            "thread_id": self._run.thread_id,
            "graph_id": GRAPH_ID,
            "assistant_id": ASSISTANT_ID,
        }
        rendered: list[tuple[str | None, str, Any]] = [
            ("values", "values", values),
            ("updates", "updates", updates),
            ("messages-tuple", "messages", None if chunk is None else [chunk, metadata]),
            ("custom", "custom", dict(event)),
            (None, "error", error),
        ]
        return [(mode, name, body) for mode, name, body in rendered if body is not None]

    def _values(self) -> dict[str, Any]:
        return {"messages": list(self._messages)}


def _arguments(text: Any) -> Any:
    """A call's arguments (stored as the JSON text the model wrote) as an object; text that
    is not JSON stays text."""
    if not isinstance(text, str):
        return text
    try:
        return pydantic_core.from_json(text)
    except ValueError:
        return text
