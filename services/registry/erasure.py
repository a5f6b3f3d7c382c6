"""Erasure of a person on a lawful request, by crypto-shredding (docs/retention.md, "Erasure").

The operator's data protection officer asks; the person's current data key is destroyed (the
owner's function `carebus_erase_person`, migration 0019) and the request is kept in
`operator_actions` in the same transaction, so no erasure happens unrecorded. Every sealed copy
of the person's nin and free text (topics, event store, deliveries, alerts, webhook queue) is
unreadable from then on; counts, disclosures and the rest of the audit skeleton stay.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncpg
import orjson

from carebus.adapters import person_keys
from carebus.adapters.auth import Principal

ACTION: Final = "person_erased"
_RECORD: Final = """
    INSERT INTO operator_actions
        (action_id, action, operator_org, target_org, subject_key, detail, at)
    VALUES ($1, $2, $3, NULL, $4, $5::jsonb, $6)
"""


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
    at = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        erased = await person_keys.erase(conn, subject_key, request_ref)
        detail = {"erasure_id": str(erasure), "request_ref": request_ref, "keys_erased": erased}
        await conn.execute(
            _RECORD,
            erasure,
            ACTION,
            principal.org_id,
            subject_key,
            orjson.dumps(detail).decode(),
            at,
        )
    return Erasure(erasure, request_ref, at, erased)
