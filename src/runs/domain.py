"""What a run is, and what a client sees of threads, messages, runs and events, as the public
contract shapes them.

This module imports nothing of isochat: agents, services, the model adapters and the web edge
all speak of runs in these types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, NotRequired, overload

# typing_extensions' TypedDict: pydantic derives the OpenAPI schemas from these on Python 3.11.
from typing_extensions import TypedDict

RunStatus = Literal["queued", "running", "awaiting_approval", "completed", "failed", "cancelled"]
RUN_STATUSES: tuple[RunStatus, ...] = (
    "queued",
    "running",
    "awaiting_approval",
    "completed",
    "failed",
    "cancelled",
)
# What a message sent while its thread is busy does (docs/api.md, "Messages while a run is
# busy"): refused, queued behind, or displacing the busy run (its answer kept, or removed).
Multitask = Literal["reject", "enqueue", "interrupt", "rollback"]
# Which protocol made a thread: isochat's own API (and the page), the OpenAI-compatible
# ``/v1``, the Agent Protocol (LangGraph's clients), the AI SDK's ``/api/chat``.
ThreadOrigin = Literal["api", "openai", "agent_protocol", "ai_sdk"]
ENDED_STATUSES: frozenset[RunStatus] = frozenset({"completed", "failed", "cancelled"})
# The runs that hold their thread (its ``active_run_id``): at most one per thread.
ACTIVE_STATUSES: tuple[RunStatus, ...] = ("running", "awaiting_approval")
FINAL_EVENT_TYPES = frozenset({"run_completed", "run_failed", "run_cancelled"})
FINAL_EVENT_OF: dict[RunStatus, str] = {
    "completed": "run_completed",
    "failed": "run_failed",
    "cancelled": "run_cancelled",
}


# The objects as the API shows them (JSON), checked against to_json by mypy and published as
# the OpenAPI schemas (src/web/openapi.py): one definition for both.
class ThreadJSON(TypedDict):
    id: str
    title: str
    created_at: str
    active_run_id: str | None
    queued_run_ids: list[str]
    origin: ThreadOrigin


class MessageJSON(TypedDict):
    id: str
    thread_id: str
    role: Literal["user", "assistant"]
    content: str
    run_id: str | None
    created_at: str
    # Only on an answer cut short by a newer message (``multitask: interrupt``): true.
    interrupted: NotRequired[bool]


class RunErrorJSON(TypedDict):
    code: str
    message: str


class UsageJSON(TypedDict):
    prompt_tokens: int
    completion_tokens: int


class RunJSON(TypedDict):
    id: str
    thread_id: str
    status: RunStatus
    route: str | None
    error: RunErrorJSON | None
    usage: UsageJSON | None
    created_at: str
    finished_at: str | None


class EventJSON(TypedDict):
    type: str
    run_id: str
    thread_id: str
    seq: int
    ts: str
    agent: str | None
    data: dict[str, Any]


@overload
def iso(ts: datetime) -> str: ...
@overload
def iso(ts: datetime | None) -> str | None: ...
def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RunContext:
    """What every part of one run may know about it, fixed for the run's whole life: which run,
    whose, what the caller's token grants beyond who they are (``grants``, from the token's
    claims: see ``src/services/auth.py``), and what was asked."""

    run_id: str
    thread_id: str
    user_id: str
    request_id: str | None = None
    grants: frozenset[str] = frozenset()
    content: str = field(default="", repr=False)
    # The specialist chosen by the caller (an OpenAI client's model ``isochat-math``): triage
    # is skipped. None: triage chooses.
    route: str | None = None


DecisionKind = Literal["approve", "reject", "edit"]


@dataclass(frozen=True, slots=True)
class PendingCall:
    """A tool call that waits for a person: its id, its tool and its arguments (JSON text, as
    the model wrote them)."""

    call_id: str
    tool: str
    arguments: str

    def input(self) -> Any:
        return json.loads(self.arguments)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a person decided about one pending call: ``edit`` runs ``arguments`` (JSON text)
    instead; ``reject`` tells the model ``message``."""

    call_id: str
    decision: DecisionKind
    arguments: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Pause:
    """What a run stores when it pauses: its route, its agent's state and the calls that
    wait."""

    route: str | None
    agent: str
    state: str
    pending: tuple[PendingCall, ...]


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens model calls used."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def to_json(self) -> UsageJSON:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass(frozen=True, slots=True)
class Thread:
    id: str
    user_id: str
    title: str
    created_at: datetime
    # The thread's running (or paused) run, if it has one (at most one: the database sees to
    # it), and the runs queued behind it, in the order they will start.
    active_run_id: str | None = None
    queued_run_ids: tuple[str, ...] = ()
    origin: ThreadOrigin = "api"
    # What a client attached to the thread (the Agent Protocol's thread metadata): JSON text.
    metadata: str | None = None

    def to_json(self) -> ThreadJSON:
        return {
            "id": self.id,
            "title": self.title,
            "created_at": iso(self.created_at),
            "active_run_id": self.active_run_id,
            "queued_run_ids": list(self.queued_run_ids),
            "origin": self.origin,
        }


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    thread_id: str
    role: Literal["user", "assistant"]
    content: str
    run_id: str | None
    created_at: datetime
    interrupted: bool = False  # an answer cut short by a newer message

    def to_json(self) -> MessageJSON:
        shown: MessageJSON = {
            "id": self.id,
            "thread_id": self.thread_id,
            "role": self.role,
            "content": self.content,
            "run_id": self.run_id,
            "created_at": iso(self.created_at),
        }
        if self.interrupted:
            shown["interrupted"] = True
        return shown


@dataclass(frozen=True, slots=True)
class RunError:
    code: str
    message: str

    def to_json(self) -> RunErrorJSON:
        return {"code": self.code, "message": self.message}


class RunFailure(Exception):
    """An exception that says how the run it ends failed: its ``code`` (a run error code of the
    contract), and what the user is told (``str(exc)``, or ``default_message``). The model's,
    the tools', the agent loop's and the database's failures are such exceptions, so that the
    supervisor names them without knowing where each comes from."""

    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "an internal error ended the run"

    def as_run_error(self) -> RunError:
        return RunError(self.code, str(self) or self.default_message)


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    thread_id: str
    user_id: str
    status: RunStatus
    route: str | None
    error: RunError | None
    created_at: datetime
    finished_at: datetime | None
    # The tokens its model calls used, once it has ended (None when no call reported any).
    usage: Usage | None = None

    @classmethod
    def running(cls, *, id: str, thread_id: str, user_id: str, created_at: datetime) -> Run:
        """A run that has not ended (nor been routed) yet."""
        return cls(
            id=id,
            thread_id=thread_id,
            user_id=user_id,
            status="running",
            route=None,
            error=None,
            created_at=created_at,
            finished_at=None,
        )

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES

    def to_json(self) -> RunJSON:
        return {
            "id": self.id,
            "thread_id": self.thread_id,
            "status": self.status,
            "route": self.route,
            "error": None if self.error is None else self.error.to_json(),
            "usage": None if self.usage is None else self.usage.to_json(),
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
        }


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    run_id: str
    thread_id: str
    seq: int
    ts: datetime
    agent: str | None
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.type in FINAL_EVENT_TYPES

    def to_json(self) -> EventJSON:
        return {
            "type": self.type,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "seq": self.seq,
            "ts": iso(self.ts),
            "agent": self.agent,
            "data": self.data,
        }
