"""Tables of isochat. The alembic migrations in ``alembic/versions`` must agree with these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Every status of a run (docs/api.md, "Objects"); the database refuses any other.
from src.runs.domain import ACTIVE_STATUSES, RUN_STATUSES

# The runs that hold their thread: one at a time.
ACTIVE_WHERE = "status IN ({})".format(", ".join(f"'{status}'" for status in ACTIVE_STATUSES))
# The runs that wait their turn behind it.
QUEUED_WHERE = "status = 'queued'"

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite keeps no zone), always returned timezone-aware in UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class ThreadRow(Base):
    __tablename__ = "threads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Which protocol made it (src/runs/domain.py, ThreadOrigin), what its client attached to it
    # (JSON), and the key a client names it by (the AI SDK's chat id), unique per user.
    origin: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    client_metadata: Mapped[str | None] = mapped_column("metadata", Text)
    client_key: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_threads_user_created", "user_id", "created_at"),
        # NULLs are distinct (SQLite, PostgreSQL): only keyed threads are held to it.
        Index("uq_threads_user_client_key", "user_id", "client_key", unique=True),
    )


class MessageRow(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # An assistant's answer cut short: what a run had answered when a newer message
    # interrupted it (``multitask: interrupt``).
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_messages_thread_created", "thread_id", "created_at"),
        # A run's own messages (its question, its answer), read when it resumes or ends.
        Index("ix_messages_run_id", "run_id"),
    )


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32))
    route: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The serving process that executes the run, and until when it vouches for it: a run whose
    # lease has expired may be ended by any process (see src/runs/ledger.py).
    owner_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The seq of the run's newest event. Taking the next one is an UPDATE of this row that also
    # checks the run is still running: one atomic step, whoever appends (the run, a cancel, a
    # sweep), so two writers can never collide on (run_id, seq).
    last_seq: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # What the run's model calls used, written with its end (null when none reported usage).
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    # A run awaiting approval: what it needs to go on (JSON, src/runs/approvals.py), and when
    # it expires if nobody decides; null otherwise.
    pause_state: Mapped[str | None] = mapped_column(Text)
    pause_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A queued run's place in its thread's queue (src/runs/queue.py): runs that interrupt or
    # roll back the busy run (``queue_ahead``) first, then by position, the order of storing.
    queue_position: Mapped[int | None] = mapped_column(Integer)
    queue_ahead: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A busy run a newer message displaced: how its end is stored (``interrupt``: its answer
    # so far kept; ``rollback``: removed with its message and events), whoever ends it.
    preempted: Mapped[str | None] = mapped_column(String(16))
    # What the token of the caller who queued the run granted (JSON array): whichever process
    # starts it runs it with them.
    grants: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # The database, not the code, guarantees one active run (running, or paused for
        # approval) per thread: two workers racing to start a run on the same thread cannot
        # both succeed.
        Index(
            "uq_runs_one_active_per_thread",
            "thread_id",
            unique=True,
            sqlite_where=text(ACTIVE_WHERE),
            postgresql_where=text(ACTIVE_WHERE),
        ),
        Index("ix_runs_status", "status"),
        # A thread's queue, read at every end of one of its runs.
        Index(
            "ix_runs_queued",
            "thread_id",
            sqlite_where=text(QUEUED_WHERE),
            postgresql_where=text(QUEUED_WHERE),
        ),
        # A thread's runs, all of them (deleting a thread, its pages of runs).
        Index("ix_runs_thread_id", "thread_id"),
        # Named ck_runs_status by the naming convention. A writer with a typo in a status
        # fails loudly instead of storing a run that no reader understands.
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{status}'" for status in RUN_STATUSES)),
            name="status",
        ),
    )


class RunEventRow(Base):
    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(32))
    agent: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(UTCDateTime())


class RunApprovalRow(Base):
    """A tool call of a paused run that waits for a person, and what they decided."""

    __tablename__ = "run_approvals"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    # Which pause of the run (the seq of its first approval_requested event): a run may pause
    # again, and a model may use a call id again.
    pause: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    call_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tool: Mapped[str] = mapped_column(String(200))
    input: Mapped[str] = mapped_column(Text)  # the arguments, as the model wrote them (JSON)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decision: Mapped[str | None] = mapped_column(String(16))  # approve, reject, edit
    edited_input: Mapped[str | None] = mapped_column(Text)  # edit: the arguments to run instead
    message: Mapped[str | None] = mapped_column(Text)  # reject: what the model is told
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# The tables, for SQLAlchemy Core statements (nothing goes through the ORM's unit of work).
THREADS: Table = ThreadRow.__table__  # type: ignore[assignment]  # a Table, typed FromClause
MESSAGES: Table = MessageRow.__table__  # type: ignore[assignment]
RUNS: Table = RunRow.__table__  # type: ignore[assignment]
EVENTS: Table = RunEventRow.__table__  # type: ignore[assignment]
APPROVALS: Table = RunApprovalRow.__table__  # type: ignore[assignment]
