"""``uninterrupted``: work that must not stop half-way runs to its end whatever happens to its
caller, except a deadline, which the caller hears of at once."""

from __future__ import annotations

import asyncio

import pytest

from src.aio import DeadlineExceeded, uninterrupted

WITHIN_S = 10.0  # only guards against a hang


async def held(gate: asyncio.Event, finished: list[str], outcome: str = "done") -> str:
    await gate.wait()
    finished.append(outcome)
    return outcome


async def test_the_work_s_result_and_its_exception_come_back() -> None:
    async def fails() -> None:
        raise LookupError("no such thing")

    gate = asyncio.Event()
    gate.set()
    assert await uninterrupted(held(gate, [])) == "done"
    with pytest.raises(LookupError, match="no such thing"):
        await uninterrupted(fails(), timeout_s=WITHIN_S)


async def test_a_cancelled_caller_waits_for_the_work_then_is_cancelled() -> None:
    gate, finished = asyncio.Event(), list[str]()
    caller = asyncio.create_task(uninterrupted(held(gate, finished), timeout_s=WITHIN_S))
    await asyncio.sleep(0)
    caller.cancel()
    caller.cancel()  # twice: still delayed, never lost
    await asyncio.sleep(0)
    assert not caller.done()  # the work is still going: the caller waits for it
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, WITHIN_S)
    assert finished == ["done"]


async def test_a_deadline_gives_up_the_wait_and_cancels_the_work() -> None:
    gate, finished = asyncio.Event(), list[str]()
    work = asyncio.ensure_future(held(gate, finished))
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(uninterrupted(work, timeout_s=0.01), WITHIN_S)
    await asyncio.sleep(0)
    assert work.cancelled() and finished == []


async def test_a_cancelled_caller_past_the_deadline_is_cancelled() -> None:
    gate, finished = asyncio.Event(), list[str]()
    caller = asyncio.create_task(uninterrupted(held(gate, finished), timeout_s=0.05))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, WITHIN_S)
    assert finished == []


async def test_work_that_is_done_already_needs_no_wait() -> None:
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    done.set_result("stored")
    assert await uninterrupted(done, timeout_s=WITHIN_S) == "stored"
