"""Text from outside, made safe to print and to judge: one definition of an unsafe character.

Stored strings (an eventType, a counterparty, a dead letter's reason) come from whoever sent the
event. Printed raw they can drive the operator's terminal (ESC sequences), forge table rows (CR, LF)
or reorder what is shown (bidi overrides); one 2 MB field makes a 2 MB log line. printable() is what
every operator-facing output and log field passes a stored string through; unsafe_character() is
what the validation of a quota's text fields refuses.
"""

from __future__ import annotations

import unicodedata

# Unicode's explicit bidirectional formatting characters (UAX #9): embeddings, overrides, isolates,
# and the implicit marks. Everything else of category Cf (joiners in emoji, soft hyphens) is harmless.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Cc: C0 and C1 controls and DEL; Cs: a lone UTF-16 surrogate (no character at all);
# Zl, Zp: U+2028 and U+2029, line breaks to many terminals and viewers.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# A log field or a refusal reason is cut to this many characters (the cut is said, with its size).
LOG_FIELD_CHARS = 1000


def is_unsafe(char: str) -> bool:
    return char in BIDI_CONTROLS or unicodedata.category(char) in _UNSAFE_CATEGORIES


def unsafe_character(text: str) -> str | None:
    """The first unsafe character of text as U+XXXX, or None when there is none."""
    if text.isprintable():  # the fast path: no Cc, Cs, Zl, Zp, Cf (bidi controls are Cf) ...
        return None
    for char in text:
        if is_unsafe(char):
            return f"U+{ord(char):04X}"
    return None


def _escaped(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def shorten(text: str, limit: int = LOG_FIELD_CHARS) -> str:
    """text cut to about limit characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more characters]"


def printable(text: str, limit: int | None = None) -> str:
    """text with each unsafe character written as an escape (\\x1b, \\u202e, \\ud800), then shortened
    to limit characters when one is given. Safe to print on a terminal, in a table row, in a log."""
    if limit is not None and len(text) > limit:
        text = shorten(text, limit)
    if unsafe_character(text) is None:
        return text
    return "".join(_escaped(char) if is_unsafe(char) else char for char in text)
