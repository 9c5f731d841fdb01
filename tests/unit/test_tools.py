"""The calculator parses arithmetic as a tree: exact answers, bounded work, never eval."""

from __future__ import annotations

import pytest

from src.agents.specialists import extract_expression
from src.agents.tools import Calculator, ToolError


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
    ],
)
async def test_calculator_answers_exactly(expression: str, result: str) -> None:
    """Decimal arithmetic, so 0.1 + 0.2 is 0.3."""
    assert await Calculator()(expression) == result


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
    ],
)
async def test_calculator_refuses_what_is_not_bounded_arithmetic(
    expression: str, message: str
) -> None:
    """Code, huge powers and nonsense are tool errors with a reason, never evaluated."""
    with pytest.raises(ToolError, match=message):
        await Calculator()(expression)


@pytest.mark.parametrize(
    ("text", "expression"),
    [
        ("What is (12 + 3) * 4?", "(12 + 3) * 4"),
        ("calculate 1,000 + 5 please", "1000 + 5"),
        ("how much is 3x4", "3*4"),
        ("no numbers here", None),
    ],
)
def test_expression_is_found_in_a_sentence(text: str, expression: str | None) -> None:
    """The math agent finds the arithmetic inside a natural question."""
    assert extract_expression(text) == expression
