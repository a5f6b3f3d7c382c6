"""`carebus rebuild-state`: every person's routing state rebuilt from the system of record and
handed to the registry's outbox as a snapshot for care.persons.v1.

The registry's history (consents, care-team and register changes) and the event store's events
that change a person's state (admissions, discharges, care plans) are folded per person with the
router's own fold (`carebus.domain.snapshots.rebuild`). Each person's snapshot is added to the
outbox under the person's outbox lock, with the history read inside that lock: a change the
registry records meanwhile is either in the snapshot or published after it, so the latest
snapshot on the compacted topic is never older than the latest change. The registry's relay
publishes them (only the registry writes care.persons.v1). Running it again publishes the same
snapshots again, which changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import orjson

from carebus.adapters import outbox
from carebus.domain.records import (
    CARE_TEAM_CHANGE,
    CONSENT_CHANGE,
    REGISTER_CHANGE,
    event_schema_name,
)
from carebus.domain.routing import STATE_SENDERS
from carebus.domain.snapshots import (
    ORIGIN_REBUILD,
    PERSON_SNAPSHOT,
    HistoryRecord,
    rebuild,
    snapshot,
)
from carebus.wire.codec import Codec

# Persons per transaction: their outbox locks are held while their history is read.
BATCH: Final = 500
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The agency of a register entry's organisation (the fold reads only its org_id).
_REGISTER_AGENCY: Final = {"gp": "fastlege", "home_municipality": "municipality"}
_STATE_EVENTS: Final = sorted(STATE_SENDERS)


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a run did: the persons whose snapshots it queued, and their outbox ids."""

    persons: int
    outbox_ids: list[int]


async def persons(conn: asyncpg.Connection) -> list[str]:
    """Every subject key the registry's history or the event store's state events name."""
    rows = await conn.fetch(
        """
        SELECT subject_key FROM consents WHERE state IN ('effective', 'confirmed')
        UNION SELECT subject_key FROM care_team_changes
        UNION SELECT subject_key FROM register_changes
        UNION SELECT subject_key FROM events WHERE event_type = ANY($1::text[])
        ORDER BY 1
        """,
        _STATE_EVENTS,
    )
    return [row["subject_key"] for row in rows]


async def rebuild_state(
    conn: asyncpg.Connection, codec: Codec, subject_keys: Sequence[str] | None = None
) -> Rebuilt:
    """Queue a rebuilt snapshot of every person (or of `subject_keys`) in the outbox."""
    keys = sorted(set(subject_keys)) if subject_keys is not None else await persons(conn)
    ids: list[int] = []
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        async with conn.transaction():
            await outbox.lock_subjects(conn, batch)
            histories = await _histories(conn, batch)
            for key in batch:
                history = histories.get(key, [])
                as_of = max((entry.at for entry in history), default=_EPOCH)
                record = snapshot(key, rebuild(history), as_of, ORIGIN_REBUILD)
                # The operator's role may queue a snapshot of care.persons.v1 and nothing else
                # (migration 0017): never a record of another topic under the registry's name.
                queued = await conn.fetchval(
                    "SELECT carebus_queue_person_snapshot($1, $2)",
                    key,
                    codec.encode(PERSON_SNAPSHOT, record),
                )
                ids.append(int(queued))
    return Rebuilt(len(keys), ids)


async def unpublished(conn: asyncpg.Connection, outbox_ids: Sequence[int]) -> int:
    """How many of `outbox_ids` the registry has not yet published."""
    count = await conn.fetchval(
        "SELECT count(*) FROM outbox WHERE id = ANY($1::bigint[]) AND published_at IS NULL",
        list(outbox_ids),
    )
    return int(count)


async def _histories(
    conn: asyncpg.Connection, keys: Sequence[str]
) -> dict[str, list[HistoryRecord]]:
    found: dict[str, list[HistoryRecord]] = defaultdict(list)
    for row in await conn.fetch(
        """
        SELECT subject_key, recipient_agency, recipient_org, categories, status, valid_from,
            valid_to, CASE WHEN state = 'confirmed' THEN confirmed_at ELSE recorded_at END AS at
        FROM consents
        WHERE subject_key = ANY($1::text[]) AND state IN ('effective', 'confirmed')
        """,
        keys,
    ):
        found[row["subject_key"]].append(HistoryRecord(row["at"], CONSENT_CHANGE, _consent(row)))
    for row in await conn.fetch(
        "SELECT * FROM care_team_changes WHERE subject_key = ANY($1::text[])", keys
    ):
        found[row["subject_key"]].append(
            HistoryRecord(row["recorded_at"], CARE_TEAM_CHANGE, _care_team(row))
        )
    for row in await conn.fetch(
        "SELECT * FROM register_changes WHERE subject_key = ANY($1::text[])", keys
    ):
        found[row["subject_key"]].append(
            HistoryRecord(row["recorded_at"], REGISTER_CHANGE, _register(row))
        )
    for row in await conn.fetch(
        """
        SELECT subject_key, event_id, event_type, source_agency, source_org, payload,
            coalesce(received_at, occurred_at) AS at, kafka_offset
        FROM events
        WHERE subject_key = ANY($1::text[]) AND event_type = ANY($2::text[])
        """,
        keys,
        _STATE_EVENTS,
    ):
        found[row["subject_key"]].append(
            HistoryRecord(
                row["at"],
                event_schema_name(row["event_type"]),
                _event(row),
                sequence=row["kafka_offset"],
            )
        )
    return found


def _consent(row: Any) -> dict[str, Any]:
    return {
        "recipient": {"agency": row["recipient_agency"], "org_id": row["recipient_org"]},
        "categories": list(row["categories"]),
        "status": row["status"],
        "valid_from": row["valid_from"],
        "valid_to": row["valid_to"],
        "recorded_at": row["at"],
    }


def _care_team(row: Any) -> dict[str, Any]:
    return {
        "member": {"agency": row["agency"], "org_id": row["org_id"]},
        "role": row["role"],
        "status": row["status"],
        "recorded_by_org": row["recorded_by_org"],
    }


def _register(row: Any) -> dict[str, Any]:
    org_id = row["org_id"]
    agency = _REGISTER_AGENCY.get(row["register"], "municipality")
    return {
        "register": row["register"],
        "organisation": None if org_id is None else {"agency": agency, "org_id": org_id},
    }


def _event(row: Any) -> dict[str, Any]:
    payload = row["payload"]
    return {
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "source": {"agency": row["source_agency"], "org_id": row["source_org"]},
        "payload": orjson.loads(payload) if isinstance(payload, str | bytes) else payload,
    }
