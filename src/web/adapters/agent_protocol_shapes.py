"""isochat's objects in the shapes LangGraph's server gives them (``langgraph_sdk.schema``):
the one assistant, a Run, a Thread, a ThreadState and LangChain messages. Pure functions of
what is stored: nothing here reads or writes anything."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from src.runs.domain import Message, Multitask, Run, Thread, iso

# The one graph isochat serves (triage and its specialists), and its one assistant. A client
# names it by either: LangGraph resolves a graph id to the graph's default assistant, and some
# clients (agent-chat-ui) tell assistant ids from graph ids by whether they are UUIDs.
GRAPH_ID = "isochat"
ASSISTANT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "isochat:assistant:isochat"))
ASSISTANT_NAMES = frozenset({GRAPH_ID, ASSISTANT_ID})
# The assistant is not stored: it has always existed.
ASSISTANT_CREATED_AT = "2025-01-01T00:00:00.000000Z"

LangGraphRunStatus = Literal["pending", "running", "error", "success", "timeout", "interrupted"]
ThreadStatus = Literal["idle", "busy", "interrupted", "error"]

_RUN_STATUS: dict[str, LangGraphRunStatus] = {
    "queued": "pending",
    "running": "running",
    "awaiting_approval": "interrupted",
    "completed": "success",
    "failed": "error",
    "cancelled": "interrupted",
}


def assistant() -> dict[str, Any]:
    return {
        "assistant_id": ASSISTANT_ID,
        "graph_id": GRAPH_ID,
        "name": GRAPH_ID,
        "description": "isochat: triage picks a specialist (math, history, general, ...)",
        "config": {},
        "context": {},
        "metadata": {"created_by": "system"},
        "version": 1,
        "created_at": ASSISTANT_CREATED_AT,
        "updated_at": ASSISTANT_CREATED_AT,
    }


def run_status(run: Run) -> LangGraphRunStatus:
    """A run's status as LangGraph names it; a run cut off by ``RUN_TIMEOUT_S`` is
    ``timeout``, any other failure ``error``."""
    if run.status == "failed" and run.error is not None and run.error.code == "timeout":
        return "timeout"
    return _RUN_STATUS[run.status]


def run_json(run: Run, *, multitask: Multitask | None = None) -> dict[str, Any]:
    """A Run; ``multitask_strategy`` is the one the request gave (isochat does not store it,
    so a run read later says null)."""
    return {
        "run_id": run.id,
        "thread_id": run.thread_id,
        "assistant_id": ASSISTANT_ID,
        "created_at": iso(run.created_at),
        "updated_at": iso(run.finished_at or run.created_at),
        "status": run_status(run),
        "metadata": {},
        "kwargs": {},
        "multitask_strategy": multitask,
    }


def run_location(run: Run) -> dict[str, str]:
    """Where the SDK finds a run it just made (``on_run_created`` reads Content-Location)."""
    return {"Content-Location": f"/threads/{run.thread_id}/runs/{run.id}"}


def ai_message_id(message: Message) -> str:
    """An answer's id: its run's (``run-<run id>``), the id its streamed chunks carried, so
    that a client merges them into the stored answer; an answer a client sent (no run) keeps
    its own."""
    return f"run-{message.run_id}" if message.run_id is not None else message.id


def human(content: str, message_id: str) -> dict[str, Any]:
    return {
        "type": "human",
        "content": content,
        "id": message_id,
        "name": None,
        "example": False,
        "additional_kwargs": {},
        "response_metadata": {},
    }


def ai(
    content: str,
    message_id: str,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    chunk: bool = False,
    interrupted: bool = False,
) -> dict[str, Any]:
    """An AI message (``AIMessageChunk`` for a streamed piece)."""
    return {
        "type": "AIMessageChunk" if chunk else "ai",
        "content": content,
        "id": message_id,
        "name": None,
        "example": False,
        "additional_kwargs": {},
        "response_metadata": {"interrupted": True} if interrupted else {},
        "tool_calls": tool_calls or [],
        "invalid_tool_calls": [],
        "usage_metadata": None,
    }


def tool_call(*, call_id: str, tool: str, arguments: Any) -> dict[str, Any]:
    return {"name": tool, "args": arguments, "id": call_id, "type": "tool_call"}


def tool_message(*, call_id: str, tool: str, output: Any, ok: bool, run_id: str) -> dict[str, Any]:
    return {
        "type": "tool",
        "content": output if isinstance(output, str) else json.dumps(output, ensure_ascii=False),
        "id": f"run-{run_id}-tool-{call_id}",
        "tool_call_id": call_id,
        "name": tool,
        "status": "success" if ok else "error",
        "additional_kwargs": {},
        "response_metadata": {},
    }


def langchain_message(message: Message) -> dict[str, Any]:
    if message.role == "user":
        return human(message.content, message.id)
    return ai(message.content, ai_message_id(message), interrupted=message.interrupted)


def interrupt(requested: dict[str, Any]) -> dict[str, Any]:
    """A call waiting for approval (an ``approval_requested`` event's data) as an Interrupt:
    its id is the call's id, its value the event's data."""
    return {"value": requested, "id": str(requested.get("call_id", ""))}


@dataclass(frozen=True, slots=True)
class ThreadView:
    """What a client is shown of a thread: the thread, its messages, its status, and the
    calls its paused run waits on (with the agent that asked)."""

    thread: Thread
    messages: list[Message]
    status: ThreadStatus
    paused_run_id: str | None = None
    paused_agent: str | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)


def metadata_of(thread: Thread) -> dict[str, Any]:
    """The thread's metadata: what its client attached, over the graph and assistant every
    isochat thread belongs to (as LangGraph adds them at a thread's first run)."""
    stored = json.loads(thread.metadata) if thread.metadata else {}
    return {"graph_id": GRAPH_ID, "assistant_id": ASSISTANT_ID, **stored}


def values_of(messages: list[Message]) -> dict[str, Any]:
    return {"messages": [langchain_message(m) for m in messages]}


def thread_json(view: ThreadView) -> dict[str, Any]:
    """A Thread; ``updated_at`` is its creation time (isochat does not keep another)."""
    thread = view.thread
    interrupts: dict[str, list[dict[str, Any]]] = {}
    if view.paused_run_id is not None and view.pending:
        interrupts[view.paused_run_id] = [interrupt(p) for p in view.pending]
    return {
        "thread_id": thread.id,
        "created_at": iso(thread.created_at),
        "updated_at": iso(thread.created_at),
        "metadata": metadata_of(thread),
        "status": view.status,
        "values": values_of(view.messages),
        "interrupts": interrupts,
        "config": {},
    }


def state_json(view: ThreadView) -> dict[str, Any]:
    """A ThreadState: the messages as values; a paused run is the one task, its agent the
    next node, its waiting calls the interrupts. The checkpoint is named by the last message
    (isochat keeps no checkpoints: there is only the present)."""
    thread = view.thread
    last = view.messages[-1].id if view.messages else None
    interrupts = [interrupt(p) for p in view.pending]
    tasks = []
    if view.paused_run_id is not None:
        tasks.append(
            {
                "id": view.paused_run_id,
                "name": view.paused_agent or GRAPH_ID,
                "path": [],
                "error": None,
                "interrupts": interrupts,
                "checkpoint": None,
                "state": None,
                "result": None,
            }
        )
    return {
        "values": values_of(view.messages),
        "next": [task["name"] for task in tasks],
        "tasks": tasks,
        "checkpoint": {
            "thread_id": thread.id,
            "checkpoint_ns": "",
            "checkpoint_id": last,
            "checkpoint_map": None,
        },
        "metadata": metadata_of(thread),
        "created_at": iso(view.messages[-1].created_at) if view.messages else None,
        "parent_checkpoint": None,
        "interrupts": interrupts,
    }
