"""WebSocket frames from clients: size-limited, then parsed and validated in one step by
pydantic (``validate_json``: see ``src.web.bodies`` for why never ``json.loads``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from src.runs.domain import Multitask
from src.web.bodies import REQUEST_ID, Decisions, StoredText, check_content, describe, unparsed
from src.web.errors import ApiError

FRAME_TYPES = ("chat", "cancel", "approve", "ping")


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Any frame may carry one; errors about the frame echo it.
    request_id: Annotated[str, Field(pattern=REQUEST_ID.pattern)] | None = None


class ChatFrame(_Frame):
    type: Literal["chat"]
    thread_id: str
    content: StoredText
    # What becomes of the run when the socket closes (other than for falling behind, which
    # never cancels: the client can replay): ended ``cancelled``, or left to finish.
    on_disconnect: Literal["cancel", "continue"] = "cancel"
    # What it does while the thread has a run going (None: the server's default).
    multitask: Multitask | None = None


class CancelFrame(_Frame):
    type: Literal["cancel"]
    run_id: str


class ApproveFrame(_Frame):
    """Decisions about a paused run's calls, as ``POST /api/runs/{id}/approvals`` takes them."""

    type: Literal["approve"]
    run_id: str
    decisions: Decisions


class PingFrame(_Frame):
    type: Literal["ping"]


AnyFrame = ChatFrame | CancelFrame | ApproveFrame | PingFrame
ClientFrame = Annotated[AnyFrame, Field(discriminator="type")]
_FRAME: TypeAdapter[AnyFrame] = TypeAdapter(ClientFrame)


class _Envelope(BaseModel):
    """What an error frame needs from a frame that parsed but did not validate: any fields,
    of any type, only these two kept."""

    model_config = ConfigDict(extra="ignore")

    type: object = None
    request_id: object = None


_ENVELOPE = TypeAdapter(_Envelope)


class FrameError(ApiError):
    """A frame refused; ``request_id`` is echoed in the error frame when the client gave one."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def parse_frame(text: str | None, *, max_bytes: int, max_chars: int) -> AnyFrame:
    if text is None:
        raise FrameError("validation_error", "frame: frames are JSON text, not binary")
    # surrogatepass: a ``str`` may hold unpaired surrogates (not from a real socket, which
    # checks UTF-8, but from any in-process caller); they are counted here and refused below.
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise FrameError("payload_too_large", f"the frame is larger than {max_bytes} bytes")
    try:
        frame = _FRAME.validate_json(text)
    except ValidationError as exc:
        raise _refused(text, exc) from None
    if isinstance(frame, ChatFrame):
        try:
            check_content(frame.content, max_chars=max_chars)
        except ApiError as exc:
            raise FrameError(exc.code, exc.message, request_id=frame.request_id) from None
    return frame


def _refused(text: str, exc: ValidationError) -> FrameError:
    """The error frame for ``text``, which did not validate: echoing its request id when it
    parsed and carries a valid one, naming the field without the frame type's prefix."""
    if (error := unparsed(exc, what="frame")) is not None:
        return FrameError(error.code, error.message)  # no request id could be read
    try:
        # Parsed again, leniently, only on this error path; it parsed once, so it parses now.
        envelope = _ENVELOPE.validate_json(text)
    except ValidationError:
        return FrameError("validation_error", "frame: must be a JSON object")
    raw_id = envelope.request_id
    request_id = raw_id if isinstance(raw_id, str) and REQUEST_ID.match(raw_id) else None
    if envelope.type not in FRAME_TYPES:
        return FrameError(
            "validation_error",
            f"type: must be one of {', '.join(FRAME_TYPES)}",
            request_id=request_id,
        )
    message = describe(exc).removeprefix(f"{envelope.type}.")
    return FrameError("validation_error", message, request_id=request_id)
