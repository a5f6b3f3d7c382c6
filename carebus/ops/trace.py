"""`carebus trace`: one event's path through the bus, read back from what each hop stored.

Received (the gateway's idempotency ledger), stored (the event store), routed (one disclosure
per candidate recipient), delivered (the audit store's deliveries and the webhook queue's
hand-off), tracked by the SLA engine (the obligations it opened or the event answers) and
alerted (the inbox's alerts naming the event). An event_id is unique per source organisation,
so a trace is of one (source organisation, event_id). Nothing here reads a nin: the person is
the subject key (the SLA state's trigger events hold the nin; only their ids are read).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from carebus.adapters.auth import Connection
from carebus.domain.alerts import alert_id
from carebus.domain.deliveries import delivery_id
from carebus.domain.events import rfc3339
from carebus.domain.sla import RuleSet, links_to, parse_rfc3339
from carebus.wire import topics

STAGE_WIDTH: Final = 12
_NO_TIME: Final = " " * len("2026-01-01T00:00:00.000Z")


@dataclass(frozen=True, slots=True)
class Accepted:
    """The gateway's ledger row: the event was published to care.events.v1 and answered 202."""

    accepted_at: datetime
    event_type: str
    subject_key: str


@dataclass(frozen=True, slots=True)
class Stored:
    """The event store's row, with the record's place on care.events.v1."""

    event_type: str
    occurred_at: datetime
    received_at: datetime | None
    source_agency: str
    source_system: str | None
    subject_key: str
    kafka_partition: int
    kafka_offset: int
    stored_at: datetime


@dataclass(frozen=True, slots=True)
class Decision:
    """One routing decision (a disclosure record) for one candidate recipient."""

    decided_at: datetime
    decision: str  # delivered | withheld | no_candidate
    recipient_agency: str | None
    recipient_org: str | None
    reason: str | None
    basis: str | None
    rule_id: str | None
    policy_version: str
    categories: tuple[str, ...]
    fields: tuple[str, ...]
    delivery_id: str | None
    emergency: bool


@dataclass(frozen=True, slots=True)
class Webhook:
    """A delivery's row of the webhook queue."""

    status: str  # pending | delivered | dead
    attempts: int
    last_status: int | None
    last_error: str | None
    enqueued_at: datetime
    next_attempt_at: datetime | None  # None: queued behind an earlier delivery about the person
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery as the audit store holds it, and its webhook hand-off."""

    delivery_id: str
    recipient_agency: str
    recipient_org: str
    delivered_at: datetime
    emergency: bool
    webhook_registered: bool
    webhook: Webhook | None


@dataclass(frozen=True, slots=True)
class SlaEffect:
    """What the SLA engine's state shows of the event for one rule."""

    effect: str  # opened (the event is the trigger) | fulfils | cancels | counted (a window)
    rule_id: str
    obligation_id: str | None
    status: str | None  # the obligation now: open | breached | closed
    trigger_event_id: str | None
    deadline: datetime | None
    breached_at: datetime | None
    closed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Sla:
    """Whether the SLA engine has applied the event (None: unknown, it is not stored) and what
    it did with it."""

    applied: bool | None
    effects: tuple[SlaEffect, ...]


@dataclass(frozen=True, slots=True)
class Alert:
    """An inbox alert naming the event."""

    alert_id: str
    rule_id: str
    kind: str
    role: str  # raised (the event triggered it) | involved (a window's event) | resolved
    status: str
    resolution: str | None
    recipient_agency: str | None
    recipient_org: str | None  # None: the unassigned queue
    audience: str
    deadline: datetime | None
    breached_at: datetime
    escalated: bool
    escalated_at: datetime | None
    acknowledged_at: datetime | None
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class EventTrace:
    """Everything the stores hold about one (source organisation, event_id)."""

    event_id: str
    source_org: str
    subject_key: str | None
    accepted: Accepted | None
    stored: Stored | None
    decisions: tuple[Decision, ...]
    deliveries: tuple[Delivery, ...]
    sla: Sla
    alerts: tuple[Alert, ...]


@dataclass(frozen=True, slots=True)
class Hop:
    """One line of the timeline; `at` is None where the store keeps no time for it."""

    at: datetime | None
    stage: str
    detail: str


# --- reading the stores ---------------------------------------------------------------------


async def trace(
    conn: Connection, event_id: str, rules: RuleSet, *, source_org: str | None = None
) -> list[EventTrace]:
    """The path of `event_id` for each source organisation that used it (or only `source_org`).

    Empty when no store knows the event. `rules` tell which obligations the event answers.
    """
    if source_org is not None:
        orgs = [source_org]
    else:
        # Without the source organisation the ledger and the event store are scanned by id.
        rows = await conn.fetch(
            "SELECT source_org FROM accepted_events WHERE event_id = $1 "
            "UNION SELECT source_org FROM events WHERE event_id = $1 "
            "UNION SELECT source_org FROM disclosures "
            "WHERE event_id = $1 AND event_type <> 'alert' "
            "ORDER BY 1",
            event_id,
        )
        orgs = [row["source_org"] for row in rows]
    traces = [await _trace_one(conn, event_id, org, rules) for org in orgs]
    return [t for t in traces if t.accepted or t.stored or t.decisions or t.deliveries]


async def _trace_one(
    conn: Connection, event_id: str, source_org: str, rules: RuleSet
) -> EventTrace:
    accepted = await _accepted(conn, event_id, source_org)
    stored, event = await _stored(conn, event_id, source_org)
    decisions = await _decisions(conn, event_id, source_org)
    deliveries = await _deliveries(conn, event_id, source_org)
    subject_key = stored.subject_key if stored else accepted.subject_key if accepted else None
    if subject_key is None:
        subject_key = await conn.fetchval(
            "SELECT subject_key FROM disclosures WHERE event_id = $1 AND source_org = $2 LIMIT 1",
            event_id,
            source_org,
        )
    sla = Sla(applied=None, effects=())
    alerts: tuple[Alert, ...] = ()
    if subject_key is not None:
        sla = await _sla(conn, subject_key, event_id, source_org, stored, event, rules)
        alerts = await _alerts(conn, subject_key, event_id, source_org)
    return EventTrace(
        event_id=event_id,
        source_org=source_org,
        subject_key=subject_key,
        accepted=accepted,
        stored=stored,
        decisions=decisions,
        deliveries=deliveries,
        sla=sla,
        alerts=alerts,
    )


async def _accepted(conn: Connection, event_id: str, source_org: str) -> Accepted | None:
    row = await conn.fetchrow(
        "SELECT accepted_at, event_type, subject_key FROM accepted_events "
        "WHERE source_org = $1 AND event_id = $2",
        source_org,
        event_id,
    )
    return None if row is None else Accepted(**dict(row))


async def _stored(
    conn: Connection, event_id: str, source_org: str
) -> tuple[Stored | None, dict[str, Any] | None]:
    """The stored row, and the event as the SLA rules read it (id, type, time, payload)."""
    row = await conn.fetchrow(
        "SELECT event_type, occurred_at, received_at, source_agency, source_system, subject_key, "
        "kafka_partition, kafka_offset, stored_at, payload FROM events "
        "WHERE source_org = $1 AND event_id = $2",
        source_org,
        event_id,
    )
    if row is None:
        return None, None
    fields = dict(row)
    payload = json.loads(fields.pop("payload"))
    stored = Stored(**fields)
    event = {
        "event_id": event_id,
        "event_type": stored.event_type,
        "occurred_at": rfc3339(stored.occurred_at),
        "payload": payload,
    }
    return stored, event


async def _decisions(conn: Connection, event_id: str, source_org: str) -> tuple[Decision, ...]:
    # Alert disclosures carry their trigger's event_id too; the alerts hop shows those.
    rows = await conn.fetch(
        "SELECT decided_at, decision, recipient_agency, recipient_org, reason, basis, rule_id, "
        "policy_version, categories, fields, delivery_id, emergency FROM disclosures "
        "WHERE event_id = $1 AND source_org = $2 AND event_type <> 'alert' "
        "ORDER BY decided_at, recipient_agency, recipient_org",
        event_id,
        source_org,
    )
    return tuple(
        Decision(
            **{
                **dict(row),
                "categories": tuple(row["categories"]),
                "fields": tuple(row["fields"]),
            }
        )
        for row in rows
    )


async def _deliveries(conn: Connection, event_id: str, source_org: str) -> tuple[Delivery, ...]:
    # The body holds the nin: only whether it carries an emergency is read from it.
    rows = await conn.fetch(
        "SELECT delivery_id, recipient_agency, recipient_org, delivered_at, "
        "body ? 'emergency' AS emergency FROM deliveries WHERE event_id = $1 "
        "ORDER BY delivered_at, delivery_id",
        event_id,
    )
    # Deliveries do not name the source; their id does (another source's id differs).
    rows = [
        row
        for row in rows
        if row["delivery_id"] == delivery_id(source_org, event_id, row["recipient_org"])
    ]
    ids = [row["delivery_id"] for row in rows]
    queued = {
        row["delivery_id"]: Webhook(**{k: v for k, v in dict(row).items() if k != "delivery_id"})
        for row in await conn.fetch(
            "SELECT delivery_id, status, attempts, last_status, last_error, enqueued_at, "
            "CASE WHEN next_attempt_at = 'infinity' THEN NULL ELSE next_attempt_at END "
            "AS next_attempt_at, finished_at FROM webhook_queue WHERE delivery_id = ANY($1)",
            ids,
        )
    }
    registered = {
        row["org_id"]
        for row in await conn.fetch(
            "SELECT org_id FROM webhooks WHERE org_id = ANY($1)",
            [row["recipient_org"] for row in rows],
        )
    }
    return tuple(
        Delivery(
            delivery_id=row["delivery_id"],
            recipient_agency=row["recipient_agency"],
            recipient_org=row["recipient_org"],
            delivered_at=row["delivered_at"],
            emergency=row["emergency"],
            webhook_registered=row["recipient_org"] in registered,
            webhook=queued.get(row["delivery_id"]),
        )
        for row in rows
    )


async def _sla(
    conn: Connection,
    subject_key: str,
    event_id: str,
    source_org: str,
    stored: Stored | None,
    event: Mapping[str, Any] | None,
    rules: RuleSet,
) -> Sla:
    applied = None
    if stored is not None:
        offset = await conn.fetchval(
            'SELECT "offset" FROM sla_offsets WHERE topic = $1 AND partition = $2',
            topics.EVENTS,
            stored.kafka_partition,
        )
        applied = offset is not None and offset >= stored.kafka_offset
    state = await conn.fetchval("SELECT state FROM sla_persons WHERE subject_key = $1", subject_key)
    deadlines = {
        row["obligation_id"]: row["deadline"]
        for row in await conn.fetch(
            "SELECT obligation_id, deadline FROM sla_deadlines WHERE subject_key = $1",
            subject_key,
        )
    }
    effects = sla_effects(
        json.loads(state) if state else {}, event_id, source_org, event, rules, deadlines
    )
    return Sla(applied=applied, effects=tuple(effects))


async def _alerts(
    conn: Connection, subject_key: str, event_id: str, source_org: str
) -> tuple[Alert, ...]:
    # Never the nin column: the recipient may see the person, a trace's reader may not.
    rows = await conn.fetch(
        "SELECT alert_id, rule_id, kind, status, resolution, recipient_agency, recipient_org, "
        "audience, deadline, breached_at, escalated, escalated_at, acknowledged_at, "
        "resolved_at, event_ids FROM alerts WHERE subject_key = $1 AND $2 = ANY(event_ids) "
        "ORDER BY breached_at, alert_id",
        subject_key,
        event_id,
    )
    alerts = []
    for row in rows:
        fields = dict(row)
        event_ids = fields.pop("event_ids")
        role = alert_role(fields, event_ids, event_id, source_org)
        alerts.append(Alert(role=role, **fields))
    return tuple(alerts)


# --- pure parts -----------------------------------------------------------------------------


def alert_role(
    alert: Mapping[str, Any], event_ids: Sequence[str], event_id: str, source_org: str
) -> str:
    """Why an alert names the event: it raised it, it is one of a window's events, or the
    engine resolved the alert on it (a late fulfilment or a cancellation appends its id)."""
    trigger = {"event_id": event_id, "source": {"org_id": source_org}}
    if alert["alert_id"] == alert_id(alert["rule_id"], trigger, alert["recipient_org"]):
        return "raised"
    if alert["status"] == "resolved" and len(event_ids) > 1 and event_ids[-1] == event_id:
        return "resolved"
    return "involved"


def sla_effects(
    state: Mapping[str, Any],
    event_id: str,
    source_org: str,
    event: Mapping[str, Any] | None,
    rules: RuleSet,
    deadlines: Mapping[str, datetime],
) -> list[SlaEffect]:
    """What one person's SLA state (`carebus.domain.obligations.SlaState` JSON) shows of the event.

    Obligations it triggered; obligations it fulfils or cancels (the state does not record the
    closing event, so the rules' links decide, as the engine does); window rules that count
    it. `deadlines` is the due scan's index, which holds the open obligations.
    """
    effects = []
    for oid, obligation in sorted((state.get("obligations") or {}).items()):
        trigger = obligation["trigger"]
        if trigger["event_id"] == event_id and trigger["source"]["org_id"] == source_org:
            effect = "opened"
        elif event is not None:
            answer = _answers(rules, obligation["rule_id"], event, trigger)
            if answer is None:
                continue
            effect = answer
        else:
            continue
        deadline = deadlines.get(oid) or _time(obligation.get("deadline"))
        effects.append(
            SlaEffect(
                effect=effect,
                rule_id=obligation["rule_id"],
                obligation_id=oid,
                status=obligation["status"],
                trigger_event_id=trigger["event_id"],
                deadline=deadline,
                breached_at=_time(obligation.get("breached_at")),
                closed_at=_time(obligation.get("closed_at")),
            )
        )
    for rule_id, window in sorted((state.get("windows") or {}).items()):
        if any(entry[1] == event_id for entry in window.get("events") or ()):
            effects.append(SlaEffect("counted", rule_id, None, None, None, None, None, None))
    return effects


def _answers(
    rules: RuleSet, rule_id: str, event: Mapping[str, Any], trigger: Mapping[str, Any]
) -> str | None:
    rule = rules.rule(rule_id)
    if rule is None:
        return None
    if parse_rfc3339(event["occurred_at"]) < parse_rfc3339(trigger["occurred_at"]):
        return None  # the engine never lets an earlier event answer a later trigger
    if any(links_to(link, event, trigger) for link in rule.fulfilled_by):
        return "fulfils"
    if any(links_to(link, event, trigger) for link in rule.cancelled_by):
        return "cancels"
    return None


def _time(value: str | None) -> datetime | None:
    return None if value is None else parse_rfc3339(value)


def hops(trace: EventTrace) -> list[Hop]:
    """The trace as timeline lines, in the order the bus handles an event."""
    return [
        *_received(trace),
        *_routed(trace),
        *_delivered(trace),
        *_tracked(trace.sla),
        *(hop for alert in trace.alerts for hop in _alerted(alert)),
    ]


def _received(trace: EventTrace) -> list[Hop]:
    found = []
    if trace.accepted is not None:
        found.append(
            Hop(
                trace.accepted.accepted_at,
                "received",
                f"gateway accepted {trace.accepted.event_type} from {trace.source_org}",
            )
        )
    else:
        found.append(Hop(None, "received", "not in the gateway's ledger"))
    stored = trace.stored
    if stored is not None:
        system = f" ({stored.source_system})" if stored.source_system else ""
        found.append(
            Hop(
                stored.stored_at,
                "stored",
                f"event store: {stored.event_type} from {stored.source_agency} "
                f"{trace.source_org}{system}, occurred {_stamp(stored.occurred_at)}, "
                f"{topics.EVENTS} partition {stored.kafka_partition} "
                f"offset {stored.kafka_offset}",
            )
        )
    else:
        found.append(Hop(None, "stored", "not in the event store"))
    return found


def _routed(trace: EventTrace) -> list[Hop]:
    if not trace.decisions:
        return [Hop(None, "routed", "no routing decision stored")]
    found = []
    for d in trace.decisions:
        policy = f"rule {d.rule_id or '-'}, policy {d.policy_version}"
        if d.decision == "no_candidate":
            detail = f"no candidate recipient (policy {d.policy_version})"
        elif d.decision == "delivered":
            emergency = " in an emergency" if d.emergency else ""
            fields = ", ".join(d.fields) or "none"
            detail = (
                f"{_org(d.recipient_agency, d.recipient_org)}: delivered{emergency} on "
                f"{d.basis} basis, {policy}; categories {', '.join(d.categories)}; "
                f"fields {fields}"
            )
        else:
            detail = (
                f"{_org(d.recipient_agency, d.recipient_org)}: {d.decision} ({d.reason}), {policy}"
            )
        found.append(Hop(d.decided_at, "routed", detail))
    return found


def _delivered(trace: EventTrace) -> list[Hop]:
    found = []
    stored = {delivery.delivery_id for delivery in trace.deliveries}
    for delivery in trace.deliveries:
        whom = _org(delivery.recipient_agency, delivery.recipient_org)
        emergency = " (emergency)" if delivery.emergency else ""
        found.append(
            Hop(
                delivery.delivered_at,
                "delivered",
                f"{whom}: delivery {delivery.delivery_id}{emergency} in the audit store",
            )
        )
        found.append(_handed_off(delivery))
    for d in trace.decisions:
        if d.delivery_id is not None and d.delivery_id not in stored:
            whom = _org(d.recipient_agency, d.recipient_org)
            found.append(
                Hop(None, "delivered", f"{whom}: delivery {d.delivery_id} not in the audit store")
            )
    return found


def _handed_off(delivery: Delivery) -> Hop:
    whom = _org(delivery.recipient_agency, delivery.recipient_org)
    webhook = delivery.webhook
    if webhook is None:
        if delivery.webhook_registered:
            return Hop(None, "webhook", f"{whom}: not in the webhook queue")
        return Hop(None, "webhook", f"{whom}: no webhook; available via GET /v1/deliveries")
    tries = f"{webhook.attempts} attempt{'' if webhook.attempts == 1 else 's'}"
    if webhook.status == "delivered":
        return Hop(
            webhook.finished_at,
            "webhook",
            f"{whom}: delivered (HTTP {webhook.last_status}) after {tries}",
        )
    if webhook.status == "dead":
        return Hop(
            webhook.finished_at, "webhook", f"{whom}: dead after {tries}: {webhook.last_error}"
        )
    if webhook.next_attempt_at is None:
        return Hop(
            webhook.enqueued_at,
            "webhook",
            f"{whom}: queued behind an earlier delivery about the person",
        )
    last = f", last {webhook.last_error}" if webhook.last_error else ""
    return Hop(
        webhook.enqueued_at,
        "webhook",
        f"{whom}: pending after {tries}{last}; next attempt {_stamp(webhook.next_attempt_at)}",
    )


def _tracked(sla: Sla) -> list[Hop]:
    if sla.applied is None:
        found = [Hop(None, "sla", "not known whether the SLA engine applied it (not stored)")]
    elif not sla.applied:
        found = [Hop(None, "sla", "not applied by the SLA engine yet")]
    elif not sla.effects:
        found = [Hop(None, "sla", "applied; it opened, answered and counted in no rule")]
    else:
        found = []
    for effect in sla.effects:
        if effect.effect == "counted":
            found.append(Hop(None, "sla", f"counted in window rule {effect.rule_id}"))
            continue
        state = ", ".join(
            f"{name} {_stamp(at)}"
            for name, at in (("breached", effect.breached_at), ("closed", effect.closed_at))
            if at is not None
        ) or str(effect.status)
        deadline = f", deadline {_stamp(effect.deadline)}" if effect.deadline else ""
        if effect.effect == "opened":
            found.append(
                Hop(None, "sla", f"opened obligation {effect.obligation_id}{deadline}: {state}")
            )
        else:
            found.append(
                Hop(
                    effect.closed_at,
                    "sla",
                    f"{effect.effect} obligation {effect.obligation_id} of "
                    f"{effect.trigger_event_id}: {state}",
                )
            )
    return found


def _alerted(alert: Alert) -> list[Hop]:
    whom = (
        _org(alert.recipient_agency, alert.recipient_org)
        if alert.recipient_org
        else "the unassigned queue"
    )
    deadline = f", deadline {_stamp(alert.deadline)}" if alert.deadline else ""
    if alert.role == "resolved":
        return [
            Hop(
                alert.resolved_at,
                "resolved",
                f"{alert.alert_id} ({alert.rule_id}) to {whom} resolved by this event "
                f"({alert.resolution})",
            )
        ]
    among = " among its events" if alert.role == "involved" else ""
    escalated = ", escalated" if alert.escalated else ""
    found = [
        Hop(
            alert.breached_at,
            "alerted",
            f"{alert.alert_id} ({alert.rule_id}, {alert.kind}){among} to {whom} "
            f"[{alert.audience}]{deadline}: {alert.status}{escalated}",
        )
    ]
    if alert.escalated_at is not None:
        found.append(Hop(alert.escalated_at, "escalated", alert.alert_id))
    if alert.acknowledged_at is not None:
        found.append(Hop(alert.acknowledged_at, "acknowledged", alert.alert_id))
    if alert.resolved_at is not None:
        found.append(Hop(alert.resolved_at, "resolved", f"{alert.alert_id} ({alert.resolution})"))
    return found


def render(trace: EventTrace) -> str:
    """The trace as text: a heading, then one line per hop (time, stage, what happened)."""
    heading = f"event {trace.event_id} from {trace.source_org}"
    if trace.stored is not None:
        heading += f": {trace.stored.event_type}"
    elif trace.accepted is not None:
        heading += f": {trace.accepted.event_type}"
    if trace.subject_key:
        heading += f", subject_key {trace.subject_key}"
    lines = [heading]
    for hop in hops(trace):
        at = _stamp(hop.at) if hop.at else _NO_TIME
        lines.append(f"{at}  {hop.stage:<{STAGE_WIDTH}} {hop.detail}")
    return "\n".join(lines)


def trace_json(trace: EventTrace) -> dict[str, Any]:
    """The trace as a JSON-ready document (times as RFC 3339 in UTC)."""
    return _plain(dataclasses.asdict(trace))  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return _stamp(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _org(agency: str | None, org_id: str | None) -> str:
    return f"{agency} {org_id}"
