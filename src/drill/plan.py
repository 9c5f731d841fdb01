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
SERVER_FAULTS = FAULTS
CLIENT_FAULTS = ("disconnect", "cancel")
KINDS = SERVER_FAULTS + CLIENT_FAULTS

# How a run of each kind must end: its status and error code.
EXPECTED: dict[str, tuple[str, str | None]] = {
    HEALTHY: ("completed", None),
    "agent": ("failed", "agent_error"),
    "tool": ("failed", "tool_error"),
    "llm": ("failed", "llm_error"),
    "db": ("failed", "database_error"),
    "hang": ("failed", "timeout"),
    "disconnect": ("cancelled", None),
    "cancel": ("cancelled", None),
}

MAX_USERS = 5_000
_OPERAND_BASE = 700_000_000
_RUNS_PER_USER = 10_000  # operands are unique for this many runs of each user
# A drill operand in a text: nine digits starting with 7 (twice one has ten: no false match).
OPERAND = re.compile(r"(?<!\d)7\d{8}(?!\d)")


def expected_outcome(kind: str) -> str:
    status, code = EXPECTED[kind]
    return status if code is None else f"{status} {code}"


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
