"""The register of housing places: who owns or runs a housing site and which municipality it
lies in, so the SLA engine's place alerts (carebus.domain.places) have recipients.

Only the place's key is stored (an HMAC of the site or unit id under the subject-key secret):
a client's site id may be an address. Only the operator records a place: its first
registration and every change of its owner or municipality. Whoever is recorded gets the
place's alerts, and nothing proves that a housing organisation runs the site id it names, so a
first-come registration by a housing admin would let it take another's site (and its alerts)
or move its municipality silently; the operator's every recording alerts the privacy officers
of the organisations it names and of those it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from carebus.domain.authority import Refusal
from carebus.domain.places import place_key

# The authority rule id a refusal names (docs/authority.md, "Housing places").
OPERATOR_ONLY: Refusal = Refusal(
    "housing_place.operator",
    "owner_org",
    "only the operator records a housing place or changes its owner or municipality: whoever "
    "is recorded gets the place's alerts; ask the operator to record it",
)


@dataclass(frozen=True, slots=True)
class PlaceRecorded:
    """The place as recorded; `previous` the owner and municipality it had before (None for a
    first registration)."""

    place_key: str
    owner_org: str
    municipality_org: str
    previous: tuple[str, str] | None = None


class UnknownOrganisationError(Exception):
    """An organisation the entry names is not in the directory as the agency it must be."""

    def __init__(self, field: str, agency: str) -> None:
        super().__init__(f"{field}: must be a registered {agency} organisation")
        self.field = field
        self.problem = f"must be a registered {agency} organisation"


async def record(
    pool: asyncpg.Pool,
    secret: bytes,
    place: str,
    owner_org: str,
    municipality_org: str,
    recorded_by: str,
) -> PlaceRecorded:
    """Record (or change) a place's owner and municipality (the caller checks that the
    operator asks). Recordings of one place are serialised by a transaction lock on its key
    (a row lock would lock nothing on a first registration), so `previous` is exact."""
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
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 17))", key)
        held = await conn.fetchrow(
            "SELECT owner_org, municipality_org FROM housing_places WHERE place_key = $1", key
        )
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
    previous = None if held is None else (held["owner_org"], held["municipality_org"])
    return PlaceRecorded(key, owner_org, municipality_org, previous)
