"""`isochat drill` against real `isochat serve` processes: a sound deployment is reported
contained (exit 0), on one host and on two hosts sharing PostgreSQL and Redis; a deliberately
broken build (one math agent shared by every run) is caught (exit 1); a deployment that takes no
drill faults is not drilled at all (exit 3); and nothing of the drill's users is left behind."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.processes import Processes, processes, wait_until_ready
from tests.e2e.test_server import ISOCHAT, Server, environment, free_port
from tests.helpers import asyncpg_url, fresh_postgres_database, reachable_redis

pytestmark = pytest.mark.e2e

README = Path(__file__).parents[2] / "README.md"
DRILL_SECRET = "drill-secret-" + "x" * 32
RUN_TIMEOUT_S = "2"  # a hung run ends this soon: the drill waits for it
# Small and short, but every fault kind comes round: 3 faulty users take the 8 kinds in turn.
SMALL_DRILL = ["--users", "8", "--faulty", "0.375", "--duration", "3", "--interval", "0.2"]
DRILLING_ENV = {"ISOCHAT_DRILL_SECRET": DRILL_SECRET, "ISOCHAT_RUN_TIMEOUT_S": RUN_TIMEOUT_S}


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Processes]:
    async with processes(tmp_path) as servers:
        yield servers


async def drill(
    tmp_path: Path, *urls: str, env: dict[str, str] | None = None, settle_s: int = 15
) -> tuple[int, Any]:
    """``isochat drill --json`` against ``urls``, as an operator runs it (the deployment's
    secrets in its environment): its exit code and its report (or its stderr)."""
    args = [ISOCHAT, "drill", *(a for u in urls for a in ("--url", u)), *SMALL_DRILL]
    args += ["--run-timeout", RUN_TIMEOUT_S, "--settle", str(settle_s), "--json"]
    done = await asyncio.to_thread(
        subprocess.run,
        args,
        env=environment(tmp_path, free_port()) | (DRILLING_ENV if env is None else env),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    if done.returncode in (0, 1):
        return done.returncode, json.loads(done.stdout)
    return done.returncode, done.stderr


def checks(report: dict[str, Any]) -> dict[str, bool]:
    return {check["name"]: check["ok"] for check in report["checks"]}


def assert_contained(report: dict[str, Any], *, hosts: int) -> None:
    assert all(checks(report).values()), report["checks"]
    assert report["ok"] is True
    healthy = report["healthy"]
    assert healthy["completed_pct"] == 100.0
    assert healthy["without_faulty"]["runs"] > 0 and healthy["with_faulty"]["runs"] > 0
    assert healthy["without_faulty"]["p99_ms"] > 0 and healthy["p99_ratio"] > 0
    assert report["cross_user_frames"] == 0
    assert report["seq_gaps"] == 0
    assert report["faults_not_exercised"] == []
    for kind, figures in report["faulty"].items():
        assert figures["runs"] >= 1, kind
        assert figures["as_expected"] == figures["runs"], (kind, figures)
    assert report["runs_left_running"] == 0
    assert report["threads_left"] == 0
    assert len(report["hosts"]) == hosts
    for host in report["hosts"]:
        assert host["gauges_back"] is True
        assert host["after"]["isochat_request_scopes_open"] == 0
        assert host["after"]["isochat_agent_instances_live"] == 0
        assert host["after"]["isochat_db_sessions_open"] == 0
        assert host["after"]["isochat_ws_connections"] == 0
        assert host["before"]["memory_mb"] > 0 and host["after"]["memory_mb"] > 0


def rows_left(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as db:
        return {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("threads", "messages", "runs", "run_events")
        }


async def serving(started: Processes, name: str, **env: str) -> Server:
    server = started.start(name, **env)
    await wait_until_ready(server)
    return server


async def test_a_sound_deployment_is_reported_contained(tmp_path: Path, started: Processes) -> None:
    server = await serving(started, "host", **DRILLING_ENV)
    code, report = await drill(tmp_path, server.url)
    assert code == 0, report
    assert_contained(report, hosts=1)
    # Every faulty kind as its fault says, down to the code:
    expected = {k: f["expected"] for k, f in report["faulty"].items()}
    assert expected == {
        "agent": "failed agent_error",
        "tool": "failed tool_error",
        "llm": "failed llm_error",
        "db": "failed database_error",
        "hang": "failed timeout",
        "approval": "cancelled or failed approval_expired",
        "disconnect": "cancelled",
        "cancel": "cancelled",
    }
    # Paused, left undecided, then cancelled by the drill (the approval timeout is a day).
    approval = report["faulty"]["approval"]
    assert approval["ended"] == {"cancelled": approval["runs"]}, approval
    # The drill's threads went, and everything in them.
    assert rows_left(tmp_path / "var" / "isochat.db") == {
        "threads": 0, "messages": 0, "runs": 0, "run_events": 0
    }  # fmt: skip


async def test_a_broken_build_that_shares_an_agent_is_caught(
    tmp_path: Path, started: Processes
) -> None:
    """One math agent for every run (re-pointed at each run as it is handed out): other users'
    numbers reach users who never asked, and the drill exits 1."""
    server = await serving(
        started, "broken", ISOCHAT_PLUGINS="tests.broken_build:SharedMathAgent", **DRILLING_ENV
    )
    code, report = await drill(tmp_path, server.url, settle_s=2)  # its gauges never come back
    assert code == 1, report
    assert report["ok"] is False
    assert report["cross_user_frames"] > 0
    assert checks(report)["cross-user frames"] is False
    # The shared agent outlives every run: the agents gauge never comes back.
    assert report["hosts"][0]["after"]["isochat_agent_instances_live"] > 0
    assert checks(report)["gauges back on every host"] is False


async def test_a_deployment_without_drills_is_not_drilled(
    tmp_path: Path, started: Processes
) -> None:
    """Without ISOCHAT_DRILL_SECRET the server takes the drill's markers as text: the drill
    finds out with its first message and stops (exit 3), instead of reporting on nothing."""
    server = await serving(started, "plain", ISOCHAT_RUN_TIMEOUT_S=RUN_TIMEOUT_S)
    code, stderr = await drill(tmp_path, server.url)
    assert code == 3
    assert "does not take drill faults" in stderr
    assert "ISOCHAT_DRILL_SECRET" in stderr
    # And a drill with no secret of its own refuses to start.
    code, stderr = await drill(tmp_path, server.url, env={})
    assert code == 2
    assert stderr == "isochat: isochat drill needs ISOCHAT_DRILL_SECRET, set to the deployment's\n"


@pytest.mark.postgres
@pytest.mark.redis
async def test_two_hosts_on_postgres_and_redis_are_reported_contained(
    tmp_path: Path, started: Processes
) -> None:
    """Users on both hosts; each drops its socket and cancels on the other host, so faults
    cross hosts too; both hosts' gauges come back."""
    async with fresh_postgres_database("isochat_drill") as database:
        shared = DRILLING_ENV | {
            "ISOCHAT_DATABASE_URL": database,
            "ISOCHAT_BROKER_URL": await reachable_redis(),
        }
        first = await serving(started, "first", **shared)
        second = await serving(started, "second", **shared)
        code, report = await drill(tmp_path, first.url, second.url)
        assert code == 0, report
        assert_contained(report, hosts=2)
        await started.stop_all()
        connection = await asyncpg.connect(asyncpg_url(database))
        try:
            left = await connection.fetchval("SELECT count(*) FROM threads")
        finally:
            await connection.close()
        assert left == 0


async def test_the_readme_drill_runs_as_printed(tmp_path: Path, started: Processes) -> None:
    """README's "Drills" command against a real server, from the project's root: the table,
    every check ok, and "contained"."""
    text = README.read_text()
    section = text[text.index("### Drills\n") : text.index("\n## ", text.index("### Drills\n"))]
    [command] = re.findall(r"```sh\n(.*?)```", section, re.S)
    server = await serving(started, "readme", **DRILLING_ENV)
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        "set -euo pipefail\n" + command,
        env=environment(tmp_path, free_port()) | DRILLING_ENV | {"API": server.url},
        cwd=README.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()
    report = out.decode()
    for check in (
        "healthy runs completed", "cross-user frames", "seq gaps (live and stored)",
        "faulty runs ended as their fault says", "fault kinds exercised",
        "gauges back on every host",
        "runs left running", "drill threads left",
    ):  # fmt: skip
        assert re.search(rf"│ {re.escape(check)} +│ +[^│]+ │ ok │", report), (check, report)
    assert report.rstrip().endswith("contained")
