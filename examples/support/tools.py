"""The support team's tools: one a class (it has a dependency, the weather service's URL),
one a plain async function."""

from __future__ import annotations

from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field

from src.agents.tool import FunctionTool, Tool, ToolError

WEATHER_TIMEOUT_S = 5.0


class CityInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    city: str = Field(description="a city name, e.g. Paris", min_length=1, max_length=100)


class WeatherTool(Tool[CityInput]):
    """The current weather in a city, from the team's weather service."""

    name = "get_weather"
    description = "The current weather in a city: temperature and conditions."

    def __init__(self, *, base_url: str) -> None:
        self._base_url = base_url

    async def run(self, params: CityInput) -> str:
        try:
            async with httpx.AsyncClient(
                base_url=self._base_url, timeout=WEATHER_TIMEOUT_S
            ) as http:
                response = await http.get("/weather", params={"city": params.city})
        except httpx.HTTPError as exc:
            raise ToolError(f"the weather service is unavailable ({type(exc).__name__})") from None
        if response.status_code == 404:
            raise ToolError(f"no weather known for {params.city!r}")
        if response.is_error:
            raise ToolError(f"the weather service answered {response.status_code}")
        report = response.json()
        return f"{report['city']}: {report['temperature_c']} °C, {report['conditions']}"


ORDERS = {
    "A-1001": "shipped on 2 December, arriving 4 December",
    "A-1002": "being packed",
}


async def order_status(
    order_id: Annotated[str, Field(description="the order number, e.g. A-1001")],
) -> str:
    """Where a customer's order is."""
    status = ORDERS.get(order_id.strip().upper())
    if status is None:
        raise ToolError(f"there is no order {order_id!r}")
    return f"Order {order_id.strip().upper()}: {status}"


def order_status_tool() -> FunctionTool:
    return FunctionTool(order_status)
