"""What a client sees: threads, messages, runs and events, as the public contract shapes them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, overload

# typing_extensions' TypedDict: pydantic derives the OpenAPI schemas from these on Python 3.11.
from typing_extensions import TypedDict

from src.services.llm.base import Usage, UsageJSON

RunStatus = Literal["running", "completed", "failed", "cancelled"]
FINAL_EVENT_TYPES = frozenset({"run_completed", "run_failed", "run_cancelled"})


# The objects as the API shows them (JSON), checked against to_json by mypy and published as
# the OpenAPI schemas (src/web/openapi.py): one definition for both.
class ThreadJSON(TypedDict):
    id: str
    title: str
    created_at: str
    active_run_id: str | None


class MessageJSON(TypedDict):
    id: str
    thread_id: str
    role: Literal["user", "assistant"]
    content: str
    run_id: str | None
    created_at: str


class RunErrorJSON(TypedDict):
    code: str
    message: str


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


@dataclass(frozen=True, slots=True)
class Thread:
    id: str
    user_id: str
    title: str
    created_at: datetime
    # The thread's running run, if it has one (at most one: the database sees to it).
    active_run_id: str | None = None

    def to_json(self) -> ThreadJSON:
        return {
            "id": self.id,
            "title": self.title,
            "created_at": iso(self.created_at),
            "active_run_id": self.active_run_id,
        }


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    thread_id: str
    role: Literal["user", "assistant"]
    content: str
    run_id: str | None
    created_at: datetime

    def to_json(self) -> MessageJSON:
        return {
            "id": self.id,
            "thread_id": self.thread_id,
            "role": self.role,
            "content": self.content,
            "run_id": self.run_id,
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class RunError:
    code: str
    message: str

    def to_json(self) -> RunErrorJSON:
        return {"code": self.code, "message": self.message}


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
