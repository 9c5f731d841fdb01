"""What one request scope costs: open it, resolve every request provider, dispose it.

Three ways of doing the same work, measured in the same run:

- ``isochat``: ``async with request_scope(container):``, set the run context, then call every
  request provider of ``container.request`` (session, emitter, calculator, conversation, triage,
  math_agent, history_agent, general_agent, supervisor, agents_for, chat);
- ``dishka``: an equivalent dishka container (APP scope: the same app objects; REQUEST scope:
  run context, session, emitter, agents, supervisor, chat), ``await req.get(X)`` for each type;
- ``manual``: the same objects built with plain constructor calls, no DI at all.

All three open and close a real ``AsyncSession`` and build the same number of objects (agents
are new at every resolution, session/emitter/chat once per scope), so the differences are the
cost of the DI machinery. Every iteration is timed on its own; the medians over interleaved
rounds are reported.

Reading the result: ``isochat/dishka`` below 1.00 means isochat's scope is cheaper than dishka's
for the same graph; ``manual`` is the floor (constructors + opening/closing the session) that
neither DI container can beat.

    .venv/bin/python bench/scope_overhead.py [--iterations N] [--rounds R] [--warmup W]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dishka import AsyncContainer, Provider, Scope, from_context, make_async_container, provide
from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.base import Agent
from src.agents.context import RunContext
from src.agents.specialists import GeneralAgent, HistoryAgent, MathAgent
from src.agents.supervisor import Supervisor
from src.agents.tools import Calculator, ConversationHistory
from src.agents.triage import TriageAgent
from src.container import AppContainer, build_container, request_scope
from src.scoping import ScopeValue, current_scope
from src.services.broker import EventBroker
from src.services.chat import ChatService
from src.services.database.engine import Database
from src.services.events import EventEmitter
from src.services.leases import Lease
from src.services.llm import LLM
from src.services.metrics import Metrics
from src.services.runs import RunRegistry
from src.settings import Settings

SETTINGS = Settings(_env_file=None)

REQUEST_PROVIDERS = (
    "session",
    "emitter",
    "calculator",
    "conversation",
    "triage",
    "math_agent",
    "history_agent",
    "general_agent",
    "supervisor",
    "agents_for",
    "chat",
)
APPROACHES = ("isochat", "dishka", "manual")
RUN_CONTEXT = RunContext(run_id="run-1", thread_id="thread-1", user_id="user-1", request_id="r-1")

Iteration = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AppObjects:
    """The application-lifetime objects, taken from the isochat container and shared by all."""

    settings: Settings
    database: Database
    metrics: Metrics
    llm: LLM
    broker: EventBroker
    runs: RunRegistry
    lease: Lease

    @classmethod
    def of(cls, container: AppContainer) -> AppObjects:
        return cls(
            settings=container.settings(),
            database=container.database(),
            metrics=container.metrics(),
            llm=container.llm(),
            broker=container.broker(),
            runs=container.runs(),
            lease=container.lease(),
        )


# --- the object graph, written out by hand (used by the manual baseline and by dishka) ---------


@dataclass(frozen=True, slots=True)
class RequestObjects:
    """What every agent of one request is built from."""

    app: AppObjects
    context: RunContext
    session: AsyncSession
    emitter: EventEmitter

    def triage(self) -> TriageAgent:
        return TriageAgent(events=self.emitter, tracker=self.app.metrics, llm=self.app.llm)

    def conversation(self) -> ConversationHistory:
        return ConversationHistory(session=self.session, context=self.context)

    def math_agent(self) -> MathAgent:
        return MathAgent(events=self.emitter, tracker=self.app.metrics, calculator=Calculator())

    def history_agent(self) -> HistoryAgent:
        return HistoryAgent(
            events=self.emitter, tracker=self.app.metrics, history=self.conversation()
        )

    def general_agent(self) -> GeneralAgent:
        return GeneralAgent(
            events=self.emitter,
            tracker=self.app.metrics,
            llm=self.app.llm,
            history=self.conversation(),
        )

    def supervisor(self, triage: Agent | None = None) -> Supervisor:
        specialists: dict[str, Callable[[], Agent]] = {
            "math": self.math_agent,
            "history": self.history_agent,
            "general": self.general_agent,
        }
        return Supervisor(
            context=self.context,
            emitter=self.emitter,
            triage=triage if triage is not None else self.triage(),
            specialists=specialists,
            run_timeout_s=self.app.settings.run_timeout_s,
            metrics=self.app.metrics,
        )

    def agents_for(self) -> BoundRunAgents:
        return BoundRunAgents(context=self.context, supervisor=self.supervisor)


class BoundRunAgents:
    """``agents_for`` without a scope to write into: the run's context is fixed when the request
    objects are built, so it only accepts that context."""

    def __init__(self, *, context: RunContext, supervisor: Callable[[], Supervisor]) -> None:
        self._context = context
        self._supervisor = supervisor

    def __call__(self, context: RunContext) -> Supervisor:
        if context != self._context:
            raise ValueError("these request objects belong to another run")
        return self._supervisor()


def chat_service(objects: RequestObjects) -> ChatService:
    app = objects.app
    return ChatService(
        session=objects.session,
        database=app.database,
        runs=app.runs,
        lease=app.lease,
        agents_for=objects.agents_for(),
        metrics=app.metrics,
        broker=app.broker,
        settings=SETTINGS,
    )


# --- 1. isochat ---------------------------------------------------------------------------------


def isochat_iteration(container: AppContainer) -> Iteration:
    request = container.request
    run_context = request.run_context
    assert isinstance(run_context, ScopeValue)
    providers = [getattr(request, name) for name in REQUEST_PROVIDERS]

    async def iteration() -> None:
        async with request_scope(container):
            current_scope().set(run_context, RUN_CONTEXT)
            resolved = [provider() for provider in providers]
        del resolved

    return iteration


# --- 2. dishka ----------------------------------------------------------------------------------


class BenchProvider(Provider):
    """isochat's RequestContainer, in dishka: app objects come in as APP-scope context."""

    settings = from_context(provides=Settings, scope=Scope.APP)
    database = from_context(provides=Database, scope=Scope.APP)
    metrics = from_context(provides=Metrics, scope=Scope.APP)
    llm = from_context(provides=LLM, scope=Scope.APP)
    broker = from_context(provides=EventBroker, scope=Scope.APP)
    runs = from_context(provides=RunRegistry, scope=Scope.APP)
    lease = from_context(provides=Lease, scope=Scope.APP)
    app = from_context(provides=AppObjects, scope=Scope.APP)
    run_context = from_context(provides=RunContext, scope=Scope.REQUEST)

    @provide(scope=Scope.REQUEST)
    async def session(self, database: Database) -> AsyncIterator[AsyncSession]:
        session = database.open_session()
        try:
            yield session
        finally:
            await database.close_session(session)

    @provide(scope=Scope.REQUEST)
    def emitter(
        self, context: RunContext, database: Database, broker: EventBroker, lease: Lease
    ) -> EventEmitter:
        return EventEmitter(context=context, database=database, broker=broker, lease=lease)

    @provide(scope=Scope.REQUEST)
    def objects(
        self, app: AppObjects, context: RunContext, session: AsyncSession, emitter: EventEmitter
    ) -> RequestObjects:
        # What the supervisor's specialist factories and agents_for build from.
        return RequestObjects(app=app, context=context, session=session, emitter=emitter)

    @provide(scope=Scope.REQUEST, cache=False)
    def calculator(self) -> Calculator:
        return Calculator()

    @provide(scope=Scope.REQUEST, cache=False)
    def conversation(self, session: AsyncSession, context: RunContext) -> ConversationHistory:
        return ConversationHistory(session=session, context=context)

    @provide(scope=Scope.REQUEST, cache=False)
    def triage(self, emitter: EventEmitter, metrics: Metrics, llm: LLM) -> TriageAgent:
        return TriageAgent(events=emitter, tracker=metrics, llm=llm)

    @provide(scope=Scope.REQUEST, cache=False)
    def math_agent(
        self, emitter: EventEmitter, metrics: Metrics, calculator: Calculator
    ) -> MathAgent:
        return MathAgent(events=emitter, tracker=metrics, calculator=calculator)

    @provide(scope=Scope.REQUEST, cache=False)
    def history_agent(
        self, emitter: EventEmitter, metrics: Metrics, history: ConversationHistory
    ) -> HistoryAgent:
        return HistoryAgent(events=emitter, tracker=metrics, history=history)

    @provide(scope=Scope.REQUEST, cache=False)
    def general_agent(
        self, emitter: EventEmitter, metrics: Metrics, llm: LLM, history: ConversationHistory
    ) -> GeneralAgent:
        return GeneralAgent(events=emitter, tracker=metrics, llm=llm, history=history)

    @provide(scope=Scope.REQUEST, cache=False)
    def supervisor(self, objects: RequestObjects, triage: TriageAgent) -> Supervisor:
        # Specialists stay factories, as in isochat: only the one triage picks is ever built.
        return objects.supervisor(triage)

    @provide(scope=Scope.REQUEST, cache=False)
    def agents_for(self, objects: RequestObjects) -> BoundRunAgents:
        return objects.agents_for()

    @provide(scope=Scope.REQUEST)
    def chat(
        self,
        session: AsyncSession,
        database: Database,
        runs: RunRegistry,
        agents_for: BoundRunAgents,
        metrics: Metrics,
        broker: EventBroker,
        lease: Lease,
    ) -> ChatService:
        return ChatService(
            session=session,
            database=database,
            runs=runs,
            lease=lease,
            agents_for=agents_for,
            metrics=metrics,
            broker=broker,
            settings=SETTINGS,
        )


DISHKA_TYPES: tuple[type[Any], ...] = (
    AsyncSession,
    EventEmitter,
    Calculator,
    ConversationHistory,
    TriageAgent,
    MathAgent,
    HistoryAgent,
    GeneralAgent,
    Supervisor,
    BoundRunAgents,
    ChatService,
)


def make_dishka_container(app: AppObjects) -> AsyncContainer:
    return make_async_container(
        BenchProvider(),
        context={
            Settings: app.settings,
            Database: app.database,
            Metrics: app.metrics,
            LLM: app.llm,
            EventBroker: app.broker,
            RunRegistry: app.runs,
            Lease: app.lease,
            AppObjects: app,
        },
    )


def dishka_iteration(app_container: AsyncContainer) -> Iteration:
    async def iteration() -> None:
        async with app_container(context={RunContext: RUN_CONTEXT}) as request:
            resolved = [await request.get(kind) for kind in DISHKA_TYPES]
        del resolved

    return iteration


# --- 3. manual ----------------------------------------------------------------------------------


def manual_iteration(app: AppObjects) -> Iteration:
    async def iteration() -> None:
        session = app.database.open_session()
        try:
            emitter = EventEmitter(
                context=RUN_CONTEXT, database=app.database, broker=app.broker, lease=app.lease
            )
            objects = RequestObjects(app, RUN_CONTEXT, session, emitter)
            resolved = [
                session,
                emitter,
                Calculator(),
                objects.conversation(),
                objects.triage(),
                objects.math_agent(),
                objects.history_agent(),
                objects.general_agent(),
                objects.supervisor(),
                objects.agents_for(),
                chat_service(objects),
            ]
            del resolved
        finally:
            await app.database.close_session(session)

    return iteration


# --- measuring ----------------------------------------------------------------------------------


async def run_timed(iteration: Iteration, count: int, samples: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        await iteration()
        samples.append(clock() - start)


async def measure(
    iterations: dict[str, Iteration], *, warmup: int, per_round: int, rounds: int
) -> dict[str, list[int]]:
    discard: list[int] = []
    for iteration in iterations.values():
        await run_timed(iteration, warmup, discard)
    samples: dict[str, list[int]] = {name: [] for name in iterations}
    names = list(iterations)
    for round_ in range(rounds):
        gc.collect()
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            await run_timed(iterations[name], per_round, samples[name])
    return samples


def percentile_us(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000


def report(samples: dict[str, list[int]]) -> None:
    print(f"{'approach':<10}{'median us':>12}{'p90 us':>12}{'samples':>10}")
    for name, values in samples.items():
        median, p90 = percentile_us(values, 0.5), percentile_us(values, 0.9)
        print(f"{name:<10}{median:>12.1f}{p90:>12.1f}{len(values):>10}")
    isochat, dishka, manual = (percentile_us(samples[name], 0.5) for name in APPROACHES)
    print(
        f"scope: isochat {isochat:.1f} us, dishka {dishka:.1f} us, manual {manual:.1f} us, "
        f"isochat/dishka {isochat / dishka:.2f}"
    )


def check_gauges(metrics: Metrics) -> None:
    for gauge in ("isochat_request_scopes_open", "isochat_db_sessions_open"):
        value = metrics.value(gauge)
        if value != 0:
            print(f"WARNING: {gauge} is {value:g} after the benchmark, expected 0")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        settings = Settings(database_url="sqlite+aiosqlite:///" + tmpdir + "/bench.db")
        container = build_container(settings)
        app = AppObjects.of(container)
        app_container = make_dishka_container(app)
        try:
            iterations = {
                "isochat": isochat_iteration(container),
                "dishka": dishka_iteration(app_container),
                "manual": manual_iteration(app),
            }
            samples = await measure(
                iterations, warmup=args.warmup, per_round=args.iterations, rounds=args.rounds
            )
            check_gauges(app.metrics)
        finally:
            await app_container.close()
            await app.database.dispose()
    report(samples)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=3000, help="per approach per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2000, help="per approach, not measured")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
