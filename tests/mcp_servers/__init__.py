"""Real MCP servers for the tests, each run as a process of its own, and the fixtures that run
them (``tests.mcp_servers.fixtures``)."""
