"""The registry's outbox table, as its writers use it: the per-person lock and the insert.

The registry's requests and `carebus rebuild-state` both add records under the person's lock,
so every record of one person is published in the order its writers held that lock
(`services.registry.outbox` publishes them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from carebus.adapters.auth import Connection
from carebus.adapters.publisher import OutgoingRecord

# Advisory locks are (int4, int4) pairs; the first names this use so no other lock collides.
LOCK_CLASS: Final = 0x0CB0_0B0C


async def lock_subjects(conn: Connection, subject_keys: Iterable[str]) -> None:
    """Hold the outbox lock of each person until the caller's transaction ends (taken in key
    order, so two callers locking overlapping sets of persons cannot deadlock)."""
    for key in sorted(set(subject_keys)):
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1::int4, hashtext($2::text))", LOCK_CLASS, key
        )


async def add(conn: Connection, record: OutgoingRecord) -> int:
    """Insert `record` in the caller's transaction (which holds the person's lock); its id."""
    outbox_id = await conn.fetchval(
        "INSERT INTO outbox (topic, key, value) VALUES ($1, $2, $3) RETURNING id",
        record.topic,
        record.key,
        record.value,
    )
    return int(outbox_id)
