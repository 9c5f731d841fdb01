"""What a client sees: threads, messages, runs and events, as the public contract shapes them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from src.services.llm.base import Usage

RunStatus = Literal["running", "completed", "failed", "cancelled"]
FINAL_EVENT_TYPES = frozenset({"run_completed", "run_failed", "run_cancelled"})


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

    def to_json(self) -> dict[str, Any]:
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

    def to_json(self) -> dict[str, Any]:
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

    def to_json(self) -> dict[str, str]:
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

    def to_json(self) -> dict[str, Any]:
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

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "seq": self.seq,
            "ts": iso(self.ts),
            "agent": self.agent,
            "data": self.data,
        }
