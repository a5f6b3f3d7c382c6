"""The audit store sink: disclosure decisions, refusals and deliveries from Kafka into PostgreSQL.

One process, one consumer group, nine topics, each written by one kind of writer (the broker's
ACLs, infra/kafka/acls.yaml) and accepting one kind of record:

- `care.audit.v1`, the router's: `no.carebus.v1.Disclosure` records, one per routing decision;
  each becomes a row of `disclosures` (keyed by `audit_id`, a UUID);
- `care.audit.alerts.v1`, the SLA engine's: the Disclosure each alert makes to its recipient
  (`event_type` `alert`, `audit_id` the alert's id, `alert-<32 hex>`), also into `disclosures`.
  The two id forms never meet, so neither writer can take the other's `audit_id` first;
- `care.audit.refusals.v1`, the gateway's and the registry's: `no.carebus.v1.AuthorityRefusal`
  records, one per statement refused for want of authority; each becomes a row of
  `authority_refusals` (keyed by `audit_id`);
- `care.deliveries.<agency>.v1`, the router's: `no.carebus.v1.Delivery` records; each becomes a
  row of `deliveries` (keyed by `delivery_id`) whose `body` is DESIGN's delivery JSON, which the
  audit service serves to the recipient organisation.

Every insert is ON CONFLICT DO NOTHING, so a replayed batch or a record the router published
twice leaves one row: the first one read. Records of a schema this store does not know are
skipped and counted. A record of a kind that does not belong on its topic (a Disclosure on the
refusals topic: a writer trying to write what it may not) and a record that contradicts itself
(a `delivered` decision without a recipient, a delivery on another agency's topic, a payload
that is not a JSON object) are dead-lettered with the reason.

`deliveries.delivered_at` is the database clock when the row is inserted, taken after a
transaction-level advisory lock, so rows become visible in `delivered_at` order even with
several sink processes: a reader paging by (delivered_at, delivery_id) never skips a row that
commits later (see services/audit/app.py).

Run it with `python -m consumers.audit_store`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from confluent_kafka import Message

from carebus.adapters.sink import Connection, InvalidRecordError, Row, SinkSpec, serve_sink
from carebus.domain.deliveries import delivery_to_json
from carebus.domain.records import AUTHORITY_REFUSAL, DELIVERY, DISCLOSURE
from carebus.wire import topics
from carebus.wire.codec import Decoded

NAME: Final = "audit-store"
GROUP_ID: Final = "carebus-audit-store"
# Rows per transaction: commit and per-statement costs spread over more rows (5,000 measured
# about twice the throughput of 1,000; docs/performance.md).
BATCH_SIZE: Final = 5000


# Rows are tagged with their table, so one RowWriter serves every table of one batch.
_DISCLOSURE: Final = "disclosure"
_DELIVERY: Final = "delivery"
_REFUSAL: Final = "refusal"

DISCLOSURE_COLUMNS: Final = (
    "audit_id",
    "event_id",
    "event_type",
    "source_org",
    "subject_key",
    "recipient_agency",
    "recipient_org",
    "decision",
    "reason",
    "basis",
    "categories",
    "fields",
    "rule_id",
    "policy_version",
    "decided_at",
    "delivery_id",
    "emergency",
)
# delivered_at is not among them: the table's default (clock_timestamp()) sets it on insert.
DELIVERY_COLUMNS: Final = (
    "delivery_id",
    "recipient_org",
    "recipient_agency",
    "event_id",
    "event_type",
    "subject_key",
    "occurred_at",
    "body",
)
_DECISIONS: Final = frozenset({"delivered", "withheld", "no_candidate"})
# The router's audit ids are UUIDs (carebus.domain.deliveries); an alert's are `alert-<32 hex>`
# (carebus.domain.alerts.alert_id).
_ROUTER_AUDIT_ID: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
_ALERT_AUDIT_ID: Final = re.compile(r"alert-[0-9a-f]{32}")
_ALERT_EVENT_TYPE: Final = "alert"
# Which record kind each topic carries; any other known kind there is dead-lettered.
_KIND_OF_TOPIC: Final = {
    topics.AUDIT: DISCLOSURE,
    topics.ALERT_DISCLOSURES: DISCLOSURE,
    topics.REFUSALS: AUTHORITY_REFUSAL,
    **dict.fromkeys(topics.DELIVERIES, DELIVERY),
}
TOPICS: Final = tuple(_KIND_OF_TOPIC)
# Any constant works; it only has to be the same in every audit-store process.
_DELIVERIES_LOCK: Final = 0x6361726562757301  # "carebus" + 1

_CREATE_STAGING: Final = """
    CREATE TEMPORARY TABLE IF NOT EXISTS incoming_disclosures
        (LIKE disclosures INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
    CREATE TEMPORARY TABLE IF NOT EXISTS incoming_deliveries
        (LIKE deliveries INCLUDING DEFAULTS, ordinal integer NOT NULL) ON COMMIT DELETE ROWS;
"""
# Column lists are spelled out (not joined from the tuples above) so the SQL reads as SQL.
_INSERT_DISCLOSURES: Final = """
    INSERT INTO disclosures (
        audit_id, event_id, event_type, source_org, subject_key, recipient_agency,
        recipient_org, decision, reason, basis, categories, fields, rule_id, policy_version,
        decided_at, delivery_id, emergency)
    SELECT audit_id, event_id, event_type, source_org, subject_key, recipient_agency,
        recipient_org, decision, reason, basis, categories, fields, rule_id, policy_version,
        decided_at, delivery_id, emergency
    FROM incoming_disclosures
    ON CONFLICT (audit_id) DO NOTHING
"""
# A single row (the row-by-row retry that isolates a poison row) skips the staging table,
# which would otherwise still hold every earlier row of that transaction.
_INSERT_DISCLOSURE: Final = """
    INSERT INTO disclosures (
        audit_id, event_id, event_type, source_org, subject_key, recipient_agency,
        recipient_org, decision, reason, basis, categories, fields, rule_id, policy_version,
        decided_at, delivery_id, emergency)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
    ON CONFLICT (audit_id) DO NOTHING
"""
# ORDER BY makes delivered_at follow the order the records were read in (ties, within one
# microsecond, are listed by delivery_id).
_INSERT_DELIVERIES: Final = """
    INSERT INTO deliveries (
        delivery_id, recipient_org, recipient_agency, event_id, event_type, subject_key,
        occurred_at, body)
    SELECT delivery_id, recipient_org, recipient_agency, event_id, event_type, subject_key,
        occurred_at, body
    FROM incoming_deliveries ORDER BY ordinal
    ON CONFLICT (delivery_id) DO NOTHING
"""
_INSERT_DELIVERY: Final = """
    INSERT INTO deliveries (
        delivery_id, recipient_org, recipient_agency, event_id, event_type, subject_key,
        occurred_at, body)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (delivery_id) DO NOTHING
"""
# Refusals come one per refused request, not thousands per second: no staging table.
_INSERT_REFUSAL: Final = """
    INSERT INTO authority_refusals (
        audit_id, subject_key, actor_org, actor_agency, actor_role, statement, rule_id, field,
        policy_version, decided_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (audit_id) DO NOTHING
"""


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRecordError(f"`{name}` is empty")
    return value


def disclosure_row(record: Mapping[str, Any]) -> Row:
    """The `disclosures` columns of a Disclosure record (without the table tag)."""
    decision = record["decision"]
    if decision not in _DECISIONS:
        raise InvalidRecordError(f"decision `{decision}` is not one this store knows")
    recipient = record.get("recipient")
    if (recipient is None) != (decision == "no_candidate"):
        raise InvalidRecordError(
            "a `no_candidate` decision has no recipient; every other decision has one"
        )
    if decision == "withheld" and record.get("reason") is None:
        raise InvalidRecordError("a `withheld` decision needs a reason")
    if decision == "delivered" and record.get("basis") is None:
        raise InvalidRecordError("a `delivered` decision needs a basis")
    return (
        _text(record, "audit_id"),
        _text(record, "event_id"),
        _text(record, "event_type"),
        _text(record, "source_org"),
        _text(record, "subject_key"),
        recipient["agency"] if recipient else None,
        recipient["org_id"] if recipient else None,
        decision,
        record.get("reason"),
        record.get("basis"),
        list(record.get("categories") or ()),
        list(record.get("fields") or ()),
        record.get("rule_id"),
        record["policy_version"],
        record["decided_at"],
        record.get("delivery_id"),
        bool(record.get("emergency")),
    )


def routing_disclosure_row(record: Mapping[str, Any]) -> Row:
    """The `disclosures` columns of the router's Disclosure record (care.audit.v1)."""
    if not _ROUTER_AUDIT_ID.fullmatch(record["audit_id"]):
        raise InvalidRecordError("a routing decision's `audit_id` must be a lower-case UUID")
    if record["event_type"] == _ALERT_EVENT_TYPE:
        raise InvalidRecordError(f"an alert's disclosure does not belong on {topics.AUDIT}")
    return disclosure_row(record)


def alert_disclosure_row(record: Mapping[str, Any]) -> Row:
    """The `disclosures` columns of the SLA engine's Disclosure of an alert
    (care.audit.alerts.v1): delivered to one organisation, under an `sla:` rule."""
    if not _ALERT_AUDIT_ID.fullmatch(record["audit_id"]):
        raise InvalidRecordError("an alert's `audit_id` must be its alert id, alert-<32 hex>")
    if record["event_type"] != _ALERT_EVENT_TYPE:
        raise InvalidRecordError(f"only alerts' disclosures belong on {topics.ALERT_DISCLOSURES}")
    if record["decision"] != "delivered" or record.get("delivery_id") is not None:
        raise InvalidRecordError("an alert's disclosure is `delivered`, with no delivery")
    if not str(record.get("rule_id") or "").startswith("sla:"):
        raise InvalidRecordError("an alert's disclosure names its `sla:` rule")
    return disclosure_row(record)


def delivery_row(record: Mapping[str, Any], topic: str | None) -> Row:
    """The `deliveries` columns of a Delivery record read from `topic` (without the tag)."""
    recipient = record["recipient"]
    if recipient["agency"] not in topics.AGENCIES:
        raise InvalidRecordError("the delivery's recipient agency is not one this store knows")
    if topic is not None and topic != topics.deliveries(recipient["agency"]):
        raise InvalidRecordError("the delivery's recipient agency does not match its topic")
    try:
        body = delivery_to_json(record)
    except ValueError:  # orjson's JSONDecodeError included; NaN and Infinity are not JSON
        raise InvalidRecordError("`payload_json` is not valid JSON") from None
    if not isinstance(body["payload"], dict):
        raise InvalidRecordError("`payload_json` is not a JSON object")
    body_text = orjson.dumps(body).decode()
    return (
        _text(record, "delivery_id"),
        _text(recipient, "org_id"),
        recipient["agency"],
        _text(record, "event_id"),
        record["event_type"],
        _text(record, "subject_key"),
        record["occurred_at"],
        body_text,
    )


def refusal_row(record: Mapping[str, Any]) -> Row:
    """The `authority_refusals` columns of an AuthorityRefusal record (without the tag)."""
    return (
        _text(record, "audit_id"),
        record.get("subject_key"),
        _text(record, "actor_org"),
        _text(record, "actor_agency"),
        _text(record, "actor_role"),
        _text(record, "statement"),
        _text(record, "rule_id"),
        record.get("field"),
        _text(record, "policy_version"),
        record["decided_at"],
    )


class AuditStoreWriter:
    """Turns Disclosure, AuthorityRefusal and Delivery records into rows and writes them in bulk."""

    async def prepare(self, conn: Connection) -> None:
        await conn.execute(_CREATE_STAGING)

    def row(self, decoded: Decoded, message: Message) -> Row | None:
        kind, topic = decoded.schema_name, message.topic()
        if kind not in (DISCLOSURE, DELIVERY, AUTHORITY_REFUSAL):
            return None
        if _KIND_OF_TOPIC.get(topic or "") != kind:
            raise InvalidRecordError(f"a {kind} record does not belong on {topic}")
        if topic == topics.AUDIT:
            return (_DISCLOSURE, *routing_disclosure_row(decoded.record))
        if topic == topics.ALERT_DISCLOSURES:
            return (_DISCLOSURE, *alert_disclosure_row(decoded.record))
        if kind == DELIVERY:
            return (_DELIVERY, *delivery_row(decoded.record, topic))
        return (_REFUSAL, *refusal_row(decoded.record))

    async def write(self, conn: Connection, rows: Sequence[Row]) -> None:
        disclosures = [row[1:] for row in rows if row[0] == _DISCLOSURE]
        deliveries = [row[1:] for row in rows if row[0] == _DELIVERY]
        refusals = [row[1:] for row in rows if row[0] == _REFUSAL]
        if disclosures:
            await self._write_disclosures(conn, disclosures)
        if refusals:
            await conn.executemany(_INSERT_REFUSAL, refusals)
        if deliveries:
            await self._write_deliveries(conn, deliveries)

    @staticmethod
    async def _write_disclosures(conn: Connection, rows: Sequence[Row]) -> None:
        if len(rows) == 1:
            await conn.execute(_INSERT_DISCLOSURE, *rows[0])
            return
        await conn.copy_records_to_table(
            "incoming_disclosures", records=rows, columns=DISCLOSURE_COLUMNS
        )
        await conn.execute(_INSERT_DISCLOSURES)

    @staticmethod
    async def _write_deliveries(conn: Connection, rows: Sequence[Row]) -> None:
        # Serialises delivery inserts across sink processes until commit, so a row's
        # delivered_at (taken after the lock) is later than that of every row committed before.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _DELIVERIES_LOCK)
        if len(rows) == 1:
            await conn.execute(_INSERT_DELIVERY, *rows[0])
            return
        await conn.copy_records_to_table(
            "incoming_deliveries",
            records=[(*row, ordinal) for ordinal, row in enumerate(rows)],
            columns=(*DELIVERY_COLUMNS, "ordinal"),
        )
        await conn.execute(_INSERT_DELIVERIES)


def main() -> None:
    serve_sink(SinkSpec(NAME, GROUP_ID, TOPICS, AuditStoreWriter(), BATCH_SIZE))


if __name__ == "__main__":
    main()
