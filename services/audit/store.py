"""The audit service's reads: an organisation's deliveries and a person's disclosures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from carebus.events import rfc3339
from services.audit.paging import Cursor

# Bounds that every stored row satisfies, so one statement (and one index range scan on
# (recipient_org, delivered_at, delivery_id)) serves every combination of since and cursor.
_BEGINNING: Final = Cursor(datetime.fromisoformat("0001-01-01T00:00:00+00:00"), "")

_DELIVERIES: Final = """
    SELECT delivery_id, delivered_at, body::text AS body
    FROM deliveries
    WHERE recipient_org = $1
      AND delivered_at >= $2
      AND (delivered_at, delivery_id) > ($3, $4)
    ORDER BY delivered_at, delivery_id
    LIMIT $5
"""

# "Persons its organisation has data on" (DESIGN): the organisation published an event about
# the person, was a candidate recipient of one (delivered or withheld: it is or was in the care
# team, is the home municipality, or was named in an emergency), is or was registered in the
# care team, or recorded a care-team change or a consent for the person.
_RELATED: Final = """
    SELECT EXISTS (SELECT 1 FROM disclosures
                   WHERE subject_key = $1 AND (recipient_org = $2 OR source_org = $2))
        OR EXISTS (SELECT 1 FROM events WHERE subject_key = $1 AND source_org = $2)
        OR EXISTS (SELECT 1 FROM care_team_changes
                   WHERE subject_key = $1 AND (org_id = $2 OR recorded_by_org = $2))
        OR EXISTS (SELECT 1 FROM consents WHERE subject_key = $1 AND recorded_by_org = $2)
"""

# `no_candidate` rows stay in the table but are not decisions about a recipient, and the
# contract's decision is delivered | withheld.
_DISCLOSURES: Final = """
    SELECT event_id, event_type, recipient_agency, recipient_org, decision, reason, basis,
           fields, rule_id, policy_version, decided_at
    FROM disclosures
    WHERE subject_key = $1 AND decision IN ('delivered', 'withheld')
    ORDER BY decided_at, audit_id
"""


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """Delivery JSON texts (as stored) and the cursor after the last one, if more follow."""

    bodies: Sequence[str]
    next: Cursor | None


class AuditStore:
    """Queries over the tables the audit store sink fills."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def deliveries(
        self, org_id: str, *, since: datetime | None, after: Cursor | None, limit: int
    ) -> DeliveryPage:
        """Up to `limit` deliveries to `org_id`, oldest first, from `since` and after `after`."""
        start = after or _BEGINNING
        rows = await self._pool.fetch(
            _DELIVERIES,
            org_id,
            since or _BEGINNING.delivered_at,
            start.delivered_at,
            start.delivery_id,
            limit + 1,  # one more than asked tells whether another page follows
        )
        page = rows[:limit]
        more = len(rows) > limit
        cursor = Cursor(page[-1]["delivered_at"], page[-1]["delivery_id"]) if more else None
        return DeliveryPage([row["body"] for row in page], cursor)

    async def related(self, org_id: str, subject_key: str) -> bool:
        """Whether `org_id` has data on the person (see `_RELATED`)."""
        return bool(await self._pool.fetchval(_RELATED, subject_key, org_id))

    async def disclosures(self, subject_key: str) -> list[dict[str, Any]]:
        """Every delivered or withheld decision about the person, in DESIGN's shape, by time."""
        rows = await self._pool.fetch(_DISCLOSURES, subject_key)
        return [disclosure_json(row) for row in rows]


def disclosure_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """One disclosure item: `reason` if withheld, `basis` and `fields` if delivered."""
    item: dict[str, Any] = {
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "recipient": {"agency": row["recipient_agency"], "org_id": row["recipient_org"]},
        "decision": row["decision"],
    }
    if row["decision"] == "withheld":
        item["reason"] = row["reason"]
    else:
        item["basis"] = row["basis"]
        item["fields"] = list(row["fields"])
    item["rule_id"] = row["rule_id"]
    item["policy_version"] = row["policy_version"]
    item["decided_at"] = rfc3339(row["decided_at"])
    return item
