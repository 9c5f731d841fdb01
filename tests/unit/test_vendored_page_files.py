"""The chat page's vendored Markdown renderer and sanitizer (``src/web/static/vendor/``): the
files are there, they are the versions pinned in its ``package.json`` and lock, their licences
ship beside them, they export what the page imports, and nothing in them needs what the page's
policy forbids. ``make vendor`` refreshes them; this says when someone forgot to."""

from __future__ import annotations

import json
import re

import pytest
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient

from src.web.page import STATIC

VENDOR = STATIC / "vendor"
PINNED: dict[str, str] = json.loads((VENDOR / "package.json").read_text())["dependencies"]
# package -> (the file the page imports, its licence, how the file states its own version)
FILES = {
    "marked": (
        "marked.esm.js",
        "marked.LICENSE.md",
        re.compile(r"\A/\*\*\n \* marked v(\d+\.\d+\.\d+) - a markdown parser"),
    ),
    "dompurify": (
        "purify.es.mjs",
        "purify.LICENSE",
        re.compile(r'DOMPurify\.version = "(\d+\.\d+\.\d+)"'),
    ),
}
# What the page's import lines need: a named `marked` export, a default export.
EXPORTS = {
    "marked.esm.js": re.compile(r"export\s*\{[^}]*\bas marked\b[^}]*\};?\s*\Z"),
    "purify.es.mjs": re.compile(r"export \{ purify_default as default \};?\s*\Z"),
}


def text(name: str) -> str:
    return (VENDOR / name).read_text(encoding="utf-8")


def test_every_package_is_pinned_to_an_exact_version_in_one_place() -> None:
    """package.json says exactly which version (no range), and the lock agrees."""
    assert set(PINNED) == set(FILES)
    lock = json.loads(text("package-lock.json"))["packages"]
    for package, version in PINNED.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), (package, version)
        assert lock[""]["dependencies"][package] == version
        assert lock[f"node_modules/{package}"]["version"] == version


@pytest.mark.parametrize("package", sorted(FILES))
def test_the_vendored_file_is_the_pinned_version(package: str) -> None:
    name, _, stated = FILES[package]
    versions = stated.findall(text(name))
    assert versions == [PINNED[package]], f"{name} is {versions}: run `make vendor`"


@pytest.mark.parametrize("package", sorted(FILES))
def test_its_licence_ships_beside_it(package: str) -> None:
    _, licence, _ = FILES[package]
    words = {"marked": "Permission is hereby granted", "dompurify": "Apache License"}[package]
    assert words in text(licence)


def test_the_readme_names_each_pinned_version() -> None:
    readme = text("README.md")
    for package, version in PINNED.items():
        name, licence, _ = FILES[package]
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}` "))
        assert f"`{package}`" in row and f"| {version} |" in row and f"`{licence}`" in row


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_it_exports_what_the_page_imports(name: str) -> None:
    assert EXPORTS[name].search(text(name)), f"{name} no longer exports what the page imports"


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_it_needs_nothing_the_page_policy_blocks(name: str) -> None:
    """``default-src 'self'`` without 'unsafe-eval': eval and new Function would throw. Nor may
    it point at a source map that is not shipped (a 404 in the browser's tools)."""
    source = text(name)
    assert not re.search(r"\beval\s*\(|\bnew\s+Function\b|\bFunction\s*\(", source)
    assert "sourceMappingURL" not in source


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_it_is_served_as_javascript(name: str) -> None:
    """A browser refuses a module script served with any other type (``.mjs`` included)."""
    response = TestClient(StaticFiles(directory=STATIC)).get(f"/vendor/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }
