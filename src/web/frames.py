"""WebSocket frames from clients: size-limited, parsed as JSON, validated by pydantic models."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from src.web.bodies import check_content, describe
from src.web.errors import ApiError

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Any frame may carry one; errors about the frame echo it.
    request_id: Annotated[str, Field(pattern=REQUEST_ID.pattern)] | None = None


class ChatFrame(_Frame):
    type: Literal["chat"]
    thread_id: str
    content: str
    # What becomes of the run when the socket closes (other than for falling behind, which
    # never cancels: the client can replay): ended ``cancelled``, or left to finish.
    on_disconnect: Literal["cancel", "continue"] = "cancel"


class CancelFrame(_Frame):
    type: Literal["cancel"]
    run_id: str


class PingFrame(_Frame):
    type: Literal["ping"]


ClientFrame = Annotated[ChatFrame | CancelFrame | PingFrame, Field(discriminator="type")]
_FRAME: TypeAdapter[ChatFrame | CancelFrame | PingFrame] = TypeAdapter(ClientFrame)


class FrameError(ApiError):
    """A frame refused; ``request_id`` is echoed in the error frame when the client gave one."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def parse_frame(
    text: str | None, *, max_bytes: int, max_chars: int
) -> ChatFrame | CancelFrame | PingFrame:
    if text is None:
        raise FrameError("validation_error", "frame: frames are JSON text, not binary")
    if len(text) > max_bytes or len(text.encode()) > max_bytes:
        raise FrameError("payload_too_large", f"the frame is larger than {max_bytes} bytes")
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise FrameError("invalid_json", "the frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError("validation_error", "frame: must be a JSON object")
    raw_id = data.get("request_id")
    request_id = raw_id if isinstance(raw_id, str) and REQUEST_ID.match(raw_id) else None
    if data.get("type") not in ("chat", "cancel", "ping"):
        raise FrameError(
            "validation_error",
            "type: must be one of chat, cancel, ping",
            request_id=request_id,
        )
    try:
        frame = _FRAME.validate_python(data)
    except ValidationError as exc:
        message = describe(exc).removeprefix(f"{data['type']}.")
        raise FrameError("validation_error", message, request_id=request_id) from None
    if isinstance(frame, ChatFrame):
        try:
            check_content(frame.content, max_chars=max_chars)
        except ApiError as exc:
            raise FrameError(exc.code, exc.message, request_id=request_id) from None
    return frame
