"""Erasure of a person on a lawful request, by crypto-shredding (docs/retention.md, "Erasure").

The operator's data protection officer asks; the person's current data key is destroyed (the
owner's function `carebus_erase_person`, migration 0019), which also keeps the request in
`operator_actions`, so no erasure happens unrecorded, whoever calls it. Every sealed copy
of the person's nin and free text (topics, event store, deliveries, alerts, webhook queue) is
unreadable from then on; counts, disclosures and the rest of the audit skeleton stay.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from carebus.adapters import person_keys
from carebus.adapters.auth import Principal


@dataclass(frozen=True, slots=True)
class Erasure:
    """An erasure done: what the answer shows (no nin, no subject key)."""

    erasure_id: uuid.UUID
    request_ref: str
    erased_at: datetime
    keys_erased: int


async def erase(
    pool: asyncpg.Pool, principal: Principal, subject_key: str, request_ref: str
) -> Erasure:
    """Destroy the person's current data key and record the request, in one transaction."""
    erasure = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        erased = await person_keys.erase(conn, subject_key, request_ref, principal.org_id, erasure)
    return Erasure(erasure, request_ref, datetime.now(UTC), erased)
