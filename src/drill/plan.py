"""What a drill does: its users, what each of them sends, and how each run must end.

Every question names a number no other run of the drill names (``what is 7xxxxxxxx * 2?``: the
user's index and the run's count in it), so a frame that reaches the wrong user carries the
proof in its text, whatever the model writes around it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from src.drill.faults import FAULTS, marker

HEALTHY = "healthy"
# Faults the server injects (src/drill/faults.py), and two the drill makes itself: it drops
# the socket of a run in flight, or cancels it (each on a run the server holds with a hang).
# The server pauses an ``approval`` run for a person's approval; the drill, seeing the pause,
# leaves it undecided for a moment, then cancels it.
SERVER_FAULTS = FAULTS
CLIENT_FAULTS = ("disconnect", "cancel")
KINDS = SERVER_FAULTS + CLIENT_FAULTS
# Kinds whose run must be seen paused for approval (its frame, then its status) before it ends.
PAUSING = frozenset({"approval"})

Outcome = tuple[str, str | None]  # a run's end: its status and error code

# How a run of each kind must end.
EXPECTED: dict[str, Outcome] = {
    HEALTHY: ("completed", None),
    "agent": ("failed", "agent_error"),
    "tool": ("failed", "tool_error"),
    "llm": ("failed", "llm_error"),
    "db": ("failed", "database_error"),
    "hang": ("failed", "timeout"),
    "approval": ("cancelled", None),
    "disconnect": ("cancelled", None),
    "cancel": ("cancelled", None),
}
# Other ends that are as sound: a pause that the deployment's ISOCHAT_APPROVAL_TIMEOUT_S
# ended before the drill's cancel (the drill cannot set it; it is a day by default).
ALSO_EXPECTED: dict[str, tuple[Outcome, ...]] = {
    "approval": (("failed", "approval_expired"),),
}

MAX_USERS = 5_000
_OPERAND_BASE = 700_000_000
_RUNS_PER_USER = 10_000  # operands are unique for this many runs of each user
# A drill operand in a text: nine digits starting with 7 (twice one has ten: no false match).
OPERAND = re.compile(r"(?<!\d)7\d{8}(?!\d)")


def ends_as_expected(kind: str, status: str | None, code: str | None) -> bool:
    """Whether a run of ``kind`` that ended with ``status`` and ``code`` ended as it must."""
    return (status, code) == EXPECTED[kind] or (status, code) in ALSO_EXPECTED.get(kind, ())


def expected_outcome(kind: str) -> str:
    """How a run of ``kind`` must end, in words (``failed agent_error``)."""
    outcomes = (EXPECTED[kind], *ALSO_EXPECTED.get(kind, ()))
    return " or ".join(status if code is None else f"{status} {code}" for status, code in outcomes)


@dataclass(slots=True)
class DrillUser:
    index: int
    user_id: str
    faulty: bool
    host: str  # the URL its socket and requests go to
    other_host: str  # where its disconnects and cancels go (another host, when there is one)
    token: str = ""
    thread_id: str = ""
    runs_sent: int = 0

    def next_operand(self) -> int:
        """A number no other run of this drill names."""
        n = self.runs_sent % _RUNS_PER_USER
        self.runs_sent += 1
        return _OPERAND_BASE + self.index * _RUNS_PER_USER + n


def owner_of(operand: int) -> int:
    """The index of the user whose question named ``operand``."""
    return (operand - _OPERAND_BASE) // _RUNS_PER_USER


def question(operand: int, kind: str) -> str:
    server_fault = "hang" if kind in CLIENT_FAULTS else kind
    text = f"what is {operand} * 2?"
    return text if kind == HEALTHY else f"{marker(server_fault)} {text}"


def make_users(hosts: list[str], *, users: int, faulty_share: float) -> list[DrillUser]:
    """``users`` users, ``round(users * faulty_share)`` of them (at least one) faulty, spread
    over ``hosts`` in turn. Ids are ``drill-<6 hex>-<h|f><n>``: one drill's users are apart
    from any other's, and from real users."""
    faulty = min(users - 1, max(1, round(users * faulty_share)))
    drill_id = secrets.token_hex(3)
    made = []
    for index in range(users):
        is_faulty = index >= users - faulty
        tag = f"f{index - (users - faulty)}" if is_faulty else f"h{index}"
        made.append(
            DrillUser(
                index=index,
                user_id=f"drill-{drill_id}-{tag}",
                faulty=is_faulty,
                host=hosts[index % len(hosts)],
                other_host=hosts[(index + 1) % len(hosts)],
            )
        )
    return made
