"""README's "Your own agents and tools" examples, run exactly as printed: the tool, the function
tool and the container define what they say, plug into a real app, and the command's plug-in
path imports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
