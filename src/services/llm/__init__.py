"""Language models behind one port, ``LLM``."""

from src.services.llm.base import (
    LLM,
    ChatMessage,
    LLMError,
    LLMTimeout,
    Reply,
    TextSink,
    ToolCall,
    ToolSpec,
)

__all__ = [
    "LLM",
    "ChatMessage",
    "LLMError",
    "LLMTimeout",
    "Reply",
    "TextSink",
    "ToolCall",
    "ToolSpec",
]
