"""Final-answer extraction from untrusted completions: linear-time, size-bounded string code.

Everything here is pure Python string work whose cost is linear in the input (bounded by
`MAX_COMPLETION_CHARS`), so it can run before any parser with super-linear behaviour
(sympy, antlr). Model output is hostile by assumption: a completion that is too long, holds a
NUL byte or is not valid Unicode (lone surrogates) is refused by `screen`; a boxed answer
that is unbalanced, too long or too deeply nested is refused by `last_boxed`.

Two answer forms:
  - Numbers (GSM8K): `final_number` reads ``#### N``, ``\\boxed{N}``, ``The answer is N``,
    ``A: N``, else the last number, as an exact `fractions.Fraction` (``$``, thousands
    commas, units and trailing ``.0`` do not matter: ``$1,000.00 dollars`` -> 1000).
  - LaTeX (MATH): `last_boxed` returns the content of the last ``\\boxed{...}`` or
    ``\\fbox{...}``; `normalize_latex` gives the string that the string fallback compares.
"""

from __future__ import annotations

import re
from fractions import Fraction

# A completion longer than this scores 0 unread: 100,000 characters is ~25,000 tokens of
# English or LaTeX (about 4 characters a token), above any max_new_tokens used for math RL.
MAX_COMPLETION_CHARS = 100_000
# Longest boxed answer handed to the LaTeX parser. MATH-500 answers have at most 53
# characters; the antlr LaTeX parser's time grows with length (a 300-character polynomial
# takes about 1 s on a loaded 2-core machine), so longer answers score 0.
MAX_ANSWER_CHARS = 300
# Deepest nesting of ( [ { \{ allowed in an answer. MATH-500 answers nest at most 2 deep; the
# LaTeX parser's time grows steeply with nesting (5 nested parentheses take ~0.5 s, 20 take
# several seconds), so deeper answers score 0.
MAX_NESTING = 6
# Longest number token read (digits, commas, sign and point): beyond it, 0. Keeps Fraction()
# cheap (and far below Python's 4300-digit int() limit).
MAX_NUMBER_CHARS = 40
# How far after a marker (``####``, ``The answer is``, ``A:``) its number is looked for.
_MARKER_WINDOW = 100

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A number: an optional minus sign (only where it cannot be subtraction: not after a letter,
# digit, closing bracket or point), digits with optional thousands commas, an optional
# fraction part; or a bare fraction part (".5"). Every quantifier consumes distinct characters,
# so matching is linear.
_NUMBER_RE = re.compile(
    r"(?:(?<![A-Za-z0-9_)\].])-)?"
    r"(?:(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|(?<![0-9])\.[0-9]+)"
)
_ANSWER_IS_RE = re.compile(r"the (?:final )?answer is", re.IGNORECASE)
_A_COLON_RE = re.compile(r"(?:^|(?<=\s))A:")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})


def screen(text: str, max_chars: int = MAX_COMPLETION_CHARS) -> str | None:
    """Returns ``text`` if it is safe to read further, else None.

    Refused: non-strings, more than ``max_chars`` characters, NUL bytes, and strings that are
    not valid Unicode (lone surrogates, as left by decoding invalid UTF-8 with
    ``errors="surrogateescape"``). Cost: linear in ``len(text)``, checked length first.

    Args:
      text: a completion (untrusted).
      max_chars: the longest accepted text.

    Returns:
      ``text`` unchanged, or None.
    """
    if not isinstance(text, str) or len(text) > max_chars or "\x00" in text:
        return None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


def nesting_depth(text: str) -> int:
    """Returns the deepest nesting of ``( [ {`` and ``\\{`` in ``text`` (closers ``) ] } \\}``).

    Brackets need not match (``[1, 2)`` is an interval); the depth never goes below 0. Other
    escaped characters (``\\(``, ``\\\\``) are skipped. Linear in ``len(text)``.
    """
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n:
            char = text[i + 1] if text[i + 1] in "{}" else "\\"  # "\\" counts as no bracket
            i += 1
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth = max(depth - 1, 0)
        i += 1
    return deepest


def _braced(text: str, start: int, max_chars: int) -> str | None:
    """Returns ``text[start:end]`` where ``text[end]`` is the ``}`` closing ``text[start-1]``.

    ``\\{`` and ``\\}`` are literal braces, not grouping. Scans at most ``max_chars + 1``
    characters: a longer or unclosed group gives None.
    """
    depth = 1
    i, stop = start, min(len(text), start + max_chars + 1)
    while i < stop:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def last_boxed(
    text: str, max_chars: int = MAX_ANSWER_CHARS, max_nesting: int = MAX_NESTING
) -> str | None:
    """Returns the stripped content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``.

    Braces nest (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); ``\\{ \\}`` inside are literal.
    Only the last box counts: if it is unclosed, empty, longer than ``max_chars`` or nested
    deeper than ``max_nesting`` (`nesting_depth`), the result is None. Linear in
    ``len(text)``; call `screen` first on untrusted text.

    Args:
      text: a completion or a reference solution.
      max_chars: the longest accepted content.
      max_nesting: the deepest accepted bracket nesting of the content.

    Returns:
      The content, or None.
    """
    start = None
    for match in _BOX_RE.finditer(text):
        start = match.end()
    if start is None:
        return None
    content = _braced(text, start, max_chars)
    if content is None or nesting_depth(content) > max_nesting:
        return None
    content = content.strip()
    return content or None


def parse_number(token: str) -> Fraction | None:
    """Returns the exact value of a number token (``-1,234.50`` -> -2469/2), None if too long."""
    if len(token) > MAX_NUMBER_CHARS:
        return None
    return Fraction(token.replace(",", ""))


def first_number(text: str) -> Fraction | None:
    """Returns the value of the first number in ``text`` (see `_NUMBER_RE`), or None.

    Whatever surrounds the number is ignored, so ``$``, units and words do not matter:
    ``"$1,000.00 per day"`` -> 1000. Unicode minus signs count as ``-``.
    """
    match = _NUMBER_RE.search(text.translate(_MINUS_SIGNS))
    return None if match is None else parse_number(match.group())


def last_number(text: str) -> Fraction | None:
    """Returns the value of the last number in ``text``, or None. Linear in ``len(text)``."""
    token = None
    for match in _NUMBER_RE.finditer(text.translate(_MINUS_SIGNS)):
        token = match.group()
    return None if token is None else parse_number(token)


def _after_last(pattern: re.Pattern[str], text: str) -> str | None:
    """Returns the rest of the line after the last match of ``pattern`` (at most a window)."""
    end = None
    for match in pattern.finditer(text):
        end = match.end()
    if end is None:
        return None
    return text[end : end + _MARKER_WINDOW].split("\n", 1)[0]


def marked_number(text: str) -> Fraction | None:
    """Returns the number of an explicit final-answer marker, or None if there is none.

    Markers, by priority (the last occurrence of each counts; a marker with no number on the
    rest of its line falls through to the next): ``#### N``, ``\\boxed{N}``,
    ``The answer is N`` (also ``The final answer is``, any case), ``A: N``.
    """
    hashes = text.rfind("####")
    if hashes >= 0:
        value = first_number(text[hashes + 4 : hashes + 4 + _MARKER_WINDOW].split("\n", 1)[0])
        if value is not None:
            return value
    boxed = last_boxed(text)
    if boxed is not None:
        value = first_number(boxed)
        if value is not None:
            return value
    for pattern in (_ANSWER_IS_RE, _A_COLON_RE):
        rest = _after_last(pattern, text)
        value = None if rest is None else first_number(rest)
        if value is not None:
            return value
    return None


def final_number(text: str) -> Fraction | None:
    """Returns a GSM8K-style final answer: `marked_number`, else the last number.

    Works on completions and on references alike: a bare number (``"1,600"``) or a full GSM8K
    solution ending in ``#### N``. Call `screen` first on untrusted text.

    Returns:
      The exact value, or None if ``text`` holds no readable number.
    """
    value = marked_number(text)
    return value if value is not None else last_number(text)


# Spacing and sizing commands that do not change a formula's meaning.
_LATEX_NOISE_RE = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|\\[!,;:]|\$")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
_DEGREES_RE = re.compile(r"\^\{?\\circ\}?")


def normalize_latex(answer: str) -> str:
    """Returns the canonical string of a LaTeX answer for the string-equality fallback.

    Conservative rewrites only (each leaves the meaning unchanged): ``\\dfrac``/``\\tfrac`` ->
    ``\\frac``; ``\\text{X}``, ``\\mbox{X}``, ``\\mathrm{X}``, ``\\textbf{X}`` -> ``X``;
    spacing commands, ``\\left``/``\\right``, ``$``, degree marks ``^\\circ`` and all
    whitespace removed; a trailing ``.`` dropped. Linear in ``len(answer)``.
    """
    text = answer.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    text = _TEXT_RE.sub(r"\1", text)
    text = _DEGREES_RE.sub("", text)
    text = _LATEX_NOISE_RE.sub("", text)
    text = "".join(text.split())
    return text.removesuffix(".")
