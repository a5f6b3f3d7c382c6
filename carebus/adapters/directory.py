"""The organisation directory: every organisation carebus knows, its agency, name, HER-id and,
for a municipality, its kommunenummer.

Every organisation named in an event or a registry request must be registered here as the
agency it is claimed to be. The operator maintains it (`carebus org add`, `POST
/v1/organisations`); an organisation number belongs to exactly one agency for good.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import asyncpg

from carebus.adapters.auth import Connection, check_organisation

_HER_ID: Final = re.compile(r"[0-9]{1,9}")
_MUNICIPALITY_NUMBER: Final = re.compile(r"[0-9]{4}")
MAX_NAME: Final = 200


@dataclass(frozen=True, slots=True)
class Organisation:
    org_id: str
    agency: str
    name: str
    her_id: str | None
    municipality_number: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "org_id": self.org_id,
            "agency": self.agency,
            "name": self.name,
            "her_id": self.her_id,
            "municipality_number": self.municipality_number,
        }


def check_entry(
    agency: str,
    org_id: str,
    name: str,
    her_id: str | None,
    municipality_number: str | None = None,
) -> None:
    """Refuse a directory entry that is malformed (ValueError naming what is wrong)."""
    check_organisation(agency, org_id)
    if not name.strip() or len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"name must be 1 to {MAX_NAME} printable characters")
    if her_id is not None and not _HER_ID.fullmatch(her_id):
        raise ValueError("her_id must be 1 to 9 digits")
    if municipality_number is not None:
        if not _MUNICIPALITY_NUMBER.fullmatch(municipality_number):
            raise ValueError("municipality_number must be a 4-digit kommunenummer")
        if agency != "municipality":
            raise ValueError("municipality_number: only a municipality has a kommunenummer")


async def add_organisation(
    conn: Connection,
    *,
    agency: str,
    org_id: str,
    name: str,
    her_id: str | None = None,
    municipality_number: str | None = None,
) -> Organisation:
    """Register an organisation, or update the name, HER-id and kommunenummer of a registered
    one (an identifier not given is kept).

    Raises ValueError for a malformed entry, an organisation registered as another agency,
    or a HER-id or kommunenummer that another organisation has.
    """
    check_entry(agency, org_id, name, her_id, municipality_number)
    try:
        row = await conn.fetchrow(
            """
            INSERT INTO organisations (org_id, agency, name, her_id, municipality_number)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (org_id) DO UPDATE
                SET name = EXCLUDED.name,
                    her_id = coalesce(EXCLUDED.her_id, organisations.her_id),
                    municipality_number = coalesce(
                        EXCLUDED.municipality_number, organisations.municipality_number
                    )
                WHERE organisations.agency = EXCLUDED.agency
            RETURNING org_id, agency, name, her_id, municipality_number
            """,
            org_id,
            agency,
            name,
            her_id,
            municipality_number,
        )
    except asyncpg.UniqueViolationError as error:
        taken = "kommunenummer" if "municipality_number" in str(error) else "HER-id"
        raise ValueError(f"that {taken} belongs to another organisation") from error
    if row is None:
        registered = await conn.fetchval(
            "SELECT agency FROM organisations WHERE org_id = $1", org_id
        )
        raise ValueError(f"organisation {org_id} is registered as {registered}, not {agency}")
    return _organisation(row)


async def list_organisations(
    conn: Connection | asyncpg.Pool, agency: str | None = None
) -> list[Organisation]:
    rows = await conn.fetch(
        """
        SELECT org_id, agency, name, her_id, municipality_number FROM organisations
        WHERE $1::text IS NULL OR agency = $1 ORDER BY agency, org_id
        """,
        agency,
    )
    return [_organisation(row) for row in rows]


def _organisation(row: asyncpg.Record) -> Organisation:
    return Organisation(
        row["org_id"], row["agency"], row["name"], row["her_id"], row["municipality_number"]
    )


class Directory:
    """Which agency each organisation number is registered as, cached for the edge services.

    An organisation's agency never changes once registered, so a found entry is kept for the
    life of the process; a number not found is asked again next time (it may just have been
    added).
    """

    def __init__(self, pool: asyncpg.Pool, max_entries: int = 100_000) -> None:
        self._pool = pool
        self._max_entries = max_entries
        self._agencies: dict[str, str] = {}

    async def agencies(self, org_ids: Iterable[str]) -> dict[str, str]:
        """org_id -> agency for those of `org_ids` that are registered."""
        wanted = set(org_ids)
        missing = [org_id for org_id in wanted if org_id not in self._agencies]
        if missing:
            rows = await self._pool.fetch(
                "SELECT org_id, agency FROM organisations WHERE org_id = ANY($1::text[])", missing
            )
            if len(self._agencies) + len(rows) > self._max_entries:
                self._agencies.clear()
            self._agencies.update({row["org_id"]: row["agency"] for row in rows})
        return {org_id: self._agencies[org_id] for org_id in wanted if org_id in self._agencies}
