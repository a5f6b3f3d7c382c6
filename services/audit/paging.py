"""Where a page of deliveries starts: the `since` time (the opaque `next` cursor is
`carebus.wire.cursor`, over (delivered_at, delivery_id)).

The audit store gives rows their delivered_at in commit order (consumers/audit_store.py), so a
delivery stored after a page was read sorts after that page's cursor and is never skipped.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

# RFC 3339 date-time; fromisoformat alone also takes dates, week dates and naive times.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?P<fraction>\.[0-9]{1,9})?"
    r"(?P<offset>[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)
SINCE_PROBLEM: Final = "must be an RFC 3339 time with offset, e.g. 2026-11-23T08:15:00+01:00"
NO_OFFSET_PROBLEM: Final = "must include a UTC offset, e.g. +01:00 or Z"


class PagingError(ValueError):
    """A `since` or `cursor` the service cannot use; `problem` is safe to show the caller."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def looks_like_cursor(text: str) -> bool:
    """Whether `text` could be a cursor rather than a time (a time always has a colon)."""
    return ":" not in text and " " not in text


def parse_since(text: str) -> datetime:
    """An RFC 3339 time with offset, in UTC; PagingError naming the rule it breaks.

    A `+` in an unencoded query string arrives as a space, so `…T08:15:00 01:00` is read as
    `+01:00`: the only reading that makes it a time.
    """
    if " " in text:
        text = text.replace(" ", "+")
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise PagingError(SINCE_PROBLEM)
    if match["offset"] is None:
        raise PagingError(NO_OFFSET_PROBLEM)
    fraction = match["fraction"] or ""
    offset = match["offset"]
    whole = text[:10] + "T" + text[11:19] + ("+00:00" if offset in ("Z", "z") else offset)
    try:
        moment = datetime.fromisoformat(whole)
    except (ValueError, OverflowError):
        raise PagingError("is not a valid time") from None
    # PostgreSQL keeps microseconds; a finer `since` is rounded up, so `>= since` still holds.
    digits = fraction[1:].ljust(9, "0")
    microseconds = int(digits[:6]) + (1 if int(digits[6:]) else 0)
    return (moment + timedelta(microseconds=microseconds)).astimezone(UTC)
