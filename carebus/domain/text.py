"""What carebus accepts as text from people and systems: the characters it refuses in any
string, and the national identity numbers it refuses inside an identifier.

One rule for every service's input (event bodies, registry and audit bodies, query and path
parameters, field names): each refusal names the field and never quotes the value.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from carebus.domain.identity import validate_nin

__all__ = [
    "CONTROL_PROBLEM",
    "NIN_IN_ID_PROBLEM",
    "REFUSED_CATEGORIES",
    "UNSHOWN_FIELD_PROBLEM",
    "embeds_nin",
    "has_control",
    "identifier_problem",
    "shown_field_name",
    "text_problem",
]

# Control (Cc: U+0000, which PostgreSQL cannot store, escapes, newlines, tabs) and format (Cf:
# bidi overrides, zero-width characters) characters disguise or forge what text says where it is
# shown (the patient's log, an inbox, an operator's terminal); a lone surrogate (Cs) is no
# character at all and no UTF-8 writer takes it; line and paragraph separators (Zl, Zp) start a
# new line in a log or a page as a newline would.
REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
CONTROL_PROBLEM: Final = (
    "must not contain control or format characters (Unicode Cc, Cf, Cs, Zl, Zp)"
)
NIN_IN_ID_PROBLEM: Final = "must not contain a national identity number"
UNSHOWN_FIELD_PROBLEM: Final = (
    "has a field whose name holds control or format characters or a national identity number"
)

_DIGIT_RUN: Final = re.compile(r"[0-9]{11,}")
_NIN_LENGTH: Final = 11


def has_control(value: str) -> bool:
    """Whether `value` holds a character of `REFUSED_CATEGORIES`."""
    if value.isascii():  # the common case: only C0 controls and DEL (all Cc) are unprintable
        return not value.isprintable()
    return any(unicodedata.category(character) in REFUSED_CATEGORIES for character in value)


def embeds_nin(value: str) -> bool:
    """Whether `value` holds a valid national identity number (fødselsnummer or D-nummer,
    synthetic test numbers included): any 11 consecutive ASCII digits, inside a run of digits of
    any length, that `validate_nin` accepts.

    Nine-digit organisation numbers and digit runs shorter than 11 never match; digits split by
    any other character (`010190-12345`) are not one run.
    """
    for run in _DIGIT_RUN.findall(value):
        for start in range(len(run) - _NIN_LENGTH + 1):
            if validate_nin(run[start : start + _NIN_LENGTH], allow_synthetic=True) is None:
                return True
    return False


def text_problem(value: str) -> str | None:
    """The problem with a string a person or system sent, or None: no refused characters."""
    return CONTROL_PROBLEM if has_control(value) else None


def identifier_problem(value: str) -> str | None:
    """The problem with an identifier a client chose (it becomes a key, goes into logs and
    URLs), or None: no refused characters and no national identity number inside."""
    return text_problem(value) or (NIN_IN_ID_PROBLEM if embeds_nin(value) else None)


def shown_field_name(name: str) -> bool:
    """Whether a field name a client sent may be quoted in a field path of a refusal."""
    return identifier_problem(name) is None
