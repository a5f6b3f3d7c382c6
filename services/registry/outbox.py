"""The registry's transactional outbox: records committed with a change, published in order.

A registry change and its outbox record commit in one transaction; the request then publishes
the record and answers only after the broker's acknowledgement. If the process dies between the
commit and the publish, or the broker is down, the record stays unpublished and the relay
publishes it later.

Order per person is kept by one PostgreSQL advisory lock per subject key, taken
- while a change and its outbox record are inserted, so outbox ids of one person follow
  commit order, and
- while publishing, which always sends EVERY unpublished record of that person in id order.
So whoever publishes (the request, its retry, the relay of this or another registry instance)
never puts a person's later change on the stream before an earlier one.

A record may still be published twice: the broker acknowledged it but the mark did not commit
(the next publisher of that person sends it again, before anything newer), or an attempt that
timed out was written after all. Duplicates are harmless because consumers apply registry
changes idempotently by `change_id`: the router ignores a change it has already applied, so a
stale copy can never overrule a newer change.
"""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg

from carebus.adapters import outbox as table
from carebus.adapters.auth import Connection
from carebus.adapters.publisher import BrokerUnavailableError, OutgoingRecord, Publisher
from carebus.runtime import metrics
from carebus.runtime.telemetry import get_logger

log = get_logger(__name__)

_LOCK_CLASS: Final = table.LOCK_CLASS
_RELAY_BATCH: Final = 100
# Worth waiting out until the next relay pass: the database restarting or unreachable.
_DATABASE_ERRORS: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Outbox:
    """Adds records inside a change's transaction and publishes them, per person, in order."""

    def __init__(self, pool: asyncpg.Pool, publisher: Publisher) -> None:
        self._pool = pool
        self._publisher = publisher

    @staticmethod
    async def lock_subject(conn: Connection, subject_key: str) -> None:
        """Hold the person's outbox lock until the caller's transaction ends."""
        await table.lock_subjects(conn, [subject_key])

    @staticmethod
    async def add(conn: Connection, record: OutgoingRecord) -> int:
        """Insert `record` in the caller's transaction (which holds `lock_subject`); its id."""
        return await table.add(conn, record)

    async def publish_pending(self, subject_key: str, *, wait: bool = True) -> int | None:
        """Publish every unpublished record of the person in id order; how many.

        With `wait=False` (the relay) returns None at once when someone else holds the
        person's lock: that holder publishes everything pending for the person anyway.
        Raises BrokerUnavailableError when the broker does not acknowledge; nothing is marked.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if wait:
                await self.lock_subject(conn, subject_key)
            else:
                locked = await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1::int4, hashtext($2::text))",
                    _LOCK_CLASS,
                    subject_key,
                )
                if not locked:
                    return None
            rows = await conn.fetch(
                """
                SELECT id, topic, key, value FROM outbox
                WHERE key = $1 AND published_at IS NULL
                ORDER BY id
                """,
                subject_key.encode(),
            )
            if not rows:
                return 0
            await self._publisher.publish(
                [
                    OutgoingRecord(row["topic"], bytes(row["key"]), bytes(row["value"]))
                    for row in rows
                ]
            )
            await conn.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows],
            )
        metrics.OUTBOX_PUBLISHED.labels("relay" if not wait else "request").inc(len(rows))
        return len(rows)

    async def relay_once(self) -> int:
        """Publish what is left unpublished, oldest person first; how many records.

        Stops at the first broker failure: the next pass tries again.
        """
        keys = await self._pool.fetch(
            """
            SELECT key FROM outbox WHERE published_at IS NULL
            GROUP BY key ORDER BY min(id) LIMIT $1
            """,
            _RELAY_BATCH,
        )
        published = 0
        for row in keys:
            subject_key = bytes(row["key"]).decode()
            count = await self.publish_pending(subject_key, wait=False)
            if count:
                published += count
                log.info("outbox_relayed", subject_key=subject_key, records=count)
        return published

    async def pending(self) -> int:
        """How many records are committed but not yet published."""
        count = await self._pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        return int(count)

    async def run_relay(self, interval_s: float) -> None:
        """Relay every `interval_s` seconds until cancelled; failures wait for the next pass."""
        while True:
            try:
                await self.relay_once()
            except BrokerUnavailableError:
                log.warning("outbox_relay_broker_unavailable")
            except _DATABASE_ERRORS as error:
                log.warning("outbox_relay_database_error", error_type=type(error).__name__)
            try:
                metrics.OUTBOX_PENDING.set(await self.pending())
            except _DATABASE_ERRORS as error:
                log.warning("outbox_pending_unknown", error_type=type(error).__name__)
            await asyncio.sleep(interval_s)
