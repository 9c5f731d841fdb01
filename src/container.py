"""The composition root: the only module that names concrete classes.

``AppContainer`` holds what lives as long as the application. ``RequestContainer`` declares what
lives for one request (one HTTP request, or one run started over a WebSocket). A single
``RequestContainer`` instance serves every request: its providers keep their objects in the
current ``RequestScope`` (see ``src/scoping.py`` for why this beats a child container per request).

    container = build_container(Settings())
    async with request_scope(container):
        chat = container.request.chat()      # fresh per scope: session, emitter, agents, ...

Tests swap any provider with ``container.<name>.override(...)`` or
``container.request.<name>.override(...)``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dependency_injector import containers, providers

from src.agents.approval import ApprovalPolicy
from src.agents.specialists import GeneralAgent, HistoryAgent, MathAgent
from src.agents.supervisor import Supervisor
from src.agents.tools import Calculator, ConversationHistory
from src.agents.triage import Route, TriageAgent, agent_of, with_routes
from src.logs import bind
from src.plugins import plug_in, plugin_classes
from src.runs.approvals import RunPauser
from src.runs.cancel import RunCanceller
from src.runs.emitter import EventEmitter
from src.runs.ender import RunEnder
from src.runs.follower import StoredEvents
from src.runs.leases import Lease, LeaseKeeper
from src.runs.queue import Promoted
from src.runs.registry import RunRegistry
from src.runs.usage import RunUsage
from src.scoping import RequestResource, RequestScope, Scoped, ScopeValue, WithScopeValue
from src.services.approvals import ApprovalService
from src.services.auth import (
    InProcessUsedTickets,
    NoGrants,
    RedisUsedTickets,
    TokenService,
    WsTickets,
)
from src.services.broker import EventBroker, InProcessBroker
from src.services.chat import ChatService
from src.services.database.engine import Database, Transactions, create_engine
from src.services.limits import InProcessSocketCounter, RateLimiter, RedisSocketCounter
from src.services.llm import LLM
from src.services.llm.offline import OfflineLLM
from src.services.mcp.config import with_mcp_servers
from src.services.mcp.run import RunMcp, no_user_headers
from src.services.mcp.tool_lists import McpToolLists
from src.services.metrics import Metrics
from src.services.redis_broker import RedisBroker
from src.services.scope_monitor import ScopeMonitor
from src.services.threads import ThreadService
from src.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def choose_llm(settings: Settings) -> LLM:
    """The model ``ISOCHAT_LLM_PROVIDER`` names. Chosen once: a ``Selector`` would look the
    setting up again at every resolution, on every request."""
    if settings.llm_provider == "openai":
        # Imported here: the openai client (and aiohttp with it) is over a second of start-up
        # that a process on the offline model does not need.
        from src.services.llm.openai import OpenAILLM

        assert settings.llm_base_url is not None  # Settings refuses openai without one
        return OpenAILLM(
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key,
            model=settings.llm_model,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            max_connections=settings.llm_max_connections,
        )
    return OfflineLLM()


def choose_broker(settings: Settings) -> EventBroker:
    """The broker ``ISOCHAT_BROKER_URL`` names, chosen once."""
    if settings.broker_kind == "redis":
        return RedisBroker(
            settings.broker_url,
            timeout_s=settings.redis_timeout_s,
            prefix=f"{settings.redis_prefix}events:",
        )
    return InProcessBroker()


def same(value: T) -> T:
    """A provider of its own for what another provides, so that a plug-in can put something
    else in its place without replacing the original everywhere."""
    return value


def in_a_scope_of_its_own(
    container: AppContainer, work: Callable[[], Awaitable[object]], *, request_id: str | None
) -> asyncio.Task[None]:
    """Run ``work`` (a use case of ``container.request``) in a request scope of its own, in a
    task the run registry keeps (and shutdown ends): for a run that outlives the request, or
    the process's part, that started it. Its log lines carry ``request_id``."""

    async def run() -> None:
        bind(request_id=request_id)
        async with request_scope(container, request_id=request_id):
            await work()

    # The task runs in a copy of this context, where it opens the run's own scope.
    task = asyncio.create_task(run())
    container.runs().adopt(task)
    return task


def start_queued(container: AppContainer, promoted: Promoted) -> None:
    """Run a queued run that the end of the run ahead of it started here (``running`` under
    this process's lease), under the request id that queued it."""
    container.runs().starting(promoted.run.id)  # a cancel from now on reaches its task
    in_a_scope_of_its_own(
        container,
        lambda: container.request.chat().run_promoted(promoted),
        request_id=promoted.context.request_id,
    )


class RequestContainer(containers.DeclarativeContainer):
    # From the application (AppContainer wires these).
    settings = providers.Dependency(instance_of=Settings)
    database = providers.Dependency(instance_of=Database)
    llm: providers.Dependency[LLM] = providers.Dependency()
    broker: providers.Dependency[EventBroker] = providers.Dependency()
    metrics = providers.Dependency(instance_of=Metrics)
    runs = providers.Dependency(instance_of=RunRegistry)
    lease = providers.Dependency(instance_of=Lease)
    ender = providers.Dependency(instance_of=RunEnder)
    canceller = providers.Dependency(instance_of=RunCanceller)
    pauser = providers.Dependency(instance_of=RunPauser)
    approvals = providers.Dependency(instance_of=ApprovalPolicy)
    event_store = providers.Dependency(instance_of=StoredEvents)
    mcp_tool_lists = providers.Dependency(instance_of=McpToolLists)

    # One per request scope.
    run_context = ScopeValue("run_context")
    session = RequestResource(
        providers.Callable(Database.open_session, database),
        closer=providers.Callable(Database.close_session, database),
    )
    transactions = Scoped(providers.Factory(Transactions, session=session, database=database))
    usage = Scoped(providers.Factory(RunUsage, counter=metrics))
    emitter = Scoped(
        providers.Factory(
            EventEmitter, context=run_context, database=database, broker=broker, lease=lease
        )
    )

    # The teams' MCP servers: ISOCHAT_MCP_SERVERS, and those a team's container puts beside
    # them (``mcp_servers = providers.Callable(with_mcp_servers, isochat.configured_mcp_servers,
    # crm=McpServer(url=...))``), with what each request adds for the run's user (a
    # credential: ``mcp_user_headers``, a function of the server's name and the RunContext).
    configured_mcp_servers = providers.Callable(with_mcp_servers, settings.provided.mcp_servers)
    mcp_servers = providers.Callable(same, configured_mcp_servers)
    mcp_user_headers = providers.Object(no_user_headers)
    # The run's MCP sessions, one per server it uses, all closed with the scope.
    mcp = RequestResource(
        providers.Factory(
            RunMcp,
            servers=mcp_servers,
            context=run_context,
            tool_lists=mcp_tool_lists,
            user_headers=mcp_user_headers,
            timeout_s=settings.provided.mcp_timeout_s,
            metrics=metrics,
        ),
        closer=providers.Callable(RunMcp.aclose),
    )

    # The model the run's agents call: the application's (a plug-in may put another in its
    # place for a run, as the drill's faults do).
    run_llm = providers.Callable(same, llm)

    # Tools and agents: new at every call, so nothing an agent holds is ever shared with
    # another request.
    calculator = providers.Factory(Calculator)
    conversation = providers.Factory(
        ConversationHistory, transactions=transactions, context=run_context
    )
    math_agent = providers.Factory(
        MathAgent,
        events=emitter,
        tracker=metrics,
        llm=run_llm,
        usage=usage,
        tools=providers.List(calculator),
        approvals=approvals,
        mcp=mcp,
    )
    history_agent = providers.Factory(
        HistoryAgent,
        events=emitter,
        tracker=metrics,
        llm=run_llm,
        usage=usage,
        tools=providers.List(conversation),
        approvals=approvals,
        mcp=mcp,
    )
    general_agent = providers.Factory(
        GeneralAgent,
        events=emitter,
        tracker=metrics,
        llm=run_llm,
        usage=usage,
        history=conversation,
        approvals=approvals,
        mcp=mcp,
    )
    # isochat's routes. A route is what the model is told plus a provider of its agent (only
    # the chosen one is ever built); Route objects hold nothing of a request, so one of each
    # serves every run.
    stock_routes = providers.Dict(
        math=providers.Singleton(
            Route, description=MathAgent.description, agent=math_agent.provider
        ),
        history=providers.Singleton(
            Route, description=HistoryAgent.description, agent=history_agent.provider
        ),
        general=providers.Singleton(
            Route, description=GeneralAgent.description, agent=general_agent.provider
        ),
    )
    # What triage chooses from: the stock routes, unless a team's container overrides this
    # (``with_routes(isochat.stock_routes, support=...)``, see src/plugins.py).
    routes = providers.Callable(with_routes, stock_routes)
    triage = providers.Factory(
        TriageAgent, events=emitter, tracker=metrics, llm=run_llm, usage=usage, routes=routes
    )
    supervisor = providers.Factory(
        Supervisor,
        context=run_context,
        emitter=emitter,
        ender=ender,
        usage=usage,
        triage=triage,
        routes=routes,
        run_timeout_s=settings.provided.run_timeout_s,
        pauser=pauser,
    )
    # A run's context handed to the scope, then what needs it built there.
    agents_for = providers.Factory(WithScopeValue, run_context.provider, supervisor.provider)

    agent_of_route = providers.Factory(
        WithScopeValue, run_context.provider, providers.Callable(agent_of, routes).provider
    )

    # The use cases.
    approval = Scoped(
        providers.Factory(
            ApprovalService,
            transactions=transactions,
            agent_of_route=agent_of_route,
            runs=runs,
            broker=broker,
            lease=lease,
            metrics=metrics,
        )
    )
    threads = Scoped(
        providers.Factory(ThreadService, transactions=transactions, canceller=canceller)
    )
    chat = Scoped(
        providers.Factory(
            ChatService,
            transactions=transactions,
            runs=runs,
            agents_for=agents_for,
            ender=ender,
            canceller=canceller,
            lease=lease,
            settings=settings,
            broker=broker,
            store=event_store,
        )
    )


class AppContainer(containers.DeclarativeContainer):
    __self__ = providers.Self()
    settings = providers.Dependency(instance_of=Settings)
    metrics = providers.Singleton(Metrics, settings.provided.prometheus_multiproc_dir)
    engine = providers.Singleton(
        create_engine,
        settings.provided.database_url,
        pool_size=settings.provided.db_pool_size,
        max_overflow=settings.provided.db_max_overflow,
        timeout_s=settings.provided.db_timeout_s,
    )
    database = providers.Singleton(
        Database, engine=engine, metrics=metrics, timeout_s=settings.provided.db_timeout_s
    )
    llm = providers.Singleton(choose_llm, settings)
    broker = providers.Singleton(choose_broker, settings)
    runs = providers.Singleton(RunRegistry)
    # This process's name on the runs it executes; one per process (and per app in tests).
    lease = providers.Singleton(Lease.for_this_process, length_s=settings.provided.run_lease_s)
    # The one way a run ends, whoever ends it; an end it cannot store within a lease is left
    # to the lease sweep. The thread's next queued run, which the end starts, runs here.
    ender = providers.Singleton(
        RunEnder,
        database=database,
        broker=broker,
        metrics=metrics,
        retry_for_s=settings.provided.run_lease_s,
        lease=lease,
        starter=providers.Callable(functools.partial, start_queued, __self__),
    )
    # The MCP servers' tool lists, shared by the runs of this process.
    mcp_tool_lists = providers.Singleton(McpToolLists, settings.provided.mcp_tools_ttl_s)
    # Where followers read what the live stream missed (SSE, sockets, cancels).
    event_store = providers.Singleton(StoredEvents, database)
    canceller = providers.Singleton(
        RunCanceller, registry=runs, broker=broker, ender=ender, store=event_store
    )
    # Runs that wait for a person: which calls wait, and how a run pauses.
    approvals = providers.Singleton(ApprovalPolicy.from_setting, settings.provided.approval_tools)
    pauser = providers.Singleton(
        RunPauser,
        database=database,
        broker=broker,
        timeout_s=settings.provided.approval_timeout_s,
    )
    lease_keeper = providers.Singleton(
        LeaseKeeper,
        lease=lease,
        database=database,
        runs=runs,
        ender=ender,
        approval_timeout_s=settings.provided.approval_timeout_s,
    )
    # What a token's claims grant beyond the user (a plug-in may say; isochat's own: nothing).
    token_grants = providers.Singleton(NoGrants)
    tokens = providers.Singleton(
        TokenService,
        secret=settings.provided.auth_secret,
        ttl_s=settings.provided.token_ttl_s,
        grants=token_grants,
    )
    # WebSocket tickets are single-use on every worker and host: their uses are recorded where
    # the broker is.
    ws_tickets = providers.Singleton(
        WsTickets,
        secret=settings.provided.auth_secret,
        used=providers.Selector(
            settings.provided.broker_kind,
            memory=providers.Singleton(InProcessUsedTickets),
            redis=providers.Singleton(
                RedisUsedTickets,
                settings.provided.broker_url,
                timeout_s=settings.provided.redis_timeout_s,
                prefix=providers.Callable("{}ws-ticket:".format, settings.provided.redis_prefix),
            ),
        ),
    )
    scope_monitor = providers.Singleton(
        ScopeMonitor,
        metrics,
        run_timeout_s=settings.provided.run_timeout_s,
        margin_s=settings.provided.leak_margin_s,
    )
    # Per-user limits live where the broker does, so that they hold across workers and hosts.
    rate_limiter = providers.Singleton(
        RateLimiter,
        per_minute=settings.provided.rate_limit_per_minute,
        burst=settings.provided.rate_limit_burst,
        storage_url=settings.provided.broker_url,
        key_prefix=providers.Callable("{}limits".format, settings.provided.redis_prefix),
        timeout_s=settings.provided.redis_timeout_s,
    )
    # Selected per socket opened (not per request): the lookup costs nothing worth caching.
    socket_counter = providers.Selector(
        settings.provided.broker_kind,
        memory=providers.Singleton(InProcessSocketCounter),
        redis=providers.Singleton(
            RedisSocketCounter,
            settings.provided.broker_url,
            timeout_s=settings.provided.redis_timeout_s,
            prefix=providers.Callable("{}sockets:".format, settings.provided.redis_prefix),
        ),
    )

    request = providers.Container(
        RequestContainer,
        settings=settings,
        database=database,
        llm=llm,
        broker=broker,
        metrics=metrics,
        runs=runs,
        lease=lease,
        ender=ender,
        canceller=canceller,
        pauser=pauser,
        approvals=approvals,
        event_store=event_store,
        mcp_tool_lists=mcp_tool_lists,
    )


def build_container(settings: Settings | None = None) -> AppContainer:
    """isochat's container, with the plug-ins the settings name plugged in: the teams'
    (``ISOCHAT_PLUGINS``), and the drill's faults when ``ISOCHAT_DRILL_SECRET`` is set."""
    settings = settings or Settings()
    container = AppContainer(settings=providers.Object(settings))
    for plugin in plugin_classes(settings.plugin_paths):
        plug_in(container, plugin)
    return container


def request_scope(container: AppContainer, *, request_id: str | None = None) -> RequestScope:
    """The one way to open a request scope: ``async with request_scope(container):``.

    Everything the request resolved from ``container.request`` is disposed on exit, on every
    exit path; the app's objects are never touched.
    """
    return RequestScope(observer=container.scope_monitor(), label=request_id)


async def startup(container: AppContainer) -> None:
    """What the application starts before serving: cancels asked by other workers reach this
    worker's runs. (The lease keeper is started by the app's lifespan, as a task.)"""
    registry = container.runs()
    await container.broker().listen_for_cancels(registry.cancel)


async def shutdown(container: AppContainer) -> None:
    """Release the application's objects, in order: runs still going end ``cancelled`` (not
    left ``running``; a run whose end cannot be written within the database deadline is left
    to the lease sweep) and start no queued run (those wait for a live process), then the
    limiters', the broker's, the model's and the database's connections close."""
    container.ender().stop_starting()
    left = await container.runs().cancel_all(timeout_s=container.database().step_timeout_s)
    if left:
        log.warning("%d run(s) did not record their end at shutdown; their leases expire", left)
    await container.rate_limiter().aclose()
    await container.socket_counter().aclose()
    await container.ws_tickets().aclose()
    await container.broker().aclose()
    await container.llm().aclose()
    await container.database().dispose()
