"""README's examples, run exactly as printed: the WebSocket client against a real server, and
the plug-in examples (the tool, the function tool and the container define what they say and
plug into a real app; the command's plug-in path imports)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers

from src.agents.approval import ApprovalPolicy
from src.agents.tool import Tool
from src.container import AppContainer
from src.plugins import plug_in, plugin_class

README = Path(__file__).parents[2] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


async def run_script(code: str, server: str, directory: Path) -> str:
    """A README shell session, run with bash against ``server`` (failing on any error): what
    it printed."""
    script = directory / "session.sh"
    script.write_text("set -euo pipefail\n" + code)
    process = await asyncio.create_subprocess_exec(
        "bash", str(script), env={**os.environ, "API": f"http://{server}"}, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_the_plugin_examples_run_as_printed(container: AppContainer) -> None:
    """The examples define a tool with its schema, a function tool, and a container that
    adds the `support` route beside isochat's, in a real app's request providers."""
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    for code in blocks(section("Your own agents and tools"), "python"):
        exec(compile(code, str(README), "exec"), namespace)

    weather = namespace["WeatherTool"]()
    assert isinstance(weather, Tool)
    assert weather.spec().parameters["properties"]["city"]["description"] == (
        "a city name, e.g. Paris"
    )
    assert await weather.run(weather.parse('{"city": "Paris"}')) == "18 °C and light rain in Paris"
    order_status = namespace["order_status_tool"]
    assert order_status.spec().description == "Where a customer's order is."
    assert await order_status.run(order_status.parse('{"order_id": "A-1"}')) == (
        "order A-1 has shipped"
    )
    plug_in(container, namespace["SupportPlugin"])
    assert list(container.request.routes()) == ["math", "history", "general", "support"]

    [command] = blocks(section("Your own agents and tools"), "sh")
    path = re.search(r"ISOCHAT_PLUGINS=(\S+)", command)
    assert path is not None
    assert plugin_class(path.group(1)).__name__ == "SupportPlugin"


async def test_the_websocket_example_runs_as_printed(
    container: AppContainer, live_server: str, tmp_path: Path
) -> None:
    """README's `chat.py`, run as it says with a token and a thread of the curl example's:
    every event of its run in order, then the answer."""
    [code] = [block for block in blocks(section("Using it"), "python") if "websockets" in block]
    script = tmp_path / "chat.py"
    script.write_text(code)
    headers = {"Authorization": f"Bearer {container.tokens().issue('alice')}"}
    async with httpx.AsyncClient(base_url=f"http://{live_server}") as client:
        thread = (await client.post("/api/threads", json={}, headers=headers)).json()["id"]
    environment = {
        **os.environ,
        "TOKEN": headers["Authorization"].removeprefix("Bearer "),
        "THREAD": thread,
        "ISOCHAT_WS_URL": f"ws://{live_server}/ws",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=environment, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[-1] == "answer: 2 + 2 = 4"
    assert [line.split()[0] for line in lines[:-1]] == [str(n) for n in range(1, len(lines))]
    assert lines[0].startswith("1 run_started  {'request_id': 'r1'}")


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq"
)
async def test_the_curl_examples_run_as_printed(live_server: str, tmp_path: Path) -> None:
    """README's "Using it" shell session against a real server: the answer, the replay, the
    same run as server-sent events to its final event, a background run cancelled (or found
    ended) and its events streamed."""
    [code] = blocks(section("Using it"), "sh")
    text = await run_script(code, live_server, tmp_path)
    assert '{"status":"completed","route":"math","answer":"(12 + 3) * 4 = 60"}' in text
    assert '"run_started"' in text and '"run_completed"' in text
    sse = text[text.index("id: 1\nevent: run_started") :]
    assert "event: run_completed\ndata: " in sse and '"content":"2 + 2 = 4"' in sse
    assert re.search(r'^"(cancelled|conflict)"$', text, re.M)
    assert re.search(r"^event: run_(cancelled|completed)$", text, re.M)


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq"
)
async def test_the_approvals_example_runs_as_printed(
    container: AppContainer, live_server: str, tmp_path: Path
) -> None:
    """README's "Approvals" session against a server whose calculator waits for approval: the
    message answers at the pause, the call is read from the run's events, approved, and the
    run's stream ends with the answer. Every printed comment is what the line above prints."""
    container.approvals.override(providers.Object(ApprovalPolicy(["calculator"])))
    [code] = blocks(section("Approvals"), "sh")
    text = await run_script(code, live_server, tmp_path)
    # What README says each command prints: its "# ..." lines (without a remark in brackets).
    said = [
        line.removeprefix("# ").split("  (")[0] for line in code.splitlines() if line[:2] == "# "
    ]
    assert text.splitlines() == said
    assert said[-1] == "6 * 7 = 42"


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq"
)
async def test_the_multitask_example_runs_as_printed(live_server: str, tmp_path: Path) -> None:
    """README's "Messages while a run is busy" session against a real server: three questions
    enqueued at once, the last one's stream ends completed, and the thread reads question,
    answer, in the order sent. Every printed comment is what the line above prints."""
    [code] = blocks(section("Messages while a run is busy"), "sh")
    text = await run_script(code, live_server, tmp_path)
    said = [line.removeprefix("# ") for line in code.splitlines() if line[:2] == "# "]
    assert text.splitlines() == said
    assert said[-1] == "3 + 3 = 6"
