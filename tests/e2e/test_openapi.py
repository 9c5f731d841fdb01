"""/openapi.json against a real `isochat serve`: a valid OpenAPI 3.1 document that describes
every HTTP route, and a schema-driven fuzz run (schemathesis) of every operation with a real
token: never a 5xx, and every answer matches what the document says of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Mount, Route, WebSocketRoute

from src.web.routes import ROUTES
from tests.e2e.test_server import Server, running_server

pytestmark = pytest.mark.e2e

# Bounded: each operation gets this many generated requests (a few seconds in all).
EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No rate limit in the way of a fuzz run (429 is described, but it would be most answers).
    with running_server(
        tmp_path_factory.mktemp("openapi"),
        ISOCHAT_RATE_LIMIT_PER_MINUTE="1000000",
        ISOCHAT_RATE_LIMIT_BURST="1000000",
        ISOCHAT_MAX_RUNNING_RUNS_PER_USER="1000",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    answer = httpx.post(f"{server.url}/api/auth/dev-login", json={"user_id": "fuzz"}).json()
    return str(answer["token"])


def test_the_document_is_valid_openapi_and_describes_every_route(server: Server) -> None:
    """OpenAPI 3.1, valid; every HTTP route and method of the app is in it (the page's assets
    and the WebSocket aside), and nothing else."""
    document = httpx.get(f"{server.url}/openapi.json").json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    described = {
        (path, method.upper()) for path, ops in document["paths"].items() for method in ops
    }
    routes = {
        (route.path, method)
        for route in ROUTES
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert described == routes
    assert all(isinstance(r, (Route, Mount, WebSocketRoute)) for r in ROUTES)
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert httpx.get(f"{server.url}/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert "https://" not in docs.text


def test_every_operation_answers_as_documented(server: Server, token: str) -> None:
    """Generated requests (valid and not), each operation in turn, with a real token: no 5xx,
    every status, content type and body as the document describes."""
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    # An operation the document describes badly is an Err: .ok() raises, failing the test.
    operations = [result.ok() for result in api.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 18

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        answers_as_documented()
