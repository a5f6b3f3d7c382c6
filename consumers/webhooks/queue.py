"""The `webhook_queue` table: the intake's writer, and the dispatcher's claims and outcomes.

A line is one (organisation, person); its head is its lowest pending `seq`, and only a head is
ever sent, so deliveries about one person arrive in the order the router produced them.

Only heads are due: a row queued behind a pending one gets `next_attempt_at = infinity`, and
finishing a head (delivered or dead) makes the next one due in the same transaction. So the
claim's scan of the due index meets heads, not a backlog, and costs the same with 10 or 100,000
rows waiting. Queueing and finishing hold a transaction-scoped advisory lock on the line, so
"is anything pending in this line?" and "finish the head, promote the next" never interleave.
The claim still checks that a row is its line's head; the bookkeeping only makes it fast, and a
periodic sweep (`unstick`) makes due any head the bookkeeping might ever have missed.

A dispatcher claims due heads with `FOR UPDATE SKIP LOCKED` and, in the same statement, pushes
their `next_attempt_at` one lease into the future and increments `attempts`. The row lock lasts
only for that statement; the lease is what keeps a second dispatcher off the row while the
request is in flight (without holding a transaction open across HTTP), and `attempts` is the
claim's token: an outcome is recorded only while the row still carries it. A dispatcher that
dies mid-request leaves the row to be claimed again when the lease runs out, so a delivery may
be sent again after a crash, never twice at once; receivers deduplicate on `Idempotency-Key`.
A 2xx the database could not take (it was down) outlives its lease in the dispatcher's memory,
and the dispatcher's claims pass over its row until it is recorded
(consumers.webhooks.acknowledged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import asyncpg
from confluent_kafka import Message

from carebus.adapters import person_keys
from carebus.adapters.sink import Connection, InvalidRecordError, Row
from carebus.adapters.webhook_redrive import LOCK_LINES
from carebus.adapters.webhook_registrations import SecretBox
from carebus.domain.records import DELIVERY
from carebus.runtime import metrics
from carebus.wire.codec import Decoded
from carebus.wire.outbound import Addressee, Format
from carebus.wire.sealing import PREFIX, KeyWrap

from .protocol import opened_body, webhook_body

_WITH_WEBHOOK: Final = "SELECT org_id FROM webhooks WHERE org_id = ANY($1::text[])"
# In key order (the subquery's), so two intakes locking several lines do not deadlock; if
# they ever did, PostgreSQL aborts one and the batch loop retries it like any outage. Shared
# with `carebus webhook redrive`, which revives dead rows under the same locks.
_LOCK_LINES: Final = LOCK_LINES
_LOCK_LINE: Final = "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))"
_KNOWN: Final = "SELECT delivery_id FROM webhook_queue WHERE delivery_id = ANY($1::text[])"
_BUSY_LINES: Final = """
    SELECT l.org_id, l.subject_key
    FROM unnest($1::text[], $2::text[]) AS l(org_id, subject_key)
    WHERE EXISTS (
        SELECT 1 FROM webhook_queue q
        WHERE q.org_id = l.org_id AND q.subject_key = l.subject_key AND q.status = 'pending')
"""
# WITH ORDINALITY + ORDER BY: seqs are handed out in offset order, which is the line order.
_ENQUEUE: Final = """
    INSERT INTO webhook_queue (
        delivery_id, org_id, agency, subject_key, body,
        source_topic, source_partition, source_offset, source_value,
        source_org_id, source_agency, next_attempt_at)
    SELECT d.delivery_id, d.org_id, d.agency, d.subject_key, d.body,
        d.source_topic, d.source_partition, d.source_offset, d.source_value,
        d.source_org_id, d.source_agency,
        CASE WHEN d.head THEN now() ELSE 'infinity'::timestamptz END
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                $6::text[], $7::integer[], $8::bigint[], $9::bytea[],
                $10::text[], $11::text[], $12::boolean[])
        WITH ORDINALITY AS d(delivery_id, org_id, agency, subject_key, body,
                             source_topic, source_partition, source_offset, source_value,
                             source_org_id, source_agency, head, ord)
    ORDER BY d.ord
    ON CONFLICT (delivery_id) DO NOTHING
"""
# A pending row is a head when no pending row of its line has a lower seq.
_CLAIM: Final = """
    WITH heads AS (
        SELECT q.seq FROM webhook_queue q
        WHERE q.status = 'pending' AND q.next_attempt_at <= now()
          AND q.seq <> ALL($3::bigint[])
          AND NOT EXISTS (
                SELECT 1 FROM webhook_queue e
                WHERE e.org_id = q.org_id AND e.subject_key = q.subject_key
                  AND e.status = 'pending' AND e.seq < q.seq)
        ORDER BY q.next_attempt_at, q.seq
        LIMIT $1
        FOR UPDATE OF q SKIP LOCKED
    ), claimed AS (
        UPDATE webhook_queue q
        SET attempts = q.attempts + 1,
            first_attempt_at = coalesce(q.first_attempt_at, now()),
            next_attempt_at = now() + $2::interval
        FROM heads WHERE q.seq = heads.seq
        RETURNING q.seq, q.delivery_id, q.org_id, q.agency, q.subject_key, q.body,
            q.attempts, q.first_attempt_at, q.source_org_id, q.source_agency
    )
    SELECT c.*, extract(epoch FROM now() - c.first_attempt_at)::float8 AS elapsed_s,
        w.url, w.secret_sealed, w.format,
        CASE WHEN w.previous_secret_until > now() THEN w.previous_secret_sealed END
            AS previous_sealed,
        so.name AS source_name, so.her_id AS source_her_id,
        so.municipality_number AS source_municipality_number,
        ro.name AS recipient_name, ro.her_id AS recipient_her_id,
        ro.municipality_number AS recipient_municipality_number
    FROM claimed c LEFT JOIN webhooks w ON w.org_id = c.org_id
        LEFT JOIN organisations so ON so.org_id = c.source_org_id
        LEFT JOIN organisations ro ON ro.org_id = c.org_id
    ORDER BY c.seq
"""
_NEXT_DUE: Final = """
    SELECT extract(epoch FROM q.next_attempt_at - now())::float8
    FROM webhook_queue q
    WHERE q.status = 'pending' AND q.next_attempt_at < 'infinity'
      AND NOT EXISTS (
            SELECT 1 FROM webhook_queue e
            WHERE e.org_id = q.org_id AND e.subject_key = q.subject_key
              AND e.status = 'pending' AND e.seq < q.seq)
    ORDER BY q.next_attempt_at
    LIMIT 1
"""
_DELIVERED: Final = """
    UPDATE webhook_queue
    SET status = 'delivered', finished_at = now(), last_status = $3, last_error = NULL
    WHERE seq = $1 AND attempts = $2 AND status = 'pending'
"""
_RESCHEDULE: Final = """
    UPDATE webhook_queue
    SET next_attempt_at = now() + $3::interval, last_status = $4, last_error = $5
    WHERE seq = $1 AND attempts = $2 AND status = 'pending'
"""
_DEAD: Final = """
    UPDATE webhook_queue
    SET status = 'dead', finished_at = now(), last_status = $3, last_error = $4
    WHERE seq = $1 AND attempts = $2 AND status = 'pending'
"""
_PROMOTE: Final = """
    UPDATE webhook_queue SET next_attempt_at = now()
    WHERE seq = (
        SELECT min(seq) FROM webhook_queue
        WHERE org_id = $1 AND subject_key = $2 AND status = 'pending')
      AND next_attempt_at = 'infinity'
"""
_UNSTICK: Final = """
    UPDATE webhook_queue q SET next_attempt_at = now()
    WHERE q.status = 'pending' AND q.next_attempt_at = 'infinity'
      AND NOT EXISTS (
            SELECT 1 FROM webhook_queue e
            WHERE e.org_id = q.org_id AND e.subject_key = q.subject_key
              AND e.status = 'pending' AND e.seq < q.seq)
"""
_SOURCE: Final = """
    SELECT source_topic, source_partition, source_offset, subject_key, source_value
    FROM webhook_queue WHERE seq = $1
"""
_PENDING_BY_AGENCY: Final = """
    SELECT agency, count(*),
           extract(epoch FROM clock_timestamp() - min(enqueued_at))::float8 AS oldest_s
    FROM webhook_queue WHERE status = 'pending' GROUP BY agency
"""


class QueueWriter:
    """The intake's RowWriter: Delivery records of organisations with a webhook become rows."""

    async def prepare(self, conn: Connection) -> None:
        return None

    def row(self, decoded: Decoded, message: Message) -> Row | None:
        if decoded.schema_name != DELIVERY:
            raise InvalidRecordError(
                f"a deliveries topic carries only {DELIVERY} records, not {decoded.schema_name}"
            )
        record = decoded.record
        try:
            body = webhook_body(record)
        except ValueError as exc:
            raise InvalidRecordError(str(exc)) from None
        return (
            record["delivery_id"],
            record["recipient"]["org_id"],
            record["recipient"]["agency"],
            record["subject_key"],
            body,
            message.topic(),
            message.partition(),
            message.offset(),
            message.value(),
            record["source"]["org_id"],
            record["source"]["agency"],
        )

    async def write(self, conn: Connection, rows: Sequence[Row]) -> None:
        org_ids = sorted({row[1] for row in rows})
        with_webhook = {r["org_id"] for r in await conn.fetch(_WITH_WEBHOOK, org_ids)}
        queued = [row for row in rows if row[1] in with_webhook]
        for row in rows:
            if row[1] not in with_webhook:
                metrics.WEBHOOK_SKIPPED.labels(row[2]).inc()
        if not queued:
            return
        lines = sorted({(row[1], row[3]) for row in queued})
        line_orgs, line_subjects = [o for o, _ in lines], [s for _, s in lines]
        await conn.execute(_LOCK_LINES, line_orgs, line_subjects)
        # Under the line locks: what is already queued and which lines have a pending row.
        known = {r["delivery_id"] for r in await conn.fetch(_KNOWN, [row[0] for row in queued])}
        busy = {
            (r["org_id"], r["subject_key"])
            for r in await conn.fetch(_BUSY_LINES, line_orgs, line_subjects)
        }
        fresh: list[Row] = []
        for row in queued:
            if row[0] in known:
                continue  # re-produced by the router, or replayed after a crash
            known.add(row[0])
            line = (row[1], row[3])
            fresh.append((*row, line not in busy))
            busy.add(line)
        if fresh:
            await conn.execute(_ENQUEUE, *(list(column) for column in zip(*fresh, strict=True)))


@dataclass(frozen=True, slots=True)
class Claim:
    """A head claimed for one attempt; `attempts` (this attempt's number) is the claim token."""

    seq: int
    delivery_id: str
    org_id: str
    agency: str
    subject_key: str
    body: bytes
    attempts: int
    elapsed_s: float  # since the first attempt, by the database's clock, when claimed
    url: str | None  # None when the organisation's webhook was removed after enqueueing
    # Every secret that signs now: the current one, and the previous one during its grace
    # period (so a receiver still on the old secret verifies); empty when url is None.
    secrets: tuple[str, ...] = field(repr=False)
    format: Format = Format.CAREBUS
    # The parties a standard format names (None: queued before carebus knew the sender).
    sender: Addressee | None = None
    recipient: Addressee | None = None


@dataclass(frozen=True, slots=True)
class QueuedSource:
    """The Delivery message a queue row came from, shaped as a dead letter's source."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes
    _value: bytes

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


_SEALED: Final = PREFIX.encode("ascii")


class WebhookQueue:
    """The dispatcher's view of `webhook_queue`; every method is one short statement."""

    def __init__(self, pool: asyncpg.Pool, box: SecretBox, wrap: KeyWrap) -> None:
        self._pool = pool
        self._box = box
        self._wrap = wrap

    async def claim(
        self, limit: int, lease_s: float, *, passing_over: Sequence[int] = ()
    ) -> list[Claim]:
        """Up to `limit` due heads but the rows `passing_over` (acknowledged, not yet recorded),
        each leased for `lease_s` seconds, with the secrets that sign them
        (SecretUnreadableError if the configured key does not open one) and the body as it is
        sent: the person's sealed fields opened at each attempt, so a delivery sent after the
        person's erasure carries no nin (docs/design.md, "Erasure")."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_CLAIM, limit, timedelta(seconds=lease_s), list(passing_over))
            sealed = [row["subject_key"] for row in rows if _SEALED in bytes(row["body"])]
            keys = await person_keys.keyring(conn, self._wrap, sealed)
        return [
            _claim(
                row,
                self._secrets(row),
                opened_body(bytes(row["body"]), row["subject_key"], keys),
            )
            for row in rows
        ]

    def _secrets(self, row: Any) -> tuple[str, ...]:
        sealed = [row["secret_sealed"], row["previous_sealed"]]
        return tuple(self._box.open(row["org_id"], bytes(s)) for s in sealed if s is not None)

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest head is due (<= 0: due now); None when nothing is pending."""
        value = await self._pool.fetchval(_NEXT_DUE)
        return None if value is None else float(value)

    async def delivered(self, claim: Claim, status: int) -> bool:
        """Record a 2xx; False when the claim was lost (another dispatcher owns the row)."""
        return await self._finish(claim, _DELIVERED, status)

    async def dead(self, claim: Claim, status: int | None, error: str) -> bool:
        return await self._finish(claim, _DEAD, status, error)

    async def reschedule(
        self, claim: Claim, delay_s: float, status: int | None, error: str
    ) -> bool:
        result = await self._pool.execute(
            _RESCHEDULE, claim.seq, claim.attempts, timedelta(seconds=delay_s), status, error
        )
        return _updated(result)

    async def unstick(self) -> int:
        """Make due every head left at infinity; the bookkeeping should leave none (count)."""
        return _count(await self._pool.execute(_UNSTICK))

    async def _finish(self, claim: Claim, statement: str, *args: Any) -> bool:
        """End a head's life and make the line's next row due, under the line's lock."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_LINE, claim.org_id, claim.subject_key)
            held = _updated(await conn.execute(statement, claim.seq, claim.attempts, *args))
            if held:
                await conn.execute(_PROMOTE, claim.org_id, claim.subject_key)
            return held

    async def source(self, claim: Claim) -> QueuedSource:
        row = await self._pool.fetchrow(_SOURCE, claim.seq)
        if row is None:  # rows are never deleted while a dispatcher holds them
            raise LookupError(f"webhook_queue row {claim.seq} is gone")
        return QueuedSource(
            row["source_topic"],
            row["source_partition"],
            row["source_offset"],
            row["subject_key"].encode("ascii"),
            bytes(row["source_value"]),
        )

    async def pending_by_agency(self) -> dict[str, tuple[int, float]]:
        """Per agency: deliveries pending and the age in seconds of the oldest of them."""
        rows = await self._pool.fetch(_PENDING_BY_AGENCY)
        return {row["agency"]: (int(row["count"]), float(row["oldest_s"])) for row in rows}


def _claim(row: Any, secrets: tuple[str, ...], body: bytes) -> Claim:
    return Claim(
        seq=row["seq"],
        delivery_id=row["delivery_id"],
        org_id=row["org_id"],
        agency=row["agency"],
        subject_key=row["subject_key"],
        body=body,
        attempts=row["attempts"],
        elapsed_s=float(row["elapsed_s"]),
        url=row["url"],
        secrets=secrets,
        format=Format(row["format"] or Format.CAREBUS),
        sender=_addressee(row["source_org_id"], row["source_agency"], row, "source"),
        recipient=_addressee(row["org_id"], row["agency"], row, "recipient"),
    )


def _addressee(org_id: str | None, agency: str | None, row: Any, role: str) -> Addressee | None:
    if org_id is None or agency is None:
        return None
    return Addressee(
        org_id,
        agency,
        row[f"{role}_name"] or "",
        row[f"{role}_her_id"],
        row[f"{role}_municipality_number"],
    )


def _count(status: str) -> int:
    """The row count of an `UPDATE` command tag."""
    return int(status.rsplit(" ", 1)[-1])


def _updated(status: str) -> bool:
    return _count(status) > 0
