"""The event store sink: each event on care.events.v1 as one row of `events`, for search and replay.

Which records are events: a record is stored when it carries an `event_type` and was read with
that type's event schema (`carebus.wire.codec.event_schema_name`, e.g. `AdmissionEvent` for
`admission`). Other records the registry puts on the same topic (consent and care-team
changes) decode fine but fail that test and are skipped and counted, not dead-lettered.

Rows are keyed by (source_org, event_id) and inserted with ON CONFLICT DO NOTHING, so a replayed
batch or an event published twice leaves one row: the first one read. The nin is not stored;
the subject key finds a person's events. A retraction's row is stored like any event, and marks
the event it retracts (`retracted_by`, `retracted_at`, `retraction_reason`): that row stays, as
history, no longer a live fact.

Run it with `python -m consumers.event_store`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from confluent_kafka import Message

from carebus.adapters.sink import Connection, Row, SinkSpec, serve_sink
from carebus.domain.events import RETRACTION, record_to_json
from carebus.domain.records import event_schema_name
from carebus.wire import topics
from carebus.wire.codec import Decoded

NAME: Final = "event-store"
GROUP_ID: Final = "carebus-event-store"
# Rows per transaction: commit and per-statement costs spread over more rows (5,000 measured
# about twice the throughput of 1,000; docs/performance.md).
BATCH_SIZE: Final = 5000

COLUMNS: Final = (
    "source_org",
    "event_id",
    "event_type",
    "occurred_at",
    "received_at",
    "source_agency",
    "source_system",
    "subject_key",
    "payload",
    "emergency",
    "schema_fingerprint",
    "kafka_partition",
    "kafka_offset",
)
_STAGING: Final = "incoming_events"

# COPY into a per-connection temporary table, then one INSERT ... SELECT ... ON CONFLICT DO
# NOTHING: measured on 10,000 rows in batches of 1,000 at ~25,500 rows/s against ~19,000 for
# executemany and ~21,000 for INSERT ... SELECT FROM unnest(...), and ~3x faster than
# executemany when replaying rows that are already stored.
_CREATE_STAGING: Final = """
    CREATE TEMPORARY TABLE IF NOT EXISTS incoming_events (LIKE events INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS
"""
_INSERT_STAGED: Final = """
    INSERT INTO events (
        source_org, event_id, event_type, occurred_at, received_at, source_agency,
        source_system, subject_key, payload, emergency, schema_fingerprint,
        kafka_partition, kafka_offset)
    SELECT source_org, event_id, event_type, occurred_at, received_at, source_agency,
        source_system, subject_key, payload, emergency, schema_fingerprint,
        kafka_partition, kafka_offset
    FROM incoming_events
    ON CONFLICT (source_org, event_id) DO NOTHING
"""
# A single row (the row-by-row retry that isolates a poison row) skips the staging table,
# which would otherwise still hold every earlier row of that transaction.
_INSERT_ONE: Final = """
    INSERT INTO events (
        source_org, event_id, event_type, occurred_at, received_at, source_agency,
        source_system, subject_key, payload, emergency, schema_fingerprint,
        kafka_partition, kafka_offset)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
    ON CONFLICT (source_org, event_id) DO NOTHING
"""


# The retracted event keeps its row (history); it is marked once, by the first retraction stored.
_MARK_RETRACTED: Final = """
    UPDATE events SET retracted_by = $3, retracted_at = $4, retraction_reason = $5
    WHERE source_org = $1 AND event_id = $2 AND retracted_by IS NULL
"""


def is_event(decoded: Decoded) -> bool:
    """Whether a decoded record is an event (see the module docstring for the rule)."""
    event_type = decoded.record.get("event_type")
    return isinstance(event_type, str) and decoded.schema_name == event_schema_name(event_type)


def jsonb(document: Mapping[str, Any]) -> str:
    """JSON text for a jsonb column, times as RFC 3339 strings.

    orjson writes NaN and infinity as null; no schema has a float or double field
    (tests/unit/test_avro_writer.py holds that), so no event value can be one.
    """
    return orjson.dumps(record_to_json(document)).decode()


class EventStoreWriter:
    """Turns event records into `events` rows and writes them in bulk."""

    async def prepare(self, conn: Connection) -> None:
        await conn.execute(_CREATE_STAGING)

    def row(self, decoded: Decoded, message: Message) -> Row | None:
        if not is_event(decoded):
            return None
        record = decoded.record
        source = record["source"]
        emergency = record.get("emergency")
        # The subject (the nin) is deliberately not among the columns.
        return (
            source["org_id"],
            record["event_id"],
            record["event_type"],
            record["occurred_at"],
            record.get("received_at"),
            source["agency"],
            source.get("system"),
            record["subject_key"],
            jsonb(record["payload"]),
            jsonb(emergency) if emergency is not None else None,
            decoded.fingerprint,
            message.partition(),
            message.offset(),
        )

    async def write(self, conn: Connection, rows: Sequence[Row]) -> None:
        if len(rows) == 1:
            await conn.execute(_INSERT_ONE, *rows[0])
        else:
            await conn.copy_records_to_table(_STAGING, records=rows, columns=COLUMNS)
            await conn.execute(_INSERT_STAGED)
        # After the inserts: a retraction may follow its event in the same batch.
        marks = [retraction_mark(row) for row in rows if row[2] == RETRACTION]
        if marks:
            await conn.executemany(_MARK_RETRACTED, marks)


def retraction_mark(row: Row) -> tuple[Any, ...]:
    """The `_MARK_RETRACTED` arguments of a retraction's row: the retracted event's key, the
    retraction's id, when carebus received it, the reason."""
    payload = orjson.loads(row[8])
    return (row[0], payload["retracted_event_id"], row[1], row[4], payload["reason"])


def main() -> None:
    serve_sink(SinkSpec(NAME, GROUP_ID, (topics.EVENTS,), EventStoreWriter(), BATCH_SIZE))


if __name__ == "__main__":
    main()
