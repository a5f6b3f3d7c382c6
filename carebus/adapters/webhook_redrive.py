"""Redrive: dead-lettered webhook deliveries go back into `webhook_queue`, as the operator asks.

A webhook dead letter is a `webhook_queue` row with status `dead` (its dead letter on
care.deadletter.v1 carries the same delivery). Replaying the dead letter onto a deliveries topic
would change nothing, since the queue keeps each `delivery_id` once; the row itself is made
pending again instead, with a fresh retry window and the same `delivery_id`, so a receiver that
did get it after all deduplicates on `Idempotency-Key`. Redriving twice is harmless: only dead
rows are touched.

Under the same per-line advisory locks as the queue's writer and dispatcher
(consumers.webhooks.queue imports LOCK_LINES from here), the first revived row of each
(organisation, person) line is due now and the others wait at infinity, to be promoted one by
one as each is finished, so a person's deliveries still go out in order, one at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg
import orjson

from carebus.adapters.webhook_registrations import Connection

# In key order, so two transactions locking several lines do not deadlock.
LOCK_LINES: Final = """
    SELECT count(pg_advisory_xact_lock(k)) FROM (
        SELECT DISTINCT hashtextextended(l.org_id || '/' || l.subject_key, 0) AS k
        FROM unnest($1::text[], $2::text[]) AS l(org_id, subject_key)
        ORDER BY k
    ) keys
"""
_DEAD: Final = """
    SELECT seq, subject_key FROM webhook_queue
    WHERE status = 'dead' AND org_id = $1
      AND ($2::text[] IS NULL OR delivery_id = ANY($2::text[]))
      AND ($3::timestamptz IS NULL OR finished_at >= $3)
    ORDER BY seq
"""
_REVIVE: Final = """
    WITH revived AS (
        SELECT seq, org_id, subject_key FROM webhook_queue
        WHERE seq = ANY($1::bigint[]) AND status = 'dead'
    ), firsts AS (
        SELECT min(seq) AS seq FROM revived GROUP BY org_id, subject_key
    )
    UPDATE webhook_queue q
    SET status = 'pending', first_attempt_at = NULL, finished_at = NULL,
        next_attempt_at = CASE WHEN q.seq IN (SELECT seq FROM firsts)
                               THEN now() ELSE 'infinity'::timestamptz END
    FROM revived r WHERE q.seq = r.seq
    RETURNING q.delivery_id, q.seq
"""
_AUDIT: Final = """
    INSERT INTO operator_actions (action_id, action, operator_org, target_org, detail)
    VALUES ($1, 'webhook_redriven', $2, $3, $4::jsonb)
"""


@dataclass(frozen=True, slots=True)
class Redriven:
    """What a redrive did: the delivery ids queued again, oldest first."""

    org_id: str
    delivery_ids: tuple[str, ...]
    has_webhook: bool


async def redrive(
    conn: Connection,
    org_id: str,
    *,
    operator_org: str,
    delivery_ids: Sequence[str] | None = None,
    since: datetime | None = None,
) -> Redriven:
    """Queue again the dead deliveries of `org_id` (only those named, or finished at or after
    `since`, when given), and record the operator's action when there were any."""
    async with conn.transaction():
        ids = list(delivery_ids) if delivery_ids is not None else None
        dead = await conn.fetch(_DEAD, org_id, ids, since)
        if dead:
            subjects = sorted({row["subject_key"] for row in dead})
            await conn.execute(LOCK_LINES, [org_id] * len(subjects), subjects)
        rows = await conn.fetch(_REVIVE, [row["seq"] for row in dead]) if dead else []
        revived = tuple(row["delivery_id"] for row in sorted(rows, key=lambda r: r["seq"]))
        if revived:
            detail = {"delivery_ids": list(revived), "since": since.isoformat() if since else None}
            await conn.execute(
                _AUDIT, uuid.uuid4(), operator_org, org_id, orjson.dumps(detail).decode()
            )
        has_webhook = await conn.fetchval("SELECT 1 FROM webhooks WHERE org_id = $1", org_id)
    return Redriven(org_id, revived, has_webhook is not None)


async def operator_org(conn: Connection | asyncpg.Pool) -> str:
    """The organisation an operator's command acts in the name of: the operator realm's one
    registered organisation ("unregistered" if there is not exactly one)."""
    rows = await conn.fetch("SELECT org_id FROM organisations WHERE agency = 'operator'")
    return rows[0]["org_id"] if len(rows) == 1 else "unregistered"
