"""The support team's container: its tools, its ``support`` agent and its route, plugged into
isochat's request providers (``src/plugins.py``) without editing ``src/``.

    ISOCHAT_PLUGINS=examples.support.container:SupportPlugin isochat serve
"""

from __future__ import annotations

from dependency_injector import containers, providers
from pydantic_settings import BaseSettings, SettingsConfigDict

from examples.support.tools import WeatherTool, order_status_tool
from src.agents.loop import ToolAgent
from src.agents.triage import Route, with_routes


class SupportSettings(BaseSettings):
    """The team's own settings (``SUPPORT_*``)."""

    model_config = SettingsConfigDict(env_prefix="SUPPORT_", extra="ignore")

    weather_url: str = "http://127.0.0.1:8010"


SUPPORT_INSTRUCTIONS = (
    "You are the support desk. Look orders up with order_status and the weather with "
    "get_weather; answer from what the tools return, briefly and kindly."
)


class SupportPlugin(containers.DeclarativeContainer):
    # isochat's request providers: the run's emitter, model, usage, metrics, stock routes, ...
    isochat = providers.DependenciesContainer()

    # The team's own: new for every run, like isochat's agents and tools.
    support_settings = providers.Singleton(SupportSettings)
    weather = providers.Factory(WeatherTool, base_url=support_settings.provided.weather_url)
    order_status = providers.Factory(order_status_tool)
    support_agent = providers.Factory(
        ToolAgent,
        name="support",
        instructions=SUPPORT_INSTRUCTIONS,
        tools=providers.List(weather, order_status),
        events=isochat.emitter,
        tracker=isochat.metrics,
        llm=isochat.run_llm,
        usage=isochat.usage,
    )

    # Named like isochat's `routes`, so it takes its place: isochat's routes and the team's.
    routes = providers.Callable(
        with_routes,
        isochat.stock_routes,
        support=providers.Singleton(
            Route,
            description="customers' orders and deliveries, and the weather where they are",
            agent=support_agent.provider,
        ),
    )
