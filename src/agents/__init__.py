"""Agents: triage routes a message, a specialist answers it, the supervisor runs both."""
