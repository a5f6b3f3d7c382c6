"""Each person's data keys in PostgreSQL (`person_keys`, migration 0019), and their erasure.

The gateway takes the current key of each person it accepts an event about (`current`, creating
it when there is none: a new person, or one erased before, who gets the next version); readers
that show a recipient a person's data take the keys their rows were sealed under (`keyring`);
the registry erases (`erase`, through the owner's function `carebus_erase_person`). Keys are not
cached: every read sees an erasure at once (docs/retention.md, "Erasure").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from uuid import UUID

from carebus.adapters.auth import Connection
from carebus.wire.sealing import DataKey, Keyring, KeyWrap, new_data_key

_LATEST = """
    SELECT DISTINCT ON (subject_key) subject_key, version, wrapped_key
    FROM person_keys WHERE subject_key = ANY($1::text[])
    ORDER BY subject_key, version DESC
"""
# A concurrent creation of the same person's key conflicts (primary key, or the one current
# key per person) and inserts nothing: the caller reads the winner's.
_CREATE = """
    INSERT INTO person_keys (subject_key, version, wrapped_key)
    SELECT * FROM unnest($1::text[], $2::integer[], $3::bytea[])
    ON CONFLICT DO NOTHING
    RETURNING subject_key, version, wrapped_key
"""
_LOCK_SHARED = """
    SELECT count(pg_advisory_xact_lock_shared($1::int4, hashtext(k)))
    FROM (SELECT unnest($2::text[]) AS k ORDER BY 1) AS keys
"""
_ALL = """
    SELECT subject_key, version, wrapped_key FROM person_keys
    WHERE subject_key = ANY($1::text[])
"""


# Migration 0019's KEY_LOCK_CLASS: held shared here until the caller's transaction ends (the
# gateway's, after the broker has the sealed event), exclusively by `carebus_erase_person`.
KEY_LOCK_CLASS: Final = 0x0CB0_0E5E
# What an erasure leaves of an event's fingerprint in the idempotency ledger.
ERASED_FINGERPRINT: Final = b"\x00"


async def current(
    conn: Connection, wrap: KeyWrap, subject_keys: Iterable[str]
) -> dict[str, DataKey]:
    """The current (not erased) data key of each person, created where there is none; each
    person's key lock is held (shared) until the caller's transaction ends, so an erasure waits
    for what is being sealed under the key and nothing is sealed under a key erased meanwhile."""
    wanted = sorted(set(subject_keys))
    if wanted:  # in key order, in one statement: two callers cannot deadlock
        await conn.execute(_LOCK_SHARED, KEY_LOCK_CLASS, wanted)
    found: dict[str, DataKey] = {}
    for _ in range(3):  # a lost race reads the winner's key; a third loss is not expected
        missing = [key for key in wanted if key not in found]
        if not missing:
            return found
        latest = {row["subject_key"]: row for row in await conn.fetch(_LATEST, missing)}
        created: list[tuple[str, int, bytes]] = []
        for subject_key in missing:
            row = latest.get(subject_key)
            if row is not None and row["wrapped_key"] is not None:
                found[subject_key] = wrap.unwrap(subject_key, row["version"], row["wrapped_key"])
                continue
            version = 1 if row is None else row["version"] + 1
            created.append((subject_key, version, new_data_key()))
        if created:
            rows = await conn.fetch(
                _CREATE,
                [c[0] for c in created],
                [c[1] for c in created],
                [wrap.wrap(*c) for c in created],
            )
            for row in rows:
                found[row["subject_key"]] = wrap.unwrap(
                    row["subject_key"], row["version"], row["wrapped_key"]
                )
    raise RuntimeError("person_keys: could not settle a person's current data key")


async def keyring(conn: Connection, wrap: KeyWrap, subject_keys: Iterable[str]) -> Keyring:
    """Every version of the persons' data keys, erased ones as None: what their sealed values
    open with."""
    wanted = sorted(set(subject_keys))
    if not wanted:
        return Keyring({})
    rows = await conn.fetch(_ALL, wanted)
    return Keyring.of(
        [wrap.unwrap(row["subject_key"], row["version"], row["wrapped_key"]) for row in rows]
    )


async def erase(
    conn: Connection, subject_key: str, erasure_ref: str, operator_org: str, erasure_id: UUID
) -> int:
    """Destroy the person's current data key and record the erasure in `operator_actions` (the
    function does both: no erasure happens unrecorded); how many versions were erased (0: none
    current, or the same `erasure_ref` again)."""
    erased = await conn.fetchval(
        "SELECT carebus_erase_person($1, $2, $3, $4)",
        subject_key,
        erasure_ref,
        operator_org,
        erasure_id,
    )
    return int(erased)
