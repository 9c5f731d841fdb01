"""An MCP server's tool as the agent loop sees it: ``<server>__<tool>``, with the server's
description and input schema, run through the run's own session (``src/services/mcp/run.py``).

The model's arguments are checked against the server's schema before anything is sent, so a
model that gets them wrong is told what does not fit, as for isochat's own tools. Whatever
the server does wrong (down, too slow, an error, garbage, a dropped session) fails that call
alone, as a ``ToolError`` the model is told.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import mcp_types
from pydantic import BaseModel, ConfigDict

from src.agents.tool import MAX_ARGUMENT_ERRORS, Tool, ToolError
from src.services.llm import ToolSpec
from src.services.mcp.config import tool_name
from src.services.mcp.run import RunMcp
from src.services.mcp.session import McpToolFailed, McpUnavailable


class McpArguments(BaseModel):
    """A call's arguments, as the server's schema (checked in ``parse``) has them."""

    model_config = ConfigDict(extra="allow")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class McpTool(Tool[McpArguments]):
    def __init__(self, server: str, tool: mcp_types.Tool, run: RunMcp) -> None:
        self.name = tool_name(server, tool.name)  # type: ignore[misc]  # per instance here
        self.description = tool.description or tool.title or tool.name  # type: ignore[misc]
        self._server = server
        self._tool = tool.name
        self._schema: dict[str, Any] = tool.input_schema or {"type": "object"}
        self._run = run

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self._schema)

    def parse(self, arguments: str) -> McpArguments:
        try:
            value = json.loads(arguments or "{}")
        except ValueError:
            raise ToolError(f"the arguments of {self.name} are not JSON") from None
        if not isinstance(value, dict):
            raise ToolError(f"the arguments of {self.name} must be a JSON object")
        problems = _schema_problems(self._schema, value)
        if problems:
            raise ToolError(f"the arguments do not fit the {self.name} tool: {'; '.join(problems)}")
        return McpArguments.model_validate(value)

    async def run(self, params: McpArguments) -> str:
        try:
            return await self._run.call(self._server, self._tool, params.as_dict())
        except (McpUnavailable, McpToolFailed) as exc:
            raise ToolError(str(exc)) from None


def _schema_problems(schema: dict[str, Any], value: dict[str, Any]) -> list[str]:
    """What in ``value`` does not fit ``schema`` (nothing when the server's schema is itself
    unusable: the server checks the call then)."""
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.path])
    except Exception:  # a schema jsonschema cannot use (a bad $ref, an unknown draft)
        return []
    return [
        f"{'.'.join(str(p) for p in error.path) or 'arguments'}: {error.message}"
        for error in errors[:MAX_ARGUMENT_ERRORS]
    ]


async def mcp_tools(run: RunMcp, route: str) -> list[McpTool]:
    """The tools the MCP servers serving ``route`` offer, for this run."""
    return [McpTool(server, tool, run) for server, tool in await run.tools(route)]
