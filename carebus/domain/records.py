"""The names of the records that flow between carebus's services, declared once.

A record on a carebus topic is named by its Avro schema (`schemas/avro/`), and the name says what
it is: the router folds consent, care-team and register changes into a person's state and routes
events; the sinks store deliveries, disclosures, refusals and alerts by name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, NotRequired, TypedDict

NAMESPACE: Final = "no.carebus.v1"

CONSENT_CHANGE: Final = f"{NAMESPACE}.ConsentChange"
CARE_TEAM_CHANGE: Final = f"{NAMESPACE}.CareTeamChange"
REGISTER_CHANGE: Final = f"{NAMESPACE}.RegisterChange"
DELIVERY: Final = f"{NAMESPACE}.Delivery"
DISCLOSURE: Final = f"{NAMESPACE}.Disclosure"
AUTHORITY_REFUSAL: Final = f"{NAMESPACE}.AuthorityRefusal"
ALERT: Final = f"{NAMESPACE}.Alert"
DEAD_LETTER: Final = f"{NAMESPACE}.DeadLetter"


def event_schema_name(event_type: str) -> str:
    """The full name of the record schema for `event_type` (`admission` → `...AdmissionEvent`)."""
    return f"{NAMESPACE}.{''.join(part.capitalize() for part in event_type.split('_'))}Event"


# --- the records themselves ------------------------------------------------------------------
#
# Each TypedDict is the shape of one Avro record of schemas/avro/ as the codec writes and reads
# it (timestamps as aware datetimes, enums as their symbols); tests/unit/test_records.py checks
# every one against its schema, field by field. TypedDicts, not dataclasses: the router builds
# ~4 of them per event and hands them to the compiled Avro writer, which takes mappings, so a
# TypedDict costs nothing at run time while mypy checks every key.


class Organisation(TypedDict):
    agency: str
    org_id: str


class Source(TypedDict):
    agency: str
    org_id: str
    system: str | None


class Subject(TypedDict):
    nin: str


class Emergency(TypedDict):
    justification: str
    accountable: str
    recipients: list[Organisation]


class EventRecord(TypedDict):
    """An event on care.events.v1 (`payload` is the event type's own record)."""

    event_id: str
    event_type: str
    occurred_at: datetime
    received_at: datetime
    source: Source
    subject: Subject
    subject_key: str
    emergency: Emergency | None
    payload: dict[str, Any]


class EmergencyNotice(TypedDict):
    justification: str
    accountable: str


class Delivery(TypedDict):
    """What one organisation receives of one event (care.deliveries.<agency>.v1)."""

    delivery_id: str
    event_id: str
    event_type: str
    occurred_at: datetime
    decided_at: datetime
    source: Source
    recipient: Organisation
    subject: Subject
    subject_key: str
    basis: str
    categories: list[str]
    fields: list[str]
    payload_json: str
    emergency: EmergencyNotice | None
    rule_id: str
    policy_version: str


class Disclosure(TypedDict):
    """One routing decision for one candidate recipient, delivered or withheld (care.audit.v1)."""

    audit_id: str
    event_id: str
    event_type: str
    source_org: str
    subject_key: str
    recipient: Organisation | None
    decision: str
    reason: str | None
    basis: str | None
    categories: list[str]
    fields: list[str]
    rule_id: str | None
    policy_version: str
    decided_at: datetime
    delivery_id: str | None
    emergency: bool


class ConsentRecipient(TypedDict):
    agency: str
    org_id: str | None


class ConsentChange(TypedDict):
    """A consent given or withdrawn, or an objection, recorded by the registry."""

    change_id: str
    subject_key: str
    recipient: ConsentRecipient
    categories: list[str]
    status: str
    valid_from: datetime
    valid_to: datetime | None
    recorded_by: str
    recorded_by_org: str
    recorded_at: datetime


class CareTeamChange(TypedDict):
    """An organisation joining or leaving a person's care team, recorded by the registry."""

    change_id: str
    subject_key: str
    member: Organisation
    role: str
    status: str
    recorded_by_org: str
    recorded_at: datetime


class RegisterChange(TypedDict):
    """An entry of the population register or the GP list, set or cleared by the operator."""

    change_id: str
    subject_key: str
    register: str
    organisation: Organisation | None
    recorded_by_org: str
    recorded_at: datetime


class Alert(TypedDict):
    """A deadline alert or a notice to a privacy officer (care.alerts.v1)."""

    alert_id: str
    rule_id: str
    title: str
    kind: str
    status: str
    resolution: str | None
    subject_key: str
    subject: Subject | None
    recipient: Organisation | None
    recipient_role: NotRequired[str | None]
    audience: str
    contact: Organisation | None
    deadline: datetime | None
    breached_at: datetime
    escalate_at: datetime
    summary: str
    event_ids: list[str]
    rules_version: str
    changed_at: datetime


class DisclosureJson(TypedDict):
    """A Disclosure as the SLA engine keeps it beside an alert, times as RFC 3339 text."""

    audit_id: str
    event_id: str
    event_type: str
    source_org: str
    subject_key: str
    recipient: Organisation | None
    decision: str
    reason: str | None
    basis: str | None
    categories: list[str]
    fields: list[str]
    rule_id: str | None
    policy_version: str
    decided_at: str
    delivery_id: str | None
    emergency: bool


class AlertJson(TypedDict):
    """An Alert as the SLA engine builds and keeps it (in a person's state, as JSON): times as
    RFC 3339 text, and the disclosure to audit when the alert tells another organisation of
    the person. `services.sla.app.alert_record` makes the Avro `Alert` of it."""

    alert_id: str
    rule_id: str
    title: str
    kind: str
    status: str
    resolution: str | None
    subject_key: str
    subject: Subject | None
    recipient: Organisation | None
    # The recipients chain role that chose the recipient (None: the unassigned queue); absent
    # in alerts raised before issue 17's contact persons.
    recipient_role: NotRequired[str | None]
    audience: str
    contact: Organisation | None
    deadline: str | None
    breached_at: str
    escalate_at: str
    summary: str
    event_ids: list[str]
    rules_version: str
    changed_at: str
    disclosure: NotRequired[DisclosureJson]


class Obligation(TypedDict):
    """One obligation of a person's SLA state: open until fulfilled, cancelled or breached."""

    rule_id: str
    identity: str
    trigger: dict[str, Any]  # the trigger event, JSON form
    deadline: str | None  # None while waiting for the event that sets it
    status: str  # open | breached | closed | rule_removed | retracted (its trigger withdrawn)
    breached_at: str | None
    alerts: list[AlertJson]  # raised when breached, re-published when resolved
    closed_at: NotRequired[str]


class Window(TypedDict):
    """A window rule's count for one person: the events inside it, and the last episode."""

    events: list[list[str]]  # [occurred_at, event_id], oldest first
    episode_at: str | None


# The record type of each schema name, for the schema test and for readers that dispatch by name.
RECORD_TYPES: Final[dict[str, type]] = {
    DELIVERY: Delivery,
    DISCLOSURE: Disclosure,
    CONSENT_CHANGE: ConsentChange,
    CARE_TEAM_CHANGE: CareTeamChange,
    REGISTER_CHANGE: RegisterChange,
    ALERT: Alert,
}
