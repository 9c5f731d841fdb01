"""A normal install: the wheel that `pip wheel .` builds, installed (not editable) into a fresh
virtual environment, migrates and serves a chat from an empty directory: migrations, the chat
page and everything else ship inside the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_server import Server, environment, free_port, wait_until_live

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).parents[2]
INSTALL_TIMEOUT_S = 600  # a guard: pip installs from its cache or the index
NOT_SOURCES = (".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".*_cache", "docs")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def files_in(directory: Path) -> set[Path]:
    return {path.relative_to(directory) for path in directory.rglob("*")}


def assert_ships_every_package(wheel: Path, source: Path) -> None:
    """Every package under src/ is in the wheel without being listed anywhere, and alembic/
    is in it as src/migrations."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    packages = {p.relative_to(source).as_posix() for p in (source / "src").rglob("__init__.py")}
    assert {"src/__init__.py", "src/services/database/__init__.py"} <= packages
    assert packages <= shipped
    migrations = {
        "src/migrations/" + p.relative_to(source / "alembic").as_posix()
        for p in (source / "alembic").rglob("*")
        if p.is_file()
    }
    assert "src/migrations/env.py" in migrations
    assert migrations <= shipped
    assert "src/web/static/index.html" in shipped
    # The page's Markdown renderer and sanitizer, served by isochat itself (no CDN).
    assert {"src/web/static/vendor/marked.esm.js", "src/web/static/vendor/purify.es.mjs"} <= shipped
    assert not [name for name in shipped if "__pycache__" in name or name.endswith(".pyc")]


def test_the_wheel_migrates_and_serves_from_an_empty_directory(tmp_path: Path) -> None:
    """Build, install into a new venv, then `isochat migrate` and `isochat serve` in an empty
    directory (no alembic.ini, no source tree): the schema reaches head, the page is served
    and a message gets its answer."""
    wheels, venv, empty = tmp_path / "wheels", tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    # Built from a copy, to see what building leaves in the sources: nothing.
    source = tmp_path / "source"
    shutil.copytree(PROJECT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    before = files_in(source)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source, cwd=tmp_path)
    assert not (source / "build").exists()
    assert list(source.rglob("*.egg-info")) == []
    assert files_in(source) == before
    [wheel] = wheels.glob("isochat-*.whl")
    assert_ships_every_package(wheel, source)
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    isochat = venv / "bin" / "isochat"

    port = free_port()
    env = environment(empty, port)
    run(isochat, "migrate", cwd=empty, env=env)
    assert (empty / "var" / "isochat.db").is_file()

    log = empty / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([isochat, "serve"], cwd=empty, env=env, stdout=out, stderr=out)
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        wait_until_live(server)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/health/ready").json()["checks"]["migrations"] == "ok"
            assert "<title>isochat</title>" in http.get("/").text
            assert http.get("/static/app.js").status_code == 200
            token = http.post("/api/auth/dev-login", json={"user_id": "ann"}).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            thread = http.post("/api/threads", json={}, headers=headers).json()["id"]
            body = http.post(
                f"/api/threads/{thread}/messages",
                json={"content": "what is (12 + 3) * 4?"},
                headers=headers,
            ).json()
        assert body["message"]["content"] == "(12 + 3) * 4 = 60"
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert not (empty / "alembic.ini").exists() and not (empty / "alembic").exists()
