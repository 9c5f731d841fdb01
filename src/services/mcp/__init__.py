"""Teams' tools as MCP servers: their configuration (``config``), one run's session with one
server (``session``), a run's sessions, the request-scoped resource (``run``), and the tool
lists every run shares (``tool_lists``). The agents see them as tools: ``src/agents/mcp.py``.

What a team's container declares servers with is here; the client's parts are imported from
their modules (the settings read ``config`` without loading the SDK's client)."""

from src.services.mcp.config import McpServer, tool_name, with_mcp_servers

__all__ = ["McpServer", "tool_name", "with_mcp_servers"]
