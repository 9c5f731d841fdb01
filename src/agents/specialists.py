"""isochat's specialists: the agent loop (``src/agents/loop.py``) with each its instructions
and tools. What each is for is what triage is told (``description``)."""

from __future__ import annotations

from src.agents.loop import ToolAgent


class MathAgent(ToolAgent):
    name = "math"
    description = "arithmetic and calculations (sums, powers, square roots, percentages, rounding)"
    instructions = (
        "You are isochat's math specialist. Work out every number with the calculator tool, "
        "never in your head, then answer briefly with the result. If the question has no "
        "calculation you can do, say so plainly."
    )


class HistoryAgent(ToolAgent):
    name = "history"
    description = "questions about this conversation: what the user said or asked before"
    instructions = (
        "You are isochat's conversation specialist. Read the conversation with the "
        "conversation_history tool, then answer the user's question about it (summarise it "
        "when asked to). Quote only what the tool returned."
    )


class GeneralAgent(ToolAgent):
    name = "general"
    description = "everything else"
    instructions = "You are isochat, a helpful assistant."
    context_messages = 20
