"""Teams' own agents, tools and routes, plugged in without editing ``src/``.

A plug-in is a declarative container of the team's own. It declares
``isochat = providers.DependenciesContainer()`` to reach isochat's request providers (the run's
``emitter``, ``llm``, ``usage``, ``metrics``, ``session``, ``stock_routes``, ...), its own
providers beside them, and, under the name of one of isochat's request providers, the provider
that takes that one's place:

    class SupportPlugin(containers.DeclarativeContainer):
        isochat = providers.DependenciesContainer()
        weather = providers.Factory(WeatherTool, base_url=...)  # the team's own
        support_agent = providers.Factory(
            ToolAgent, name="support", tools=providers.List(weather), events=isochat.emitter,
            tracker=isochat.metrics, llm=isochat.run_llm, usage=isochat.usage,
        )
        routes = providers.Callable(  # takes the place of isochat's
            with_routes, isochat.stock_routes,
            support=providers.Singleton(Route, description=..., agent=support_agent.provider),
        )

``ISOCHAT_PLUGINS=examples.support.container:SupportPlugin`` plugs it into ``isochat serve``;
``plug_in(container, SupportPlugin)`` into a container of a test. Overriding is per container:
another application in the same process keeps isochat's own providers. A provider named like
one of the application's own (``token_grants``: what a token's claims grant) takes that one's
place the same way; isochat's drill faults are a plug-in too (``src/drill/faults.py``).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

if TYPE_CHECKING:
    from src.container import AppContainer

# The name under which a plug-in reaches isochat's request providers.
ISOCHAT = "isochat"


class BadPlugin(Exception):
    """``ISOCHAT_PLUGINS`` names something that cannot be plugged in: ``str(exc)`` says why."""


def plugin_classes(paths: list[str]) -> list[type[containers.DeclarativeContainer]]:
    """The containers ``paths`` (``module:Class`` each) name. The current directory is
    importable, as for uvicorn's ``module:app``: a team's module lives in its project."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return [plugin_class(path) for path in paths]


def plugin_class(path: str) -> type[containers.DeclarativeContainer]:
    module_name, _, name = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise BadPlugin(f"cannot import {path!r}: {exc}") from None
    if not (isinstance(found, type) and issubclass(found, containers.DeclarativeContainer)):
        raise BadPlugin(f"{path!r} is not a declarative container")
    if not isinstance(found.cls_providers.get(ISOCHAT), providers.DependenciesContainer):
        raise BadPlugin(
            f"{path!r} does not declare {ISOCHAT} = providers.DependenciesContainer(), "
            "through which it reaches isochat's providers"
        )
    return found


def plug_in(container: AppContainer, plugin: type[containers.DeclarativeContainer]) -> Any:
    """Plug ``plugin`` into ``container``: each of its providers named like one of isochat's
    request providers (or, failing that, of its application providers) overrides that one;
    the rest are the team's own. The plug-in's container is returned (its providers are the
    team's, for tests)."""
    request = container.request
    instance = plugin(**{ISOCHAT: request})
    for name, provider in instance.providers.items():
        if name == ISOCHAT:
            continue
        if hasattr(request, name):
            getattr(request, name).override(provider)
        elif name != "request" and isinstance(getattr(container, name, None), providers.Provider):
            getattr(container, name).override(provider)
    return instance
