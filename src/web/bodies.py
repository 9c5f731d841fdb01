"""Request bodies: read within a byte limit, then parsed and validated in one step by pydantic.

Parsing goes through pydantic-core's JSON parser (``model_validate_json``), never ``json.loads``:
it refuses nesting past its limit with an ordinary ``ValidationError`` where the ``json`` module
recurses until ``RecursionError``, it refuses unpaired surrogates (text that cannot be stored or
encoded again) and integers past 4,300 digits, and it builds nothing that validation then throws
away. The byte limit comes first, so no parser ever sees more than ``max_bytes``.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from starlette.requests import Request

from src.runs.domain import Decision, Multitask
from src.web.errors import ApiError

M = TypeVar("M", bound=BaseModel)

# A request id a client may give (X-Request-ID, a frame's request_id): echoed in answers and
# written in logs, so nothing else.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# pydantic-core's parser refuses JSON nested deeper than this (an array may go one level more).
MAX_JSON_DEPTH = 200
# An error message names at most this much of a field: a client's unknown key may be ~64 KB.
_MAX_FIELD_CHARS = 100


def _without_nul(text: str) -> str:
    # PostgreSQL cannot store U+0000 in text: refused here, on SQLite too, rather than failing
    # the request (500) or the run at the first write.
    if "\x00" in text:
        raise PydanticCustomError("nul_character", "must not contain NUL characters (\\u0000)")
    return text


# A string that is stored: anything but NUL.
StoredText = Annotated[str, AfterValidator(_without_nul)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Title = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=200), AfterValidator(_without_nul)
]


class NewThread(Body):
    title: Title | None = None


class RenameThread(Body):
    title: Annotated[Title, StringConstraints(min_length=1)]


class NewMessage(Body):
    content: StoredText
    # For a run streamed as server-sent events: whether it goes on when the client goes away.
    on_disconnect: Literal["cancel", "continue"] = "cancel"
    # What it does while the thread has a run going (None: the server's default).
    multitask: Multitask | None = None


class DevLogin(Body):
    user_id: str


# The longest refusal a person may give the model, and the most decisions in one request.
MAX_REFUSAL_CHARS = 2000
MAX_DECISIONS = 100


class DecisionBody(Body):
    """One decision about a call that waits for approval."""

    call_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    decision: Literal["approve", "reject", "edit"]
    # edit: the arguments to run instead (checked against the tool's input model)
    input: dict[str, Any] | None = None
    # reject: what the model is told
    message: Annotated[StoredText, StringConstraints(max_length=MAX_REFUSAL_CHARS)] | None = None

    # A client that sends arguments with an approval believes they will run: refused, not
    # ignored (likewise a reason with anything but a rejection).
    @field_validator("input")
    @classmethod
    def _only_an_edit(cls, value: dict[str, Any] | None, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("decision") != "edit":
            raise PydanticCustomError("edit_only", "only an edit takes input")
        return value

    @field_validator("message")
    @classmethod
    def _only_a_rejection(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("decision") != "reject":
            raise PydanticCustomError("reject_only", "only a rejection takes a message")
        return value

    def as_decision(self) -> Decision:
        arguments = None if self.input is None else json.dumps(self.input, ensure_ascii=False)
        return Decision(self.call_id, self.decision, arguments=arguments, message=self.message)


Decisions = Annotated[list[DecisionBody], Field(min_length=1, max_length=MAX_DECISIONS)]


class Approvals(Body):
    decisions: Decisions


async def read_json(
    request: Request, model: type[M], *, max_bytes: int, empty_ok: bool = False
) -> M:
    """The body as ``model``: 413 past ``max_bytes`` (checked before parsing), 400 for JSON
    that does not parse, 422 naming the first field that does not validate (``body`` for a body
    that is not an object or is nested too deeply)."""
    body = bytearray(await read_bytes(request, max_bytes=max_bytes))
    if not body.strip() and empty_ok:
        return model()
    # A UTF-8 byte order mark is tolerated, as RFC 8259 allows and ``json.loads`` did.
    if body.startswith(codecs.BOM_UTF8):
        del body[: len(codecs.BOM_UTF8)]
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as exc:
        raise refusal(exc, what="body") from None


async def read_bytes(request: Request, *, max_bytes: int) -> bytes:
    """The body as sent, 413 past ``max_bytes`` (checked before anything parses it): for a
    client whose errors are not isochat's (``src/web/adapters/``), which parses it itself."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError("payload_too_large", f"the body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError("payload_too_large", f"the body is larger than {max_bytes} bytes")
    return bytes(body)


def refusal(exc: ValidationError, *, what: str) -> ApiError:
    """The error for a JSON document (``what``: body or frame) that ``*_validate_json``
    refused: ``invalid_json`` when it did not parse, else ``validation_error``."""
    if (error := unparsed(exc, what=what)) is not None:
        return error
    if not exc.errors(include_url=False, include_input=False)[0]["loc"]:
        # At the top, after parsing: a document that is not an object (model_type).
        return ApiError("validation_error", f"{what}: must be a JSON object")
    return ApiError("validation_error", describe(exc))


def unparsed(exc: ValidationError, *, what: str) -> ApiError | None:
    """The error for a document the JSON parser refused, None for one it parsed."""
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        reason = str((first.get("ctx") or {}).get("error", ""))
        # Valid JSON, but deeper than the parser goes: the shape is wrong, not the syntax.
        # (Told by pydantic-core's wording, which the tests pin: should it change, such a
        # document is an ``invalid_json`` 400, still never a crash.)
        if reason.startswith("recursion limit exceeded"):
            return ApiError(
                "validation_error",
                f"{what}: nested too deeply (more than {MAX_JSON_DEPTH} levels)",
            )
        return ApiError("invalid_json", f"the {what} is not valid JSON")
    if first["type"] == "string_unicode" and not first["loc"]:
        # Text that is not Unicode at all (an unpaired surrogate in a ``str`` frame).
        return ApiError("invalid_json", f"the {what} is not valid JSON")
    return None


def check_content(content: str, *, max_chars: int) -> None:
    """A message is 1..``max_chars`` characters and not only white space."""
    if not content.strip():
        raise ApiError("validation_error", "content: must not be blank")
    if len(content) > max_chars:
        raise ApiError("validation_error", f"content: must be at most {max_chars} characters")


def describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    if len(field) > _MAX_FIELD_CHARS:
        field = field[:_MAX_FIELD_CHARS] + "..."
    return f"{field}: {first['msg']}"
