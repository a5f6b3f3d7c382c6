"""The opaque `next` cursor of carebus's paged lists (`GET /v1/deliveries`, `GET /v1/alerts`).

A list is ordered by a (time, id) pair that never changes for an item (a delivery's
delivered_at, an alert's breached_at). A cursor names the last item of a page by exactly that
pair, so the next page starts strictly after it: no item is repeated and none is skipped, even
when many items share one time. Clients treat it as opaque; it is URL-safe base64 (no padding)
of a JSON pair.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

CURSOR_PROBLEM: Final = "is not a cursor this service issued; pass `next` back unchanged"


class CursorError(ValueError):
    """A cursor the service did not issue; `problem` is safe to show the caller."""

    def __init__(self, problem: str = CURSOR_PROBLEM) -> None:
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Cursor:
    """The (time, id) of the last item a page ended with."""

    at: datetime
    key: str

    def encode(self) -> str:
        moment = self.at.astimezone(UTC).isoformat(timespec="microseconds")
        text = json.dumps([moment, self.key], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """The cursor in `token`; CursorError for anything `encode` did not produce."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            moment, key = json.loads(raw)
            at = datetime.fromisoformat(moment)
        except (binascii.Error, ValueError, TypeError):
            raise CursorError from None
        if not isinstance(key, str) or at.tzinfo is None:
            raise CursorError
        return cls(at, key)


# Where a first page starts: before any item.
BEGINNING: Final = Cursor(datetime.fromisoformat("0001-01-01T00:00:00+00:00"), "")
