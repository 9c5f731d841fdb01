"""The calculator parses arithmetic as a tree: exact answers, bounded work, never eval. Tools
get their JSON schema from their pydantic input model and refuse arguments that do not fit."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import Field

from src.agents.tool import FunctionTool, ToolError, function_tool
from src.agents.tools import Calculator, CalculatorInput


async def calculate(expression: str) -> str:
    return await Calculator().run(CalculatorInput(expression=expression))


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("2 + 2", "4"),
        ("(12 + 3) * 4", "60"),
        ("0.1 + 0.2", "0.3"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-3 ** 2", "-9"),
        ("2 ^ 10", "1024"),
        ("10 % 4", "2"),
        ("1 / 3", "0.3333333333333333333333333333"),
        ("2 ** 100", "1267650600228229401496703205376"),
        ("10 ** 60 + 0.5", "1.000000000000000000000000000e+60"),
        ("6 \u00d7 7", "42"),
        # Roots, powers, percentages, rounding, scientific notation.
        ("sqrt(16)", "4"),
        ("sqrt(144)", "12"),
        ("sqrt(2)", "1.414213562373095048801688724"),
        ("2 ** -2", "0.25"),
        ("15% * 80", "12"),
        ("50%", "0.5"),
        ("(10 + 10)% * 5", None),
        ("round(3.14159, 2)", "3.14"),
        ("round(2.5)", "3"),
        ("round(-2.5)", "-3"),
        ("abs(-4.5)", "4.5"),
        ("1.5e3 + 1", "1501"),
        ("1.1e1", "11"),
        ("2.5E-3 * 4", "0.01"),
    ],
)
async def test_calculator_answers_exactly(expression: str, result: str | None) -> None:
    """Decimal arithmetic, so 0.1 + 0.2 is 0.3, and 1.1e1 is exactly 11."""
    if result is None:
        with pytest.raises(ToolError):
            await calculate(expression)
    else:
        assert await calculate(expression) == result


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("__import__('os').system('true')", "only numbers"),
        ("2 ** 1000", "exponents"),
        ("2 ** 0.5", "exponents"),
        ("((10 ** 99) ** 99) ** 99 * ((10 ** 99) ** 99) ** 99", "out of range"),
        ("1 +", "not an arithmetic expression"),
        ("", "empty"),
        ("1" * 300, "longer than"),
        ("[1, 2]", "only numbers"),
        ("sqrt(-1)", "negative"),
        ("sqrt(1, 2)", "only numbers"),
        ("round(1.5, 0.5)", "whole number of places"),
        ("round(1.5, 99)", "whole number of places"),
        ("1e999999", "too many digits"),
        ("pow(2, 3)", "only numbers"),
        ("sqrt(x=4)", "only numbers"),
    ],
)
async def test_calculator_refuses_what_is_not_bounded_arithmetic(
    expression: str, message: str
) -> None:
    """Code, huge powers and nonsense are tool errors with a reason, never evaluated."""
    with pytest.raises(ToolError, match=message):
        await calculate(expression)


def test_a_tools_schema_comes_from_its_input_model() -> None:
    """What the model is shown is the pydantic model's JSON schema, description included."""
    spec = Calculator().spec()
    assert spec.name == "calculator"
    assert spec.parameters["required"] == ["expression"]
    assert "sqrt" in spec.parameters["properties"]["expression"]["description"]


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ("{not json", "do not fit the calculator tool"),
        ("{}", "expression: Field required"),
        ('{"expression": 4}', "expression: Input should be a valid string"),
        ('{"expression": "1", "extra": true}', "extra: Extra inputs are not permitted"),
        ("[]", "do not fit"),
    ],
)
def test_arguments_that_do_not_fit_are_a_tool_error_saying_why(arguments: str, says: str) -> None:
    """The model is told what was wrong with its arguments."""
    with pytest.raises(ToolError, match=says):
        Calculator().parse(arguments)


async def test_an_async_function_is_a_tool() -> None:
    """Its parameters make the schema (with their descriptions and defaults), its docstring
    the description; it is called with the parsed arguments."""

    @function_tool
    async def get_time(
        zone: Annotated[str, Field(description="an IANA time zone")], hour24: bool = True
    ) -> str:
        """The current time in a time zone."""
        return f"12:00 in {zone} ({'24h' if hour24 else '12h'})"

    assert isinstance(get_time, FunctionTool)
    spec = get_time.spec()
    assert (spec.name, spec.description) == ("get_time", "The current time in a time zone.")
    assert spec.parameters["properties"]["zone"]["description"] == "an IANA time zone"
    assert spec.parameters["required"] == ["zone"]
    assert await get_time.run(get_time.parse('{"zone": "Europe/Paris"}')) == (
        "12:00 in Europe/Paris (24h)"
    )
    with pytest.raises(ToolError, match="zone: Field required"):
        get_time.parse('{"hour24": false}')
