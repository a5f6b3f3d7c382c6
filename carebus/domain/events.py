"""The event contract: validation and normalisation of incoming JSON events; the wire record."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from carebus.domain.agencies import AGENCIES
from carebus.domain.identity import validate_nin
from carebus.domain.text import (
    CONTROL_PROBLEM,
    UNSHOWN_FIELD_PROBLEM,
    identifier_problem,
    shown_field_name,
    text_problem,
)

__all__ = [
    "AGENCIES",
    "CONTROL_PROBLEM",
    "EVENT_TYPES",
    "EXAMPLE_PAYLOADS",
    "PAYLOAD_FIELDS",
    "POLICY_EVENT_TYPES",
    "RETRACTION",
    "RETRACTION_REASONS",
    "Event",
    "FieldSpec",
    "Problem",
    "check_identifier",
    "check_text",
    "content_fingerprint",
    "event_to_json",
    "event_to_record",
    "given",
    "parse_event",
    "record_to_json",
    "rfc3339",
]

EVENT_TYPES: Final = (
    "admission",
    "discharge",
    "police_callout",
    "housing_incident",
    "ip_update",
    "discharge_ready",
    "discharge_ready_withdrawn",
    "health_info_sent",
    "municipal_reply",
    "housing_work_started",
    "epikrise_sent",
    "followup_contact",
    "application_received",
    "application_preliminary_reply",
    "application_decided",
    "retraction",
    "followup_scheduled",
    "treatment_interrupted",
    "prison_release",
    "housing_waitlisted",
    "temporary_housing_started",
    "temporary_housing_ended",
    "tenancy_at_risk",
    "brukerplan_assessment",
    "somatic_check_done",
    "somatic_referral",
)
# An event that withdraws another event of the same sender about the same person
# (`carebus.domain.retraction`); it is routed to whoever got that event, not by the policy.
RETRACTION: Final = "retraction"
# Why an event is retracted. No free text: a note would be personal data in every recipient's
# system and in the audit trail.
RETRACTION_REASONS: Final = ("wrong_person", "sent_in_error", "duplicate", "other")
# The event types `policy/routing.yaml` routes (and may grant in an emergency): all but the
# retraction.
POLICY_EVENT_TYPES: Final = tuple(t for t in EVENT_TYPES if t != RETRACTION)

# `unknown`: the sender's message does not say (a PLO logistics message carries no health
# information; an HL7 v2 or FHIR admission may have no reason code). `possible_suicide_attempt`:
# suicidal intent not (yet) established, which the parliamentary proposal names beside overdose
# and suicide attempt as an admission the municipality must be warned of at discharge (seed 001,
# proposal 3); added last, like every symbol after the first release.
ADMISSION_REASONS: Final = (
    "overdose",
    "suicide_attempt",
    "psychosis",
    "withdrawal",
    "other",
    "unknown",
    "possible_suicide_attempt",
)
ADMISSION_KINDS: Final = ("voluntary", "involuntary", "unknown")
HOUSING_STATUSES: Final = ("stable", "unstable", "homeless", "unknown")
# temporary_housing (issue 17, item 2): an emergency shelter, a low-threshold place, a hotel or
# campsite the municipality arranged; a housing obligation opens as for homelessness.
DESTINATIONS: Final = (
    "home",
    "municipal_housing",
    "institution",
    "homeless",
    "temporary_housing",
    "unknown",
)
POLICE_CALLOUT_KINDS: Final = (
    "violence",
    "threats",
    "property_damage",
    "noise",
    "welfare_check",
    "assist_health",
    "other",
)
LOCATION_TYPES: Final = ("home", "public", "institution")
HOUSING_INCIDENT_KINDS: Final = (
    "property_damage",
    "fire",
    "violence",
    "threats",
    "noise",
    "eviction_warning",
    "other",
)
SEVERITIES: Final = ("low", "medium", "high")
PLAN_STATUSES: Final = ("active", "closed")
FOLLOWUP_KINDS: Final = ("meeting", "phone", "home_visit")
APPLICATION_OUTCOMES: Final = ("granted", "denied", "partial")
# How the stay ended. Left out, it is unknown: the wire record says `unknown` (FieldSpec.absent),
# which a sender cannot write. A self-discharge or one against advice is clinical information.
DISCHARGE_KINDS: Final = ("planned", "self_discharge", "against_advice", "transfer")
# How a treatment was broken off. `missed_appointments`: by the sender's own threshold (DESIGN
# "Payload fields"; the documented default is two consecutive missed appointments).
INTERRUPTION_KINDS: Final = ("dropout", "missed_appointments", "other")
# What an application is for; `other` where none of these fits.
SERVICE_KINDS: Final = (
    "housing",
    "housing_allowance",
    "home_services",
    "mental_health_substance_services",
    "social_assistance",
    "other",
)
# The housing pathway (issue 17 item 2): a waiting list's kind of dwelling, a temporary stay's
# kind (a training flat is planned for 1½-2 years, seed 003, and so not "temporary" in the
# three-month sense), how a stay ended, and why a tenancy is at risk.
WAITLIST_HOUSING_KINDS: Final = ("ordinary", "supported", "staffed", "other")
TEMPORARY_HOUSING_KINDS: Final = (
    "emergency_shelter",
    "low_threshold",
    "hotel_or_campsite",
    "training_flat",
    "other",
)
TEMPORARY_HOUSING_OUTCOMES: Final = (
    "permanent_housing",
    "other_temporary",
    "institution",
    "homeless",
    "unknown",
)
TENANCY_RISK_CAUSES: Final = (
    "rent_arrears",
    "eviction_notice",
    "eviction_petition",
    "conduct",
    "other",
)
# Brukerplan (seed 004): the municipality's yearly survey scores eight life domains green,
# yellow or red. The first three of BRUKERPLAN_HEALTH_DOMAINS are health information.
BRUKERPLAN_SCORES: Final = ("green", "yellow", "red")
BRUKERPLAN_DOMAINS: Final = (
    "housing",
    "meaningful_activity",
    "finances",
    "physical_health",
    "mental_health",
    "substance_use",
    "social_functioning",
    "network",
)
BRUKERPLAN_HEALTH_DOMAINS: Final = ("physical_health", "mental_health", "substance_use")

# Physical health (issue 17 item 5): a check of somatic health and lifestyle, and a referral
# it led to. `targeted`: a check for a known complaint or risk; `annual`: the yearly check.
SOMATIC_CHECK_KINDS: Final = ("annual", "targeted", "other")
SOMATIC_REFERRAL_TARGETS: Final = ("specialist_somatic", "dental", "substitution_clinic", "other")

MAX_TEXT: Final = 200
MAX_JUSTIFICATION: Final = 2000

# "text" is free text; "identifier" is text a client chose as a key of its own (a housing unit,
# a plan, an application), which must not carry a national identity number.
Kind = Literal[
    "enum",
    "bool",
    "org",
    "time",
    "event_ref",
    "text",
    "identifier",
    "organisation",
    "organisations",
]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One payload field of the contract: its kind, whether it is required, its symbols.

    `absent` is the wire record's symbol for an optional enum left out, where the Avro field is
    the enum itself (with that symbol as its default) rather than a union with null: a sender
    cannot write it, and nothing delivers it (`given`).
    """

    kind: Kind
    required: bool = True
    symbols: tuple[str, ...] = ()
    absent: str | None = None


def _enum(*symbols: str) -> FieldSpec:
    return FieldSpec("enum", symbols=symbols)


def given(spec: FieldSpec, value: object) -> bool:
    """Whether a wire record's `value` for a field of `spec` says anything: it is neither null
    nor the symbol that stands for the field left out."""
    return value is not None and (spec.absent is None or value != spec.absent)


_BOOL: Final = FieldSpec("bool")
_ORG: Final = FieldSpec("org")
_TIME: Final = FieldSpec("time")
_EVENT_REF: Final = FieldSpec("event_ref")
_TEXT: Final = FieldSpec("text")
_IDENTIFIER: Final = FieldSpec("identifier")
_OPTIONAL_TIME: Final = FieldSpec("time", required=False)
_OPTIONAL_IDENTIFIER: Final = FieldSpec("identifier", required=False)

# DESIGN.md "Payload fields", in its order. Optional fields may be added later; none renamed
# or removed, because the Avro schemas and every recipient's integration depend on them.
PAYLOAD_FIELDS: Final[Mapping[str, Mapping[str, FieldSpec]]] = {
    "admission": {
        "reason": _enum(*ADMISSION_REASONS),
        "admission_kind": _enum(*ADMISSION_KINDS),
        "housing_status": _enum(*HOUSING_STATUSES),
        "needs_municipal_services": _BOOL,
        "home_municipality_org": _ORG,
        "ward": FieldSpec("text", required=False),
        "expected_discharge_at": _OPTIONAL_TIME,
    },
    "discharge_ready": {
        "admission_event_id": _EVENT_REF,
        "needs_municipal_services": _BOOL,
        "housing_status": _enum(*HOUSING_STATUSES),
    },
    "discharge_ready_withdrawn": {"discharge_ready_event_id": _EVENT_REF},
    "discharge": {
        "admission_event_id": _EVENT_REF,
        "destination": _enum(*DESTINATIONS),
        "followup_at": _OPTIONAL_TIME,
        "crisis_plan": _BOOL,
        "kind": FieldSpec("enum", required=False, symbols=DISCHARGE_KINDS, absent="unknown"),
        # Whom to contact at the DPS (name, role, phone, as the DPS writes it): free text that
        # names health personnel, sealed like every free text (carebus.wire.sealing).
        "dps_contact": FieldSpec("text", required=False),
        "crisis_plan_id": _OPTIONAL_IDENTIFIER,
        "crisis_plan_reviewed_at": _OPTIONAL_TIME,
        # Who holds the crisis plan (a health service; the gateway checks the directory).
        "crisis_plan_owner": FieldSpec("organisation", required=False),
    },
    "police_callout": {
        "kind": _enum(*POLICE_CALLOUT_KINDS),
        "injuries": _BOOL,
        "location_type": _enum(*LOCATION_TYPES),
        "housing_unit_id": FieldSpec("identifier", required=False),
        # The housing site (a building or project of several units) the callout was to: the
        # place whose pattern carebus.domain.places counts, the unit where it is left out.
        "housing_site_id": _OPTIONAL_IDENTIFIER,
    },
    "housing_incident": {
        "kind": _enum(*HOUSING_INCIDENT_KINDS),
        "severity": _enum(*SEVERITIES),
        "housing_unit_id": _IDENTIFIER,
        "housing_site_id": _OPTIONAL_IDENTIFIER,
    },
    "ip_update": {
        "plan_id": _IDENTIFIER,
        "status": _enum(*PLAN_STATUSES),
        "coordinator": FieldSpec("organisation", required=False),
        "participants": FieldSpec("organisations"),
        "next_review_at": _TIME,
        "crisis_plan": _BOOL,
        "crisis_plan_id": _OPTIONAL_IDENTIFIER,
        "crisis_plan_reviewed_at": _OPTIONAL_TIME,
        # Who holds the crisis plan (a health service; the gateway checks the directory).
        "crisis_plan_owner": FieldSpec("organisation", required=False),
    },
    "health_info_sent": {"admission_event_id": _EVENT_REF},
    "municipal_reply": {
        "discharge_ready_event_id": _EVENT_REF,
        "can_receive": _BOOL,
        "expected_ready_at": _OPTIONAL_TIME,
    },
    # `related_event_id`: the discharge or tenancy-at-risk the work answers, where it answers
    # one (the admission id stays required: a released field's type does not change).
    "housing_work_started": {
        "admission_event_id": _EVENT_REF,
        "related_event_id": FieldSpec("event_ref", required=False),
    },
    "epikrise_sent": {"admission_event_id": _EVENT_REF, "recipient_org": _ORG},
    "followup_contact": {"related_event_id": _EVENT_REF, "kind": _enum(*FOLLOWUP_KINDS)},
    "application_received": {
        "application_id": _IDENTIFIER,
        "service": _TEXT,
        "service_kind": FieldSpec("enum", required=False, symbols=SERVICE_KINDS),
    },
    "application_preliminary_reply": {"application_id": _IDENTIFIER, "expected_decision_at": _TIME},
    "application_decided": {
        "application_id": _IDENTIFIER,
        "outcome": _enum(*APPLICATION_OUTCOMES),
    },
    "retraction": {"retracted_event_id": _EVENT_REF, "reason": _enum(*RETRACTION_REASONS)},
    # When the follow-up after a discharge ("time in hand") was agreed later than the discharge.
    "followup_scheduled": {
        "related_event_id": _EVENT_REF,
        "followup_at": _TIME,
        "with_org": FieldSpec("org", required=False),
    },
    # A DPS or a municipal substance service (e.g. LAR) lost a patient: treatment broken off.
    "treatment_interrupted": {
        "treatment_id": _IDENTIFIER,
        "kind": _enum(*INTERRUPTION_KINDS),
        "last_contact_at": _OPTIONAL_TIME,
    },
    # Corrections: a person is to be (or was) released from prison. No reason, sentence or
    # offence: that the person was in prison is all the bus carries (GDPR art. 10).
    "prison_release": {
        "release_at": _TIME,
        "home_municipality_org": FieldSpec("org", required=False),
        "needs_municipal_services": _BOOL,
        "housing_status": _enum(*HOUSING_STATUSES),
    },
    "housing_waitlisted": {
        "application_id": _IDENTIFIER,
        "housing_kind": _enum(*WAITLIST_HOUSING_KINDS),
        # The place in the queue as the housing office writes it ("12", "12 of 40"): a short
        # identifier, not free text (nothing to seal; a nin is refused like in any key).
        "position": _OPTIONAL_IDENTIFIER,
    },
    "temporary_housing_started": {
        "stay_id": _IDENTIFIER,
        "housing_kind": _enum(*TEMPORARY_HOUSING_KINDS),
        "housing_unit_id": _OPTIONAL_IDENTIFIER,
    },
    "temporary_housing_ended": {
        "stay_id": _IDENTIFIER,
        "outcome": _enum(*TEMPORARY_HOUSING_OUTCOMES),
    },
    "tenancy_at_risk": {
        "cause": _enum(*TENANCY_RISK_CAUSES),
        "eviction_at": _OPTIONAL_TIME,
        "housing_unit_id": _OPTIONAL_IDENTIFIER,
    },
    "brukerplan_assessment": {
        **{domain: _enum(*BRUKERPLAN_SCORES) for domain in BRUKERPLAN_DOMAINS},
        # The survey's year, four digits: an identifier, since a client chooses it.
        "assessment_year": _IDENTIFIER,
    },
    "somatic_check_done": {"kind": _enum(*SOMATIC_CHECK_KINDS), "referral_needed": _BOOL},
    "somatic_referral": {
        "referral_id": _IDENTIFIER,
        "to": _enum(*SOMATIC_REFERRAL_TARGETS),
        # The check that found the referral needed, when there was one.
        "related_event_id": FieldSpec("event_ref", required=False),
    },
}

# One valid payload per event type: OpenAPI examples, demo traffic and tests start here.
EXAMPLE_PAYLOADS: Final[Mapping[str, Mapping[str, Any]]] = {
    "admission": {
        "reason": "overdose",
        "admission_kind": "voluntary",
        "housing_status": "homeless",
        "needs_municipal_services": True,
        "home_municipality_org": "940493021",
        "ward": "Akuttpost 2",
        "expected_discharge_at": "2026-11-30T12:00:00+01:00",
    },
    "discharge_ready": {
        "admission_event_id": "dps-974705788-2026-000123",
        "needs_municipal_services": True,
        "housing_status": "homeless",
    },
    "discharge_ready_withdrawn": {"discharge_ready_event_id": "dps-974705788-2026-000124"},
    "discharge": {
        "admission_event_id": "dps-974705788-2026-000123",
        "destination": "municipal_housing",
        "followup_at": "2026-12-03T10:00:00+01:00",
        "crisis_plan": True,
        "kind": "planned",
        "dps_contact": "Kari Nordmann, sykepleier, 22 00 00 00",
        "crisis_plan_id": "KP-2026-17",
        "crisis_plan_reviewed_at": "2026-11-27T14:00:00+01:00",
        "crisis_plan_owner": {"agency": "dps", "org_id": "974705788"},
    },
    "police_callout": {
        "kind": "welfare_check",
        "injuries": False,
        "location_type": "home",
        "housing_unit_id": "KB-0042",
        "housing_site_id": "KB",
    },
    "housing_incident": {
        "kind": "noise",
        "severity": "low",
        "housing_unit_id": "KB-0042",
        "housing_site_id": "KB",
    },
    "ip_update": {
        "plan_id": "IP-2026-17",
        "status": "active",
        "coordinator": {"agency": "municipality", "org_id": "940493021"},
        "participants": [
            {"agency": "dps", "org_id": "974705788"},
            {"agency": "fastlege", "org_id": "912345678"},
        ],
        "next_review_at": "2027-02-01T09:00:00+01:00",
        "crisis_plan": True,
        "crisis_plan_id": "KP-2026-17",
        "crisis_plan_reviewed_at": "2026-11-27T14:00:00+01:00",
        "crisis_plan_owner": {"agency": "dps", "org_id": "974705788"},
    },
    "health_info_sent": {"admission_event_id": "dps-974705788-2026-000123"},
    "municipal_reply": {
        "discharge_ready_event_id": "dps-974705788-2026-000124",
        "can_receive": True,
        "expected_ready_at": "2026-11-28T12:00:00+01:00",
    },
    "housing_work_started": {
        "admission_event_id": "dps-974705788-2026-000123",
        "related_event_id": "dps-974705788-2026-000125",
    },
    "epikrise_sent": {
        "admission_event_id": "dps-974705788-2026-000123",
        "recipient_org": "912345678",
    },
    "followup_contact": {"related_event_id": "dps-974705788-2026-000125", "kind": "home_visit"},
    "application_received": {
        "application_id": "APP-2026-0099",
        "service": "bolig",
        "service_kind": "housing",
    },
    "application_preliminary_reply": {
        "application_id": "APP-2026-0099",
        "expected_decision_at": "2026-12-20T12:00:00+01:00",
    },
    "application_decided": {"application_id": "APP-2026-0099", "outcome": "granted"},
    "retraction": {"retracted_event_id": "dps-974705788-2026-000123", "reason": "wrong_person"},
    "followup_scheduled": {
        "related_event_id": "dps-974705788-2026-000125",
        "followup_at": "2026-12-03T10:00:00+01:00",
        "with_org": "940493021",
    },
    "treatment_interrupted": {
        "treatment_id": "LAR-2026-0042",
        "kind": "missed_appointments",
        "last_contact_at": "2026-11-20T10:00:00+01:00",
    },
    "prison_release": {
        "release_at": "2026-12-10T09:00:00+01:00",
        "home_municipality_org": "940493021",
        "needs_municipal_services": True,
        "housing_status": "homeless",
    },
    "housing_waitlisted": {
        "application_id": "APP-2026-0099",
        "housing_kind": "supported",
        "position": "12",
    },
    "temporary_housing_started": {
        "stay_id": "TB-2026-31",
        "housing_kind": "emergency_shelter",
        "housing_unit_id": "KB-0042",
    },
    "temporary_housing_ended": {"stay_id": "TB-2026-31", "outcome": "permanent_housing"},
    "tenancy_at_risk": {
        "cause": "rent_arrears",
        "eviction_at": "2027-01-15T12:00:00+01:00",
        "housing_unit_id": "KB-0042",
    },
    "brukerplan_assessment": {
        "housing": "red",
        "meaningful_activity": "yellow",
        "finances": "red",
        "physical_health": "yellow",
        "mental_health": "yellow",
        "substance_use": "red",
        "social_functioning": "yellow",
        "network": "green",
        "assessment_year": "2026",
    },
    "somatic_check_done": {"kind": "annual", "referral_needed": True},
    "somatic_referral": {
        "referral_id": "HV-2026-0042",
        "to": "dental",
        "related_event_id": "gp-912345678-2026-000007",
    },
}

_TOP_LEVEL: Final = frozenset(
    {"event_id", "event_type", "occurred_at", "source", "subject", "payload", "emergency"}
)
_EVENT_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,200}")
_ORG_ID: Final = re.compile(r"[0-9]{9}")
# RFC 3339 date-time; fromisoformat alone also takes dates, week dates and naive times.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(?P<offset>[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)

EVENT_ID_PROBLEM: Final = "must be 1 to 200 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'"
ORG_ID_PROBLEM: Final = "must be a 9-digit organisation number"
TIME_PROBLEM: Final = "must be an RFC 3339 time with offset, e.g. 2026-11-23T08:15:00+01:00"
NO_OFFSET_PROBLEM: Final = "must include a UTC offset, e.g. +01:00 or Z"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a request: the field path (`payload.participants[1].org_id`).

    An empty `field` means the event as a whole.
    """

    field: str
    problem: str


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event: times are UTC, optional fields that were absent or null are left out."""

    event_id: str
    event_type: str
    occurred_at: datetime
    source_agency: str
    source_org: str
    source_system: str | None
    nin: str = field(repr=False)
    payload: dict[str, Any]
    emergency: dict[str, Any] | None = None


def parse_event(
    raw: object, *, allow_synthetic_nin: bool = False
) -> tuple[Event | None, list[Problem]]:
    """Validate one decoded JSON event; the Event, or None and every problem found."""
    problems: list[Problem] = []
    if not isinstance(raw, dict):
        return None, [Problem("", "an event must be a JSON object")]
    _unknown_fields(raw, _TOP_LEVEL, "", "an event", problems)

    event_id = _event_ref(raw.get("event_id"), "event_id", problems)
    event_type = raw.get("event_type")
    if event_type is None:
        problems.append(Problem("event_type", "is required"))
    elif event_type not in EVENT_TYPES:
        problems.append(Problem("event_type", "must be one of: " + ", ".join(EVENT_TYPES)))
    occurred_at = _time(raw.get("occurred_at"), "occurred_at", problems, required=True)
    source = _source(raw.get("source"), problems)
    nin = _subject(raw.get("subject"), problems, allow_synthetic_nin)
    payload = _payload(raw.get("payload"), event_type, problems)
    emergency = _emergency(raw.get("emergency"), problems)
    if event_type == RETRACTION and raw.get("emergency") is not None:
        # A retraction goes to whoever got the retracted event, never to anyone new.
        problems.append(Problem("emergency", "a retraction cannot request an emergency disclosure"))

    if problems:
        return None, problems
    # Every check above appended a problem for a missing part, so these hold here.
    assert isinstance(event_type, str)
    assert event_id is not None
    assert occurred_at is not None
    assert source is not None
    assert nin is not None
    assert payload is not None
    return (
        Event(
            event_id=event_id,
            event_type=event_type,
            occurred_at=occurred_at,
            source_agency=source[0],
            source_org=source[1],
            source_system=source[2],
            nin=nin,
            payload=payload,
            emergency=emergency,
        ),
        [],
    )


def _unknown_fields(
    raw: Mapping[str, object],
    allowed: frozenset[str] | Mapping[str, object],
    path: str,
    what: str,
    problems: list[Problem],
) -> None:
    for name in raw:
        if name in allowed:
            continue
        if isinstance(name, str) and shown_field_name(name):
            problems.append(Problem(_join(path, name), f"not a field of {what}"))
        else:  # the name itself may be what must not be echoed
            problems.append(Problem(path, UNSHOWN_FIELD_PROBLEM))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_text(
    value: object, path: str, problems: list[Problem], limit: int = MAX_TEXT
) -> str | None:
    """Free text at `path` (non-empty, at most `limit` characters, no refused characters:
    `carebus.domain.text`), or None with the problem recorded."""
    if value is None:
        problems.append(Problem(path, "is required"))
    elif not isinstance(value, str):
        problems.append(Problem(path, "must be a string"))
    elif not value.strip():
        problems.append(Problem(path, "must not be empty"))
    elif len(value) > limit:
        problems.append(Problem(path, f"must be at most {limit} characters"))
    elif (problem := text_problem(value)) is not None:
        # U+0000 cannot be stored by PostgreSQL (an accepted event would miss the event store),
        # a lone surrogate by no UTF-8 writer, and bidi overrides disguise what text says.
        problems.append(Problem(path, problem))
    else:
        return value
    return None


def check_identifier(
    value: object, path: str, problems: list[Problem], limit: int = MAX_TEXT
) -> str | None:
    """A client's own identifier at `path`: free text that holds no national identity number
    (it becomes a key, and goes into logs and URLs), or None with the problem recorded."""
    checked = check_text(value, path, problems, limit)
    if checked is not None and (problem := identifier_problem(checked)) is not None:
        problems.append(Problem(path, problem))
        return None
    return checked


def _event_ref(value: object, path: str, problems: list[Problem]) -> str | None:
    if value is None:
        problems.append(Problem(path, "is required"))
    elif not isinstance(value, str):
        problems.append(Problem(path, "must be a string"))
    elif not _EVENT_ID.fullmatch(value):
        problems.append(Problem(path, EVENT_ID_PROBLEM))
    elif (problem := identifier_problem(value)) is not None:
        problems.append(Problem(path, problem))
    else:
        return value
    return None


def check_org_id(
    value: object, path: str, problems: list[Problem], *, required: bool = True
) -> str | None:
    """A 9-digit organisation number at `path`, or None with the problem recorded."""
    if value is None:
        if required:
            problems.append(Problem(path, "is required"))
    elif not isinstance(value, str) or not _ORG_ID.fullmatch(value):
        problems.append(Problem(path, ORG_ID_PROBLEM))
    else:
        return value
    return None


def check_choice(
    value: object, symbols: tuple[str, ...], path: str, problems: list[Problem]
) -> str | None:
    """One of `symbols` at `path`, or None with the problem recorded."""
    if value is None:
        problems.append(Problem(path, "is required"))
    elif not isinstance(value, str) or value not in symbols:
        problems.append(Problem(path, "must be one of: " + ", ".join(symbols)))
    else:
        return value
    return None


def _bool(value: object, path: str, problems: list[Problem]) -> bool | None:
    if value is None:
        problems.append(Problem(path, "is required"))
    elif not isinstance(value, bool):
        # 1, 0, "true" are refused: a recipient's system must get the type the contract says.
        problems.append(Problem(path, "must be true or false"))
    else:
        return value
    return None


def _time(value: object, path: str, problems: list[Problem], *, required: bool) -> datetime | None:
    if value is None:
        if required:
            problems.append(Problem(path, "is required"))
        return None
    if not isinstance(value, str):
        problems.append(Problem(path, TIME_PROBLEM))
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        problems.append(Problem(path, TIME_PROBLEM))
        return None
    if match["offset"] is None:
        problems.append(Problem(path, NO_OFFSET_PROBLEM))
        return None
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):
        problems.append(Problem(path, "is not a valid time"))
        return None


def _organisation(value: object, path: str, problems: list[Problem]) -> dict[str, str] | None:
    if value is None:
        problems.append(Problem(path, "is required"))
        return None
    if not isinstance(value, dict):
        problems.append(Problem(path, "must be an object with agency and org_id"))
        return None
    _unknown_fields(value, frozenset({"agency", "org_id"}), path, "an organisation", problems)
    agency = check_choice(value.get("agency"), AGENCIES, _join(path, "agency"), problems)
    org_id = check_org_id(value.get("org_id"), _join(path, "org_id"), problems)
    if agency is None or org_id is None:
        return None
    return {"agency": agency, "org_id": org_id}


def _organisations(
    value: object, path: str, problems: list[Problem], *, non_empty: bool
) -> list[dict[str, str]] | None:
    if value is None:
        problems.append(Problem(path, "is required"))
        return None
    if not isinstance(value, list):
        problems.append(Problem(path, "must be a list of organisations"))
        return None
    if non_empty and not value:
        problems.append(Problem(path, "must name at least one organisation"))
        return None
    before = len(problems)
    organisations = [_organisation(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    if len(problems) > before:
        return None
    return [org for org in organisations if org is not None]


def _source(value: object, problems: list[Problem]) -> tuple[str, str, str | None] | None:
    if value is None:
        problems.append(Problem("source", "is required"))
        return None
    if not isinstance(value, dict):
        problems.append(Problem("source", "must be an object with agency, org_id and system"))
        return None
    _unknown_fields(value, frozenset({"agency", "org_id", "system"}), "source", "source", problems)
    agency = check_choice(value.get("agency"), AGENCIES, "source.agency", problems)
    org_id = check_org_id(value.get("org_id"), "source.org_id", problems)
    system = value.get("system")
    if system is not None:
        system = check_identifier(system, "source.system", problems)
    if agency is None or org_id is None:
        return None
    return agency, org_id, system


def _subject(value: object, problems: list[Problem], allow_synthetic: bool) -> str | None:
    if value is None:
        problems.append(Problem("subject", "is required"))
        return None
    if not isinstance(value, dict):
        problems.append(Problem("subject", "must be an object with nin"))
        return None
    _unknown_fields(value, frozenset({"nin"}), "subject", "subject", problems)
    nin = value.get("nin")
    if nin is None:
        problems.append(Problem("subject.nin", "is required"))
        return None
    problem = validate_nin(nin, allow_synthetic=allow_synthetic)
    if problem is not None:
        problems.append(Problem("subject.nin", problem))
        return None
    assert isinstance(nin, str)
    return nin


_Validator = Callable[[object, str, list[Problem]], object]

_VALIDATORS: Final[Mapping[str, _Validator]] = {
    "bool": _bool,
    "org": check_org_id,
    "time": lambda value, path, problems: _time(value, path, problems, required=True),
    "event_ref": _event_ref,
    "text": check_text,
    "identifier": check_identifier,
    "organisation": _organisation,
    "organisations": lambda value, path, problems: _organisations(
        value, path, problems, non_empty=False
    ),
}


def _payload(value: object, event_type: object, problems: list[Problem]) -> dict[str, Any] | None:
    if value is None:
        problems.append(Problem("payload", "is required"))
        return None
    if not isinstance(value, dict):
        problems.append(Problem("payload", "must be an object"))
        return None
    if not isinstance(event_type, str) or event_type not in PAYLOAD_FIELDS:
        return None  # the event_type problem is already reported; fields cannot be checked
    fields = PAYLOAD_FIELDS[event_type]
    _unknown_fields(value, fields, "payload", event_type, problems)
    payload: dict[str, Any] = {}
    for name, spec in fields.items():
        path = f"payload.{name}"
        raw = value.get(name)
        if raw is None and not spec.required:
            continue  # an optional field sent as null is the same as one left out
        if spec.kind == "enum":
            parsed: object = check_choice(raw, spec.symbols, path, problems)
        else:
            parsed = _VALIDATORS[spec.kind](raw, path, problems)
        if parsed is not None:
            payload[name] = parsed
    _crisis_plan_problems(payload, problems)
    _shape_problems(event_type, payload, problems)
    return payload


# Fields whose value has a narrower shape than their kind: (event type, field) -> (pattern,
# the problem). A place in a waiting list is a short note, not a message; a survey year is four
# digits.
_SHAPES: Final[Mapping[tuple[str, str], tuple[re.Pattern[str], str]]] = {
    ("housing_waitlisted", "position"): (
        re.compile(r".{1,20}", re.DOTALL),
        "must be at most 20 characters",
    ),
    ("brukerplan_assessment", "assessment_year"): (
        re.compile(r"[0-9]{4}"),
        "must be a year of four digits, e.g. 2026",
    ),
}


def _shape_problems(event_type: str, payload: Mapping[str, Any], problems: list[Problem]) -> None:
    for (of_type, name), (pattern, problem) in _SHAPES.items():
        value = payload.get(name)
        if of_type == event_type and isinstance(value, str) and not pattern.fullmatch(value):
            problems.append(Problem(f"payload.{name}", problem))


# Who may hold a crisis plan: a health service (the DPS, the municipality's, the GP).
CRISIS_PLAN_OWNERS: Final = ("dps", "municipality", "fastlege")


def _crisis_plan_problems(payload: Mapping[str, Any], problems: list[Problem]) -> None:
    # A reference to a crisis plan (its id, review time or owner) says that there is one.
    named = [
        name
        for name in ("crisis_plan_id", "crisis_plan_reviewed_at", "crisis_plan_owner")
        if name in payload
    ]
    if named and payload.get("crisis_plan") is False:
        listed = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
        problems.append(
            Problem(
                "payload.crisis_plan",
                f"must be true when {listed} {'is' if len(named) == 1 else 'are'} given",
            )
        )
    owner = payload.get("crisis_plan_owner")
    if owner is not None and owner["agency"] not in CRISIS_PLAN_OWNERS:
        problems.append(
            Problem(
                "payload.crisis_plan_owner.agency",
                f"a crisis plan is held by a health service: {', '.join(CRISIS_PLAN_OWNERS)}",
            )
        )


def _emergency(value: object, problems: list[Problem]) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(
            Problem("emergency", "must be an object with justification, accountable, recipients")
        )
        return None
    allowed = frozenset({"justification", "accountable", "recipients"})
    _unknown_fields(value, allowed, "emergency", "emergency", problems)
    justification = check_text(
        value.get("justification"), "emergency.justification", problems, MAX_JUSTIFICATION
    )
    accountable = check_text(value.get("accountable"), "emergency.accountable", problems)
    recipients = _organisations(
        value.get("recipients"), "emergency.recipients", problems, non_empty=True
    )
    if justification is None or accountable is None or recipients is None:
        return None
    return {"justification": justification, "accountable": accountable, "recipients": recipients}


def event_to_record(event: Event, subject_key: str, received_at: datetime) -> dict[str, Any]:
    """The Avro wire record of `event` (see `carebus.wire.codec`): every optional field present."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    payload = {
        name: event.payload.get(name, spec.absent)
        for name, spec in PAYLOAD_FIELDS[event.event_type].items()
    }
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "occurred_at": event.occurred_at,
        "received_at": received_at.astimezone(UTC),
        "source": {
            "agency": event.source_agency,
            "org_id": event.source_org,
            "system": event.source_system,
        },
        "subject": {"nin": event.nin},
        "subject_key": subject_key,
        "emergency": event.emergency,
        "payload": payload,
    }


def rfc3339(moment: datetime) -> str:
    """`moment` in UTC as RFC 3339 with a `Z` suffix; fractional seconds only when non-zero."""
    if moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def record_to_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """A wire record as JSON-ready data: datetimes become `rfc3339` strings, bytes base64."""
    converted = _to_json(record)
    assert isinstance(converted, dict)
    return converted


def _to_json(value: object) -> object:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:  # most values: as they are
        return value
    if kind is dict:
        return {
            key if type(key) is str else str(key): _to_json(item)
            for key, item in value.items()  # type: ignore[attr-defined]
        }
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, Mapping):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def event_to_json(event: Event) -> dict[str, Any]:
    """The parsed event in the shape it arrived in, normalised (UTC times, no null optionals)."""
    source: dict[str, Any] = {"agency": event.source_agency, "org_id": event.source_org}
    if event.source_system is not None:
        source["system"] = event.source_system
    document: dict[str, Any] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "occurred_at": event.occurred_at,
        "source": source,
        "subject": {"nin": event.nin},
        "payload": event.payload,
    }
    if event.emergency is not None:
        document["emergency"] = event.emergency
    return record_to_json(document)


def content_fingerprint(event: Event) -> bytes:
    """SHA-256 over the canonical JSON of the parsed event: equal for the same content.

    Two submissions that differ only in key order, time offset or null-vs-absent optional
    fields have the same fingerprint, which is what the gateway's idempotency check needs.
    """
    # orjson with sorted keys writes exactly what json.dumps(sort_keys=True, separators=(",",
    # ":"), ensure_ascii=False) wrote for these values (no floats; tests hold both to it), so
    # fingerprints in the ledger stay valid across the change.
    return hashlib.sha256(orjson.dumps(event_to_json(event), option=orjson.OPT_SORT_KEYS)).digest()


def parse_time(
    value: object, path: str, problems: list[Problem], *, required: bool
) -> datetime | None:
    """An RFC 3339 time with offset as a UTC datetime; else None and a Problem naming `path`.

    The same rule events use, for other requests that carry times (the registry's consents).
    """
    return _time(value, path, problems, required=required)
