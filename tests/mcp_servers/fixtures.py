"""The test MCP servers as processes, and the pytest fixtures that run them.

- ``mcp2``: ``server2`` (the 2.x SDK, stateless), ready for each test;
- ``mcp1``: ``server1`` (the 1.x SDK, with sessions), ready for each test, run by a virtualenv
  of its own (``.venv-mcp1/`` in the checkout, made on first use: the two SDKs share an import
  name); the test is skipped, saying why, where it cannot be made;
- ``garbage_mcp``: a factory, ``garbage_mcp(mode)``, of servers that are no MCP servers.

Each process serves on a free loopback port, logs to a file in the test's directory (its tail
is shown when it fails to start) and is stopped when its module's tests end, pass or fail.

One process per module, its records cleared before each test, started again for a test when
an earlier one stopped or killed it: a start costs about a second (mostly the SDK's import),
which every test would otherwise pay.

A conftest offers them to its tests by importing them::

    from tests.mcp_servers.fixtures import garbage_mcp, mcp1, mcp1_python, mcp2  # noqa: F401

Read what a server saw with ``McpServerProcess.seen()``; ``established_sessions`` and
``terminated_sessions`` count the MCP sessions in it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import pytest
from filelock import FileLock, Timeout

Record = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]

# The 1.x SDK's virtualenv. One exact version: the tests pin the behaviour they were written
# against; a change of these pins rebuilds it (its stamp names them).
MCP1_REQUIREMENTS = ("mcp==1.30.0", "uvicorn==0.54.0")
MCP1_VENV = ROOT / ".venv-mcp1"
MCP1_LOCK = ROOT / ".venv-mcp1.lock"
MCP1_STAMP = MCP1_VENV / ".installed"

# Bounds that only guard against a hang: each wait ends as soon as what it waits for happens.
START_BOUND_S = 30.0
STOP_BOUND_S = 10.0
INSTALL_BOUND_S = 600.0
POLL_S = 0.02


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class McpServerProcess:
    """One server process, on a loopback port it keeps across restarts.

    ``argv`` is the command without its ``--port``; it is run from the checkout, with its
    output appended to ``log``."""

    def __init__(self, argv: Sequence[str], *, log: Path) -> None:
        self.argv = list(argv)
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The MCP endpoint."""
        return f"{self.base}/mcp"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start it (again, on the same port) and return once it answers."""
        assert not self.running, f"{self.base} is already running"
        with self.log.open("ab") as out:
            out.write(f"--- {' '.join(self.argv)} --port {self.port}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [*self.argv, "--port", str(self.port)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + START_BOUND_S
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.base} exited with {self.process.returncode} at start:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"{self.base} did not answer within {START_BOUND_S} s:\n{self.tail()}"
                )
            time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM, and wait for it to exit (SIGKILL past the bound)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would end it, and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait()

    def seen(self) -> list[Record]:
        """Everything it recorded since it started (or was reset), oldest first."""
        response = httpx.get(f"{self.base}/_seen", timeout=5, trust_env=False)
        response.raise_for_status()
        records: list[Record] = response.json()
        return records

    def reset(self) -> None:
        httpx.post(f"{self.base}/_reset", timeout=5, trust_env=False).raise_for_status()

    # The same, for a test whose event loop must not stop meanwhile (it serves isochat itself).

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def aseen(self) -> list[Record]:
        return await asyncio.to_thread(self.seen)

    async def areset(self) -> None:
        await asyncio.to_thread(self.reset)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _answers(self) -> bool:
        try:
            httpx.get(f"{self.base}/_seen", timeout=1, trust_env=False)
        except httpx.TransportError:
            return False
        return True

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()


def mcp2_server(log: Path) -> McpServerProcess:
    """``server2`` (2.x SDK), not started yet."""
    return McpServerProcess([sys.executable, "-m", "tests.mcp_servers.server2"], log=log)


def mcp1_server(python: Path, log: Path) -> McpServerProcess:
    """``server1`` (1.x SDK) run by ``python`` (``ensure_mcp1_venv()``), not started yet."""
    return McpServerProcess([str(python), "-m", "tests.mcp_servers.server1"], log=log)


def garbage_server(mode: str, log: Path) -> McpServerProcess:
    """``garbage`` in ``mode`` (``json-garbage``, ``html``, ``500``), not started yet."""
    return McpServerProcess(
        [sys.executable, "-m", "tests.mcp_servers.garbage", "--mode", mode], log=log
    )


class Mcp1Unavailable(Exception):
    """The 1.x SDK's virtualenv could not be made (no network, the install failed)."""


def ensure_mcp1_venv() -> Path:
    """The Python of the 1.x SDK's virtualenv, made if it is not there yet.

    Two test runs in one checkout may get here at once: a file lock lets one make it while the
    other waits, and the stamp (written last) tells a complete one from one cut short."""
    python = MCP1_VENV / "bin" / "python"
    stamp = "\n".join(MCP1_REQUIREMENTS)
    if _stamped(stamp):
        return python
    try:
        with FileLock(MCP1_LOCK, timeout=INSTALL_BOUND_S):
            if _stamped(stamp):
                return python
            MCP1_STAMP.unlink(missing_ok=True)
            # On a fresh clone the first test of the 1.x server waits for this: the virtualenv
            # gets no pip of its own (installing it would take longer than the SDK does), the
            # project's pip installs into it, all in one go.
            _run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(MCP1_VENV)])
            _run(
                [
                    sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--quiet", "--disable-pip-version-check", *MCP1_REQUIREMENTS,
                ]
            )  # fmt: skip
            MCP1_STAMP.write_text(stamp)
    except Timeout as exc:
        raise Mcp1Unavailable(f"another test run held {MCP1_LOCK} for too long") from exc
    return python


def _stamped(stamp: str) -> bool:
    try:
        return MCP1_STAMP.read_text() == stamp
    except FileNotFoundError:
        return False


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_BOUND_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Mcp1Unavailable(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).splitlines()
        output = "\n".join([line for line in lines if line.startswith("ERROR")] or lines[-10:])
        raise Mcp1Unavailable(f"{' '.join(argv)} exited with {done.returncode}:\n{output}")


# What the records say about MCP sessions (the 1.x server's; the 2.x one is stateless).


def http_records(records: list[Record], *, rpc: str | None = None) -> list[Record]:
    """The HTTP requests, or only those carrying the JSON-RPC method ``rpc``."""
    return [r for r in records if r["kind"] == "http" and (rpc is None or r["rpc"] == rpc)]


def tool_records(
    records: list[Record], *, tool: str | None = None, event: str | None = None
) -> list[Record]:
    """The tools' own records, or those of ``tool`` and ``event`` (``called``, ``started``,
    ``cancelled``)."""
    return [
        r
        for r in records
        if r["kind"] == "tool"
        and (tool is None or r["tool"] == tool)
        and (event is None or r["event"] == event)
    ]


def established_sessions(records: list[Record]) -> list[str]:
    """The sessions the server opened, in order: the ids of its 200 answers to ``initialize``.
    Not every answer with an id: the 1.x server gives one to a refused ``server/discover`` too,
    which opens no session the client goes on with."""
    ids = [
        r["response_session"]
        for r in http_records(records, rpc="initialize")
        if r["status"] == 200 and r["response_session"]
    ]
    return list(dict.fromkeys(ids))


def terminated_sessions(records: list[Record]) -> list[str]:
    """The sessions the client ended, in order: the ids of DELETEs answered 200."""
    ids = [
        r["session"]
        for r in records
        if r["kind"] == "http" and r["method"] == "DELETE" and r["status"] == 200
    ]
    return list(dict.fromkeys(ids))


# The fixtures: a conftest imports them by name to offer them to its tests.


@pytest.fixture(scope="module")
def mcp2_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerProcess]:
    """A 2.x SDK server process shared by a module's tests (``mcp2`` readies it for each)."""
    server = mcp2_server(tmp_path_factory.mktemp("mcp2") / "mcp2.log")
    yield server
    server.stop()


@pytest.fixture
def mcp2(mcp2_process: McpServerProcess) -> McpServerProcess:
    """A 2.x SDK server, running, with no records yet: the module's process, started again if
    a test stopped or killed it."""
    return ready(mcp2_process)


def ready(server: McpServerProcess) -> McpServerProcess:
    if server.running:
        server.reset()
    else:
        server.start()
    return server


@pytest.fixture(scope="session")
def mcp1_python() -> Path:
    """The 1.x SDK's Python; skips, saying why, where its virtualenv cannot be made (tried once a
    test run: pytest keeps the skip for the rest of the session)."""
    try:
        return ensure_mcp1_venv()
    except Mcp1Unavailable as exc:
        pytest.skip(f"the MCP 1.x SDK's virtualenv could not be made: {exc}")


@pytest.fixture(scope="module")
def mcp1_process(
    mcp1_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[McpServerProcess]:
    """A 1.x SDK server process shared by a module's tests (``mcp1`` readies it for each)."""
    server = mcp1_server(mcp1_python, tmp_path_factory.mktemp("mcp1") / "mcp1.log")
    yield server
    server.stop()


@pytest.fixture
def mcp1(mcp1_process: McpServerProcess) -> McpServerProcess:
    """A 1.x SDK server, running, with no records yet (as ``mcp2``)."""
    return ready(mcp1_process)


@pytest.fixture
def garbage_mcp(tmp_path: Path) -> Iterator[Callable[[str], McpServerProcess]]:
    """``garbage_mcp(mode)``: a running server that is no MCP server, in ``mode``
    (``json-garbage``, ``html``, ``500``); as many as the test asks for."""
    started: list[McpServerProcess] = []

    def start(mode: str) -> McpServerProcess:
        server = garbage_server(mode, tmp_path / f"garbage-{mode}-{len(started)}.log")
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
