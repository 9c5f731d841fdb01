"""What a tool is: a typed async callable with a pydantic input model, from which the JSON
schema the model is shown is derived, and against which the model's arguments are checked.

Two ways to write one:

    class CityInput(BaseModel):
        city: str = Field(description="a city name, e.g. Paris")

    class Weather(Tool[CityInput]):
        name = "get_weather"
        description = "The current weather in a city."

        async def run(self, params: CityInput) -> str:
            return f"sunny in {params.city}"

    @function_tool
    async def get_time(zone: Annotated[str, Field(description="an IANA zone")]) -> str:
        '''The current time in a time zone.'''
        ...

A tool refuses input it cannot handle by raising ``ToolError`` with a reason; the model is
given the reason and may try again (see ``src/agents/loop.py``). A tool whose calls must wait
for a person's approval says so (``approval = True``, or ``needs_approval(params)`` deciding
from the input; ``FunctionTool(..., approval=...)``): see ``src/agents/approval.py``.
"""

from __future__ import annotations

import functools
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from src.runs.domain import RunFailure
from src.services.llm import ToolSpec

InputT = TypeVar("InputT", bound=BaseModel)

# Every tool's output is cut to this by the loop that calls it: it is stored in an event and
# handed back to the model, so no tool can flood a run.
MAX_TOOL_OUTPUT_CHARS = 4_000
# Said at the end of a text a cap has cut; counted within the cap.
TRUNCATED = "\u2026 [truncated]"
# How much of what was wrong with the model's arguments it is told.
MAX_ARGUMENT_ERRORS = 5


class ToolError(RunFailure):
    """A tool refused its input or failed; ``str(exc)`` says why, to the model and, if the
    run fails for it (``tool_error``), to the user."""

    code = "tool_error"
    default_message = "a tool failed"


class Tool(ABC, Generic[InputT]):
    """A tool the model may call. Subclasses name it, say what it is for, and implement
    ``run``; the input model is the class's type argument (``Tool[CityInput]``)."""

    name: ClassVar[str]
    description: ClassVar[str]
    input_model: ClassVar[type[BaseModel]]
    # Whether calls of it may run beside other calls of the same turn. A tool that uses the
    # run's database session may not: a session serves one statement at a time.
    concurrent: ClassVar[bool] = True
    # Whether every call of it waits for a person's approval (see ``needs_approval`` to decide
    # from the call's input; ``ISOCHAT_APPROVAL_TOOLS`` can ask it of any tool).
    approval: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is Tool:
                (model,) = get_args(base)
                if isinstance(model, type) and issubclass(model, BaseModel):
                    cls.input_model = model

    @abstractmethod
    async def run(self, params: InputT) -> str: ...

    def needs_approval(self, params: InputT) -> bool:
        """Whether this call (its validated input) waits for a person before it runs: the
        class's ``approval`` unless a tool decides from the input (a refund over 100, say)."""
        return self.approval

    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name, description=self.description, parameters=_schema(self.input_model)
        )

    def parse(self, arguments: str) -> InputT:
        """The model's arguments (JSON text) as the input model; ``ToolError`` saying what
        does not fit otherwise."""
        try:
            return cast(InputT, self.input_model.model_validate_json(arguments or "{}"))
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.errors()[:MAX_ARGUMENT_ERRORS]
            ]
            raise ToolError(
                f"the arguments do not fit the {self.name} tool: {'; '.join(problems)}"
            ) from None


class FunctionTool(Tool[BaseModel]):
    """An async function as a tool: its parameters' annotations (and defaults, and
    ``Annotated[..., Field(description=...)]``) make the input model, its name the tool's
    name, its docstring the description."""

    def __init__(
        self,
        function: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        description: str | None = None,
        approval: bool | Callable[..., bool] = False,
    ) -> None:
        """``approval``: whether calls wait for a person, or a function of the call's arguments
        (as keywords) that says so."""
        self._function = function
        self._approval = approval
        self.name = name or function.__name__  # type: ignore[misc]  # per instance here
        self.description = description or inspect.getdoc(function) or self.name  # type: ignore[misc]
        hints = get_type_hints(function, include_extras=True)
        fields: dict[str, Any] = {}
        for parameter in inspect.signature(function).parameters.values():
            default = ... if parameter.default is inspect.Parameter.empty else parameter.default
            fields[parameter.name] = (hints.get(parameter.name, Any), default)
        self.input_model = create_model(  # type: ignore[misc]
            f"{self.name}_input", __config__=ConfigDict(extra="forbid"), **fields
        )

    async def run(self, params: BaseModel) -> str:
        result = await self._function(**_arguments(params))
        return result if isinstance(result, str) else json.dumps(result, default=str)

    def needs_approval(self, params: BaseModel) -> bool:
        if callable(self._approval):
            return bool(self._approval(**_arguments(params)))
        return self._approval


def _arguments(params: BaseModel) -> dict[str, Any]:
    return {name: getattr(params, name) for name in type(params).model_fields}


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema, made once per model: pydantic takes about 0.1 ms to build one,
    and every run of a specialist shows its tools' schemas to the model. (Treated as read-only
    by everything that reads it.)"""
    return model.model_json_schema()


def function_tool(function: Callable[..., Awaitable[Any]]) -> FunctionTool:
    """``@function_tool`` over an async function makes it a tool (see ``FunctionTool``)."""
    return FunctionTool(function)


def truncate(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and ``TRUNCATED``, in
    ``limit`` characters all told."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATED))] + TRUNCATED
