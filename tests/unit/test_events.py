"""Tests for carebus.domain.events: the contract, its validation, wire record, fingerprint."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from carebus.domain import events
from carebus.domain.events import (
    EVENT_TYPES,
    EXAMPLE_PAYLOADS,
    PAYLOAD_FIELDS,
    POLICY_EVENT_TYPES,
    Event,
    Problem,
    content_fingerprint,
    event_to_json,
    event_to_record,
    parse_event,
    record_to_json,
)
from carebus_dev.testing import EventFactory

NIN = "14038512324"
D_NUMBER = "54038512318"
RECEIVED_AT = datetime(2026, 11, 23, 7, 15, 1, 250000, tzinfo=UTC)


def raw_event(event_type: str = "admission", /, **overrides: Any) -> dict[str, Any]:
    """A valid JSON event of `event_type`; keyword arguments replace top-level fields."""
    raw: dict[str, Any] = {
        "event_id": f"dps-974705788-2026-{event_type}",
        "event_type": event_type,
        "occurred_at": "2026-11-23T08:15:00+01:00",
        "source": {"agency": "dps", "org_id": "974705788", "system": "DIPS"},
        "subject": {"nin": NIN},
        "payload": copy.deepcopy(dict(EXAMPLE_PAYLOADS[event_type])),
    }
    raw.update(overrides)
    return raw


def with_payload(event_type: str = "admission", **changes: Any) -> dict[str, Any]:
    """A valid event whose payload has `changes` applied; the value `...` removes a field."""
    raw = raw_event(event_type)
    for name, value in changes.items():
        if value is ...:
            raw["payload"].pop(name, None)
        else:
            raw["payload"][name] = value
    return raw


def parse_ok(raw: object) -> Event:
    event, problems = parse_event(raw)
    assert problems == []
    assert event is not None
    return event


def test_the_contract_names_every_event_type_once() -> None:
    """DESIGN's twenty-six event types are each in EVENT_TYPES, the payload table and the
    examples; the policy routes all but the retraction."""
    assert len(EVENT_TYPES) == len(set(EVENT_TYPES)) == 26
    assert set(EVENT_TYPES) - set(POLICY_EVENT_TYPES) == {"retraction"}
    assert set(PAYLOAD_FIELDS) == set(EVENT_TYPES) == set(EXAMPLE_PAYLOADS)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_a_valid_event_of_every_type_parses(event_type: str) -> None:
    """The example of each event type parses, keeping every payload field."""
    event = parse_ok(raw_event(event_type))
    assert event.event_type == event_type
    assert event.nin == NIN
    assert set(event.payload) == set(EXAMPLE_PAYLOADS[event_type])
    assert event.source_agency == "dps"
    assert event.source_org == "974705788"
    assert event.source_system == "DIPS"
    assert event.emergency is None


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_an_event_with_only_required_fields_parses(event_type: str) -> None:
    """Leaving out every optional payload field is valid."""
    raw = raw_event(event_type)
    for name, spec in PAYLOAD_FIELDS[event_type].items():
        if not spec.required:
            del raw["payload"][name]
    event = parse_ok(raw)
    assert all(PAYLOAD_FIELDS[event_type][name].required for name in event.payload)


def test_times_are_normalised_to_utc() -> None:
    """occurred_at and payload times come out as UTC datetimes, whatever offset was sent."""
    event = parse_ok(with_payload(expected_discharge_at="2026-11-30T12:00:00.5-02:30"))
    assert event.occurred_at == datetime(2026, 11, 23, 7, 15, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.payload["expected_discharge_at"] == datetime(
        2026, 11, 30, 14, 30, 0, 500000, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "text", ["2026-11-23T07:15:00Z", "2026-11-23t07:15:00z", "2026-11-23T07:15:00+00:00"]
)
def test_utc_may_be_written_as_z(text: str) -> None:
    """A trailing Z (either case) means UTC."""
    event = parse_ok(raw_event(occurred_at=text))
    assert event.occurred_at == datetime(2026, 11, 23, 7, 15, tzinfo=UTC)


def test_d_numbers_are_accepted() -> None:
    """A D-nummer is as good a subject as a fødselsnummer."""
    assert parse_ok(raw_event(subject={"nin": D_NUMBER})).nin == D_NUMBER


def test_synthetic_numbers_need_the_flag() -> None:
    """Synthetic test numbers pass only when the caller allows them."""
    synthetic = "14838512470"
    _, problems = parse_event(raw_event(subject={"nin": synthetic}))
    assert [p.field for p in problems] == ["subject.nin"]
    event, problems = parse_event(raw_event(subject={"nin": synthetic}), allow_synthetic_nin=True)
    assert problems == []
    assert event is not None


def test_null_optional_fields_are_the_same_as_absent_ones() -> None:
    """An optional field sent as null is left out of the parsed payload."""
    event = parse_ok(with_payload(ward=None, expected_discharge_at=None))
    assert "ward" not in event.payload
    assert "expected_discharge_at" not in event.payload
    assert parse_ok(raw_event(emergency=None)).emergency is None
    raw = raw_event()
    raw["source"]["system"] = None
    assert parse_ok(raw).source_system is None


def test_source_system_is_optional() -> None:
    """source.system may be left out."""
    raw = raw_event()
    del raw["source"]["system"]
    assert parse_ok(raw).source_system is None


def test_emergency_is_parsed() -> None:
    """A well-formed emergency request is kept, recipients in order."""
    emergency = {
        "justification": "Acute risk of overdose; coordinator must act tonight.",
        "accountable": "Overlege Kari Nordmann",
        "recipients": [
            {"agency": "police", "org_id": "974760673"},
            {"agency": "municipality", "org_id": "940493021"},
        ],
    }
    event = parse_ok(raw_event(emergency=emergency))
    assert event.emergency == emergency


def test_ip_update_organisations_are_parsed() -> None:
    """The coordinator and participants of an ip_update come out as agency/org_id pairs."""
    event = parse_ok(raw_event("ip_update"))
    assert event.payload["coordinator"] == {"agency": "municipality", "org_id": "940493021"}
    assert [p["agency"] for p in event.payload["participants"]] == ["dps", "fastlege"]
    assert parse_ok(with_payload("ip_update", participants=[])).payload["participants"] == []


def test_the_nin_is_not_in_the_event_repr() -> None:
    """repr(Event) leaves out the nin, so a stray log line does not leak it."""
    assert NIN not in repr(parse_ok(raw_event()))


# Each case: an invalid event, and the (field, part of the problem) that must be reported.
INVALID: list[tuple[str, object, str, str]] = [
    ("not-an-object", ["admission"], "", "JSON object"),
    ("string", "admission", "", "JSON object"),
    ("unknown-top-level-field", raw_event(priority="high"), "priority", "not a field of an event"),
    ("subject-key-not-accepted", raw_event(subject_key="abc"), "subject_key", "not a field"),
    ("missing-event-id", raw_event(event_id=None), "event_id", "is required"),
    ("empty-event-id", raw_event(event_id=""), "event_id", "1 to 200 characters"),
    ("event-id-with-space", raw_event(event_id="dps 1"), "event_id", "1 to 200 characters"),
    ("event-id-with-slash", raw_event(event_id="dps/1"), "event_id", "1 to 200 characters"),
    ("event-id-too-long", raw_event(event_id="x" * 201), "event_id", "1 to 200 characters"),
    ("event-id-number", raw_event(event_id=123), "event_id", "must be a string"),
    ("event-id-newline", raw_event(event_id="dps-1\n"), "event_id", "1 to 200 characters"),
    ("missing-event-type", raw_event(event_type=None), "event_type", "is required"),
    ("unknown-event-type", raw_event(event_type="arrest"), "event_type", "admission, discharge"),
    ("event-type-not-string", raw_event(event_type=["admission"]), "event_type", "one of"),
    ("missing-occurred-at", raw_event(occurred_at=None), "occurred_at", "is required"),
    ("naive-time", raw_event(occurred_at="2026-11-23T08:15:00"), "occurred_at", "UTC offset"),
    ("date-only", raw_event(occurred_at="2026-11-23"), "occurred_at", "RFC 3339"),
    ("space-separator", raw_event(occurred_at="2026-11-23 08:15:00Z"), "occurred_at", "RFC 3339"),
    ("basic-format", raw_event(occurred_at="20261123T081500+0100"), "occurred_at", "RFC 3339"),
    ("no-seconds", raw_event(occurred_at="2026-11-23T08:15+01:00"), "occurred_at", "RFC 3339"),
    ("epoch-number", raw_event(occurred_at=1795000000), "occurred_at", "RFC 3339"),
    ("offset-24h", raw_event(occurred_at="2026-11-23T08:15:00+24:00"), "occurred_at", "RFC 3339"),
    ("month-13", raw_event(occurred_at="2026-13-23T08:15:00Z"), "occurred_at", "not a valid"),
    ("feb-30", raw_event(occurred_at="2026-02-30T08:15:00Z"), "occurred_at", "not a valid"),
    ("leap-second", raw_event(occurred_at="2026-12-31T23:59:60Z"), "occurred_at", "not a valid"),
    ("year-zero-utc", raw_event(occurred_at="0001-01-01T00:30:00+01:00"), "occurred_at", "valid"),
    ("missing-source", raw_event(source=None), "source", "is required"),
    ("source-string", raw_event(source="dps"), "source", "must be an object"),
    (
        "unknown-agency",
        raw_event(source={"agency": "school", "org_id": "974705788"}),
        "source.agency",
        "one of: dps, municipality",
    ),
    (
        "org-id-8-digits",
        raw_event(source={"agency": "dps", "org_id": "97470578"}),
        "source.org_id",
        "9-digit",
    ),
    (
        "org-id-number",
        raw_event(source={"agency": "dps", "org_id": 974705788}),
        "source.org_id",
        "9-digit",
    ),
    (
        "org-id-trailing-newline",
        raw_event(source={"agency": "dps", "org_id": "974705788\n"}),
        "source.org_id",
        "9-digit",
    ),
    (
        "source-missing-org",
        raw_event(source={"agency": "dps"}),
        "source.org_id",
        "is required",
    ),
    (
        "source-system-empty",
        raw_event(source={"agency": "dps", "org_id": "974705788", "system": ""}),
        "source.system",
        "must not be empty",
    ),
    (
        "source-unknown-field",
        raw_event(source={"agency": "dps", "org_id": "974705788", "name": "OUS"}),
        "source.name",
        "not a field of source",
    ),
    ("missing-subject", raw_event(subject=None), "subject", "is required"),
    ("missing-nin", raw_event(subject={}), "subject.nin", "is required"),
    ("nin-10-digits", raw_event(subject={"nin": "1403851232"}), "subject.nin", "11 digits"),
    ("nin-check-digit", raw_event(subject={"nin": "14038512325"}), "subject.nin", "check digit"),
    ("nin-number", raw_event(subject={"nin": 14038512324}), "subject.nin", "string"),
    (
        "subject-unknown-field",
        raw_event(subject={"nin": NIN, "name": "Ola"}),
        "subject.name",
        "not a field of subject",
    ),
    ("missing-payload", raw_event(payload=None), "payload", "is required"),
    ("payload-list", raw_event(payload=[]), "payload", "must be an object"),
    ("missing-required", with_payload(reason=...), "payload.reason", "is required"),
    ("null-required", with_payload(reason=None), "payload.reason", "is required"),
    ("unknown-reason", with_payload(reason="fever"), "payload.reason", "overdose, suicide"),
    ("reason-wrong-case", with_payload(reason="Overdose"), "payload.reason", "one of"),
    (
        "enum-unknown-symbol",
        with_payload(housing_status="temporary"),
        "payload.housing_status",
        "one of",
    ),
    (
        "bool-as-int",
        with_payload(needs_municipal_services=1),
        "payload.needs_municipal_services",
        "true or false",
    ),
    (
        "bool-as-string",
        with_payload(needs_municipal_services="true"),
        "payload.needs_municipal_services",
        "true or false",
    ),
    (
        "org-field-short",
        with_payload(home_municipality_org="9404930"),
        "payload.home_municipality_org",
        "9-digit",
    ),
    ("ward-empty", with_payload(ward=" "), "payload.ward", "must not be empty"),
    ("ward-number", with_payload(ward=2), "payload.ward", "must be a string"),
    ("ward-too-long", with_payload(ward="w" * 201), "payload.ward", "at most 200"),
    ("ward-lone-surrogate", with_payload(ward="Ø\ud800"), "payload.ward", "control or format"),
    # PostgreSQL refuses U+0000 (the event would miss the event store after its 202); bidi
    # overrides disguise text; other controls have no place in a short text field.
    ("ward-nul", with_payload(ward="A\u0000B"), "payload.ward", "control or format"),
    ("ward-bidi-override", with_payload(ward="A\u202eB"), "payload.ward", "control or format"),
    ("ward-newline", with_payload(ward="A\nB"), "payload.ward", "control or format"),
    (
        "optional-time-naive",
        with_payload(expected_discharge_at="2026-11-30T12:00:00"),
        "payload.expected_discharge_at",
        "UTC offset",
    ),
    (
        "unknown-payload-field",
        with_payload(diagnosis="F19"),
        "payload.diagnosis",
        "not a field of admission",
    ),
    (
        "field-of-another-type",
        with_payload(destination="home"),
        "payload.destination",
        "not a field of admission",
    ),
    (
        "event-ref-bad",
        with_payload("discharge", admission_event_id="a b"),
        "payload.admission_event_id",
        "1 to 200",
    ),
    (
        "destination",
        with_payload("discharge", destination="moon"),
        "payload.destination",
        "home, municipal_housing",
    ),
    (
        "callout-kind",
        with_payload("police_callout", kind="arrest"),
        "payload.kind",
        "violence, threats",
    ),
    (
        "incident-kind",
        with_payload("housing_incident", kind="welfare_check"),
        "payload.kind",
        "eviction_warning",
    ),
    (
        "severity",
        with_payload("housing_incident", severity="critical"),
        "payload.severity",
        "low, medium, high",
    ),
    (
        "unit-required",
        with_payload("housing_incident", housing_unit_id=...),
        "payload.housing_unit_id",
        "is required",
    ),
    ("plan-status", with_payload("ip_update", status="draft"), "payload.status", "active, closed"),
    (
        "participants-object",
        with_payload("ip_update", participants={"agency": "dps"}),
        "payload.participants",
        "list",
    ),
    (
        "participants-missing",
        with_payload("ip_update", participants=...),
        "payload.participants",
        "is required",
    ),
    (
        "participant-org",
        with_payload(
            "ip_update",
            participants=[
                {"agency": "dps", "org_id": "974705788"},
                {"agency": "nav", "org_id": "12"},
            ],
        ),
        "payload.participants[1].org_id",
        "9-digit",
    ),
    (
        "participant-agency",
        with_payload("ip_update", participants=[{"agency": "gp", "org_id": "974705788"}]),
        "payload.participants[0].agency",
        "one of",
    ),
    (
        "participant-extra-field",
        with_payload(
            "ip_update", participants=[{"agency": "dps", "org_id": "974705788", "role": "x"}]
        ),
        "payload.participants[0].role",
        "not a field of an organisation",
    ),
    (
        "participant-string",
        with_payload("ip_update", participants=["974705788"]),
        "payload.participants[0]",
        "object",
    ),
    (
        "coordinator-bad",
        with_payload("ip_update", coordinator={"agency": "dps"}),
        "payload.coordinator.org_id",
        "is required",
    ),
    (
        "review-required",
        with_payload("ip_update", next_review_at=...),
        "payload.next_review_at",
        "is required",
    ),
    (
        "can-receive",
        with_payload("municipal_reply", can_receive="no"),
        "payload.can_receive",
        "true or false",
    ),
    (
        "recipient-org",
        with_payload("epikrise_sent", recipient_org="abcdefghi"),
        "payload.recipient_org",
        "9-digit",
    ),
    (
        "followup-kind",
        with_payload("followup_contact", kind="email"),
        "payload.kind",
        "meeting, phone, home_visit",
    ),
    (
        "service-empty",
        with_payload("application_received", service=""),
        "payload.service",
        "must not be empty",
    ),
    (
        "decision-time",
        with_payload("application_preliminary_reply", expected_decision_at="soon"),
        "payload.expected_decision_at",
        "RFC 3339",
    ),
    (
        "outcome",
        with_payload("application_decided", outcome="maybe"),
        "payload.outcome",
        "granted, denied, partial",
    ),
    (
        "discharge-kind",
        with_payload("discharge", kind="escaped"),
        "payload.kind",
        "planned, self_discharge, against_advice, transfer",
    ),
    # `unknown` is the wire record's word for a kind left out, not one a sender writes.
    ("discharge-kind-unknown", with_payload("discharge", kind="unknown"), "payload.kind", "one of"),
    (
        "dps-contact-too-long",
        with_payload("discharge", dps_contact="x" * 201),
        "payload.dps_contact",
        "at most 200 characters",
    ),
    (
        "dps-contact-empty",
        with_payload("discharge", dps_contact=" "),
        "payload.dps_contact",
        "empty",
    ),
    (
        "dps-contact-control",
        with_payload("discharge", dps_contact="Kari\u0000"),
        "payload.dps_contact",
        events.CONTROL_PROBLEM,
    ),
    (
        "crisis-plan-id-nin",
        with_payload("discharge", crisis_plan_id=f"KP-{NIN}"),
        "payload.crisis_plan_id",
        "must not contain a national identity number",
    ),
    (
        "site-id-nin",
        with_payload("police_callout", housing_site_id=f"site-{NIN}"),
        "payload.housing_site_id",
        "must not contain a national identity number",
    ),
    (
        "site-id-control",
        with_payload("housing_incident", housing_site_id="KH\u00001"),
        "payload.housing_site_id",
        events.CONTROL_PROBLEM,
    ),
    (
        "crisis-plan-reviewed-at",
        with_payload("ip_update", crisis_plan_reviewed_at="last week"),
        "payload.crisis_plan_reviewed_at",
        "RFC 3339",
    ),
    (
        "crisis-plan-id-without-a-plan",
        with_payload("discharge", crisis_plan=False),
        "payload.crisis_plan",
        "must be true when crisis_plan_id, crisis_plan_reviewed_at and crisis_plan_owner are given",
    ),
    (
        "crisis-plan-id-without-a-plan-in-the-ip",
        with_payload(
            "ip_update", crisis_plan=False, crisis_plan_reviewed_at=..., crisis_plan_owner=...
        ),
        "payload.crisis_plan",
        "must be true when crisis_plan_id is given",
    ),
    (
        "crisis-plan-owner-without-a-plan",
        with_payload(
            "ip_update", crisis_plan=False, crisis_plan_id=..., crisis_plan_reviewed_at=...
        ),
        "payload.crisis_plan",
        "must be true when crisis_plan_owner is given",
    ),
    (
        "crisis-plan-owner-nav",
        with_payload("ip_update", crisis_plan_owner={"agency": "nav", "org_id": "889640782"}),
        "payload.crisis_plan_owner.agency",
        "a crisis plan is held by a health service: dps, municipality, fastlege",
    ),
    (
        "crisis-plan-owner-number",
        with_payload("discharge", crisis_plan_owner={"agency": "dps", "org_id": "DPS Nord"}),
        "payload.crisis_plan_owner.org_id",
        "9-digit organisation number",
    ),
    (
        "crisis-plan-owner-not-an-object",
        with_payload("discharge", crisis_plan_owner="974705788"),
        "payload.crisis_plan_owner",
        "must be an object with agency and org_id",
    ),
    (
        "service-kind",
        with_payload("application_received", service_kind="bolig"),
        "payload.service_kind",
        "housing, housing_allowance, home_services",
    ),
    (
        "followup-scheduled-without-time",
        with_payload("followup_scheduled", followup_at=...),
        "payload.followup_at",
        "is required",
    ),
    (
        "followup-scheduled-related",
        with_payload("followup_scheduled", related_event_id="a b"),
        "payload.related_event_id",
        "1 to 200 characters",
    ),
    (
        "followup-scheduled-with-org",
        with_payload("followup_scheduled", with_org="DPS Nord"),
        "payload.with_org",
        "9-digit organisation number",
    ),
    (
        "waitlist-position-too-long",
        with_payload("housing_waitlisted", position="x" * 21),
        "payload.position",
        "at most 20 characters",
    ),
    (
        "temporary-housing-kind",
        with_payload("temporary_housing_started", housing_kind="tent"),
        "payload.housing_kind",
        "emergency_shelter, low_threshold, hotel_or_campsite, training_flat, other",
    ),
    (
        "temporary-housing-ended-without-stay",
        with_payload("temporary_housing_ended", stay_id=...),
        "payload.stay_id",
        "is required",
    ),
    (
        "tenancy-eviction-at",
        with_payload("tenancy_at_risk", eviction_at="next week"),
        "payload.eviction_at",
        "RFC 3339",
    ),
    (
        "brukerplan-score",
        with_payload("brukerplan_assessment", housing="purple"),
        "payload.housing",
        "green, yellow, red",
    ),
    (
        "brukerplan-year",
        with_payload("brukerplan_assessment", assessment_year="26"),
        "payload.assessment_year",
        "four digits",
    ),
    (
        "brukerplan-without-network",
        with_payload("brukerplan_assessment", network=...),
        "payload.network",
        "is required",
    ),
    (
        "followup-scheduled-unknown-field",
        with_payload("followup_scheduled", kind="phone"),
        "payload.kind",
        "not a field of followup_scheduled",
    ),
    (
        "treatment-interrupted-kind",
        with_payload("treatment_interrupted", kind="relapse"),
        "payload.kind",
        "dropout, missed_appointments, other",
    ),
    (
        "treatment-interrupted-without-treatment",
        with_payload("treatment_interrupted", treatment_id=...),
        "payload.treatment_id",
        "is required",
    ),
    (
        "treatment-interrupted-nin-as-treatment-id",
        with_payload("treatment_interrupted", treatment_id=f"LAR-{NIN}"),
        "payload.treatment_id",
        "identity number",
    ),
    (
        "prison-release-without-release",
        with_payload("prison_release", release_at=...),
        "payload.release_at",
        "is required",
    ),
    (
        "prison-release-home",
        with_payload("prison_release", home_municipality_org="Oslo"),
        "payload.home_municipality_org",
        "9-digit organisation number",
    ),
    (
        "prison-release-housing",
        with_payload("prison_release", housing_status="prison"),
        "payload.housing_status",
        "stable, unstable, homeless, unknown",
    ),
    (
        "prison-release-offence",
        with_payload("prison_release", offence="theft"),
        "payload.offence",
        "not a field of prison_release",
    ),
    (
        "treatment-interrupted-last-contact",
        with_payload("treatment_interrupted", last_contact_at="yesterday"),
        "payload.last_contact_at",
        "RFC 3339",
    ),
    (
        "somatic-check-kind",
        with_payload("somatic_check_done", kind="yearly"),
        "payload.kind",
        "annual, targeted, other",
    ),
    (
        "somatic-check-referral-needed",
        with_payload("somatic_check_done", referral_needed="yes"),
        "payload.referral_needed",
        "true or false",
    ),
    (
        "somatic-check-free-text",
        with_payload("somatic_check_done", finding="blood pressure high"),
        "payload.finding",
        "not a field of somatic_check_done",
    ),
    (
        "somatic-referral-to",
        with_payload("somatic_referral", to="dentist"),
        "payload.to",
        "specialist_somatic, dental, substitution_clinic, other",
    ),
    (
        "somatic-referral-id-nin",
        with_payload("somatic_referral", referral_id=f"HV-{NIN}"),
        "payload.referral_id",
        "must not contain a national identity number",
    ),
    (
        "somatic-referral-without-id",
        with_payload("somatic_referral", referral_id=...),
        "payload.referral_id",
        "is required",
    ),
    (
        "somatic-referral-related",
        with_payload("somatic_referral", related_event_id="a b"),
        "payload.related_event_id",
        "1 to 200 characters",
    ),
    ("emergency-string", raw_event(emergency="yes"), "emergency", "must be an object"),
    (
        "emergency-no-justification",
        raw_event(
            emergency={
                "justification": "",
                "accountable": "A",
                "recipients": [{"agency": "police", "org_id": "974760673"}],
            }
        ),
        "emergency.justification",
        "must not be empty",
    ),
    (
        "emergency-no-accountable",
        raw_event(
            emergency={
                "justification": "risk",
                "recipients": [{"agency": "police", "org_id": "974760673"}],
            }
        ),
        "emergency.accountable",
        "is required",
    ),
    (
        "emergency-no-recipients",
        raw_event(emergency={"justification": "risk", "accountable": "A", "recipients": []}),
        "emergency.recipients",
        "at least one",
    ),
    (
        "emergency-bad-recipient",
        raw_event(
            emergency={
                "justification": "risk",
                "accountable": "A",
                "recipients": [{"agency": "police", "org_id": "1"}],
            }
        ),
        "emergency.recipients[0].org_id",
        "9-digit",
    ),
    (
        "emergency-unknown-field",
        raw_event(
            emergency={
                "justification": "risk",
                "accountable": "A",
                "recipients": [{"agency": "police", "org_id": "974760673"}],
                "basis": "x",
            }
        ),
        "emergency.basis",
        "not a field of emergency",
    ),
]


@pytest.mark.parametrize(
    ("raw", "field", "problem"),
    [pytest.param(raw, field, problem, id=case) for case, raw, field, problem in INVALID],
)
def test_invalid_events_name_the_field_and_the_problem(
    raw: object, field: str, problem: str
) -> None:
    """Each invalid event is refused with a problem on the offending field path."""
    event, problems = parse_event(raw)
    assert event is None
    matching = [p for p in problems if p.field == field]
    assert matching, f"no problem for {field!r}; got {problems}"
    assert any(problem in p.problem for p in matching), matching


@pytest.mark.parametrize(
    ("raw", "field", "problem"),
    [pytest.param(raw, field, problem, id=case) for case, raw, field, problem in INVALID],
)
def test_problems_never_contain_the_nin(raw: object, field: str, problem: str) -> None:
    """No problem text repeats the person's number (valid or not)."""
    _, problems = parse_event(raw)
    for found in problems:
        assert NIN not in found.problem
        assert "1403851232" not in found.problem


def test_every_problem_is_reported_not_just_the_first() -> None:
    """An event with several faults lists all of them."""
    raw = raw_event(
        event_id="bad id",
        occurred_at="yesterday",
        source={"agency": "school", "org_id": "1"},
        subject={"nin": "123"},
        extra=True,
    )
    raw["payload"]["reason"] = "fever"
    raw["payload"]["needs_municipal_services"] = "yes"
    del raw["payload"]["housing_status"]
    _, problems = parse_event(raw)
    assert {p.field for p in problems} == {
        "event_id",
        "occurred_at",
        "source.agency",
        "source.org_id",
        "subject.nin",
        "extra",
        "payload.reason",
        "payload.needs_municipal_services",
        "payload.housing_status",
    }


def test_an_unknown_event_type_does_not_check_the_payload_fields() -> None:
    """With an unknown event_type only that is reported; its payload cannot be judged."""
    _, problems = parse_event(raw_event(event_type="arrest"))
    assert problems == [Problem("event_type", "must be one of: " + ", ".join(EVENT_TYPES))]


# --- the wire record ------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_event_to_record_has_every_field_of_the_wire_record(event_type: str) -> None:
    """The wire record carries the envelope and every payload field, absent optionals as None."""
    raw = raw_event(event_type)
    for name, spec in PAYLOAD_FIELDS[event_type].items():
        if not spec.required:
            del raw["payload"][name]
    record = event_to_record(parse_ok(raw), "ab" * 32, RECEIVED_AT)
    assert list(record) == [
        "event_id",
        "event_type",
        "occurred_at",
        "received_at",
        "source",
        "subject",
        "subject_key",
        "emergency",
        "payload",
    ]
    assert list(record["payload"]) == list(PAYLOAD_FIELDS[event_type])
    for name, spec in PAYLOAD_FIELDS[event_type].items():
        left_out = None if spec.absent is None else spec.absent
        assert (record["payload"][name] == left_out) == (not spec.required)
    assert record["subject"] == {"nin": NIN}
    assert record["subject_key"] == "ab" * 32
    assert record["source"] == {"agency": "dps", "org_id": "974705788", "system": "DIPS"}
    assert record["received_at"] == RECEIVED_AT
    assert record["emergency"] is None


def test_event_to_record_normalises_received_at_and_refuses_naive_times() -> None:
    """received_at is stored in UTC; a naive received_at is a programming error."""
    event = parse_ok(raw_event())
    oslo = timezone(timedelta(hours=1))
    record = event_to_record(event, "k", RECEIVED_AT.astimezone(oslo))
    assert record["received_at"].utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        event_to_record(event, "k", datetime(2026, 11, 23, 8, 0))


def test_record_to_json_writes_times_as_utc_with_z() -> None:
    """record_to_json turns datetimes into RFC 3339 UTC strings ending in Z."""
    record = event_to_record(parse_ok(raw_event()), "k", RECEIVED_AT)
    document = record_to_json(record)
    assert document["occurred_at"] == "2026-11-23T07:15:00Z"
    assert document["received_at"] == "2026-11-23T07:15:01.250000Z"
    assert document["payload"]["expected_discharge_at"] == "2026-11-30T11:00:00Z"
    assert document["payload"]["ward"] == "Akuttpost 2"
    json.dumps(document)
    assert record_to_json({"blob": b"\x00\xff"}) == {"blob": "AP8="}


def test_record_to_json_round_trips_through_parse_event() -> None:
    """A record turned back into JSON parses to the same event."""
    event = parse_ok(raw_event("ip_update"))
    document = record_to_json(event_to_record(event, "k", RECEIVED_AT))
    again = {key: document[key] for key in ("event_id", "event_type", "occurred_at", "source")}
    again.update(subject=document["subject"], payload=document["payload"])
    assert parse_ok(again) == event


def test_event_to_json_is_json_and_leaves_out_absent_optionals() -> None:
    """event_to_json gives the normalised event, without nulls for fields that were not sent."""
    document = event_to_json(parse_ok(with_payload(ward=None)))
    assert "ward" not in document["payload"]
    assert "emergency" not in document
    assert document["occurred_at"] == "2026-11-23T07:15:00Z"
    assert json.loads(json.dumps(document)) == document


# --- content fingerprint --------------------------------------------------------------------


def test_same_content_has_the_same_fingerprint() -> None:
    """Key order, time offsets and null-vs-absent optionals do not change the fingerprint."""
    first = parse_ok(raw_event())
    shuffled = dict(reversed(list(raw_event().items())))
    shuffled["payload"] = dict(reversed(list(shuffled["payload"].items())))
    shuffled["occurred_at"] = "2026-11-23T07:15:00Z"
    shuffled["payload"]["expected_discharge_at"] = "2026-11-30T11:00:00.000+00:00"
    second = parse_ok(shuffled)
    assert content_fingerprint(first) == content_fingerprint(second)
    assert len(content_fingerprint(first)) == 32
    assert content_fingerprint(parse_ok(with_payload(ward=None))) == content_fingerprint(
        parse_ok(with_payload(ward=...))
    )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"occurred_at": "2026-11-23T08:15:01+01:00"}, id="time"),
        pytest.param({"subject": {"nin": D_NUMBER}}, id="subject"),
        pytest.param({"source": {"agency": "dps", "org_id": "974705788"}}, id="system"),
        pytest.param({"event_id": "dps-974705788-2026-other"}, id="event-id"),
        pytest.param(
            {
                "emergency": {
                    "justification": "risk",
                    "accountable": "A",
                    "recipients": [{"agency": "police", "org_id": "974760673"}],
                }
            },
            id="emergency",
        ),
    ],
)
def test_other_content_has_another_fingerprint(change: dict[str, Any]) -> None:
    """Any change of content changes the fingerprint."""
    assert content_fingerprint(parse_ok(raw_event())) != content_fingerprint(
        parse_ok(raw_event(**change))
    )


def test_a_payload_change_changes_the_fingerprint() -> None:
    """Changing one payload value changes the fingerprint."""
    assert content_fingerprint(parse_ok(raw_event())) != content_fingerprint(
        parse_ok(with_payload(reason="psychosis"))
    )


def _stdlib_fingerprint(event: Any) -> bytes:
    """How the fingerprint was computed when the ledger's first rows were written."""
    canonical = json.dumps(
        events.event_to_json(event), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).digest()


@pytest.mark.parametrize("event_type", events.EVENT_TYPES)
def test_fingerprints_are_those_the_ledger_already_holds(event_type: str) -> None:
    """The ledger keeps fingerprints across upgrades: a client's retry after one must not be a
    409. Every event type, including text with quotes, controls and non-ASCII characters."""
    factory = EventFactory(seed=5)
    for _ in range(25):
        event = parse_ok(factory.event(event_type))
        assert content_fingerprint(event) == _stdlib_fingerprint(event)
    tricky = parse_ok(with_payload(ward='Ø "st" \\ \u00a0 🙂'))
    assert content_fingerprint(tricky) == _stdlib_fingerprint(tricky)
    # U+2028 is refused now (carebus.domain.text), but the ledger holds events accepted with it.
    accepted_before = dataclasses.replace(tricky, payload={**tricky.payload, "ward": "a\u2028b"})
    assert content_fingerprint(accepted_before) == _stdlib_fingerprint(accepted_before)


def test_a_discharge_kind_left_out_is_unknown_on_the_wire_and_absent_again_in_json() -> None:
    """The Avro field has no null: the record says `unknown`, which `given` reads as nothing;
    a kind that was sent is kept as it was."""
    spec = PAYLOAD_FIELDS["discharge"]["kind"]
    left_out = parse_ok(with_payload("discharge", kind=...))
    assert "kind" not in left_out.payload
    assert "kind" not in event_to_json(left_out)["payload"]
    record = event_to_record(left_out, "ab" * 32, RECEIVED_AT)
    assert record["payload"]["kind"] == "unknown"
    assert not events.given(spec, record["payload"]["kind"])
    sent = event_to_record(parse_ok(raw_event("discharge")), "ab" * 32, RECEIVED_AT)
    assert sent["payload"]["kind"] == "planned"
    assert events.given(spec, sent["payload"]["kind"])
    assert not events.given(PAYLOAD_FIELDS["discharge"]["followup_at"], None)


def test_a_crisis_plan_with_its_reference_parses() -> None:
    """crisis_plan true with an id and a review time is a plan reference; without them too."""
    event = parse_ok(raw_event("discharge"))
    assert event.payload["crisis_plan_id"] == "KP-2026-17"
    assert event.payload["crisis_plan_reviewed_at"] == datetime(2026, 11, 27, 13, tzinfo=UTC)
    assert event.payload["crisis_plan_owner"] == {"agency": "dps", "org_id": "974705788"}
    bare = parse_ok(
        with_payload(
            "discharge",
            crisis_plan=False,
            crisis_plan_id=...,
            crisis_plan_reviewed_at=...,
            crisis_plan_owner=...,
        )
    )
    assert bare.payload["crisis_plan"] is False


def test_module_exports() -> None:
    """The public names the other modules rely on are exported."""
    for name in ("AGENCIES", "EVENT_TYPES", "Event", "Problem", "parse_event", "event_to_record"):
        assert name in events.__all__
