"""The opaque `next` cursor of `GET /v1/alerts`.

Alerts are listed in (breached_at, alert_id) order. A cursor names the last alert of a page by
exactly that pair, so the next page starts strictly after it: none is repeated and none skipped,
even when many alerts share one breached_at. An alert's breached_at never changes, so paging
stays stable while alerts are acknowledged or resolved between pages.
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
    """A cursor the service did not issue."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last alert a page ended with; the next page starts strictly after it."""

    breached_at: datetime
    alert_id: str

    def encode(self) -> str:
        """URL-safe base64 (no padding) of a JSON pair; clients treat it as opaque."""
        moment = self.breached_at.astimezone(UTC).isoformat(timespec="microseconds")
        text = json.dumps([moment, self.alert_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """The cursor in `token`; CursorError for anything `encode` did not produce."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            moment, alert_id = json.loads(raw)
            breached_at = datetime.fromisoformat(moment)
        except (binascii.Error, ValueError, TypeError):
            raise CursorError(CURSOR_PROBLEM) from None
        if not isinstance(alert_id, str) or breached_at.tzinfo is None:
            raise CursorError(CURSOR_PROBLEM)
        return cls(breached_at, alert_id)
