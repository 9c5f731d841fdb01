"""The bodies LangGraph's clients send, parsed like every isochat body (``read_json``: the size
limit first, then pydantic from the JSON text). Fields isochat has no use for but that change
nothing (``config``, ``context``, a run's ``metadata``, ``stream_resumable``, ``durability``,
...) are accepted and ignored, as are fields it does not know; a field that would make the
request mean something isochat cannot do (start from a checkpoint, stop before a node, call a
webhook, expire a thread) is refused (422 naming it) rather than quietly not done."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from src.runs.domain import Multitask
from src.web.bodies import Approvals, StoredText, check_content
from src.web.errors import ApiError

# The stream modes the SDK knows (``langgraph_sdk.schema.StreamMode``). isochat renders
# ``values``, ``updates``, ``messages-tuple`` and ``custom``; the others are accepted and
# yield nothing, so that a client asking for several still gets the ones isochat has.
KNOWN_STREAM_MODES = frozenset(
    {
        "values",
        "messages",
        "updates",
        "events",
        "tasks",
        "checkpoints",
        "debug",
        "custom",
        "messages-tuple",
        "tools",
        "lifecycle",
    }
)
MAX_SEARCH_LIMIT = 100
Author = Literal["user", "assistant"]


def _refused(what: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported", f"isochat does not support {what}")


class LangGraphBody(BaseModel):
    """Unknown fields ignored (the SDKs add fields over time); the rest strict."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class TextBlock(LangGraphBody):
    type: Literal["text"]
    text: StoredText


class InputMessage(LangGraphBody):
    """A message of a run's input, as LangChain (``type``) or OpenAI (``role``) name its
    author; its content a string or text blocks (agent-chat-ui sends blocks)."""

    role: str | None = None
    type: str | None = None
    content: StoredText | list[TextBlock]

    def author(self) -> Author:
        kind = self.role or self.type
        if kind in ("user", "human"):
            return "user"
        if kind in ("assistant", "ai"):
            return "assistant"
        raise PydanticCustomError(
            "unsupported", "a message is from human/user or ai/assistant (role or type)"
        )

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(block.text for block in self.content)


class RunInput(LangGraphBody):
    messages: Annotated[list[InputMessage], Field(min_length=1)] | InputMessage


class ResumeCommand(LangGraphBody):
    """``command``: only ``resume`` (isochat's decisions on the paused run's calls)."""

    resume: Approvals
    update: None = None
    goto: None = None

    @field_validator("resume", mode="before")
    @classmethod
    def _decisions(cls, value: Any) -> Any:
        if not isinstance(value, dict) or "decisions" not in value:
            raise PydanticCustomError(
                "resume_shape", 'resume is {"decisions": [{"call_id", "decision", ...}]}'
            )
        return value


StreamModes = str | list[str]


class RunCreate(LangGraphBody):
    assistant_id: Annotated[str, Field(max_length=200)]
    input: RunInput | None = None
    command: ResumeCommand | None = None
    stream_mode: StreamModes = "values"
    multitask_strategy: Multitask | None = None
    # LangGraph's default: a run goes on when its stream's client goes away (the SDK then
    # reconnects to it).
    on_disconnect: Literal["cancel", "continue"] = "continue"
    if_not_exists: Literal["reject", "create"] | None = None
    # Would change what the run does: refused unless empty.
    checkpoint: dict[str, Any] | None = None
    checkpoint_id: str | None = None
    interrupt_before: list[str] | str | None = None
    interrupt_after: list[str] | str | None = None
    webhook: str | None = None
    after_seconds: int | None = None

    @field_validator("stream_mode")
    @classmethod
    def _known_modes(cls, value: StreamModes) -> StreamModes:
        for mode in [value] if isinstance(value, str) else value:
            if mode not in KNOWN_STREAM_MODES:
                raise PydanticCustomError("stream_mode", f"unknown stream mode {mode[:40]!r}")
        return value

    @field_validator("checkpoint", "checkpoint_id")
    @classmethod
    def _no_checkpoint(cls, value: Any) -> Any:
        if value:
            raise _refused("starting from a checkpoint: a thread has only its present")
        return value

    @field_validator("interrupt_before", "interrupt_after")
    @classmethod
    def _no_breakpoints(cls, value: Any) -> Any:
        if value:
            raise _refused("breakpoints; a run pauses only for approvals")
        return value

    @field_validator("webhook")
    @classmethod
    def _no_webhook(cls, value: str | None) -> str | None:
        if value:
            raise _refused("webhooks")
        return value

    @field_validator("after_seconds")
    @classmethod
    def _no_delay(cls, value: int | None) -> int | None:
        if value:
            raise _refused("delayed runs")
        return value

    def modes(self) -> frozenset[str]:
        return stream_modes(self.stream_mode)

    def conversation(self, *, max_chars: int) -> tuple[list[tuple[Author, str]], str]:
        """The input's earlier messages (author, text) and its question: the last message,
        which must be a human's. 422 naming the message that does not fit."""
        if self.input is None:
            raise ApiError("validation_error", "input: a run needs input (or command.resume)")
        messages = self.input.messages
        listed = messages if isinstance(messages, list) else [messages]
        said: list[tuple[Author, str]] = []
        for index, message in enumerate(listed):
            where = f"input.messages.{index}" if isinstance(messages, list) else "input.messages"
            try:
                author = message.author()
            except PydanticCustomError as exc:
                raise ApiError("validation_error", f"{where}.role: {exc.message()}") from None
            text = message.text()
            try:
                check_content(text, max_chars=max_chars)
            except ApiError as exc:
                raise ApiError("validation_error", f"{where}.{exc.message}") from None
            said.append((author, text))
        if said[-1][0] != "user":
            raise ApiError("validation_error", "input.messages: the last message must be human")
        return said[:-1], said[-1][1]


def stream_modes(value: StreamModes | None) -> frozenset[str]:
    """The modes asked for (``values`` when none is)."""
    if not value:
        return frozenset({"values"})
    return frozenset([value] if isinstance(value, str) else value)


def parse_stream_modes(values: list[str]) -> frozenset[str]:
    """``stream_mode`` query parameters (the SDK sends an empty one for none)."""
    asked = [v for v in values if v]
    unknown = [mode for mode in asked if mode not in KNOWN_STREAM_MODES]
    if unknown:
        raise ApiError("validation_error", f"stream_mode: unknown stream mode {unknown[0][:40]!r}")
    return stream_modes(asked)


class ThreadBody(LangGraphBody):
    """What a thread body may carry that isochat refuses: an expiry."""

    ttl: Any = None

    @field_validator("ttl")
    @classmethod
    def _no_ttl(cls, value: Any) -> Any:
        if value is not None:
            raise _refused("thread expiry (ttl)")
        return value


class ThreadCreate(ThreadBody):
    thread_id: str | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] | None = None
    supersteps: list[Any] | None = None

    @field_validator("supersteps")
    @classmethod
    def _no_supersteps(cls, value: Any) -> Any:
        if value:
            raise _refused("supersteps: a thread's messages come from its runs")
        return value


class ThreadPatch(ThreadBody):
    metadata: dict[str, Any]


SearchLimit = Annotated[int, Field(ge=1, le=MAX_SEARCH_LIMIT)]


class ThreadSearch(LangGraphBody):
    metadata: dict[str, Any] | None = None
    ids: list[str] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: SearchLimit = 10
    offset: Annotated[int, Field(ge=0)] = 0
    # Newest first is the only order isochat lists threads in.
    sort_by: Literal["created_at", "updated_at"] | None = None
    sort_order: Literal["desc"] | None = None
    values: None = None
    extract: None = None


class AssistantSearch(LangGraphBody):
    metadata: dict[str, Any] | None = None
    graph_id: str | None = None
    name: str | None = None
    limit: SearchLimit = 10
    offset: Annotated[int, Field(ge=0)] = 0
