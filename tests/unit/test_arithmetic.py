"""How the offline model reads the one calculation in a sentence, or finds none."""

from __future__ import annotations

import pytest

from src.services.llm.arithmetic import find_arithmetic


@pytest.mark.parametrize(
    ("text", "expression"),
    [
        ("What is (12 + 3) * 4?", "(12 + 3) * 4"),
        ("calculate 1,000 + 5 please", "1000 + 5"),
        ("how much is 3x4", "3 * 4"),
        ("sqrt(16)", "sqrt(16)"),
        ("what is 1.5e3 + 1", "1.5e3 + 1"),
        ("what is the square root of 144?", "sqrt(144)"),
        ("what is 15% of 80?", "15% * 80"),
        ("20 percent of 50", "20% * 50"),
        ("round 3.14159 to 2 decimal places", "round(3.14159, 2)"),
        ("2 to the power of 10", "2 ** 10"),
        ("what is 5 squared?", "5 ** 2"),
        ("what is 7 divided by 2", "7 / 2"),
        ("what is -3 ** 2", "-3 ** 2"),
        ("10 mod 4", "10 % 4"),
        ("what is 6 \u00d7 7", "6 * 7"),
        ("abs(-4) please", "abs(-4)"),
    ],
)
def test_the_calculation_is_found_in_a_sentence(text: str, expression: str) -> None:
    """Words for operators and functions become the calculator's syntax."""
    assert find_arithmetic(text) == expression


@pytest.mark.parametrize(
    "text",
    [
        "no numbers here",
        "I have 2 cats",
        "If a train travels 60 km in 1.5 hours, what is its speed?",
        "summarise our conversation",
        "what is 2+2 and what is 3+3?",
        "what is 1 +",
        "what is (2 + 3",
        "where is order A-1001?",
        "it is -5 outside",
    ],
)
def test_no_calculation_or_several_is_none(text: str) -> None:
    """A lone number, numbers without an operator, or two calculations: nothing to compute."""
    assert find_arithmetic(text) is None
