"""Which tool calls wait for a person, and what the agent loop keeps when its run pauses.

A call needs approval when ``ISOCHAT_APPROVAL_TOOLS`` names its tool (``*``: every tool), or
when the tool says so itself (``Tool.needs_approval``: always, or from the call's validated
input). When the model asks for such calls, the loop runs the turn's other calls, then raises
``AwaitingApproval`` with a ``PausedTurn``: everything it needs to go on, as JSON the run stores
(``src/runs/approvals.py``). On resume the loop reads it back and goes on from that turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from src.agents.tool import Tool
from src.runs.domain import PendingCall, Usage
from src.services.llm import ChatMessage, ToolCall

EVERY_TOOL = "*"


class ApprovalPolicy:
    """The tools whose every call needs approval (from ``ISOCHAT_APPROVAL_TOOLS``)."""

    def __init__(self, tools: Iterable[str] = ()) -> None:
        names = {name.strip() for name in tools if name.strip()}
        self._every = EVERY_TOOL in names
        self._names = frozenset(names - {EVERY_TOOL})

    @classmethod
    def from_setting(cls, value: str) -> ApprovalPolicy:
        return cls(value.split(","))

    def needs(self, tool: Tool[Any], params: Any) -> bool:
        """Whether a call of ``tool`` with (validated) ``params`` waits for a person."""
        return self._every or tool.name in self._names or tool.needs_approval(params)


class AwaitingApproval(Exception):
    """The agent loop stopped for a person's approval; ``turn`` is what it needs to go on."""

    def __init__(self, turn: PausedTurn) -> None:
        super().__init__(f"{len(turn.pending)} call(s) await approval")
        self.turn = turn


@dataclass
class LoopState:
    """Where the agent loop is: the conversation, the model calls made, and the failures."""

    messages: list[ChatMessage]
    steps: int = 0
    failed_calls: set[tuple[str, str]] = field(default_factory=set)
    failing_turns: int = 0
    last_failure: str | None = None


@dataclass(frozen=True, slots=True)
class DoneCall:
    """A call of the paused turn that has run, and what it gave the model."""

    call: ToolCall
    output: str
    error: str | None


@dataclass(frozen=True, slots=True)
class PausedTurn:
    """A turn of the agent loop stopped for approval: the loop's state (the model's turn with
    its calls is the conversation's last message), the turn's calls in order, the ones that
    ran, the ones that wait, and the answer streamed so far (text, and how much of it went out
    as events)."""

    agent: str
    loop: LoopState
    calls: tuple[ToolCall, ...]
    done: tuple[DoneCall, ...]
    pending: tuple[ToolCall, ...]
    answer: str
    answer_sent: int
    usage: Usage | None = None  # what the run's model calls had used (counted already)

    def pending_calls(self) -> tuple[PendingCall, ...]:
        return tuple(PendingCall(c.id, c.name, c.arguments) for c in self.pending)

    def to_json(self) -> str:
        return json.dumps(
            {
                "agent": self.agent,
                "messages": [_message(m) for m in self.loop.messages],
                "steps": self.loop.steps,
                "failed_calls": sorted(self.loop.failed_calls),
                "failing_turns": self.loop.failing_turns,
                "last_failure": self.loop.last_failure,
                "calls": [_call(c) for c in self.calls],
                "done": [
                    {"call": _call(d.call), "output": d.output, "error": d.error} for d in self.done
                ],
                "pending": [c.id for c in self.pending],
                "answer": self.answer,
                "answer_sent": self.answer_sent,
                "usage": None if self.usage is None else self.usage.to_json(),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> PausedTurn:
        data = json.loads(text)
        calls = tuple(_tool_call(c) for c in data["calls"])
        pending = set(data["pending"])
        return cls(
            agent=data["agent"],
            loop=LoopState(
                messages=[_chat_message(m) for m in data["messages"]],
                steps=data["steps"],
                failed_calls={(name, arguments) for name, arguments in data["failed_calls"]},
                failing_turns=data["failing_turns"],
                last_failure=data["last_failure"],
            ),
            calls=calls,
            done=tuple(
                DoneCall(_tool_call(d["call"]), d["output"], d["error"]) for d in data["done"]
            ),
            pending=tuple(c for c in calls if c.id in pending),
            answer=data["answer"],
            answer_sent=data["answer_sent"],
            usage=None if data["usage"] is None else Usage(**data["usage"]),
        )


def _call(call: ToolCall) -> dict[str, str]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def _tool_call(data: dict[str, str]) -> ToolCall:
    return ToolCall(id=data["id"], name=data["name"], arguments=data["arguments"])


def _message(message: ChatMessage) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": message.content,
        "tool_calls": [_call(c) for c in message.tool_calls],
        "tool_call_id": message.tool_call_id,
    }


def _chat_message(data: dict[str, Any]) -> ChatMessage:
    return ChatMessage(
        data["role"],
        data["content"],
        tool_calls=tuple(_tool_call(c) for c in data["tool_calls"]),
        tool_call_id=data["tool_call_id"],
    )
