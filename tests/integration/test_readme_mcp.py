"""README's "Your MCP servers", run as printed: the example server started as it says, isochat
configured with the setting it prints (on the port the test's server got), the shell session's
answers, and the team's container."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from src.container import AppContainer
from src.plugins import plug_in
from src.runs.domain import RunContext
from src.services.mcp import McpServer
from src.settings import Settings
from tests.integration.test_readme import blocks, run_script, section
from tests.mcp_servers.fixtures import free_port

ROOT = Path(__file__).parents[2]
START_BOUND_S = 30.0


def printed(kind: str) -> list[str]:
    return blocks(section("Your MCP servers"), kind)


@pytest.fixture
def example_server(tmp_path: Path) -> Iterator[int]:
    """``examples/mcp_server.py`` as README starts it, on a port of the test's own."""
    start = printed("sh")[0].splitlines()[0]
    assert start.startswith(".venv/bin/python examples/mcp_server.py &")
    port = free_port()
    with (tmp_path / "example.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "examples/mcp_server.py", "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + START_BOUND_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, (tmp_path / "example.log").read_text()
            assert time.monotonic() < deadline, "the example server did not start"
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


@pytest.fixture
def settings(tmp_path: Path, example_server: int) -> Settings:
    """The setting README prints, pointed at the test's port."""
    found = re.search(r"ISOCHAT_MCP_SERVERS='([^']+)'", printed("sh")[0])
    assert found is not None
    declared = found.group(1).replace(":8765/", f":{example_server}/")
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/isochat.db",
        mcp_servers=declared,  # as the environment gives it: JSON
        _env_file=None,
    )


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq"
)
async def test_the_mcp_session_runs_as_printed(live_server: str, tmp_path: Path) -> None:
    code = printed("sh")[1]
    text = await run_script(code, live_server, tmp_path)
    said = [line.removeprefix("# ") for line in code.splitlines() if line[:2] == "# "]
    assert text.splitlines() == said
    assert said[0] == "demo__add answered: 5"


async def test_the_teams_container_example_plugs_in(container: AppContainer) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    [code] = printed("python")
    exec(compile(code, "README.md", "exec"), namespace)
    plug_in(container, namespace["CrmPlugin"])
    servers = container.request.mcp_servers()
    assert set(servers) == {"demo", "crm"}
    assert servers["crm"] == McpServer(url="http://127.0.0.1:9000/mcp", routes=("general",))
    headers = container.request.mcp_user_headers()
    run = RunContext(run_id="r", thread_id="t", user_id="alice")
    assert headers("crm", run) == {"Authorization": "Bearer token-of-alice"}
    assert headers("demo", run) == {}
    assert json.loads(servers["demo"].model_dump_json())["url"].endswith("/mcp")
