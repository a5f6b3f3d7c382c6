"""Deliveries rendered as FHIR R4 message Bundles (carebus.wire.fhir_outbound), read back with
the inbound mapping (carebus.wire.fhir)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carebus.domain.events import parse_event
from carebus.wire.fhir import (
    CAREBUS_DESTINATION_SYSTEM,
    DISCHARGE_DISPOSITION_SYSTEM,
    DNR_SYSTEM,
    FNR_SYSTEM,
    MUNICIPALITY_EXTENSION,
    PROTOCOL,
    translate_bundle,
)
from carebus.wire.fhir_outbound import (
    ADMISSION_KIND_EXTENSION,
    CRISIS_PLAN_EXTENSION,
    CRISIS_PLAN_ID_EXTENSION,
    CRISIS_PLAN_REVIEWED_EXTENSION,
    DELIVERY_SYSTEM,
    DISCHARGE_KIND_EXTENSION,
    DISPOSITION_OF_DESTINATION,
    DPS_CONTACT_EXTENSION,
    ENH_SYSTEM,
    EVENT_SYSTEM,
    EVENT_TYPE_SYSTEM,
    FHIR_JSON,
    FOLLOWUP_EXTENSION,
    HER_SYSTEM,
    HOME_MUNICIPALITY_EXTENSION,
    HOUSING_STATUS_EXTENSION,
    NEEDS_MUNICIPAL_SERVICES_EXTENSION,
    REASON_SYSTEM,
    RETRACTION_REASON_SYSTEM,
    STAY_SYSTEM,
    encounter_id,
    render,
)
from carebus.wire.outbound import Addressee, RenderError
from carebus.wire.translation import Party, StaticDirectory, Translation, derived_event_id

SECRET = b"s" * 32
NIN = "15076500565"
D_NUMMER = "55076510007"
DPS = Addressee("974705788", "dps", "Oslo universitetssykehus DPS", her_id="8097321")
OSLO = Addressee("940000301", "municipality", "Oslo kommune", municipality_number="0301")
GP = Addressee("912345678", "gp", "Legesenteret")
OTHER_MUNICIPALITY = "940004601"
NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
ADMITTED = "2026-12-01T09:30:00Z"

ADMISSION_PAYLOAD: Mapping[str, Any] = {
    "reason": "overdose",
    "admission_kind": "involuntary",
    "housing_status": "unstable",
    "needs_municipal_services": True,
    "home_municipality_org": OSLO.org_id,
    "ward": "Akuttpost 2",
    "expected_discharge_at": "2026-12-08T12:00:00+01:00",
}
DISCHARGE_PAYLOAD: Mapping[str, Any] = {
    "admission_event_id": "dps-admission-1",
    "destination": "municipal_housing",
    "followup_at": "2026-12-12T10:00:00Z",
    "crisis_plan": True,
}
RETRACTION_PAYLOAD: Mapping[str, Any] = {
    "retracted_event_id": "dps-admission-1",
    "reason": "sent_in_error",
    "retracted_event_type": "admission",
    "action": "delete",
}


def delivery(
    event_type: str = "admission",
    payload: Mapping[str, Any] = ADMISSION_PAYLOAD,
    *,
    event_id: str = "dps-admission-1",
    occurred_at: str = ADMITTED,
    nin: str | None = NIN,
    delivery_id: str = "0b7c1d9e-4a3f-5c21-8e6d-1f2a3b4c5d6e",
    **extra: Any,
) -> dict[str, Any]:
    """A delivery JSON as the webhook dispatcher holds it (docs/design.md)."""
    return {
        "delivery_id": delivery_id,
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": occurred_at,
        "subject": {"nin": nin} if nin is not None else None,
        "basis": "statutory",
        "categories": ["logistics"],
        "payload": dict(payload),
        **extra,
    }


def bundle_of(
    given_delivery: Mapping[str, Any],
    sender: Addressee = DPS,
    recipient: Addressee = OSLO,
    now: datetime = NOW,
) -> dict[str, Any]:
    """The rendered Bundle as JSON, after checking the media type and validating it again."""
    rendered = render(given_delivery, sender, recipient, now)
    assert rendered is not None
    assert rendered.content_type == FHIR_JSON == "application/fhir+json"
    body = json.loads(rendered.body)
    assert isinstance(body, dict)
    Bundle.model_validate(body)
    return body


def resource(bundle: Mapping[str, Any], kind: str) -> dict[str, Any]:
    found = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]
    assert len(found) == 1, kind
    resource: dict[str, Any] = found[0]
    return resource


def organizations(bundle: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The Bundle's Organizations by their ENH organisation number."""
    by_org: dict[str, dict[str, Any]] = {}
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Organization":
            identifiers = {i["system"]: i["value"] for i in entry["resource"]["identifier"]}
            by_org[identifiers[ENH_SYSTEM]] = entry["resource"]
    return by_org


def extensions(encounter: Mapping[str, Any]) -> dict[str, Any]:
    """The Encounter's extensions, url -> the one value."""
    values: dict[str, Any] = {}
    for extension in encounter.get("extension", []):
        (value,) = [v for k, v in extension.items() if k.startswith("value")]
        values[extension["url"]] = value
    return values


def read_back(bundle: Mapping[str, Any]) -> Translation:
    """The inbound mapping of the Bundle, as if the DPS had posted it to `POST /fhir`, with
    every event held to the contract."""
    directory = StaticDirectory(
        tuple(Party(p.org_id, p.agency, p.her_id, p.municipality_number) for p in (DPS, OSLO, GP))
    )
    translation = translate_bundle(dict(bundle), Party(DPS.org_id, DPS.agency), directory, SECRET)
    for event in translation.events:
        parsed, problems = parse_event(dict(event))
        assert parsed is not None, problems
    return translation


def instant(value: str) -> datetime:
    return datetime.fromisoformat(value)


def inbound_admission_id(stay: str) -> str:
    """The admission id the inbound mapping derives for a stay carebus names by `stay`."""
    episode = f"{len(STAY_SYSTEM)}:{STAY_SYSTEM}|{stay}"
    return derived_event_id(SECRET, PROTOCOL, DPS.org_id, "admission", episode)


# The message


def test_an_admission_is_a_message_bundle_headed_by_its_message_header() -> None:
    """The Bundle is a message whose first entry is the MessageHeader, naming the event type,
    both organisations by organisation number and HER-id, and focusing on the Encounter."""
    bundle = bundle_of(delivery())
    assert bundle["type"] == "message"
    assert bundle["timestamp"] == "2026-12-07T04:00:00Z"
    assert bundle["identifier"] == {"system": DELIVERY_SYSTEM, "value": delivery()["delivery_id"]}
    assert bundle["meta"]["tag"][0]["code"] == "statutory"
    header = bundle["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"] == {"system": EVENT_TYPE_SYSTEM, "code": "admission"}
    assert header["sender"]["identifier"] == {"system": ENH_SYSTEM, "value": DPS.org_id}
    (destination,) = header["destination"]
    assert destination["receiver"]["identifier"] == {"system": ENH_SYSTEM, "value": OSLO.org_id}
    assert destination["name"] == OSLO.name
    urls = {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}
    assert urls[header["focus"][0]["reference"]]["resourceType"] == "Encounter"
    assert urls[header["sender"]["reference"]]["name"] == DPS.name
    assert urls[destination["receiver"]["reference"]]["name"] == OSLO.name
    orgs = organizations(bundle)
    assert {i["system"]: i["value"] for i in orgs[DPS.org_id]["identifier"]} == {
        ENH_SYSTEM: DPS.org_id,
        HER_SYSTEM: "8097321",
    }
    assert orgs[OSLO.org_id]["identifier"] == [{"system": ENH_SYSTEM, "value": OSLO.org_id}]


def test_every_entry_has_a_urn_uuid_full_url_that_is_its_id() -> None:
    """Entries are addressed by urn:uuid fullUrls equal to their ids, and every reference in
    the Bundle resolves inside it."""
    bundle = bundle_of(delivery())
    urls = {entry["fullUrl"] for entry in bundle["entry"]}
    for entry in bundle["entry"]:
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
    text = json.dumps(bundle)
    for reference in _references(bundle):
        assert reference in urls, reference
    assert "urn:uuid:" in text


def _references(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for value in node.values() for r in _references(value)]
    if isinstance(node, list):
        return [r for item in node for r in _references(item)]
    return []


def test_an_organisation_without_a_name_in_the_directory_is_named_by_number_alone() -> None:
    """FHIR strings are never empty: a party the directory has no name for has no name or
    display, and is still named by its organisation number."""
    nameless = Addressee(DPS.org_id, "dps", "")
    bundle = bundle_of(delivery(), sender=nameless)
    header = bundle["entry"][0]["resource"]
    assert header["sender"]["identifier"] == {"system": ENH_SYSTEM, "value": DPS.org_id}
    assert "display" not in header["sender"]
    assert "name" not in organizations(bundle)[DPS.org_id]


def test_the_patient_is_named_by_fodselsnummer_or_d_nummer() -> None:
    """A fødselsnummer is in the fnr system, a D-nummer (day + 40) in the dnr system, and the
    number appears nowhere else in the message."""
    for nin, system in ((NIN, FNR_SYSTEM), (D_NUMMER, DNR_SYSTEM)):
        bundle = bundle_of(delivery(nin=nin))
        patient = resource(bundle, "Patient")
        assert patient["identifier"] == [{"system": system, "value": nin}]
        assert json.dumps(bundle).count(nin) == 1


def test_no_id_or_url_of_the_message_holds_the_nin() -> None:
    """Ids, fullUrls and endpoints are derived from the delivery and event ids, never from the
    person: two persons' deliveries of the same id have the same resource ids."""
    one = bundle_of(delivery(nin=NIN))
    other = bundle_of(delivery(nin=D_NUMMER))
    assert [e["fullUrl"] for e in one["entry"]] == [e["fullUrl"] for e in other["entry"]]


# Admission


def test_an_admission_is_an_encounter_in_progress_from_its_time() -> None:
    """status in-progress, period.start the event's time, period.end the expected discharge,
    the ward as location, the reason as carebus's code, the sender as service provider."""
    encounter = resource(bundle_of(delivery()), "Encounter")
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": ADMITTED, "end": "2026-12-08T11:00:00Z"}
    assert encounter["location"] == [{"location": {"display": "Akuttpost 2"}}]
    assert encounter["reasonCode"] == [{"coding": [{"system": REASON_SYSTEM, "code": "overdose"}]}]
    assert encounter["serviceProvider"]["identifier"] == {"system": ENH_SYSTEM, "value": DPS.org_id}
    assert encounter["id"] == encounter_id(DPS.org_id, "dps-admission-1")
    assert [(i["system"], i["value"]) for i in encounter["identifier"]] == [
        (STAY_SYSTEM, "dps-admission-1"),
        (EVENT_SYSTEM, "dps-admission-1"),
    ]
    assert extensions(encounter) == {
        ADMISSION_KIND_EXTENSION: {
            "system": "https://carebus.no/fhir/CodeSystem/admission-kind",
            "code": "involuntary",
        },
        HOUSING_STATUS_EXTENSION: {
            "system": "https://carebus.no/fhir/CodeSystem/housing-status",
            "code": "unstable",
        },
        NEEDS_MUNICIPAL_SERVICES_EXTENSION: True,
        HOME_MUNICIPALITY_EXTENSION: {"system": ENH_SYSTEM, "value": OSLO.org_id},
    }


@pytest.mark.parametrize(
    ("kind", "code"),
    [("involuntary", "ACUTE"), ("voluntary", "IMP"), ("unknown", "IMP"), (None, "IMP")],
)
def test_the_encounter_class_follows_the_admission_kind(kind: str | None, code: str) -> None:
    """An involuntary admission is ACUTE; a voluntary, unknown or unseen kind an inpatient IMP."""
    payload = {k: v for k, v in ADMISSION_PAYLOAD.items() if k != "admission_kind"}
    if kind is not None:
        payload["admission_kind"] = kind
    encounter = resource(bundle_of(delivery(payload=payload)), "Encounter")
    assert encounter["class"]["code"] == code
    assert encounter["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def test_an_unknown_reason_gives_no_reason_code() -> None:
    """`reason: unknown` says nothing, so the Encounter has no reasonCode."""
    payload = dict(ADMISSION_PAYLOAD, reason="unknown")
    assert "reasonCode" not in resource(bundle_of(delivery(payload=payload)), "Encounter")


def test_an_expected_discharge_before_the_admission_is_left_out() -> None:
    """FHIR's per-1 forbids a period ending before it starts: the expected end is dropped."""
    payload = dict(ADMISSION_PAYLOAD, expected_discharge_at="2026-11-30T00:00:00Z")
    encounter = resource(bundle_of(delivery(payload=payload)), "Encounter")
    assert encounter["period"] == {"start": ADMITTED}


def test_the_home_municipality_is_the_patients_kommunenummer_when_a_party_knows_it() -> None:
    """The home municipality that is the sender or recipient gives the Patient's address its
    no-basis kommunenummer; another is named by organisation number in the extension only."""
    patient = resource(bundle_of(delivery()), "Patient")
    (address,) = patient["address"]
    (municipality,) = address["_district"]["extension"]
    assert municipality["url"] == MUNICIPALITY_EXTENSION
    assert municipality["valueCoding"]["code"] == "0301"

    elsewhere = dict(ADMISSION_PAYLOAD, home_municipality_org=OTHER_MUNICIPALITY)
    bundle = bundle_of(delivery(payload=elsewhere), recipient=GP)
    assert "address" not in resource(bundle, "Patient")
    encounter = resource(bundle, "Encounter")
    assert extensions(encounter)[HOME_MUNICIPALITY_EXTENSION]["value"] == OTHER_MUNICIPALITY


def test_an_admission_reads_back_as_the_same_admission() -> None:
    """The inbound mapping reads the rendered admission as an admission of the same person at
    the same time, from the same municipality, ward and expected discharge."""
    (event,) = read_back(bundle_of(delivery())).events
    assert event["event_type"] == "admission"
    assert event["subject"] == {"nin": NIN}
    assert instant(event["occurred_at"]) == instant(ADMITTED)
    assert event["event_id"] == inbound_admission_id("dps-admission-1")
    payload = event["payload"]
    assert payload["home_municipality_org"] == OSLO.org_id
    assert payload["ward"] == "Akuttpost 2"
    assert instant(payload["expected_discharge_at"]) == instant("2026-12-08T11:00:00Z")


# Discharge


def test_a_discharge_is_a_finished_encounter_of_the_same_stay() -> None:
    """status finished, period.end the event's time, the stay named by the admission's event
    id, its own Encounter id from its own event, and the plan and follow-up in extensions."""
    given = delivery("discharge", DISCHARGE_PAYLOAD, event_id="dps-discharge-1")
    encounter = resource(bundle_of(given), "Encounter")
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"end": ADMITTED}
    assert encounter["id"] == encounter_id(DPS.org_id, "dps-discharge-1")
    assert [(i["system"], i["value"]) for i in encounter["identifier"]] == [
        (STAY_SYSTEM, "dps-admission-1"),
        (EVENT_SYSTEM, "dps-discharge-1"),
    ]
    assert encounter["hospitalization"]["dischargeDisposition"]["coding"] == [
        {"system": CAREBUS_DESTINATION_SYSTEM, "code": "municipal_housing"},
        {"system": DISCHARGE_DISPOSITION_SYSTEM, "code": "home"},
    ]
    assert extensions(encounter) == {
        CRISIS_PLAN_EXTENSION: True,
        FOLLOWUP_EXTENSION: "2026-12-12T10:00:00Z",
    }
    assert "reasonCode" not in encounter  # a discharge never says why the person was admitted


def test_a_discharge_carries_how_it_ended_whom_to_contact_and_the_crisis_plan() -> None:
    """The discharge kind, the DPS contact and the crisis plan's reference, each where the
    recipient was given it (issue 17): in extensions, the kind not mixed into the destination's
    dischargeDisposition."""
    payload = dict(
        DISCHARGE_PAYLOAD,
        kind="self_discharge",
        dps_contact="Sykepleier Kari, tlf 22 00 00 00",
        crisis_plan_id="KP-17",
        crisis_plan_reviewed_at="2026-12-01T09:00:00Z",
    )
    encounter = resource(bundle_of(delivery("discharge", payload)), "Encounter")
    found = {e["url"]: e for e in encounter["extension"]}
    assert found[DISCHARGE_KIND_EXTENSION]["valueCoding"]["code"] == "self_discharge"
    assert found[DPS_CONTACT_EXTENSION]["valueString"] == "Sykepleier Kari, tlf 22 00 00 00"
    assert found[CRISIS_PLAN_ID_EXTENSION]["valueIdentifier"] == {"value": "KP-17"}
    assert found[CRISIS_PLAN_REVIEWED_EXTENSION]["valueDateTime"] == "2026-12-01T09:00:00Z"
    codes = [c["code"] for c in encounter["hospitalization"]["dischargeDisposition"]["coding"]]
    assert "self_discharge" not in codes


@pytest.mark.parametrize(
    "destination",
    ["home", "municipal_housing", "institution", "homeless", "temporary_housing", "unknown"],
)
def test_a_discharge_reads_back_with_its_destination_and_its_admission(destination: str) -> None:
    """The inbound mapping reads a discharge of the same person and time, to the same
    destination, naming the admission the stay's admission message reads back as."""
    payload = dict(DISCHARGE_PAYLOAD, destination=destination)
    given = delivery("discharge", payload, event_id="dps-discharge-1")
    (event,) = read_back(bundle_of(given)).events
    assert event["event_type"] == "discharge"
    assert event["subject"] == {"nin": NIN}
    assert instant(event["occurred_at"]) == instant(ADMITTED)
    assert event["payload"]["destination"] == destination
    assert event["payload"]["admission_event_id"] == inbound_admission_id("dps-admission-1")


# HL7's code alone, as a receiver that knows only HL7's discharge-disposition reads it.
HL7_READING = {
    "home": "home",
    "municipal_housing": "home",
    "institution": "institution",
    "homeless": "unknown",
}


@pytest.mark.parametrize(("destination", "read"), sorted(HL7_READING.items()))
def test_hl7s_discharge_disposition_alone_reads_back_as_near_as_it_can(
    destination: str, read: str
) -> None:
    """Without carebus's own coding, HL7's code reads back as the destination, or as the
    coarser one HL7 can say (municipal housing is home; no home is unknown)."""
    given = delivery("discharge", dict(DISCHARGE_PAYLOAD, destination=destination))
    bundle = bundle_of(given)
    disposition = resource(bundle, "Encounter")["hospitalization"]["dischargeDisposition"]
    disposition["coding"] = [
        c for c in disposition["coding"] if c["system"] == DISCHARGE_DISPOSITION_SYSTEM
    ]
    assert [c["code"] for c in disposition["coding"]] == [DISPOSITION_OF_DESTINATION[destination]]
    (event,) = read_back(bundle).events
    assert event["payload"]["destination"] == read


def test_a_discharge_without_a_destination_has_no_hospitalization() -> None:
    """A destination the recipient may not see is simply absent, and reads back as unknown."""
    payload = {k: v for k, v in DISCHARGE_PAYLOAD.items() if k != "destination"}
    bundle = bundle_of(delivery("discharge", payload))
    assert "hospitalization" not in resource(bundle, "Encounter")
    (event,) = read_back(bundle).events
    assert event["payload"]["destination"] == "unknown"


# Retraction


def test_a_retracted_admission_is_its_encounter_entered_in_error() -> None:
    """The retraction's Encounter has the admission's Encounter id and stay, status
    entered-in-error, the reason on the MessageHeader; it reads back as the retraction of the
    admission the admission's message read back as, at the retraction's time."""
    admission = resource(bundle_of(delivery()), "Encounter")
    retracted_at = "2026-12-01T10:00:00Z"
    given = delivery(
        "retraction", RETRACTION_PAYLOAD, event_id="dps-retraction-1", occurred_at=retracted_at
    )
    bundle = bundle_of(given)
    encounter = resource(bundle, "Encounter")
    assert encounter["id"] == admission["id"]
    assert encounter["identifier"] == admission["identifier"]
    assert encounter["status"] == "entered-in-error"
    assert encounter["meta"] == {"lastUpdated": retracted_at}
    header = bundle["entry"][0]["resource"]
    assert header["eventCoding"]["code"] == "retraction"
    assert header["reason"] == {
        "coding": [{"system": RETRACTION_REASON_SYSTEM, "code": "sent_in_error"}]
    }
    (event,) = read_back(bundle).events
    assert event["event_type"] == "retraction"
    assert event["subject"] == {"nin": NIN}
    assert instant(event["occurred_at"]) == instant(retracted_at)
    assert event["payload"]["retracted_event_id"] == inbound_admission_id("dps-admission-1")


def test_a_retracted_discharge_is_the_discharges_encounter_entered_in_error() -> None:
    """A retracted discharge names the Encounter its discharge's message carried (the stay is
    unknown to the retraction, so only the event identifier is given)."""
    discharge = delivery("discharge", DISCHARGE_PAYLOAD, event_id="dps-discharge-1")
    discharged = resource(bundle_of(discharge), "Encounter")
    payload = dict(
        RETRACTION_PAYLOAD, retracted_event_id="dps-discharge-1", retracted_event_type="discharge"
    )
    encounter = resource(bundle_of(delivery("retraction", payload)), "Encounter")
    assert encounter["id"] == discharged["id"]
    assert encounter["status"] == "entered-in-error"
    assert [(i["system"], i["value"]) for i in encounter["identifier"]] == [
        (EVENT_SYSTEM, "dps-discharge-1")
    ]


@pytest.mark.parametrize(
    "payload",
    [
        dict(RETRACTION_PAYLOAD, retracted_event_type="police_callout"),
        dict(RETRACTION_PAYLOAD, retracted_event_type=None),
        {k: v for k, v in RETRACTION_PAYLOAD.items() if k != "retracted_event_id"},
        {k: v for k, v in RETRACTION_PAYLOAD.items() if k != "retracted_event_type"},
    ],
)
def test_a_retraction_of_anything_else_has_no_fhir_message(payload: dict[str, Any]) -> None:
    """A retraction of an event FHIR did not render, or that does not say which, is None."""
    assert render(delivery("retraction", payload), DPS, OSLO, NOW) is None


# What has no FHIR message


@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        ("discharge_ready", {"admission_event_id": "a", "needs_municipal_services": True}),
        ("discharge_ready_withdrawn", {"discharge_ready_event_id": "r"}),
        ("police_callout", {"kind": "noise", "injuries": False, "location_type": "home"}),
        ("health_info_sent", {"admission_event_id": "a"}),
        ("municipal_reply", {"discharge_ready_event_id": "r", "can_receive": True}),
    ],
)
def test_other_event_types_have_no_fhir_message(event_type: str, payload: dict[str, Any]) -> None:
    """Every event type but admission, discharge and their retraction is None (carebus JSON)."""
    assert render(delivery(event_type, payload), DPS, OSLO, NOW) is None


def test_a_delivery_fhir_does_not_render_is_none_whatever_its_subject() -> None:
    """What has no FHIR message is None before its subject is read: it goes as carebus JSON."""
    police = delivery("police_callout", {"kind": "noise"}, nin="not a nin")
    assert render(police, DPS, OSLO, NOW) is None


def test_an_erased_persons_delivery_has_no_fhir_message() -> None:
    """A delivery of a person erased since (`subject` null, `erased`) is None."""
    assert render(delivery(nin=None, erased=True), DPS, OSLO, NOW) is None
    assert render(delivery(subject={"nin": None}), DPS, OSLO, NOW) is None


def test_an_emergency_disclosure_has_no_fhir_message() -> None:
    """An emergency disclosure's justification has no FHIR element: carebus JSON carries it."""
    emergency = {"justification": "fare for liv", "accountable": "lege"}
    assert render(delivery(emergency=emergency), DPS, OSLO, NOW) is None
    assert render(delivery(emergency=None), DPS, OSLO, NOW) is not None


# The same message again


def test_a_retry_is_the_same_message() -> None:
    """The same delivery rendered later has the same ids throughout; only the timestamp moves."""
    first = bundle_of(delivery())
    later = bundle_of(delivery(), now=NOW + timedelta(hours=3))
    assert later.pop("timestamp") != first.pop("timestamp")
    assert later == first


def test_another_delivery_is_another_message_about_the_same_encounter() -> None:
    """The same event delivered to another organisation is another Bundle and MessageHeader,
    about the same Encounter."""
    one = bundle_of(delivery())
    other = bundle_of(delivery(delivery_id="1c2d3e4f-5a6b-5c7d-8e9f-0a1b2c3d4e5f"), recipient=GP)
    assert one["id"] != other["id"]
    assert one["entry"][0]["resource"]["id"] != other["entry"][0]["resource"]["id"]
    assert resource(one, "Encounter")["id"] == resource(other, "Encounter")["id"]


# A delivery that cannot be rendered


def test_an_invalid_document_raises_a_render_error_naming_the_element() -> None:
    """A Bundle fhir.resources refuses is a RenderError naming the element path, never its
    value."""
    with pytest.raises(RenderError) as refused:
        render(delivery(payload=dict(ADMISSION_PAYLOAD, reason="two  spaces")), DPS, OSLO, NOW)
    text = str(refused.value)
    assert text.startswith("Bundle.entry[1].resource.reasonCode[0].coding[0].code")
    assert "two" not in text
    assert NIN not in text


def test_an_unreadable_time_or_nin_is_a_render_error_without_its_value() -> None:
    """A time or a nin that is not what the delivery JSON promises names the field only."""
    with pytest.raises(RenderError, match=r"^occurred_at: ") as refused:
        render(delivery(occurred_at="yesterday"), DPS, OSLO, NOW)
    assert "yesterday" not in str(refused.value)
    with pytest.raises(RenderError, match=r"^subject\.nin: ") as refused:
        render(delivery(nin="1507650056x"), DPS, OSLO, NOW)
    assert "1507650056" not in str(refused.value)


# Properties


def _subset(payload: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.sets(st.sampled_from(sorted(payload))).map(
        lambda keys: {key: payload[key] for key in keys}
    )


ADMISSION_VALUES = st.fixed_dictionaries(
    {
        "reason": st.sampled_from(
            ["overdose", "suicide_attempt", "psychosis", "withdrawal", "other", "unknown"]
        ),
        "admission_kind": st.sampled_from(["voluntary", "involuntary", "unknown"]),
        "housing_status": st.sampled_from(["stable", "unstable", "homeless", "unknown"]),
        "needs_municipal_services": st.booleans(),
        "home_municipality_org": st.sampled_from([OSLO.org_id, OTHER_MUNICIPALITY]),
        "ward": st.text(st.characters(categories=["L", "N", "Zs"]), min_size=1, max_size=40).filter(
            str.strip
        ),
        "expected_discharge_at": st.datetimes(
            min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
        ).map(lambda t: t.isoformat()),
    }
).flatmap(_subset)
DISCHARGE_VALUES = st.fixed_dictionaries(
    {
        "admission_event_id": st.just("dps-admission-1"),
        "destination": st.sampled_from(
            ["home", "municipal_housing", "institution", "homeless", "temporary_housing", "unknown"]
        ),
        "followup_at": st.just("2026-12-12T10:00:00+01:00"),
        "crisis_plan": st.booleans(),
        "kind": st.sampled_from(["planned", "self_discharge", "against_advice", "transfer"]),
        "dps_contact": st.just("Lege Per, 22 00 00 00 <&>"),
        "crisis_plan_id": st.just("KP-1"),
        "crisis_plan_reviewed_at": st.just("2026-12-01T10:00:00+01:00"),
    }
).flatmap(_subset)
RETRACTION_VALUES = st.fixed_dictionaries(
    {
        "retracted_event_id": st.just("dps-admission-1"),
        "reason": st.sampled_from(["wrong_person", "sent_in_error", "duplicate", "other"]),
        "retracted_event_type": st.sampled_from(["admission", "discharge"]),
        "action": st.just("delete"),
    }
).flatmap(_subset)


# Where each payload field shows in the Encounter: a field the recipient may not see must not.
ELEMENT_OF_FIELD: Mapping[str, Mapping[str, Callable[[Mapping[str, Any]], bool]]] = {
    "admission": {
        "reason": lambda e: "reasonCode" in e,
        "ward": lambda e: "location" in e,
        "expected_discharge_at": lambda e: "end" in e["period"],
        "admission_kind": lambda e: ADMISSION_KIND_EXTENSION in extensions(e),
        "housing_status": lambda e: HOUSING_STATUS_EXTENSION in extensions(e),
        "needs_municipal_services": lambda e: NEEDS_MUNICIPAL_SERVICES_EXTENSION in extensions(e),
        "home_municipality_org": lambda e: HOME_MUNICIPALITY_EXTENSION in extensions(e),
    },
    "discharge": {
        "admission_event_id": lambda e: any(i["system"] == STAY_SYSTEM for i in e["identifier"]),
        "destination": lambda e: "hospitalization" in e,
        "followup_at": lambda e: FOLLOWUP_EXTENSION in extensions(e),
        "crisis_plan": lambda e: CRISIS_PLAN_EXTENSION in extensions(e),
        "kind": lambda e: DISCHARGE_KIND_EXTENSION in extensions(e),
        "dps_contact": lambda e: DPS_CONTACT_EXTENSION in extensions(e),
        "crisis_plan_id": lambda e: CRISIS_PLAN_ID_EXTENSION in extensions(e),
        "crisis_plan_reviewed_at": lambda e: CRISIS_PLAN_REVIEWED_EXTENSION in extensions(e),
    },
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.one_of(
        st.tuples(st.just("admission"), ADMISSION_VALUES),
        st.tuples(st.just("discharge"), DISCHARGE_VALUES),
        st.tuples(st.just("retraction"), RETRACTION_VALUES),
    ),
    nin=st.sampled_from([NIN, D_NUMMER]),
    recipient=st.sampled_from([OSLO, GP]),
)
def test_any_subset_of_the_payload_renders_a_valid_bundle_that_reads_back(
    case: tuple[str, dict[str, Any]], nin: str, recipient: Addressee
) -> None:
    """Whatever fields the recipient may see, the Bundle validates; where the inbound mapping
    can read it (an admission needs its municipality's kommunenummer, a retraction the
    retracted event), it reads back as the same event type, person and time."""
    event_type, payload = case
    given = delivery(event_type, payload, nin=nin)
    rendered = render(given, DPS, recipient, NOW)
    readable_retraction = {"retracted_event_id", "retracted_event_type"} <= payload.keys()
    if event_type == "retraction" and not readable_retraction:
        assert rendered is None
        return
    assert rendered is not None
    bundle = json.loads(rendered.body)
    Bundle.model_validate(bundle)
    assert bundle["entry"][0]["resource"]["resourceType"] == "MessageHeader"
    encounter = resource(bundle, "Encounter")
    for name, shows in ELEMENT_OF_FIELD.get(event_type, {}).items():
        if name not in payload:
            assert not shows(encounter), name
    knows_kommunenummer = payload.get("home_municipality_org") == OSLO.org_id and (
        recipient == OSLO
    )
    if event_type == "admission" and not knows_kommunenummer:
        return
    (event,) = read_back(bundle).events
    assert event["event_type"] == event_type
    assert event["subject"] == {"nin": nin}
    assert instant(event["occurred_at"]) == instant(ADMITTED)
