"""The OpenAPI 3.1 document, generated from the code: the paths and methods from the routes
themselves, each operation's description from its handler (``@documented``), request bodies
from the pydantic models that parse them (``src/web/bodies.py``), answers from the TypedDicts
the handlers build them as (``src/web/answers.py``, ``src/runs/domain.py``), which mypy
checks against the code. Nothing here is a second copy of a shape that could drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

from pydantic import TypeAdapter
from starlette.routing import BaseRoute, Route

from src.web.errors import STATUS_OF_CODE, ErrorAnswer

E = TypeVar("E", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"

# What every operation that takes a bearer token may also answer, and every one with a body.
AUTHENTICATED_ERRORS = ("unauthorized", "rate_limited", "unavailable")
BODY_ERRORS = ("invalid_json", "payload_too_large", "validation_error")


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query", "header" or "path"
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Operation:
    summary: str
    answers: Mapping[int, Any]  # status -> the type of its JSON body (None: no body)
    body: type | None = None
    errors: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    authenticated: bool = True
    # Other media types an answer may come as, by status: {200: {"text/event-stream": ...}}.
    media: Mapping[int, Mapping[str, dict[str, Any]]] = field(default_factory=dict)


def documented(operation: Operation) -> Callable[[E], E]:
    """Attach ``operation`` to an endpoint: the document describes it from there."""

    def attach(endpoint: E) -> E:
        endpoint.__openapi__ = operation  # type: ignore[attr-defined]
        return endpoint

    return attach


def operation_of(route: BaseRoute) -> Operation | None:
    endpoint = getattr(route, "endpoint", None)
    found: Operation | None = getattr(endpoint, "__openapi__", None)
    return found


def document(
    routes: Sequence[BaseRoute], *, title: str, version: str, about: str
) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = operation_of(route)
        if operation is None or not isinstance(route, Route):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = _operation(
                route, method, operation, schemas
            )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": about},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _operation(route: Route, method: str, op: Operation, schemas: _Schemas) -> dict[str, Any]:
    name = getattr(route.endpoint, "__name__", route.path)
    # A path parameter is a UUID unless the operation describes it (a client's own id).
    described = {p.name for p in op.params if p.where == "path"}
    out: dict[str, Any] = {
        "operationId": name,
        "summary": op.summary,
        "parameters": [
            *(
                {
                    "name": param,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                }
                for param in route.param_convertors
                if param not in described
            ),
            *(
                {"name": p.name, "in": p.where, "description": p.description, "schema": p.schema}
                | ({"required": True} if p.where == "path" else {})
                for p in op.params
            ),
        ],
        "responses": {},
    }
    if op.authenticated:
        out["security"] = [{"bearer": []}]
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.ref(op.body)}},
        }
    for status, answer in op.answers.items():
        response: dict[str, Any] = {"description": _reason(status)}
        content: dict[str, Any] = {}
        if answer is not None:
            content["application/json"] = {"schema": schemas.ref(answer)}
        content.update(op.media.get(status, {}))
        if content:
            response["content"] = content
        out["responses"][str(status)] = response
    codes = [*op.errors]
    if op.authenticated:
        codes += AUTHENTICATED_ERRORS
    if op.body is not None:
        codes += BODY_ERRORS
    if route.param_convertors:
        codes.append("not_found")
    for status, named in _by_status(codes):
        out["responses"].setdefault(
            str(status),
            {
                "description": f"{_reason(status)}: {', '.join(named)}",
                "content": {"application/json": {"schema": schemas.ref(ErrorAnswer)}},
            },
        )
    return out


def _by_status(codes: Iterable[str]) -> list[tuple[int, list[str]]]:
    grouped: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        grouped.setdefault(STATUS_OF_CODE[code], []).append(code)
    return sorted(grouped.items())


def _reason(status: int) -> str:
    return HTTPStatus(status).phrase


class _Schemas:
    """JSON schemas of the types the operations name, each once, under its own name."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, kind: Any) -> dict[str, Any]:
        name = getattr(kind, "__name__", None)
        schema = TypeAdapter(kind).json_schema(ref_template=REF, mode="serialization")
        for defined, definition in schema.pop("$defs", {}).items():
            self.components.setdefault(defined, definition)
        if name is None or not isinstance(kind, type):
            return schema  # list[...] and the like: inline
        self.components.setdefault(name, schema)
        return {"$ref": REF.format(model=name)}
