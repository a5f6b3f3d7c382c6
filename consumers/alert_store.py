"""The alert store sink: alerts from Kafka into the inbox table.

Two topics, each with one writer (the broker's ACLs, infra/kafka/acls.yaml): `care.alerts.v1`
carries the SLA engine's deadline and emergency-disclosure alerts, `care.alerts.operator.v1` the
registry's alerts about operator actions. Each topic accepts only its own kind: an
`operator_action` alert on the SLA engine's topic, or any other kind on the registry's, is
dead-lettered, so neither writer can raise (or resolve) the other's alerts.

Every `no.carebus.v1.Alert` record is written idempotently to `alerts` (keyed by `alert_id`):

- an alert not yet stored is inserted as the record says (`open`, or `resolved` with
  `resolved_at` = the record's `changed_at`); a null recipient is the unassigned queue,
  which the operator works;
- a `resolved` record for a stored alert of the same kind that is not resolved yet resolves
  it, whatever a
  coordinator did with it meanwhile: the engine's resolution (fulfilment, cancellation) wins
  over `open` and `acknowledged`, and its `event_ids` (trigger and fulfilment) replace the row's;
- anything else is a replay and changes nothing.

Each row inserted or changed is announced with `pg_notify('carebus_alerts', alert_id)` in the
same transaction, so the inbox's live stream hears of it exactly when it becomes visible. The
payload is the alert id only, never personal data.

Records of another schema are skipped and counted; a record that contradicts itself (an
unknown status or audience, a privacy-officer alert without a recipient) is dead-lettered.

Run it with `python -m consumers.alert_store`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from confluent_kafka import Message

from carebus.adapters.sink import Connection, InvalidRecordError, Row, SinkSpec, serve_sink
from carebus.domain.alerts import OPERATOR_ACTION, RECIPIENT_ROLES, operator_alert_id
from carebus.domain.records import ALERT
from carebus.wire import topics
from carebus.wire.codec import Decoded

NAME: Final = "alert-store"
GROUP_ID: Final = "carebus-alert-store"
BATCH_SIZE: Final = 1000

# The channel the inbox LISTENs on (services/inbox/live.py names the same channel).
CHANNEL: Final = "carebus_alerts"

TOPICS: Final = (topics.ALERTS, topics.OPERATOR_ALERTS)

_STATUSES: Final = frozenset({"open", "resolved"})
_AUDIENCES: Final = frozenset({"coordinator", "privacy_officer"})

# One statement per record: the INSERT and the UPDATE see the same snapshot, so the UPDATE
# only ever touches a row stored before this record (an insert leaves nothing to resolve).
# Records of one batch run one after another, so "open, then resolved" in one batch works.
_STORE_ALERT: Final = """
    WITH inserted AS (
        INSERT INTO alerts (
            alert_id, rule_id, title, kind, status, resolution, subject_key, nin,
            recipient_agency, recipient_org, audience, contact_agency, contact_org, deadline,
            breached_at, escalate_at, summary, event_ids, rules_version, resolved_at,
            recipient_role)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                $18, $19, CASE WHEN $5 = 'resolved' THEN $20::timestamptz END, $21)
        ON CONFLICT (alert_id) DO NOTHING
        RETURNING alert_id
    ), resolved AS (
        UPDATE alerts
        SET status = 'resolved', resolution = $6, resolved_at = $20, event_ids = $18,
            updated_at = clock_timestamp()
        WHERE alert_id = $1 AND $5 = 'resolved' AND status <> 'resolved' AND kind = $4
        RETURNING alert_id
    )
    SELECT pg_notify('carebus_alerts', changed.alert_id)
    FROM (SELECT alert_id FROM inserted UNION ALL SELECT alert_id FROM resolved) AS changed
"""


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRecordError(f"`{name}` is empty")
    return value


def _organisation(value: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    return value["agency"], _text(value, "org_id")


def alert_row(record: Mapping[str, Any]) -> Row:
    """The parameters of `_STORE_ALERT` for one Alert record; InvalidRecordError if it is
    self-contradicting."""
    status = record["status"]
    if status not in _STATUSES:
        raise InvalidRecordError(f"status `{status}` is not one this store knows")
    audience = record["audience"]
    if audience not in _AUDIENCES:
        raise InvalidRecordError(f"audience `{audience}` is not one this store knows")
    recipient_agency, recipient_org = _organisation(record.get("recipient"))
    if audience == "privacy_officer" and recipient_org is None:
        raise InvalidRecordError("a privacy-officer alert needs a recipient organisation")
    contact_agency, contact_org = _organisation(record.get("contact"))
    subject = record.get("subject")
    return (
        _text(record, "alert_id"),
        _text(record, "rule_id"),
        record["title"],
        record["kind"],
        status,
        record.get("resolution"),
        _text(record, "subject_key"),
        subject["nin"] if subject else None,
        recipient_agency,
        recipient_org,
        audience,
        contact_agency,
        contact_org,
        record.get("deadline"),
        record["breached_at"],
        record["escalate_at"],
        record["summary"],
        list(record["event_ids"]),
        record["rules_version"],
        record["changed_at"],
        _recipient_role(record) if recipient_org is not None else None,
    )


def _recipient_role(record: Mapping[str, Any]) -> str | None:
    """The chain role that chose the recipient, if it is one this store knows (a newer engine's
    role reads as none: the inbox then names the organisation's contact by its general order)."""
    role = record.get("recipient_role")
    return role if role in RECIPIENT_ROLES else None


def _check_operator_alert(record: Mapping[str, Any]) -> None:
    """An operator-action alert names one action and carries the id derived from it, so its
    writer cannot take the id of another alert (a deadline alert would then never be stored)."""
    actions, recipient = record["event_ids"], record.get("recipient")
    if record["rule_id"] != OPERATOR_ACTION or len(actions) != 1 or recipient is None:
        raise InvalidRecordError("an operator-action alert names one action and its organisation")
    if record["alert_id"] != operator_alert_id(actions[0], recipient["org_id"]):
        raise InvalidRecordError("an operator-action alert's id is not the one of its action")


class AlertStoreWriter:
    """Turns Alert records into inserts or engine resolutions of `alerts`, each announced."""

    async def prepare(self, conn: Connection) -> None:
        return None

    def row(self, decoded: Decoded, message: Message) -> Row | None:
        if decoded.schema_name != ALERT:
            return None
        operator_action = decoded.record["kind"] == OPERATOR_ACTION
        if operator_action and message.topic() != topics.OPERATOR_ALERTS:
            raise InvalidRecordError(
                f"an {OPERATOR_ACTION} alert belongs on {topics.OPERATOR_ALERTS}"
            )
        if not operator_action and message.topic() == topics.OPERATOR_ALERTS:
            raise InvalidRecordError(f"only {OPERATOR_ACTION} alerts belong on {message.topic()}")
        if operator_action:
            _check_operator_alert(decoded.record)
        return alert_row(decoded.record)

    async def write(self, conn: Connection, rows: Sequence[Row]) -> None:
        await conn.executemany(_STORE_ALERT, rows)


def main() -> None:
    serve_sink(SinkSpec(NAME, GROUP_ID, TOPICS, AlertStoreWriter(), BATCH_SIZE))


if __name__ == "__main__":
    main()
