"""How a bad setting is told to an operator: ``load_settings()`` is how a process starts, and
a bad value is refused with one line per variable that names it and says what is expected
(``BadSettings.problems``), never with pydantic's report, which names fields, not the
variables an operator sets.
"""

from __future__ import annotations

import re
import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import pydantic_settings
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from src.settings import ENV_PREFIX, SECRET_FIELDS, URL_FIELDS, Settings, shown_value


class BadSettings(Exception):
    """Settings an operator must fix: ``problems`` holds one line for each, naming the
    variable and saying what is expected."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_settings(**values: Any) -> Settings:
    """``Settings(**values)``, or ``BadSettings`` saying in the operator's terms what is wrong."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise BadSettings(describe_errors(exc)) from None
    except pydantic_settings.SettingsError as exc:
        # A value pydantic-settings could not even decode (JSON of a list or dict setting).
        raise BadSettings([_undecodable(exc)]) from None


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per bad variable: ``ISOCHAT_PORT: expected a whole number from 0 to 65535,
    got 'abc'``. A model validator's message, which names its variables itself, is kept."""
    problems: list[str] = []
    seen: set[str] = set()
    for error in exc.errors():
        loc = error["loc"]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not loc:
            problems.append(message)
            continue
        name = _field_name(str(loc[0]))
        variable = env_variable(name) if name else str(loc[0])
        if variable in seen:
            continue  # one line per variable, even when a union reports each of its arms
        seen.add(variable)
        if error["type"] == "value_error" or name is None:
            problems += [f"{variable}: {line}" for line in message.splitlines()]
            continue
        expected = describe_field(Settings.model_fields[name])
        if name in SECRET_FIELDS:
            problems.append(f"{variable}: expected {expected}")
        else:
            shown = shown_value(error["input"], secret_url=name in URL_FIELDS)
            problems.append(f"{variable}: expected {expected}, got {shown}")
    return problems


def env_variable(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    alias = Settings.model_fields[field_name].validation_alias
    return alias if isinstance(alias, str) else ENV_PREFIX + field_name.upper()


def describe_field(field: FieldInfo) -> str:
    """What a field takes, in words: "a whole number from 0 to 65535", "console or json"."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        arms = [a for a in get_args(annotation) if a is not type(None)]
        annotation = arms[0] if len(arms) == 1 else annotation
    if get_origin(annotation) is Literal:
        return _either([str(option) for option in get_args(annotation)])
    if annotation is bool:
        return "true or false"
    if annotation in (int, float):
        kind = "a whole number" if annotation is int else "a number"
        return f"{kind}{_bounds(field.metadata)}"
    shortest = [m.min_length for m in field.metadata if isinstance(m, annotated_types.MinLen)]
    return f"text of at least {shortest[0]} characters" if shortest else "text"


def _bounds(metadata: list[Any]) -> str:
    limits: dict[str, Any] = {}
    for item in metadata:
        for kind in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, kind.title())):
                limits[kind] = getattr(item, kind)
    if "ge" in limits and "le" in limits:
        return f" from {limits['ge']} to {limits['le']}"
    words = {"ge": "of at least", "gt": "greater than", "le": "of at most", "lt": "less than"}
    said = " and ".join(f"{words[kind]} {limit}" for kind, limit in limits.items())
    return f" {said}" if said else ""


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _field_name(loc: str) -> str | None:
    """The field an error's location names (a field name, or the alias it is read by)."""
    for name, field in Settings.model_fields.items():
        if loc in (name, field.validation_alias):
            return name
    return None


def _undecodable(exc: pydantic_settings.SettingsError) -> str:
    found = re.search(r'field "(\w+)"', str(exc))
    name = found.group(1) if found and found.group(1) in Settings.model_fields else None
    if name is None:
        return f"invalid settings: {exc}"
    return f"{env_variable(name)}: expected {describe_field(Settings.model_fields[name])} (JSON)"
