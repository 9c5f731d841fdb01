"""``ISOCHAT_MCP_SERVERS``: each mistake is a line of its own naming the variable and the
server; good declarations load as the servers they say. The tool lists' TTL, on a clock the
test moves."""

from __future__ import annotations

import json
import os

import mcp_types
import pytest

from src.services.mcp.config import McpServer, route_problems
from src.services.mcp.tool_lists import RETRY_AFTER_S, McpToolLists
from src.setting_errors import BadSettings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ISOCHAT_"):
            monkeypatch.delenv(name)


def problems(monkeypatch: pytest.MonkeyPatch, value: str) -> list[str]:
    monkeypatch.setenv("ISOCHAT_MCP_SERVERS", value)
    with pytest.raises(BadSettings) as refused:
        load_settings(_env_file=None)
    return refused.value.problems


def test_every_mistake_is_a_line_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = {
        "a__b": {"url": "http://x/mcp"},
        "crm": {
            "url": "ftp://crm",
            "headers": {"X-Isochat-User": "me", "bad header": "v"},
            "timeout": 3,
        },
        "both": {"url": "http://x/mcp", "command": "python"},
        "neither": {"routes": []},
        "files": {"command": "python", "args": "server.py", "env": {"N": 1}},
        "fine": {"url": "https://tools.example.com/mcp", "routes": ["general"]},
    }
    assert problems(monkeypatch, json.dumps(declared)) == [
        "ISOCHAT_MCP_SERVERS: server 'a__b': its name must be 1 to 32 letters, digits, - or "
        "single _ (no '__')",
        "ISOCHAT_MCP_SERVERS: server 'crm': unknown key 'timeout'",
        "ISOCHAT_MCP_SERVERS: server 'crm': url must start with http:// or https://, got "
        "'ftp://crm'",
        "ISOCHAT_MCP_SERVERS: server 'crm': X-Isochat-User is set by isochat on every request",
        "ISOCHAT_MCP_SERVERS: server 'crm': 'bad header' is not a header name",
        "ISOCHAT_MCP_SERVERS: server 'both': give either url (Streamable HTTP) or command (stdio)",
        "ISOCHAT_MCP_SERVERS: server 'neither': give either url (Streamable HTTP) or command "
        "(stdio)",
        "ISOCHAT_MCP_SERVERS: server 'neither': routes must be a list of route names, e.g. "
        '["general"]',
        "ISOCHAT_MCP_SERVERS: server 'files': args must be a list of strings",
        "ISOCHAT_MCP_SERVERS: server 'files': env must be an object of strings",
    ]


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("{not json", "expected a JSON object of servers, not valid JSON"),
        ('["a"]', 'expected a JSON object like {"crm": {"url": "https://..."}}'),
        ('{"crm": "http://x"}', "server 'crm': expected an object like"),
    ],
)
def test_what_is_not_a_declaration_says_what_is_expected(
    monkeypatch: pytest.MonkeyPatch, value: str, line: str
) -> None:
    [problem] = problems(monkeypatch, value)
    assert problem.startswith(f"ISOCHAT_MCP_SERVERS: {line}")


def test_good_declarations_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ISOCHAT_MCP_SERVERS",
        json.dumps(
            {
                "crm": {"url": "https://crm/mcp", "headers": {"Authorization": "Bearer k"}},
                "files": {"command": "python", "args": ["files.py"], "routes": ["general"]},
            }
        ),
    )
    servers = load_settings(_env_file=None).mcp_servers
    assert servers["crm"].headers == {"Authorization": "Bearer k"}
    assert servers["crm"].serves("math") and servers["crm"].serves("general")
    assert servers["files"].args == ("files.py",)
    assert not servers["files"].serves("math")
    assert route_problems(servers, ["math", "general"]) == []
    assert route_problems({"x": McpServer(url="http://x", routes=("maths",))}, ["math"]) == [
        "server 'x': no route 'maths' (routes: math)"
    ]


def test_a_tool_list_is_used_for_the_ttl_then_asked_again() -> None:
    now = [0.0]
    lists = McpToolLists(60, clock=lambda: now[0])
    tools = (mcp_types.Tool(name="add", input_schema={"type": "object"}),)
    assert lists.fresh("crm") is None and lists.should_ask("crm")
    lists.asking("crm")
    lists.listed("crm", tools)
    lists.done_asking("crm")
    now[0] = 59.0
    assert lists.fresh("crm") == tools
    now[0] = 61.0
    assert lists.fresh("crm") is None and lists.should_ask("crm")
    lists.asking("crm")  # one run asks; the others go on with the stale list meanwhile
    assert not lists.should_ask("crm") and lists.last("crm") == tools


def test_a_server_that_failed_to_list_is_not_asked_again_at_once() -> None:
    now = [0.0]
    lists = McpToolLists(60, clock=lambda: now[0])
    lists.asking("crm")
    lists.failed("crm")
    lists.done_asking("crm")
    assert not lists.should_ask("crm") and lists.last("crm") == ()
    now[0] = RETRY_AFTER_S
    assert lists.should_ask("crm")
