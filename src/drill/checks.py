"""What the frames one user's WebSocket received must show, whoever collected them: no frame
about someone else, and each run told once, in order. The drill's report and
``bench/ws_load.py`` both count with these, so the two cannot disagree on what a cross-user
frame or a seq problem is.

A frame that is about no run (a ``pong``, a ``gap`` notice, an error before any run) is
neither: it carries no run id, and its run's events are judged by their seqs alone, so a
client is checked the same whether or not the server tells it of a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from itertools import pairwise
from typing import Any

from src.runs.domain import FINAL_EVENT_TYPES

Frame = dict[str, Any]


def _nothing_foreign(text: str) -> bool:
    return False


def count_cross_user(
    frames: Iterable[Frame],
    *,
    own_runs: Container[str],
    foreign_text: Callable[[str], bool] = _nothing_foreign,
) -> int:
    """Frames a user received that are not about their own runs: another run's id, or a text
    that ``foreign_text`` says only another user's question could have put there."""
    count = 0
    for frame in frames:
        run_id = frame.get("run_id")
        foreign_run = run_id is not None and run_id not in own_runs
        count += foreign_run or any(foreign_text(text) for text in texts_of(frame))
    return count


def texts_of(value: Any) -> Iterable[str]:
    """Every text a frame carries, ids and timestamps left out (a UUID can hold nine digits)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not (k == "id" or k.endswith("_id") or k in ("ts", "created_at", "finished_at")):
                yield from texts_of(v)
    elif isinstance(value, list):
        for item in value:
            yield from texts_of(item)
    elif isinstance(value, str):
        yield value


def sequence_problems(frames: Sequence[Frame]) -> int:
    """One run's frames, as received: each seq that is not the one before + 1, each final
    event beyond (or short of) exactly one, and a final event that is not the run's last."""
    seqs = [frame.get("seq") for frame in frames]
    steps = sum(1 for prev, seq in pairwise([0, *seqs]) if not _follows(prev, seq))
    finals = [i for i, frame in enumerate(frames) if frame.get("type") in FINAL_EVENT_TYPES]
    last = 1 if finals and finals[0] != len(frames) - 1 else 0  # anything after the end
    return steps + abs(len(finals) - 1) + last


def _follows(prev: object, seq: object) -> bool:
    return isinstance(prev, int) and isinstance(seq, int) and seq == prev + 1
