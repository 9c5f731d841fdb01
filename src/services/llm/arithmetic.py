"""How the offline model reads arithmetic in a sentence: ``"what is the square root of 144?"``
becomes ``sqrt(144)``, ``"15% of 80"`` becomes ``15% * 80``.

It finds the one stretch of the message that is a calculation (numbers, operators, brackets,
``sqrt``/``round``/``abs``, and the words people use for them) and writes it in the
calculator's syntax. When there is no such stretch, or more than one, it finds nothing: the
offline model then says it cannot tell what to calculate, rather than compute something else.
"""

from __future__ import annotations

import itertools
import re

FUNCTIONS = ("sqrt", "round", "abs")
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?"
# Phrases first (longest wins), then single tokens. Each maps to what the calculator reads.
_WORDS: list[tuple[str, str]] = [
    (r"(?:the\s+)?square\s+root\s+of", "sqrt"),
    (r"to\s+the\s+power\s+of", "**"),
    (r"multiplied\s+by", "*"),
    (r"divided\s+by", "/"),
    (r"per\s*cent", "%"),
    (r"squared", "** 2"),
    (r"cubed", "** 3"),
    (r"plus", "+"),
    (r"minus", "-"),
    (r"times", "*"),
    (r"modulo|mod", "mod"),
]
_TOKEN = re.compile(
    "|".join(
        [
            rf"(?P<number>{_NUMBER})",
            rf"(?P<function>\b(?:{'|'.join(FUNCTIONS)})\b)",
            *(rf"(?P<w{i}>\b{pattern}\b)" for i, (pattern, _) in enumerate(_WORDS)),
            r"(?P<of>\bof\b)",
            r"(?P<op>\*\*|//|[-+*/^%\u00d7\u00f7])",
            r"(?P<open>\()",
            r"(?P<close>\))",
            r"(?P<comma>,)",
            r"(?P<space>\s+)",
            # Anything else ends a stretch: a word at once, or one other character.
            r"(?P<other>\w+|.)",
        ]
    ),
    re.IGNORECASE,
)
# ``3x4``, ``3 x 4``: an x between numbers is a times sign.
_TIMES_X = re.compile(r"(?<=[\d)])\s*x\s*(?=[\d(.])", re.IGNORECASE)
_OPERATORS = {"+", "-", "*", "/", "//", "%", "**", "^", "\u00d7", "\u00f7"}
_ROUND_TO = re.compile(
    rf"\bround\s+({_NUMBER})\s+to\s+(\d+)\s+(?:decimal\s+places?|decimals?|places?|dp)\b",
    re.IGNORECASE,
)


def find_arithmetic(text: str) -> str | None:
    """The one calculation in ``text``, in the calculator's syntax; None when there is none
    or when there are several (the model cannot tell which one was meant)."""
    text = _ROUND_TO.sub(r"round(\1, \2)", text)
    text = _TIMES_X.sub(" * ", text)
    stretches: list[list[str]] = [[]]
    for match in _TOKEN.finditer(text):
        if match.lastgroup == "other":
            if stretches[-1]:
                stretches.append([])
        else:
            stretches[-1] += _token(match).split()
    calculations = [e for e in (_expression(s) for s in stretches) if e is not None]
    return calculations[0] if len(calculations) == 1 else None


def _token(match: re.Match[str]) -> str:
    kind, value = match.lastgroup or "", match.group()
    if kind == "number":
        return value.replace(",", "").lower()
    if kind == "function":
        return value.lower()
    if kind.startswith("w"):
        return _WORDS[int(kind[1:])][1]
    if kind == "of":
        return "of"
    if kind == "space":
        return ""
    return {"\u00d7": "*", "\u00f7": "/", "^": "**", ",": ","}.get(value, value)


def _expression(tokens: list[str]) -> str | None:
    """``tokens`` as one calculation, or None if they are not one (a lone number, a lone
    word, brackets that do not match)."""
    tokens = _percent_of(tokens)
    # A stretch may start or end with what belongs to the sentence ("... minus", "of 3").
    while tokens and (tokens[-1] in _OPERATORS - {"%"} or tokens[-1] in {",", "of", "("}):
        tokens.pop()
    while tokens and tokens[0] in (_OPERATORS - {"-", "+"}) | {")", ",", "of"}:
        tokens.pop(0)
    if "of" in tokens:
        return None
    tokens = ["%" if t == "mod" else t for t in tokens]
    tokens = _bracket_function_arguments(tokens)
    if not _operates(tokens):
        return None  # a number on its own (signed or not) is not a calculation
    if not any(_is_number(t) for t in tokens) or not _balanced(tokens):
        return None
    return _render(tokens)


def _operates(tokens: list[str]) -> bool:
    """Whether ``tokens`` do something to numbers: a function, or an operator after a number
    or a bracket (not only a sign in front of one, as in ``A-1001``)."""
    return any(t in FUNCTIONS for t in tokens) or any(
        t in _OPERATORS and (_is_number(before) or before in {")", "%"})
        for before, t in itertools.pairwise(tokens)
    )


def _percent_of(tokens: list[str]) -> list[str]:
    """``15 % of 80`` is ``15% * 80``."""
    out: list[str] = []
    for i, token in enumerate(tokens):
        if token == "of" and out and out[-1] == "%" and i + 1 < len(tokens):
            out.append("*")
        else:
            out.append(token)
    return out


def _bracket_function_arguments(tokens: list[str]) -> list[str]:
    """``sqrt 144`` is ``sqrt(144)``."""
    out: list[str] = []
    for i, token in enumerate(tokens):
        out.append(token)
        if token in FUNCTIONS and i + 1 < len(tokens) and _is_number(tokens[i + 1]):
            out += ["(", tokens[i + 1], ")"]
            tokens[i + 1] = ""
    return [t for t in out if t]


def _balanced(tokens: list[str]) -> bool:
    depth = 0
    for token in tokens:
        depth += {"(": 1, ")": -1}.get(token, 0)
        if depth < 0:
            return False
    return depth == 0


def _starts_operand(tokens: list[str]) -> bool:
    """Whether what follows a ``%`` is its right operand (modulo) rather than nothing or an
    operator (``15%``: per cent)."""
    return bool(tokens) and (_is_number(tokens[0]) or tokens[0] in {"(", *FUNCTIONS})


def _is_number(token: str) -> bool:
    return bool(token) and (token[0].isdigit() or token[0] == ".")


def _render(tokens: list[str]) -> str:
    """Spaced as people write it: ``(12 + 3) * 4``, ``sqrt(16)``, ``round(2.5, 1)``, ``-3``."""
    out: list[str] = []
    previous, sign = "", False
    for i, token in enumerate(tokens):
        percent = token == "%" and not _starts_operand(tokens[i + 1 : i + 2])
        tight = previous in {"(", *FUNCTIONS} or token in {")", ","} or percent or sign
        if out and not tight:
            out.append(" ")
        out.append(token)
        # A sign (not a minus between two numbers) is written against its number: -3, (-2).
        sign = token in {"-", "+"} and previous in _OPERATORS | {"", "(", ","}
        previous = token
    return "".join(out)
