"""A deliberately broken build, for the drill to catch (``ISOCHAT_PLUGINS``): one math agent
for every run, re-pointed at each new run's emitter, model and usage as it is handed out. That
is the usual patch for an agent that is a process-wide singleton (reset it for each request),
and it races with the runs still using it: their events go to whichever run came last."""

from __future__ import annotations

from typing import Any

from dependency_injector import containers, providers

from src.agents.specialists import MathAgent


def reset_for_this_run(agent: MathAgent, *, events: Any, llm: Any, usage: Any) -> MathAgent:
    agent._events = events
    agent._llm = llm
    agent._usage = usage
    return agent


class SharedMathAgent(containers.DeclarativeContainer):
    isochat = providers.DependenciesContainer()

    the_agent = providers.Singleton(
        MathAgent,
        events=isochat.emitter,
        tracker=isochat.metrics,
        llm=isochat.run_llm,
        usage=isochat.usage,
        tools=providers.List(isochat.calculator),
    )
    # Named like isochat's math agent: every run that triage sends to math gets this one.
    math_agent = providers.Callable(
        reset_for_this_run,
        the_agent,
        events=isochat.emitter,
        llm=isochat.run_llm,
        usage=isochat.usage,
    )
