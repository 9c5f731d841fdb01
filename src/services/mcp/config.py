"""The teams' MCP servers, as ``ISOCHAT_MCP_SERVERS`` declares them (a JSON object):

    {"crm": {"url": "https://crm.example.com/mcp", "headers": {"Authorization": "Bearer ..."},
             "routes": ["general"]},
     "files": {"command": "python", "args": ["files_server.py"]}}

Each server is reached over Streamable HTTP (``url``) or started as a process speaking stdio
(``command``, ``args``, ``env``); ``routes`` names the specialists that get its tools (all of
them when it is left out). ``parse_servers`` says every mistake, one line each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

# A server's name starts its tools' names (``<server>__<tool>``), which models take only in
# these characters; "__" separates the two, so a name cannot hold it.
SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
SEPARATOR = "__"
# What models take as a tool's name: a server's tool whose full name does not fit is left out.
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What every request tells the server; set by isochat, never by the configuration.
USER_HEADER = "X-Isochat-User"
RUN_HEADER = "X-Isochat-Run"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_KEYS = frozenset({"url", "command", "args", "env", "headers", "routes"})


class McpServer(BaseModel):
    """One team's MCP server: where it is, what every request to it carries, which routes
    get its tools (None: every specialist)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = None
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = {}
    headers: Mapping[str, str] = {}
    routes: tuple[str, ...] | None = None

    def serves(self, route: str) -> bool:
        return self.routes is None or route in self.routes


def tool_name(server: str, tool: str) -> str:
    """The name the model knows a server's tool by: ``<server>__<tool>``."""
    return f"{server}{SEPARATOR}{tool}"


def route_problems(servers: Mapping[str, McpServer], routes: Iterable[str]) -> list[str]:
    """A line for each route a server names that is not one of ``routes``."""
    known = set(routes)
    return [
        f"server {name!r}: no route {route!r} (routes: {', '.join(sorted(known))})"
        for name, server in servers.items()
        for route in server.routes or ()
        if route not in known
    ]


def with_mcp_servers(servers: Mapping[str, McpServer], **more: McpServer) -> dict[str, McpServer]:
    """``servers`` and ``more`` (which replace servers of the same name): a team's container's
    servers beside the configured ones."""
    return {**servers, **more}


def parse_servers(text: str) -> dict[str, McpServer]:
    """The servers ``text`` (the setting's JSON) declares; ``ValueError`` whose lines say each
    mistake (a line per mistake)."""
    if not text.strip():
        return {}
    try:
        declared = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"expected a JSON object of servers, not valid JSON ({exc})") from None
    if not isinstance(declared, dict):
        raise ValueError('expected a JSON object like {"crm": {"url": "https://..."}}')
    servers: dict[str, McpServer] = {}
    problems: list[str] = []
    for name, entry in declared.items():
        found = _problems(name, entry)
        if found:
            problems += [f"server {name[:40]!r}: {problem}" for problem in found]
        else:
            servers[name] = McpServer(**entry)
    if problems:
        raise ValueError("\n".join(problems))
    return servers


def _problems(name: str, entry: Any) -> list[str]:
    if not SERVER_NAME.fullmatch(name) or SEPARATOR in name:
        return ["its name must be 1 to 32 letters, digits, - or single _ (no '__')"]
    if not isinstance(entry, dict):
        return ['expected an object like {"url": "https://..."}']
    problems = [f"unknown key {key!r}" for key in entry if key not in _KEYS]
    url, command = entry.get("url"), entry.get("command")
    if (url is None) == (command is None):
        problems.append("give either url (Streamable HTTP) or command (stdio)")
    if url is not None and not (isinstance(url, str) and re.match(r"https?://[^/\s]+", url)):
        problems.append(f"url must start with http:// or https://, got {str(url)[:60]!r}")
    if command is not None and not (isinstance(command, str) and command.strip()):
        problems.append("command must be the program to start")
    if not _strings(entry.get("args", []), list):
        problems.append("args must be a list of strings")
    if not _strings(entry.get("env", {}), dict):
        problems.append("env must be an object of strings")
    headers = entry.get("headers", {})
    if not _strings(headers, dict):
        problems.append("headers must be an object of strings")
    else:
        for header in headers:
            if not _HEADER_NAME.fullmatch(header):
                problems.append(f"{header[:40]!r} is not a header name")
            elif header.lower() in (USER_HEADER.lower(), RUN_HEADER.lower()):
                problems.append(f"{header} is set by isochat on every request")
    routes = entry.get("routes")
    if routes is not None and not (_strings(routes, list) and routes):
        problems.append('routes must be a list of route names, e.g. ["general"]')
    return problems


def _strings(value: Any, kind: type) -> bool:
    if kind is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
