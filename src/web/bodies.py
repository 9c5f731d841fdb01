"""Request bodies: read within a byte limit, parsed as JSON, validated by pydantic models."""

from __future__ import annotations

import json
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from starlette.requests import Request

from src.web.errors import ApiError

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NewThread(Body):
    title: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None


class NewMessage(Body):
    content: str


class DevLogin(Body):
    user_id: str


async def read_json(
    request: Request, model: type[M], *, max_bytes: int, empty_ok: bool = False
) -> M:
    """The body as ``model``: 413 past ``max_bytes`` (checked before parsing), 400 for JSON
    that does not parse, 422 naming the first field that does not validate."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError("payload_too_large", f"the body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError("payload_too_large", f"the body is larger than {max_bytes} bytes")
    if not body.strip() and empty_ok:
        return model()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError("validation_error", "body: must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError("validation_error", describe(exc)) from None


def check_content(content: str, *, max_chars: int) -> None:
    """A message is 1..``max_chars`` characters and not only white space."""
    if not content.strip():
        raise ApiError("validation_error", "content: must not be blank")
    if len(content) > max_chars:
        raise ApiError("validation_error", f"content: must be at most {max_chars} characters")


def describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{field}: {first['msg']}"
