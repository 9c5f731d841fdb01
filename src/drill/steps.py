"""The drill's steps against a live deployment, in order (the phases' load is ``phases``).

1. Every host answers ``/health/ready`` and ``/metrics`` (gauges and memory, before).
2. Each user gets a token (drill users' carry the drill claim) and a thread; one drill user's
   message asks for an agent fault, to be sure the deployment takes drill faults at all.
3. Baseline: the healthy users alone, each sending a question every ``interval`` for
   ``duration``, over its own WebSocket.
4. Drill: the same healthy users again, beside the faulty users, whose runs fail in the chosen
   ways in turn (the server injects the fault, or the drill drops the socket or cancels).
5. The faulty runs' stored events are read; the runs not ended counted (``running``, or
   paused for approval); any run seen paused and not seen to end cancelled, and every drill
   thread deleted (the users' tokens expire soon after); the hosts' gauges read again until
   they are back where they were (or ``settle`` runs out).

Each step is bounded: a run is waited for at most the deployment's run timeout plus a grace,
and nothing is sent once a phase's duration is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from src.drill.client import DrillAborted, RunRecord, UserClient
from src.drill.faults import DrillClaim, marker
from src.drill.hosts import HostReading, read_host
from src.drill.phases import Phases
from src.drill.plan import HEALTHY, KINDS, make_users, question
from src.drill.progress import DrillProgress
from src.drill.report import Findings, HostFigures, Report, build_report
from src.services.auth import TokenService

END_GRACE_S = 15.0  # past the run timeout, for a run's end to be written and delivered
HTTP_TIMEOUT_S = 30.0
SETUP_CONCURRENCY = 20
SETTLE_POLL_S = 0.25

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Options:
    urls: list[str]
    metrics_urls: list[str]
    users: int = 20
    faulty: float = 0.2
    kinds: tuple[str, ...] = KINDS
    duration_s: float = 20.0
    interval_s: float = 0.5
    run_timeout_s: float = 120.0
    settle_s: float = 30.0

    @property
    def run_wait_s(self) -> float:
        return self.run_timeout_s + END_GRACE_S

    @property
    def longest_s(self) -> float:
        """About the longest the drill can take (each phase, its last runs, the settling)."""
        return 2 * (self.duration_s + self.run_wait_s) + self.settle_s + 60


class DrillTokens:
    """The drill users' tokens: a drill user's carries the claim only the drill secret makes."""

    def __init__(self, tokens: TokenService, claim: DrillClaim) -> None:
        self._tokens = tokens
        self._claim = claim

    def issue(self, user_id: str, *, drill: bool) -> str:
        return self._tokens.issue(user_id, extend=self._claim.add_to if drill else None)


class Drill:
    """One drill: ``run`` takes the steps above in order, tidies up on every way out, and
    hands what it saw to the report."""

    def __init__(self, options: Options, tokens: DrillTokens, *, progress: DrillProgress) -> None:
        self._options = options
        self._tokens = tokens
        self._progress = progress
        self._http: dict[str, httpx.AsyncClient] = {}
        users = make_users(options.urls, users=options.users, faulty_share=options.faulty)
        self._clients = [UserClient(user, self._http) for user in users]
        self._phases = Phases(
            kinds=options.kinds,
            duration_s=options.duration_s,
            interval_s=options.interval_s,
            run_wait_s=options.run_wait_s,
            progress=progress,
        )
        self._problems: list[str] = []
        self._threads_deleted = False

    @property
    def _healthy(self) -> list[UserClient]:
        return [c for c in self._clients if not c.user.faulty]

    async def run(self) -> Report:
        started = time.monotonic()
        limits = httpx.Limits(max_connections=SETUP_CONCURRENCY * 2)
        for url in {*self._options.urls, *self._options.metrics_urls}:
            self._http[url] = httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, limits=limits)
        try:
            with self._progress:
                before = await self._ready()
                await self._prepare()
                await self._phases.run("baseline", self._healthy)
                await self._phases.run("drill", self._clients)
                await self._close_sockets()
                self._note_lost_sockets()
                stored = await self._stored_events()
                running = await self._runs_left_running()
                threads_left = await self._delete_threads()
                after = await self._settle(before)
        finally:
            await self._close_sockets()
            if not self._threads_deleted:  # stopped early (an error, Ctrl-C): still tidy up
                with contextlib.suppress(Exception):
                    await self._delete_threads()
            for client in self._http.values():
                await client.aclose()
        return build_report(
            Findings(
                clients=self._clients,
                kinds=self._options.kinds,
                stored_events=stored,
                runs_left_running=running,
                threads_left=threads_left,
                hosts=[
                    HostFigures(url, before[url], after[url]) for url in self._options.metrics_urls
                ],
                problems=self._problems,
                rate_limited=self._phases.rate_limited,
                seconds=time.monotonic() - started,
            )
        )

    # 1-2: before the load

    async def _ready(self) -> dict[str, HostReading]:
        for url in self._options.urls:
            try:
                ready = await self._http[url].get("/health/ready")
            except httpx.HTTPError as exc:
                raise DrillAborted(f"{url} cannot be reached: {exc!r}") from None
            if ready.status_code != 200:
                raise DrillAborted(f"{url}/health/ready answered {ready.status_code}: {ready.text}")
        return await self._read_hosts()

    async def _read_hosts(self) -> dict[str, HostReading]:
        readings: dict[str, HostReading] = {}
        for url in self._options.metrics_urls:
            try:
                readings[url] = await read_host(self._http[url], url)
            except (httpx.HTTPError, ValueError) as exc:
                raise DrillAborted(f"cannot read {url}: {exc}") from None
        return readings

    async def _prepare(self) -> None:
        for client in self._clients:
            client.user.token = self._tokens.issue(client.user.user_id, drill=client.user.faulty)
        await _bounded(client.create_thread() for client in self._clients)
        await self._check_drills_on(next(c for c in self._clients if c.user.faulty))

    async def _check_drills_on(self, client: UserClient) -> None:
        """One drill user's message that asks for an agent fault must fail with it: otherwise
        the deployment does not take drill faults, and every figure would be about nothing."""
        body = {"content": question(client.user.next_operand(), "agent")}
        response = await client.request(
            "POST", f"/api/threads/{client.user.thread_id}/messages", body=body
        )
        run = response.json().get("run") if response.status_code == 200 else None
        if not run or (run.get("error") or {}).get("code") != "agent_error":
            raise DrillAborted(
                f"{client.user.host} does not take drill faults ({marker('agent')} answered "
                f"{response.status_code}, run {run and run.get('status')}): is "
                "ISOCHAT_DRILL_SECRET set there, to the same value as here?"
            )

    # 5: after the load

    async def _close_sockets(self) -> None:
        sockets = [s for c in self._clients for s in c.sockets if s.closed_at is None]
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)

    def _note_lost_sockets(self) -> None:
        for client in self._clients:
            for socket in client.sockets:
                if socket.main and socket.close_code not in (None, 1000):
                    self._note(f"{client.user.user_id}: the server closed its socket "
                               f"({socket.close_code})")  # fmt: skip

    async def _stored_events(self) -> dict[str, list[dict[str, object]]]:
        """The stored events of every faulty run, and of each run whose end was not seen live
        (whose stored state then says how it ended)."""
        stored: dict[str, list[dict[str, object]]] = {}

        async def read(client: UserClient, record: RunRecord) -> None:
            assert record.run_id is not None
            response = await client.request("GET", f"/api/runs/{record.run_id}/events")
            if response.status_code != 200:
                self._note(f"run {record.run_id}: its events answered {response.status_code}")
                return
            stored[record.run_id] = response.json()["events"]
            if record.status is None:
                run = (await client.request("GET", f"/api/runs/{record.run_id}")).json()
                if run.get("status") != "running":
                    record.status = run.get("status")
                    record.code = (run.get("error") or {}).get("code")
                self._note(f"run {record.run_id} ({record.kind}): {record.problem}")

        await _bounded(
            read(client, record)
            for client in self._clients
            for record in client.records
            if record.run_id is not None and (record.kind != HEALTHY or record.status is None)
        )
        for client in self._clients:
            for record in client.records:
                if record.run_id is None:
                    self._note(f"{record.kind} message of {client.user.user_id}: {record.problem}")
        return stored

    async def _runs_left_running(self) -> int:
        async def running(client: UserClient) -> bool:
            thread = await client.request("GET", f"/api/threads/{client.user.thread_id}")
            return thread.status_code == 200 and bool(thread.json().get("active_run_id"))

        return sum(await _bounded(running(client) for client in self._clients))

    async def _delete_threads(self) -> int:
        """Delete every drill thread; how many are left (each user lists their own)."""
        self._threads_deleted = True
        await self._cancel_paused()

        async def delete(client: UserClient) -> int:
            if client.user.thread_id:
                await client.request("DELETE", f"/api/threads/{client.user.thread_id}")
            listed = await client.request("GET", "/api/threads")
            return len(listed.json().get("threads", [])) if listed.status_code == 200 else 1

        return sum(await _bounded(delete(client) for client in self._clients))

    async def _cancel_paused(self) -> None:
        """Cancel every run seen paused for approval and not seen to end (the drill stopped
        early, or its cancel did not take): a paused run waits for a person for as long as the
        deployment's approval timeout, a day by default, holding its thread. Deleting the
        thread cancels it too; the drill does not leave it to that."""

        async def cancel(client: UserClient, record: RunRecord) -> None:
            path = f"/api/runs/{record.run_id}/cancel"
            response = await client.request("POST", path)
            if response.status_code not in (202, 409):  # 409: it has ended
                self._note(f"POST {path} answered {response.status_code}")

        await _bounded(
            cancel(client, record)
            for client in self._clients
            for record in client.records
            if record.pausing.is_set() and not record.ended.is_set()
        )

    async def _settle(self, before: dict[str, HostReading]) -> dict[str, HostReading]:
        """The hosts' readings once every gauge is back where it was, or when ``settle`` is
        over (polling: nothing outside a server can wait for its teardown)."""
        bar = self._progress.settling()
        deadline = time.monotonic() + self._options.settle_s
        while True:
            after = await self._read_hosts()
            if all(after[u].settled_since(before[u]) for u in after) or (
                time.monotonic() >= deadline
            ):
                bar.done()
                return after
            await asyncio.sleep(SETTLE_POLL_S)

    def _note(self, problem: str) -> None:
        self._problems.append(problem)


async def _bounded(work: Iterable[Awaitable[T]]) -> list[T]:
    """``work``'s results, at most ``SETUP_CONCURRENCY`` of it in flight at once."""
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one(awaitable: Awaitable[T]) -> T:
        async with gate:
            return await awaitable

    return await asyncio.gather(*(one(a) for a in work))
