"""The drill's two phases of load (steps 3 and 4): baseline, the healthy users alone, then
drill, the same users beside the faulty ones.

During a phase each user sends a question every ``interval``, waits for its run to end, and
stops once the phase's ``duration`` is over. Faulty users take the fault kinds in turn; the
server injects most of them, and the drill makes the two that are a client's: it drops the
socket of a run in flight, or cancels it from the user's other host. A run the server pauses
for approval is seen paused (its ``approval_requested`` frame, then its status), left
undecided for ``UNDECIDED_S``, and cancelled from the user's other host.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator, Sequence

from src.drill.client import DrillAborted, RunRecord, UserClient
from src.drill.plan import HEALTHY, PAUSING
from src.drill.progress import DrillProgress, PhaseBar

RATE_LIMITED_PAUSE_S = 1.0
UNDECIDED_S = 0.5  # how long a paused run is left without a decision before its cancel


class Phases:
    def __init__(
        self,
        *,
        kinds: Sequence[str],
        duration_s: float,
        interval_s: float,
        run_wait_s: float,
        progress: DrillProgress,
    ) -> None:
        self._kinds = kinds
        self._duration_s = duration_s
        self._interval_s = interval_s
        self._run_wait_s = run_wait_s
        self._progress = progress
        self.rate_limited = 0  # messages the rate limit refused, sent again

    async def run(self, name: str, clients: Sequence[UserClient]) -> None:
        """One phase: every one of ``clients`` sending for ``duration``, over its main socket."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(c.main_socket() for c in clients if c.main is None))
        bar = self._progress.phase(name, duration_s=self._duration_s)
        until = loop.time() + self._duration_s
        kinds = itertools.cycle(self._kinds)  # faulty users take the faults in turn
        ticker = asyncio.create_task(bar.follow(until))
        try:
            await asyncio.gather(*(self._user(c, name, until, kinds, bar) for c in clients))
        finally:
            ticker.cancel()
        bar.done()

    async def _user(
        self, client: UserClient, phase: str, until: float, kinds: Iterator[str], bar: PhaseBar
    ) -> None:
        loop = asyncio.get_running_loop()
        while (started := loop.time()) < until:
            kind = next(kinds) if client.user.faulty else HEALTHY
            record = client.new_record(kind, phase)
            await self._one_run(client, record)
            if record.run_id is None and record.code == "rate_limited":
                # The drill's own pace is over the user's limit: not the deployment's failure.
                client.forget(record)
                self.rate_limited += 1
                await asyncio.sleep(RATE_LIMITED_PAUSE_S)
                continue
            bar.count(as_expected=record.as_expected)
            await asyncio.sleep(max(0.0, started + self._interval_s - loop.time()))

    async def _one_run(self, client: UserClient, record: RunRecord) -> None:
        wait_s = self._run_wait_s
        try:
            async with asyncio.timeout(wait_s):
                if record.kind == "disconnect":
                    socket = await client.open_socket(client.user.other_host, main=False)
                    await client.chat(socket, record)
                    await _first(record.working, record.ended)
                    socket.drop()
                else:
                    await client.chat(await client.main_socket(), record)
                    if record.kind == "cancel":
                        await _first(record.working, record.ended)
                        await _cancel(client, record)
                    elif record.kind in PAUSING:
                        await _first(record.pausing, record.ended)
                        await _leave_undecided(client, record)
                await record.ended.wait()
        except TimeoutError:
            record.problem = f"no final event within {wait_s:g} s"
        except DrillAborted as exc:
            record.problem = str(exc)
            record.end(status=None, code=None)


async def _cancel(client: UserClient, record: RunRecord) -> None:
    """Cancel from the user's other host: the cancel must reach the run wherever it runs."""
    if record.ended.is_set() or record.run_id is None:
        return
    path = f"/api/runs/{record.run_id}/cancel"
    response = await client.request("POST", path, host=client.user.other_host)
    if response.status_code not in (202, 409):  # 409: it ended first
        record.problem = f"POST {path} answered {response.status_code}"


async def _leave_undecided(client: UserClient, record: RunRecord) -> None:
    """A run that must pause for approval: seen paused (its status too), left undecided for a
    moment, then cancelled from the user's other host (the approval timeout may end it first)."""
    if not record.pausing.is_set():
        record.problem = "it ended without pausing for approval"
        return
    assert record.run_id is not None  # its run_started came before its pause
    path = f"/api/runs/{record.run_id}"
    response = await client.request("GET", path)
    status = response.json().get("status") if response.status_code == 200 else None
    # awaiting_approval; or ended already, by the approval timeout (its end is checked)
    record.paused = status not in (None, "running")
    if not record.paused:
        said = f"status {status}" if status else str(response.status_code)
        record.problem = f"its approval_requested came, but GET {path} said {said}"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(UNDECIDED_S):
            await record.ended.wait()
    await _cancel(client, record)


async def _first(*events: asyncio.Event) -> None:
    """Until one of ``events`` is set."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
