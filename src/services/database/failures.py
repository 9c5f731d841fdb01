"""How the database fails, told apart from how a statement fails: a database that cannot be
reached or used in time is worth a retry on a fresh connection (or a 503), a wrong statement
is a bug."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from src.runs.domain import RunError, RunFailure


class DatabaseUnavailable(RunFailure):
    """The database could not be reached or used in time (down, lost connection, locked, hung,
    pool exhausted), as opposed to a statement that is wrong: worth a retry on a fresh
    connection, or a 503. A run it ends fails ``database_error``."""

    code = "database_error"
    default_message = "the database failed during the run"

    def as_run_error(self) -> RunError:
        return RunError(self.code, self.default_message)  # the details are for the log


class DatabaseTimeout(DatabaseUnavailable):
    """A database step did not finish within its deadline: the database is hung or locked. A
    write cut off this way may still commit: what is stored says (see ``src/runs/ender.py``)."""


# Failures of reaching the database (SQLAlchemy's, and ours), not bugs in a statement.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    DatabaseUnavailable,
)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or used (worth a retry on a
    fresh connection), rather than that a statement was wrong. A connection killed mid-query
    surfaces as a generic ``DBAPIError`` marked as having invalidated its connection."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated
