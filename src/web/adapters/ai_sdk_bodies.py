"""What the AI SDK's chat transport sends to ``POST /api/chat``, read into what isochat's use
cases take: the question, the earlier messages, or the person's answers to approval requests.

The body is ``{id, messages, trigger, messageId}`` (``DefaultChatTransport``), or ``{id,
message}`` (the last message alone, as the AI SDK's persistence examples send it), plus whatever
an app adds through the transport's ``body`` option: fields isochat does not know are ignored,
as are the parts of a message it does not read (files, reasoning, sources, data). Only what is
read is validated, strictly: text, and the approval answers of tool parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from src.runs.domain import Decision, Multitask
from src.web.bodies import MAX_DECISIONS, MAX_REFUSAL_CHARS, StoredText
from src.web.errors import ApiError

# A chat id names a thread's key (at most this long in the database). A "/" could not be
# resumed: the client puts the id in the path of ``GET /api/chat/{id}/stream``.
MAX_CHAT_ID_CHARS = 200


def _one_path_segment(chat_id: str) -> str:
    if "/" in chat_id:
        raise ValueError("must not contain '/'")
    return chat_id


ChatId = Annotated[
    StoredText,
    StringConstraints(min_length=1, max_length=MAX_CHAT_ID_CHARS),
    AfterValidator(_one_path_segment),
]
# The AI SDK's own ids (a message's, an approval's) are short; these bound what a client sends.
ClientId = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ClientShape(BaseModel):
    """A shape of the AI SDK's: the fields isochat reads are strict, the others ignored."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, populate_by_name=True)


class ApprovalAnswer(ClientShape):
    """A tool part's ``approval``: its id (the call's, as isochat sent it), and once the
    person has answered (``addToolApprovalResponse``), whether they approved and why not."""

    id: ClientId
    approved: bool | None = None
    reason: Annotated[StoredText, StringConstraints(max_length=MAX_REFUSAL_CHARS)] | None = None


class UiPart(ClientShape):
    """One part of a message: ``text``, a tool part (``tool-<name>`` or ``dynamic-tool``), or
    another kind, read by its type alone."""

    type: Annotated[str, StringConstraints(max_length=200)]
    text: StoredText | None = None
    state: Annotated[str, StringConstraints(max_length=100)] | None = None
    approval: ApprovalAnswer | None = None


class UiMessage(ClientShape):
    role: Literal["system", "user", "assistant"]
    parts: list[UiPart] = Field(default_factory=list)

    @property
    def text(self) -> str:
        """Its text parts, joined as they were split: the stream splits an answer's text where
        a tool call comes between, so joined they are the answer again."""
        return "".join(p.text or "" for p in self.parts if p.type == "text")

    def approval_answers(self) -> list[ApprovalAnswer]:
        """The approvals the person answered in this (assistant) message, not yet sent."""
        return [
            part.approval
            for part in self.parts
            if _is_tool_part(part)
            and part.state == "approval-responded"
            and part.approval is not None
            and part.approval.approved is not None
        ]


class ChatRequest(ClientShape):
    """``POST /api/chat``: the chat (``id``) and its messages as the client holds them;
    ``on_disconnect`` and ``multitask`` as for isochat's own messages."""

    id: ChatId
    messages: list[UiMessage] | None = None
    message: UiMessage | None = None
    trigger: Literal["submit-message", "regenerate-message"] | None = None
    message_id: ClientId | None = Field(default=None, alias="messageId")
    on_disconnect: Literal["cancel", "continue"] = "cancel"
    multitask: Multitask | None = None


@dataclass(frozen=True, slots=True)
class Question:
    """A message to answer: its text, the chat's first question (the thread's title), and
    the messages before it (role, text), stored only on the chat's first request."""

    content: str
    first_question: str
    earlier: tuple[tuple[Literal["user", "assistant"], str], ...]


def sent_messages(body: ChatRequest) -> list[UiMessage]:
    """The body's messages: ``messages``, or the one ``message``."""
    if body.messages:
        return body.messages
    if body.message is not None:
        return [body.message]
    raise ApiError("validation_error", "messages: at least one message is needed")


def answers_of(messages: list[UiMessage]) -> list[Decision] | None:
    """The decisions the last message carries (the person's answers to approval requests),
    or None when it is not an assistant message with answers."""
    last = messages[-1]
    if last.role != "assistant":
        return None
    answers = last.approval_answers()
    if not answers:
        return None
    if len(answers) > MAX_DECISIONS:
        raise ApiError(
            "validation_error", f"messages: at most {MAX_DECISIONS} approvals in one request"
        )
    return [
        Decision(answer.id, "approve")
        if answer.approved
        else Decision(answer.id, "reject", message=answer.reason or None)
        for answer in answers
    ]


def question_of(messages: list[UiMessage], *, max_chars: int) -> Question:
    """The last message, the user's, as the question (1..``max_chars`` characters of text),
    and the user and assistant messages with text before it."""
    last = len(messages) - 1
    if messages[last].role != "user":
        raise ApiError(
            "validation_error",
            f"messages.{last}: the last message must be the user's, or answer approvals",
        )
    content = messages[last].text
    if not content.strip():
        raise ApiError("validation_error", f"messages.{last}: the message has no text")
    if len(content) > max_chars:
        raise ApiError(
            "validation_error", f"messages.{last}: the text must be at most {max_chars} characters"
        )
    earlier: list[tuple[Literal["user", "assistant"], str]] = []
    for message in messages[:last]:
        # A system message is the app's instruction to its own model: isochat's agents have
        # their own, so it is not part of the conversation stored.
        if message.role != "system" and message.text.strip():
            earlier.append((message.role, message.text))
    first = next((text for role, text in earlier if role == "user"), content)
    return Question(content=content, first_question=first, earlier=tuple(earlier))


def _is_tool_part(part: UiPart) -> bool:
    return part.type.startswith("tool-") or part.type == "dynamic-tool"
