"""Retraction: an organisation withdraws one of its own events about a person (pure, no I/O).

A `retraction` names the `retracted_event_id` of an event its sender sent earlier about the same
person (sent about the wrong person, or in error). The gateway judges it against its ledger
(`retraction_refusal`); the router remembers, per person, who got each recent event
(`RecipientMemory`) and delivers the retraction to exactly those organisations
(`route_retraction`), on the basis `retraction`, whatever consent says now: they hold the data
and must delete it. The SLA engine withdraws what the event opened
(`carebus.domain.obligations`), and the event store marks it retracted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

from carebus.domain.authority import Refusal
from carebus.domain.deliveries import delivery_id, no_candidate_audit_id
from carebus.domain.events import RETRACTION
from carebus.domain.records import Delivery, Disclosure, Organisation
from carebus.domain.routing import Routing

__all__ = [
    "ACTION",
    "BASIS",
    "MAX_REMEMBERED",
    "MAX_REMEMBERED_TOTAL",
    "RETRACTION",
    "RULE_ID",
    "RULE_OWN_EVENT",
    "RULE_REPEATED",
    "RecipientMemory",
    "Retracted",
    "Standing",
    "retraction_refusal",
    "route_retraction",
]

# The routing basis and rule id a retraction's deliveries and disclosures carry: not a rule of
# policy/routing.yaml, since the recipients are fixed by who got the retracted event.
BASIS: Final = "retraction"
RULE_ID: Final = "retraction"
# What a recipient must do with the retracted event (the delivery's `payload.action`).
ACTION: Final = "delete"
# The authority rules a retraction can break (policy/authority.yaml explains each).
RULE_OWN_EVENT: Final = "retraction.own_event"
RULE_REPEATED: Final = "retraction.repeated"
# Events per person and sender whose recipients the router remembers: a retraction of an older
# event finds no recipients (audited as `no_candidate`; docs/design.md). Per sender, so that no
# organisation can push another's events out of the memory by sending many of its own; and at
# most MAX_REMEMBERED_TOTAL per person whatever the senders, so the state stays bounded.
MAX_REMEMBERED: Final = 200
MAX_REMEMBERED_TOTAL: Final = 2000
_FIELD: Final = "payload.retracted_event_id"
_FIELDS: Final = ("retracted_event_id", "reason")


@dataclass(frozen=True, slots=True)
class Retracted:
    """What the gateway's ledger knows of the event a retraction names."""

    subject_key: str
    event_type: str


@dataclass(frozen=True, slots=True)
class Standing:
    """The retraction already accepted for an event: its event_id and reason."""

    retraction_event_id: str
    reason: str


def retraction_refusal(
    *,
    subject_key: str,
    retraction_event_id: str,
    original: Retracted | None,
    standing: Standing | None,
    path: str = "",
) -> Refusal | None:
    """Why a retraction is refused, or None to accept it.

    `original` is the sender's own event of that id (None: it sent none), `standing` a
    retraction of it accepted before. An unknown event, another organisation's (looked up as the
    sender's own, so it is unknown too) and one about another person get the same answer: the
    refusal must not tell a sender whether someone else sent an event of that id about anyone.
    The same retraction again (same event_id) passes: the ledger answers it as a repeat.
    """
    if original is None or original.subject_key != subject_key:
        return Refusal(
            RULE_OWN_EVENT,
            f"{path}{_FIELD}",
            "must be the event_id of an event your organisation sent about this person",
            status=422,
        )
    if original.event_type == RETRACTION:
        return Refusal(RULE_OWN_EVENT, f"{path}{_FIELD}", "a retraction cannot be retracted", 422)
    if standing is not None and standing.retraction_event_id != retraction_event_id:
        return Refusal(
            RULE_REPEATED,
            f"{path}{_FIELD}",
            f"was already retracted by event {standing.retraction_event_id}",
            status=409,
        )
    return None


@dataclass(frozen=True, slots=True)
class RecipientMemory:
    """Who got each of a person's recent events: (source_org, event_id) -> event type and the
    organisations delivered to, oldest first, at most MAX_REMEMBERED events per sender
    (JSON-ready)."""

    entries: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = ()

    def recipients_of(self, source_org: str, event_id: str) -> tuple[str, list[Organisation]]:
        """The event type and recipients of that event; ("", []) when none is remembered."""
        for org, eid, event_type, recipients in reversed(self.entries):
            if (org, eid) == (source_org, event_id):
                return event_type, [{"agency": a, "org_id": o} for a, o in recipients]
        return "", []

    def remember(
        self, event_record: Mapping[str, Any], deliveries: Iterable[Delivery]
    ) -> RecipientMemory:
        """This memory with the event's recipients, the newest entry (an event routed again adds
        whoever it reached now to those it reached before); itself when there is nothing new."""
        identity = (str(event_record["source"]["org_id"]), str(event_record["event_id"]))
        recipients = {(d["recipient"]["agency"], d["recipient"]["org_id"]) for d in deliveries}
        if not recipients or event_record["event_type"] == RETRACTION:
            return self
        kept = []
        for entry in self.entries:
            if (entry[0], entry[1]) == identity:
                # Routed again (a replay after a crash): whoever got it either time holds it.
                recipients |= set(entry[3])
            else:
                kept.append(entry)
        entry = (*identity, str(event_record["event_type"]), tuple(sorted(recipients)))
        if entry in self.entries:
            return self
        kept.append(entry)
        senders = [e for e in kept if e[0] == identity[0]]
        if len(senders) > MAX_REMEMBERED:
            kept.remove(senders[0])  # this sender's oldest
        return RecipientMemory(tuple(kept[-MAX_REMEMBERED_TOTAL:]))

    def to_json(self) -> list[Any]:
        return [
            [org, eid, event_type, [list(recipient) for recipient in recipients]]
            for org, eid, event_type, recipients in self.entries
        ]

    @classmethod
    def from_json(cls, data: Sequence[Any] | None) -> RecipientMemory:
        return cls(
            tuple(
                (org, eid, event_type, tuple((agency, org_id) for agency, org_id in recipients))
                for org, eid, event_type, recipients in data or ()
            )
        )


def route_retraction(
    event_record: Mapping[str, Any], memory: RecipientMemory, policy_version: str, now: datetime
) -> Routing:
    """The deliveries and disclosures of a retraction (Avro wire record): one to every
    organisation that got the retracted event, or a single `no_candidate` disclosure."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    source = event_record["source"]
    payload = event_record["payload"]
    retracted_type, recipients = memory.recipients_of(
        source["org_id"], payload["retracted_event_id"]
    )
    notice = {
        "retracted_event_id": payload["retracted_event_id"],
        "reason": payload["reason"],
        "retracted_event_type": retracted_type,
        "action": ACTION,
    }
    payload_json = orjson.dumps(notice).decode()
    deliveries: list[Delivery] = []
    disclosures: list[Disclosure] = []
    for recipient in recipients:
        identity = delivery_id(source["org_id"], event_record["event_id"], recipient["org_id"])
        deliveries.append(
            {
                "delivery_id": identity,
                "event_id": event_record["event_id"],
                "event_type": RETRACTION,
                "occurred_at": event_record["occurred_at"],
                "decided_at": now,
                "source": {
                    "agency": source["agency"],
                    "org_id": source["org_id"],
                    "system": source.get("system"),
                },
                "recipient": recipient,
                "subject": {"nin": event_record["subject"]["nin"]},
                "subject_key": event_record["subject_key"],
                "basis": BASIS,
                "categories": ["logistics"],
                "fields": list(_FIELDS),
                "payload_json": payload_json,
                "emergency": None,
                "rule_id": RULE_ID,
                "policy_version": policy_version,
            }
        )
        disclosures.append(_disclosure(event_record, recipient, identity, policy_version, now))
    if not disclosures:
        disclosures.append(_disclosure(event_record, None, None, policy_version, now))
    return Routing(deliveries=deliveries, disclosures=disclosures)


def _disclosure(
    event_record: Mapping[str, Any],
    recipient: Organisation | None,
    identity: str | None,
    policy_version: str,
    now: datetime,
) -> Disclosure:
    source_org = event_record["source"]["org_id"]
    delivered = recipient is not None
    return {
        "audit_id": identity or no_candidate_audit_id(source_org, event_record["event_id"]),
        "event_id": event_record["event_id"],
        "event_type": RETRACTION,
        "source_org": source_org,
        "subject_key": event_record["subject_key"],
        "recipient": recipient,
        "decision": "delivered" if delivered else "no_candidate",
        "reason": None,
        "basis": BASIS if delivered else None,
        "categories": ["logistics"] if delivered else [],
        "fields": list(_FIELDS) if delivered else [],
        "rule_id": RULE_ID if delivered else None,
        "policy_version": policy_version,
        "decided_at": now,
        "delivery_id": identity,
        "emergency": False,
    }
