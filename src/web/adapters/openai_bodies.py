"""What ``POST /v1/chat/completions`` is sent, and what isochat takes from it: the model (triage,
or a route), the question (the last message, a user's), and the earlier messages a new thread
holds before it (docs/api.md, "OpenAI-compatible").

The SDKs and Open WebUI send fields isochat has no use for (``temperature``, ``user``,
``tools``, ``n``...): ignored, not refused, or no such client could connect. What is read is
parsed as everywhere else (``src/web/bodies.py``): within the byte limit first, then by
pydantic's JSON parser; a refusal names the field as OpenAI does (``messages[2].content``).
"""

from __future__ import annotations

import codecs
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request

from src.agents.base import MAX_ANSWER_CHARS
from src.services.errors import NotFound
from src.services.threads import title_from
from src.web.bodies import StoredText, check_content, read_bytes, unparsed
from src.web.errors import ApiError

# The model that lets triage choose; ``isochat-<route>`` names the specialist instead.
TRIAGE_MODEL = "isochat"
ROUTE_MODEL_PREFIX = "isochat-"
# The most messages one request may carry (the byte limit bounds their sizes).
MAX_MESSAGES = 256

Role = Literal["user", "assistant"]


class Lenient(BaseModel):
    """Fields nobody reads are ignored (the clients' many options); the ones read are strict."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class ContentPart(Lenient):
    type: Annotated[str, StringConstraints(max_length=100)]
    text: StoredText | None = None


class InputMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StoredText | list[ContentPart] | None = None


class StreamOptions(Lenient):
    include_usage: bool | None = None


class ChatCompletionRequest(Lenient):
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    messages: Annotated[list[InputMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# The names a refusal's ``param`` may carry: a path of these and indexes, never a union
# member's tag (``str``, ``list[ContentPart]``) that pydantic puts in its error locations.
_FIELDS = frozenset(
    name
    for model in (ContentPart, InputMessage, StreamOptions, ChatCompletionRequest)
    for name in model.model_fields
)


class InvalidField(ApiError):
    """A body that parsed but cannot be taken, and the field to blame (OpenAI's ``param``)."""

    def __init__(self, message: str, *, param: str | None) -> None:
        super().__init__("validation_error", message)
        self.param = param


class UnknownModel(NotFound):
    """A model that is neither ``isochat`` nor ``isochat-<route>`` (OpenAI's
    ``model_not_found``)."""


@dataclass(frozen=True, slots=True)
class Conversation:
    """What a request asks: the question that starts the run, the messages before it that the
    new thread holds, and the thread's title (from the first user message)."""

    question: str
    earlier: tuple[tuple[Role, str], ...]
    title: str


async def read_request(request: Request, *, max_bytes: int) -> ChatCompletionRequest:
    """The body, 413 past ``max_bytes``; ``invalid_json`` when it does not parse, else an
    ``InvalidField`` naming the first field that does not validate."""
    body = await read_bytes(request, max_bytes=max_bytes)
    # A UTF-8 byte order mark is tolerated, as isochat's own bodies tolerate it.
    body = body.removeprefix(codecs.BOM_UTF8)
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _refusal(exc) from None


def route_of(model: str, routes: Collection[str]) -> str | None:
    """The route ``model`` names (None: triage chooses); ``UnknownModel`` for any other."""
    if model == TRIAGE_MODEL:
        return None
    route = model.removeprefix(ROUTE_MODEL_PREFIX)
    if model.startswith(ROUTE_MODEL_PREFIX) and route in routes:
        return route
    shown = model if len(model) <= 100 else model[:100] + "..."
    raise UnknownModel(f"The model `{shown}` does not exist; GET /v1/models lists them")


def model_names(routes: Collection[str]) -> list[str]:
    return [TRIAGE_MODEL, *(ROUTE_MODEL_PREFIX + route for route in routes)]


def conversation_of(body: ChatCompletionRequest, *, max_message_chars: int) -> Conversation:
    """The question and the earlier messages: user and assistant texts, as isochat stores
    messages. System and developer messages are left out (isochat's agents have their own
    instructions), and so are tool results and assistant turns without text (another model's
    own tool calls: isochat's agents call their tools themselves)."""
    *before, last = body.messages
    last_index = len(before)
    if last.role != "user":
        raise InvalidField(
            f"messages[{last_index}].role: the last message must be the user's question",
            param=f"messages[{last_index}].role",
        )
    question = _user_text(last, last_index, max_chars=max_message_chars)
    earlier: list[tuple[Role, str]] = []
    for index, message in enumerate(before):
        if message.role == "user":
            earlier.append(("user", _user_text(message, index, max_chars=max_message_chars)))
        elif message.role == "assistant" and (answer := _text(message, index)).strip():
            if len(answer) > MAX_ANSWER_CHARS:
                raise InvalidField(
                    f"messages[{index}].content: an answer is at most {MAX_ANSWER_CHARS} "
                    "characters",
                    param=f"messages[{index}].content",
                )
            earlier.append(("assistant", answer))
    first_user = next((text for role, text in earlier if role == "user"), question)
    return Conversation(question=question, earlier=tuple(earlier), title=title_from(first_user))


def _user_text(message: InputMessage, index: int, *, max_chars: int) -> str:
    """A user message's text, within isochat's bounds on a message (not blank, at most
    ``ISOCHAT_MAX_MESSAGE_CHARS``)."""
    text = _text(message, index)
    try:
        check_content(text, max_chars=max_chars)
    except ApiError as exc:
        # check_content names the field "content": here it is one message's.
        raise InvalidField(
            f"messages[{index}].{exc.message}", param=f"messages[{index}].content"
        ) from None
    return text


def _text(message: InputMessage, index: int) -> str:
    """The message's text: its string, or its text parts one per line. Other parts (images,
    audio, files) are refused: isochat's agents read text, and an answer that silently
    ignored a picture would mislead."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for number, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise InvalidField(
                f"messages[{index}].content[{number}]: only text parts are accepted "
                f"(not {part.type!r})",
                param=f"messages[{index}].content[{number}].type",
            )
        texts.append(part.text)
    return "\n".join(texts)


def _refusal(exc: ValidationError) -> ApiError:
    if (error := unparsed(exc, what="body")) is not None:
        return error
    first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    if not first["loc"]:
        return InvalidField("the body must be a JSON object", param=None)
    param = ""
    for part in first["loc"]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part in _FIELDS:
            param += f".{part}" if param else part
    return InvalidField(f"{param or 'body'}: {first['msg']}", param=param or None)
