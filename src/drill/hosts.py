"""What the drill reads off each host: its gauges and its memory, from ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

# What must come back to where it was before the drill, on every host, once its traffic stops.
GAUGES = (
    "isochat_request_scopes_open",
    "isochat_db_sessions_open",
    "isochat_agent_instances_live",
    "isochat_ws_connections",
)
MEMORY = "process_resident_memory_bytes"  # single-process servers only


@dataclass(frozen=True, slots=True)
class HostReading:
    gauges: dict[str, float]
    memory_bytes: float | None

    def settled_since(self, before: HostReading) -> bool:
        """Every gauge at most where it was ``before`` (0 on a deployment nobody else uses)."""
        return all(self.gauges[name] <= before.gauges[name] for name in GAUGES)


async def read_host(http: httpx.AsyncClient, metrics_url: str) -> HostReading:
    response = await http.get(metrics_url)
    response.raise_for_status()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in GAUGES or sample.name == MEMORY:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    missing = [name for name in GAUGES if name not in values]
    if missing:
        raise ValueError(f"{metrics_url} has no {', '.join(missing)}: is it isochat's /metrics?")
    return HostReading(
        gauges={name: values[name] for name in GAUGES}, memory_bytes=values.get(MEMORY)
    )
