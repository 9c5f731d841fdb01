"""What one request scope costs: open it, resolve every request provider, dispose it.

Three ways of doing the same work, measured in the same run:

- ``isochat``: ``async with request_scope(container):``, set the run context, then call every
  request provider of ``container.request`` (session, transactions, usage, emitter, calculator,
  conversation, math_agent, history_agent, general_agent, routes, triage, supervisor,
  agents_for, agent_of_route, approval, threads, chat);
- ``dishka``: an equivalent dishka container (APP scope: the same app objects, the approval
  policy and the run pauser among them; REQUEST scope: run context, session, transactions, run
  usage, emitter, tools, agents, routes, supervisor, the run-bound builders of a supervisor and
  of a route's agent, the approval, thread and chat use cases),
  ``await req.get(X)`` for each type;
- ``manual``: the same objects built with plain constructor calls, no DI at all.

All three open and close a real ``AsyncSession`` and build the same objects: session,
transactions, run usage, emitter and the use cases once per scope; tools, agents (each
specialist with its own tools list and the app's approval policy), supervisors (with the app's
run pauser), the two run-bound builders (``agents_for``, ``agent_of_route``) and the routes dict
new at every resolution.
(isochat's three ``Route`` objects are singletons whose agent is a provider; by hand and in
dishka a route's agent is bound to the request, so those three are built once per request.)
Before measuring, one iteration of each is checked to build the same graph (types, tools,
routes, approval policy, pauser, agent count). The differences are the cost of the DI
machinery. Every iteration is timed on its own; the medians over interleaved rounds are
reported.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dependency_injector.providers import Dependency
from dishka import AsyncContainer, Provider, Scope, from_context, make_async_container, provide
from sqlalchemy.ext.asyncio import AsyncSession

from src.agents.approval import ApprovalPolicy
from src.agents.base import Agent
from src.agents.loop import ToolAgent
from src.agents.specialists import GeneralAgent, HistoryAgent, MathAgent
from src.agents.supervisor import Supervisor
from src.agents.tools import Calculator, ConversationHistory
from src.agents.triage import Route, TriageAgent, agent_of
from src.container import AppContainer, RequestContainer, build_container, request_scope, same
from src.runs.approvals import RunPauser
from src.runs.cancel import RunCanceller
from src.runs.domain import RunContext
from src.runs.emitter import EventEmitter
from src.runs.ender import RunEnder
from src.runs.follower import StoredEvents
from src.runs.leases import Lease
from src.runs.registry import RunRegistry
from src.runs.usage import RunUsage
from src.scoping import ScopeValue, WithScopeValue, current_scope
from src.services.approvals import ApprovalService
from src.services.broker import EventBroker
from src.services.chat import ChatService
from src.services.database.engine import Database, Transactions
from src.services.llm import LLM
from src.services.metrics import Metrics
from src.services.threads import ThreadService
from src.settings import Settings

SETTINGS = Settings(_env_file=None)

# Every provider of isochat's RequestContainer that builds something (checked against the
# container before measuring), in its order.
REQUEST_PROVIDERS = (
    "session",
    "transactions",
    "usage",
    "emitter",
    "calculator",
    "conversation",
    "math_agent",
    "history_agent",
    "general_agent",
    "routes",
    "triage",
    "supervisor",
    "agents_for",
    "agent_of_route",
    "approval",
    "threads",
    "chat",
)
# Resolved as part of another provider of the list, not on its own: `routes` is built from
# stock_routes, every agent from run_llm.
BUILT_INTO_OTHERS = frozenset({"stock_routes", "run_llm"})
APPROACHES = ("isochat", "dishka", "manual")
RUN_CONTEXT = RunContext(
    run_id="run-1", thread_id="thread-1", user_id="user-1", request_id="r-1", content="hi"
)

Routes = Mapping[str, Route]


@dataclass(frozen=True, slots=True)
class RunLLM:
    """The model as each agent gets it (see ``RequestObjects.llm``), in a type of its own: dishka
    tells providers apart by type."""

    model: LLM


Iteration = Callable[[], Awaitable[None]]
# Where an iteration leaves what it resolved, for the check that all three build the same graph
# (None while measuring: the objects are dropped with the scope).
Sink = list[Any] | None


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
    ender: RunEnder
    canceller: RunCanceller
    pauser: RunPauser
    approvals: ApprovalPolicy
    event_store: StoredEvents

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
            ender=container.ender(),
            canceller=container.canceller(),
            pauser=container.pauser(),
            approvals=container.approvals(),
            event_store=container.event_store(),
        )


# --- the object graph, written out by hand (used by the manual baseline and by dishka) ---------


class RequestObjects:
    """What every agent of one request is built from, and how each is built."""

    __slots__ = ("_routes", "app", "context", "emitter", "session", "transactions", "usage")

    def __init__(
        self,
        app: AppObjects,
        context: RunContext,
        session: AsyncSession,
        usage: RunUsage,
        emitter: EventEmitter,
    ) -> None:
        self.app = app
        self.context = context
        self.session = session
        self.transactions = Transactions(session=session, database=app.database)
        self.usage = usage
        self.emitter = emitter
        # Bound to this request's agents, so built once per request (isochat's Route objects
        # are app-wide singletons holding providers, which build in the current scope).
        self._routes = {
            "math": Route(description=MathAgent.description, agent=self.math_agent),
            "history": Route(description=HistoryAgent.description, agent=self.history_agent),
            "general": Route(description=GeneralAgent.description, agent=self.general_agent),
        }

    def routes(self) -> dict[str, Route]:
        # A new dict at every call, as isochat's ``providers.Dict`` builds one.
        return dict(self._routes)

    def conversation(self) -> ConversationHistory:
        return ConversationHistory(transactions=self.transactions, context=self.context)

    def llm(self) -> LLM:
        # What each agent calls: the run's model (isochat's ``run_llm``: the app's).
        return same(self.app.llm)

    def triage(self) -> TriageAgent:
        return TriageAgent(
            events=self.emitter,
            tracker=self.app.metrics,
            llm=self.llm(),
            usage=self.usage,
            routes=self.routes(),
        )

    def math_agent(self) -> MathAgent:
        return MathAgent(
            events=self.emitter,
            tracker=self.app.metrics,
            llm=self.llm(),
            usage=self.usage,
            tools=[Calculator()],
            approvals=self.app.approvals,
        )

    def history_agent(self) -> HistoryAgent:
        return HistoryAgent(
            events=self.emitter,
            tracker=self.app.metrics,
            llm=self.llm(),
            usage=self.usage,
            tools=[self.conversation()],
            approvals=self.app.approvals,
        )

    def general_agent(self) -> GeneralAgent:
        return GeneralAgent(
            events=self.emitter,
            tracker=self.app.metrics,
            llm=self.llm(),
            usage=self.usage,
            history=self.conversation(),
            approvals=self.app.approvals,
        )

    def supervisor(self, triage: Agent | None = None, routes: Routes | None = None) -> Supervisor:
        return Supervisor(
            context=self.context,
            emitter=self.emitter,
            ender=self.app.ender,
            usage=self.usage,
            triage=triage if triage is not None else self.triage(),
            routes=routes if routes is not None else self.routes(),
            run_timeout_s=self.app.settings.run_timeout_s,
            pauser=self.app.pauser,
        )

    def agents_for(self) -> BoundRunAgents:
        return BoundRunAgents(context=self.context, supervisor=self.supervisor)

    def agent_of_route(self) -> BoundAgentOfRoute:
        return BoundAgentOfRoute(
            context=self.context, agent_of_route=lambda route: agent_of(self.routes(), route)
        )


# isochat's run-bound builders are ``WithScopeValue``s: they hand the run's context to the
# scope, then build there. Without a scope to write into, the run's context is fixed when the
# request objects are built, so these only accept that context. (Two types: dishka tells
# providers apart by type.)
class BoundRunAgents:
    """``agents_for``: the run's supervisor."""

    builds = "Supervisor"

    def __init__(self, *, context: RunContext, supervisor: Callable[[], Supervisor]) -> None:
        self._context = context
        self._supervisor = supervisor

    def __call__(self, context: RunContext) -> Supervisor:
        if context != self._context:
            raise ValueError("these request objects belong to another run")
        return self._supervisor()


class BoundAgentOfRoute:
    """``agent_of_route``: the agent of a paused run's route."""

    builds = "agent_of"

    def __init__(
        self, *, context: RunContext, agent_of_route: Callable[[str | None], Agent]
    ) -> None:
        self._context = context
        self._agent_of_route = agent_of_route

    def __call__(self, context: RunContext, route: str | None) -> Agent:
        if context != self._context:
            raise ValueError("these request objects belong to another run")
        return self._agent_of_route(route)


def thread_service(objects: RequestObjects) -> ThreadService:
    return ThreadService(transactions=objects.transactions, canceller=objects.app.canceller)


def approval_service(objects: RequestObjects) -> ApprovalService:
    app = objects.app
    return ApprovalService(
        transactions=objects.transactions,
        agent_of_route=objects.agent_of_route(),
        runs=app.runs,
        broker=app.broker,
        lease=app.lease,
        metrics=app.metrics,
    )


def chat_service(objects: RequestObjects) -> ChatService:
    app = objects.app
    return ChatService(
        transactions=objects.transactions,
        runs=app.runs,
        agents_for=objects.agents_for(),
        ender=app.ender,
        canceller=app.canceller,
        lease=app.lease,
        settings=SETTINGS,
        broker=app.broker,
        store=app.event_store,
    )


# --- 1. isochat ---------------------------------------------------------------------------------


def isochat_iteration(container: AppContainer, sink: Sink = None) -> Iteration:
    request = container.request
    run_context = request.run_context
    assert isinstance(run_context, ScopeValue)
    providers = [getattr(request, name) for name in REQUEST_PROVIDERS]

    async def iteration() -> None:
        async with request_scope(container):
            current_scope().set(run_context, RUN_CONTEXT)
            resolved = [provider() for provider in providers]
        if sink is not None:
            sink.extend(resolved)
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
    ender = from_context(provides=RunEnder, scope=Scope.APP)
    canceller = from_context(provides=RunCanceller, scope=Scope.APP)
    event_store = from_context(provides=StoredEvents, scope=Scope.APP)
    pauser = from_context(provides=RunPauser, scope=Scope.APP)
    approvals = from_context(provides=ApprovalPolicy, scope=Scope.APP)
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
    def transactions(self, session: AsyncSession, database: Database) -> Transactions:
        return Transactions(session=session, database=database)

    @provide(scope=Scope.REQUEST)
    def usage(self, metrics: Metrics) -> RunUsage:
        return RunUsage(counter=metrics)

    @provide(scope=Scope.REQUEST)
    def emitter(
        self,
        context: RunContext,
        database: Database,
        broker: EventBroker,
        lease: Lease,
    ) -> EventEmitter:
        return EventEmitter(context=context, database=database, broker=broker, lease=lease)

    @provide(scope=Scope.REQUEST)
    def objects(
        self,
        app: AppObjects,
        context: RunContext,
        session: AsyncSession,
        usage: RunUsage,
        emitter: EventEmitter,
    ) -> RequestObjects:
        # What the routes' agent factories and agents_for build from.
        return RequestObjects(app, context, session, usage, emitter)

    @provide(scope=Scope.REQUEST, cache=False)
    def run_llm(self, llm: LLM) -> RunLLM:
        return RunLLM(same(llm))

    @provide(scope=Scope.REQUEST, cache=False)
    def calculator(self) -> Calculator:
        return Calculator()

    @provide(scope=Scope.REQUEST, cache=False)
    def conversation(self, transactions: Transactions, context: RunContext) -> ConversationHistory:
        return ConversationHistory(transactions=transactions, context=context)

    @provide(scope=Scope.REQUEST, cache=False)
    def math_agent(
        self,
        emitter: EventEmitter,
        metrics: Metrics,
        llm: RunLLM,
        usage: RunUsage,
        calculator: Calculator,
        approvals: ApprovalPolicy,
    ) -> MathAgent:
        return MathAgent(
            events=emitter,
            tracker=metrics,
            llm=llm.model,
            usage=usage,
            tools=[calculator],
            approvals=approvals,
        )

    @provide(scope=Scope.REQUEST, cache=False)
    def history_agent(
        self,
        emitter: EventEmitter,
        metrics: Metrics,
        llm: RunLLM,
        usage: RunUsage,
        history: ConversationHistory,
        approvals: ApprovalPolicy,
    ) -> HistoryAgent:
        return HistoryAgent(
            events=emitter,
            tracker=metrics,
            llm=llm.model,
            usage=usage,
            tools=[history],
            approvals=approvals,
        )

    @provide(scope=Scope.REQUEST, cache=False)
    def general_agent(
        self,
        emitter: EventEmitter,
        metrics: Metrics,
        llm: RunLLM,
        usage: RunUsage,
        history: ConversationHistory,
        approvals: ApprovalPolicy,
    ) -> GeneralAgent:
        return GeneralAgent(
            events=emitter,
            tracker=metrics,
            llm=llm.model,
            usage=usage,
            history=history,
            approvals=approvals,
        )

    @provide(scope=Scope.REQUEST, cache=False)
    def routes(self, objects: RequestObjects) -> Routes:
        # Routes' agents stay factories, as in isochat: only the one triage picks is ever built.
        return objects.routes()

    @provide(scope=Scope.REQUEST, cache=False)
    def triage(
        self, emitter: EventEmitter, metrics: Metrics, llm: RunLLM, usage: RunUsage, routes: Routes
    ) -> TriageAgent:
        return TriageAgent(
            events=emitter, tracker=metrics, llm=llm.model, usage=usage, routes=routes
        )

    @provide(scope=Scope.REQUEST, cache=False)
    def supervisor(
        self, objects: RequestObjects, triage: TriageAgent, routes: Routes
    ) -> Supervisor:
        return objects.supervisor(triage, routes)

    @provide(scope=Scope.REQUEST, cache=False)
    def agents_for(self, objects: RequestObjects) -> BoundRunAgents:
        return objects.agents_for()

    @provide(scope=Scope.REQUEST, cache=False)
    def agent_of_route(self, objects: RequestObjects) -> BoundAgentOfRoute:
        return objects.agent_of_route()

    @provide(scope=Scope.REQUEST)
    def approval(
        self,
        transactions: Transactions,
        agent_of_route: BoundAgentOfRoute,
        runs: RunRegistry,
        broker: EventBroker,
        lease: Lease,
        metrics: Metrics,
    ) -> ApprovalService:
        return ApprovalService(
            transactions=transactions,
            agent_of_route=agent_of_route,
            runs=runs,
            broker=broker,
            lease=lease,
            metrics=metrics,
        )

    @provide(scope=Scope.REQUEST)
    def threads(self, transactions: Transactions, canceller: RunCanceller) -> ThreadService:
        return ThreadService(transactions=transactions, canceller=canceller)

    @provide(scope=Scope.REQUEST)
    def chat(
        self,
        transactions: Transactions,
        runs: RunRegistry,
        agents_for: BoundRunAgents,
        ender: RunEnder,
        canceller: RunCanceller,
        lease: Lease,
        broker: EventBroker,
        store: StoredEvents,
    ) -> ChatService:
        return ChatService(
            transactions=transactions,
            runs=runs,
            agents_for=agents_for,
            ender=ender,
            canceller=canceller,
            lease=lease,
            settings=SETTINGS,
            broker=broker,
            store=store,
        )


# In the order of REQUEST_PROVIDERS.
DISHKA_TYPES: tuple[Any, ...] = (
    AsyncSession,
    Transactions,
    RunUsage,
    EventEmitter,
    Calculator,
    ConversationHistory,
    MathAgent,
    HistoryAgent,
    GeneralAgent,
    Routes,
    TriageAgent,
    Supervisor,
    BoundRunAgents,
    BoundAgentOfRoute,
    ApprovalService,
    ThreadService,
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
            RunEnder: app.ender,
            RunCanceller: app.canceller,
            StoredEvents: app.event_store,
            RunPauser: app.pauser,
            ApprovalPolicy: app.approvals,
            AppObjects: app,
        },
    )


def dishka_iteration(app_container: AsyncContainer, sink: Sink = None) -> Iteration:
    async def iteration() -> None:
        async with app_container(context={RunContext: RUN_CONTEXT}) as request:
            resolved = [await request.get(kind) for kind in DISHKA_TYPES]
        if sink is not None:
            sink.extend(resolved)
        del resolved

    return iteration


# --- 3. manual ----------------------------------------------------------------------------------


def manual_iteration(app: AppObjects, sink: Sink = None) -> Iteration:
    async def iteration() -> None:
        session = app.database.open_session()
        try:
            usage = RunUsage(counter=app.metrics)
            emitter = EventEmitter(
                context=RUN_CONTEXT, database=app.database, broker=app.broker, lease=app.lease
            )
            objects = RequestObjects(app, RUN_CONTEXT, session, usage, emitter)
            resolved = [
                session,
                objects.transactions,
                usage,
                emitter,
                Calculator(),
                objects.conversation(),
                objects.math_agent(),
                objects.history_agent(),
                objects.general_agent(),
                objects.routes(),
                objects.triage(),
                objects.supervisor(),
                objects.agents_for(),
                objects.agent_of_route(),
                approval_service(objects),
                thread_service(objects),
                chat_service(objects),
            ]
            if sink is not None:
                sink.extend(resolved)
            del resolved
        finally:
            await app.database.close_session(session)

    return iteration


# --- the same graph? ----------------------------------------------------------------------------


def check_providers() -> None:
    """REQUEST_PROVIDERS is every provider of the RequestContainer that builds something: a
    provider added there must be added here (and to the dishka and manual graphs)."""
    declared = [
        name
        for name, provider in RequestContainer.providers.items()
        if not isinstance(provider, (Dependency, ScopeValue)) and name not in BUILT_INTO_OTHERS
    ]
    if declared != list(REQUEST_PROVIDERS):
        raise SystemExit(
            f"scope_overhead: the RequestContainer's providers are {declared}, the benchmark "
            f"resolves {list(REQUEST_PROVIDERS)}: update bench/scope_overhead.py"
        )


def describe(value: object) -> str:
    """What a resolved object is, as far as the comparison of the three graphs goes."""
    name = type(value).__name__
    if isinstance(value, WithScopeValue):
        # isochat's sets the run context in the scope; the others need none.
        built = getattr(value._build, "provides", None)
        return f"with_run_context({getattr(built, '__name__', built)})"
    if isinstance(value, (BoundRunAgents, BoundAgentOfRoute)):
        return f"with_run_context({value.builds})"
    if isinstance(value, ToolAgent):
        tools = [type(tool).__name__ for tool in value._tools.values()]
        history = type(value._history).__name__ if value._history is not None else None
        approvals = type(value._approvals).__name__ if value._approvals is not None else None
        return f"{name}(tools={tools}, history={history}, approvals={approvals})"
    if isinstance(value, TriageAgent):
        return f"{name}(routes={list(value._routes)})"
    if isinstance(value, Supervisor):
        return (
            f"{name}(triage={type(value._triage).__name__}, routes={list(value._routes)}, "
            f"pauser={type(value._pauser).__name__})"
        )
    if isinstance(value, Mapping):
        return f"routes({', '.join(f'{k}: {type(v).__name__}' for k, v in value.items())})"
    return name


async def check_graphs(
    app: AppObjects, builders: Mapping[str, Callable[[Sink], Iteration]]
) -> None:
    """One iteration of each approach, its objects kept: the same objects, the same agents."""
    graphs: dict[str, tuple[list[str], float]] = {}
    for name, build in builders.items():
        gc.collect()
        before = app.metrics.value("isochat_agent_instances_live")
        kept: list[Any] = []
        await build(kept)()
        agents = app.metrics.value("isochat_agent_instances_live") - before
        graphs[name] = [describe(value) for value in kept], agents
        del kept
    reference = graphs[APPROACHES[0]]
    for name, graph in graphs.items():
        if graph != reference:
            raise SystemExit(
                f"scope_overhead: {name} builds another graph than {APPROACHES[0]}:\n"
                f"  {APPROACHES[0]}: {reference}\n  {name}: {graph}"
            )


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
        check_providers()
        app = AppObjects.of(container)
        app_container = make_dishka_container(app)
        try:
            builders: dict[str, Callable[[Sink], Iteration]] = {
                "isochat": lambda sink: isochat_iteration(container, sink),
                "dishka": lambda sink: dishka_iteration(app_container, sink),
                "manual": lambda sink: manual_iteration(app, sink),
            }
            await check_graphs(app, builders)
            iterations = {name: build(None) for name, build in builders.items()}
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
