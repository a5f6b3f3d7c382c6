"""The register of housing places: who owns or runs a housing site and which municipality it
lies in, so the SLA engine's place alerts (carebus.domain.places) have recipients.

Only the place's key is stored (an HMAC of the site or unit id under the subject-key secret):
a client's site id may be an address. A housing organisation's admin records its own places; a
place recorded for one owner is moved to another only by the operator, so no housing
organisation can divert another's place alerts to itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from carebus.domain.authority import Refusal
from carebus.domain.places import place_key

# The authority rule ids a refusal names (docs/authority.md, "Housing places").
OWN_PLACES: Refusal = Refusal(
    "housing_place.own",
    "owner_org",
    "a housing organisation's admin records only its own places; the operator any",
)
OWNED_BY_ANOTHER: Refusal = Refusal(
    "housing_place.owned",
    "owner_org",
    "the place is recorded for another housing organisation; only the operator moves it",
)


@dataclass(frozen=True, slots=True)
class PlaceRecorded:
    place_key: str
    owner_org: str
    municipality_org: str


class UnknownOrganisationError(Exception):
    """An organisation the entry names is not in the directory as the agency it must be."""

    def __init__(self, field: str, agency: str) -> None:
        super().__init__(f"{field}: must be a registered {agency} organisation")
        self.field = field
        self.problem = f"must be a registered {agency} organisation"


class OwnedByAnotherError(Exception):
    """The place is recorded for another owner."""


async def record(
    pool: asyncpg.Pool,
    secret: bytes,
    place: str,
    owner_org: str,
    municipality_org: str,
    recorded_by: str,
    *,
    may_move: bool,
) -> PlaceRecorded:
    """Record (or update) a place's owner and municipality; `may_move`: the caller may give a
    place recorded for one owner to another (the operator)."""
    key = place_key(place, secret)
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT org_id, agency FROM organisations WHERE org_id = ANY($1::text[])",
            [owner_org, municipality_org],
        )
        agencies = {row["org_id"]: row["agency"] for row in rows}
        if agencies.get(owner_org) != "housing":
            raise UnknownOrganisationError("owner_org", "housing")
        if agencies.get(municipality_org) != "municipality":
            raise UnknownOrganisationError("municipality_org", "municipality")
        held = await conn.fetchval(
            "SELECT owner_org FROM housing_places WHERE place_key = $1 FOR UPDATE", key
        )
        if held is not None and held != owner_org and not may_move:
            raise OwnedByAnotherError
        await conn.execute(
            "INSERT INTO housing_places (place_key, owner_org, municipality_org, recorded_by) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (place_key) DO UPDATE SET "
            "owner_org = EXCLUDED.owner_org, municipality_org = EXCLUDED.municipality_org, "
            "recorded_by = EXCLUDED.recorded_by, recorded_at = clock_timestamp()",
            key,
            owner_org,
            municipality_org,
            recorded_by,
        )
    return PlaceRecorded(key, owner_org, municipality_org)
