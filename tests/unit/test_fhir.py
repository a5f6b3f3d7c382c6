"""FHIR R4 Encounters and Bundles mapped to carebus events (carebus.wire.fhir)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from carebus.domain.events import parse_event
from carebus.wire.fhir import (
    CAREBUS_DESTINATION_SYSTEM,
    DISCHARGE_DISPOSITION_SYSTEM,
    MUNICIPALITY_EXTENSION,
    PROTOCOL,
    FhirUntranslatable,
    issue_code,
    operation_outcome,
    translate_bundle,
    translate_encounter,
    validation_error,
)
from carebus.wire.translation import (
    PARTIAL_OR_NO_TIME,
    Party,
    StaticDirectory,
    Translation,
    Untranslatable,
    derived_event_id,
)

DATA = Path(__file__).parent.parent / "data" / "fhir"
SECRET = b"s" * 32
SENDER = Party("974705788", "dps")
DIRECTORY = StaticDirectory(
    (
        Party("940000301", "municipality", None, "0301"),
        Party("940004601", "municipality", None, "4601"),
        Party("940005001", "municipality", None, "5001"),
        SENDER,
    )
)
NINS = ("15076500565", "13116900216", "12057900499")
D_NUMMER = "55076510007"
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
DNR = "urn:oid:2.16.578.1.12.4.1.4.2"
SYSTEM = "https://dps.example.no/fhir/NamingSystem/opphold"
EPISODE = f"{len(SYSTEM)}:{SYSTEM}|2026-0417"


def example(name: str) -> dict[str, Any]:
    loaded = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def encounter(**changes: Any) -> dict[str, Any]:
    """The in-progress example Encounter with some elements replaced (None removes one)."""
    body = example("encounter-in-progress")
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def translate(body: object) -> Translation:
    """Either entry point, as the service would choose it, with every event held to the
    contract."""
    is_bundle = isinstance(body, dict) and body.get("resourceType") == "Bundle"
    function = translate_bundle if is_bundle else translate_encounter
    translation = function(body, SENDER, DIRECTORY, SECRET)
    for event in translation.events:
        parsed, problems = parse_event(dict(event))
        assert parsed is not None, problems
    return translation


def refusal(body: object) -> Untranslatable:
    with pytest.raises(Untranslatable) as refused:
        translate(body)
    for nin in (*NINS, D_NUMMER):
        assert nin not in str(refused.value)
        assert nin not in json.dumps(operation_outcome(refused.value))
    return refused.value


def admission_id(episode: str = EPISODE) -> str:
    return derived_event_id(SECRET, PROTOCOL, SENDER.org_id, "admission", episode)


def patient_entry(
    full_url: str, nin: str = NINS[1], system: str = FNR, code: str = "4601"
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": nin}],
        "address": [
            {
                "use": "home",
                "district": "X",
                "_district": {
                    "extension": [
                        {"url": MUNICIPALITY_EXTENSION, "valueCoding": {"code": code}},
                    ]
                },
            }
        ],
    }
    return {"fullUrl": full_url, "resource": resource}


def encounter_entry(full_url: str, subject: str, episode: str, **changes: Any) -> dict[str, Any]:
    resource = encounter(
        contained=None,
        identifier=[{"system": "urn:test", "value": episode}],
        subject={"reference": subject},
        **changes,
    )
    return {"fullUrl": full_url, "resource": resource}


def collection(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": list(entries)}


# --- the examples -------------------------------------------------------------------------


def test_an_encounter_in_progress_is_an_admission_with_every_field_and_its_origin() -> None:
    """The lone Encounter maps to one admission: nin, start, ICD-10 reason, municipality, ward."""
    translation = translate(example("encounter-in-progress"))
    [event] = translation.events
    assert event["event_id"] == admission_id()
    assert event["event_type"] == "admission"
    assert event["occurred_at"] == "2026-11-23T08:15:00+01:00"
    assert event["source"] == {"agency": "dps", "org_id": "974705788"}
    assert event["subject"] == {"nin": NINS[0]}
    assert event["payload"] == {
        "reason": "overdose",
        "admission_kind": "unknown",
        "housing_status": "unknown",
        "needs_municipal_services": False,
        "home_municipality_org": "940000301",
        "ward": "Akuttpost 2",
    }
    assert translation.origin_of("events[0].occurred_at") == "Encounter.period.start"
    assert translation.origin_of("events[0].subject.nin") == "Encounter.subject.identifier"
    assert (
        translation.origin_of("events[0].payload.home_municipality_org")
        == "Encounter.contained[0].address[0].district.extension[0]"
    )
    assert translation.origin_of("events[0].payload.reason") == "Encounter.reasonCode"


def test_a_message_bundle_finds_the_patient_and_condition_by_urn_uuid() -> None:
    """subject.reference `urn:uuid:` finds the Patient's nin and current home municipality; the
    diagnosis Condition gives the reason; period.end is the expected discharge."""
    translation = translate(example("bundle-message"))
    [event] = translation.events
    assert event["subject"] == {"nin": NINS[1]}
    assert event["payload"]["home_municipality_org"] == "940004601"  # the old address is not
    assert event["payload"]["reason"] == "psychosis"
    assert event["payload"]["expected_discharge_at"] == "2026-12-08T12:00:00+01:00"
    assert (
        translation.origin_of("events[0].subject.nin") == "Bundle.entry[2].resource.identifier[0]"
    )
    assert translation.origin_of("events[0].payload.reason") == "Bundle.entry[1].resource.diagnosis"


def test_a_transaction_bundle_finds_the_patient_by_type_and_id() -> None:
    """subject.reference `Patient/<id>` finds the PUT Patient; self-harm outranks the poisoning;
    without an identifier the episode is Encounter.id."""
    translation = translate(example("bundle-transaction"))
    [event] = translation.events
    assert event["subject"] == {"nin": NINS[2]}
    assert event["payload"]["reason"] == "suicide_attempt"
    assert event["payload"]["home_municipality_org"] == "940005001"
    assert event["event_id"] == admission_id("Encounter/opphold-2026-0610")
    assert translation.origin_of("events[0].event_id") == "Bundle.entry[1].resource.id"


def test_finished_is_the_discharge_of_the_admission_the_earlier_message_made() -> None:
    """The discharge names the admission's derived id; its time is period.end."""
    [admission] = translate(example("encounter-in-progress")).events
    [discharge] = translate(example("encounter-finished")).events
    assert discharge["event_type"] == "discharge"
    assert discharge["occurred_at"] == "2026-11-30T12:00:00+01:00"
    assert discharge["payload"] == {
        "admission_event_id": admission["event_id"],
        "destination": "home",
        "crisis_plan": False,
    }
    assert discharge["event_id"] == derived_event_id(
        SECRET, PROTOCOL, SENDER.org_id, "discharge", EPISODE
    )


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled"])
def test_entered_in_error_or_cancelled_retracts_the_admission(status: str) -> None:
    """The retraction names the admission's id, reason sent_in_error, at the episode's start."""
    [admission] = translate(example("encounter-in-progress")).events
    [retraction] = translate({**example("encounter-entered-in-error"), "status": status}).events
    assert retraction["event_type"] == "retraction"
    assert retraction["payload"] == {
        "retracted_event_id": admission["event_id"],
        "reason": "sent_in_error",
    }
    assert retraction["event_id"] == derived_event_id(
        SECRET, PROTOCOL, SENDER.org_id, "retraction", admission["event_id"]
    )
    assert retraction["occurred_at"] == "2026-11-23T08:15:00+01:00"


def test_a_retraction_without_a_period_takes_meta_last_updated() -> None:
    """With no period at all, the moment the record was marked is the retraction's time."""
    body = {**example("encounter-entered-in-error")}
    del body["period"]
    [retraction] = translate(body).events
    assert retraction["occurred_at"] == "2026-11-23T09:02:00+01:00"
    body.pop("meta")
    assert refusal(body).where == "Encounter.period"


@pytest.mark.parametrize(
    "name",
    [
        "encounter-in-progress",
        "encounter-finished",
        "encounter-entered-in-error",
        "bundle-message",
        "bundle-transaction",
    ],
)
def test_every_mapped_field_has_its_origin_in_the_message(name: str) -> None:
    """A field the gateway refuses can be named to the sender in FHIR's terms."""
    translation = translate(example(name))
    for index, event in enumerate(translation.events):
        fields = ["event_id", "event_type", "occurred_at", "subject.nin"]
        fields += [f"payload.{field}" for field in event["payload"]]
        for field in fields:
            origin = translation.origins[f"events[{index}].{field}"]
            assert origin.startswith(("Encounter", "Bundle.entry["))


# --- statuses, identity -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        ("in-progress", "admission"),
        ("arrived", None),
        ("triaged", None),
        ("onleave", "admission"),
        ("finished", "discharge"),
        ("cancelled", "retraction"),
        ("entered-in-error", "retraction"),
        ("planned", None),
        ("unknown", None),
    ],
)
def test_each_status_maps_to_its_event_or_to_nothing(status: str, event_type: str | None) -> None:
    """The status table: planned and unknown publish nothing."""
    body = encounter(status=status, period={"start": "2026-11-23", "end": "2026-11-24"})
    events = translate(body).events
    assert [event["event_type"] for event in events] == ([event_type] if event_type else [])


def test_a_status_outside_fhirs_value_set_is_refused_by_name() -> None:
    """fhir.resources does not check the code; the adapter does."""
    error = refusal(encounter(status="admitted"))
    assert (error.where, issue_code(error)) == ("Encounter.status", "value")


def test_the_same_resource_maps_to_the_same_events_every_time() -> None:
    """Idempotency: a repeated message gives equal events with equal ids."""
    for name in ("encounter-in-progress", "bundle-message", "bundle-transaction"):
        assert translate(example(name)).events == translate(example(name)).events


def test_the_ids_are_the_senders_own() -> None:
    """Another sender's Encounter of the same episode maps to other ids."""
    other = translate_encounter(
        example("encounter-in-progress"), Party("983974899", "dps"), DIRECTORY, SECRET
    )
    assert other.events[0]["event_id"] != admission_id()
    assert other.events[0]["source"] == {"agency": "dps", "org_id": "983974899"}


def test_without_identifier_or_id_the_episode_is_missing() -> None:
    """No episode, no event: the error names Encounter.identifier."""
    error = refusal(encounter(identifier=None, id=None))
    assert (error.where, issue_code(error)) == ("Encounter.identifier", "required")


def test_a_d_nummer_on_the_patient_is_the_nin() -> None:
    """A Patient known by D-nummer is mapped under it."""
    bundle = collection(
        patient_entry("urn:uuid:p", D_NUMMER, DNR),
        encounter_entry("urn:uuid:e", "urn:uuid:p", "1"),
    )
    assert translate(bundle).events[0]["subject"] == {"nin": D_NUMMER}


def test_the_fodselsnummer_is_taken_before_the_d_nummer() -> None:
    """A person who has both is known by the fødselsnummer."""
    entry = patient_entry("urn:uuid:p", D_NUMMER, DNR)
    entry["resource"]["identifier"].append({"system": FNR, "value": NINS[1]})
    bundle = collection(entry, encounter_entry("urn:uuid:e", "urn:uuid:p", "1"))
    assert translate(bundle).events[0]["subject"] == {"nin": NINS[1]}


def test_an_earlier_fodselsnummer_listed_first_is_not_the_person() -> None:
    """no-basis lets a Patient list the fødselsnummer it had before (use old, its period
    ended) beside the current one, in any order: the current one is the person
    (tests/data/fhir/README.md); a number marked old is taken only when there is no other."""
    body = example("encounter-in-progress-earlier-fnr")
    translation = translate(body)
    [event] = translation.events
    assert event["subject"]["nin"] == NINS[0]
    assert translation.origin_of("events[0].subject.nin") == (
        "Encounter.contained[0].identifier[1]"
    )
    body["contained"][0]["identifier"] = body["contained"][0]["identifier"][:1]
    [only_old] = translate(body).events
    assert only_old["subject"]["nin"] == NINS[1]


def test_a_wrong_check_digit_is_refused_without_the_number() -> None:
    """The error names the identifier's place, never its value."""
    body = encounter(subject={"identifier": {"system": FNR, "value": "15076500566"}})
    error = refusal(body)
    assert error.where == "Encounter.subject.identifier.value"
    assert "15076500566" not in json.dumps(operation_outcome(error))


def test_an_encounter_without_a_nin_names_encounter_subject() -> None:
    """A hospital's own patient number identifies no one for carebus."""
    body = encounter(subject={"identifier": {"system": "urn:local", "value": "P-1"}})
    assert refusal(body).where == "Encounter.subject"
    assert refusal(encounter(subject=None)).where == "Encounter.subject"


def test_a_subject_identifier_and_patient_of_different_persons_is_refused() -> None:
    """Two nins for one Encounter: which person is meant cannot be guessed."""
    body = encounter(
        subject={"reference": "#pasient", "identifier": {"system": FNR, "value": NINS[2]}}
    )
    error = refusal(body)
    assert (error.where, issue_code(error)) == ("Encounter.subject", "value")


def test_reason_references_and_versioned_references_are_resolved() -> None:
    """reasonReference finds a Condition like diagnosis.condition; `Type/id/_history/n` its
    resource."""
    condition = {
        "fullUrl": "urn:uuid:c",
        "resource": {
            "resourceType": "Condition",
            "id": "c1",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "F11.3"}]},
            "subject": {"reference": "urn:uuid:p"},
        },
    }
    bundle = collection(
        patient_entry("urn:uuid:p"),
        condition,
        encounter_entry(
            "urn:uuid:e",
            "urn:uuid:p",
            "1",
            reasonCode=None,
            reasonReference=[{"reference": "Condition/c1/_history/2"}],
        ),
    )
    assert translate(bundle).events[0]["payload"]["reason"] == "withdrawal"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("confirmed", "overdose"),
        ("provisional", "overdose"),
        ("refuted", "unknown"),
        ("entered-in-error", "unknown"),
    ],
)
def test_a_ruled_out_diagnosis_is_no_reason_for_the_admission(status: str, reason: str) -> None:
    """A Condition whose verificationStatus is refuted or entered-in-error does not make the
    admission one after an overdose; any other status does."""
    condition = {
        "fullUrl": "urn:uuid:c",
        "resource": {
            "resourceType": "Condition",
            "id": "c1",
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": status,
                    }
                ]
            },
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "T40.1"}]},
            "subject": {"reference": "urn:uuid:p"},
        },
    }
    bundle = collection(
        patient_entry("urn:uuid:p"),
        condition,
        encounter_entry(
            "urn:uuid:e",
            "urn:uuid:p",
            "1",
            reasonCode=None,
            diagnosis=[{"condition": {"reference": "urn:uuid:c"}}],
        ),
    )
    assert translate(bundle).events[0]["payload"]["reason"] == reason


def test_a_subject_referencing_another_kind_of_resource_is_refused() -> None:
    """subject must be the Patient, not a Group or Condition."""
    bundle = collection(
        {
            "fullUrl": "urn:uuid:c",
            "resource": {"resourceType": "Group", "type": "person", "actual": True},
        },
        encounter_entry("urn:uuid:e", "urn:uuid:c", "1"),
    )
    assert refusal(bundle).where == "Bundle.entry[1].resource.subject.reference"


# --- admission fields -----------------------------------------------------------------------


def test_a_missing_period_start_is_named() -> None:
    """An admission needs its time."""
    error = refusal(encounter(period={"end": "2026-11-30T12:00:00+01:00"}))
    assert (error.where, issue_code(error)) == ("Encounter.period.start", "required")


def test_a_date_alone_is_its_midnight_in_norway() -> None:
    """FHIR lets a dateTime be a date; Norwegian senders mean Norway's day."""
    [event] = translate(encounter(period={"start": "2026-07-01"})).events
    assert event["occurred_at"] == "2026-07-01T00:00:00+02:00"


def test_a_dotnet_senders_seven_fraction_digits_are_cut_to_microseconds() -> None:
    """The Firely .NET SDK writes a DateTimeOffset in ticks of 100 ns (7 digits), which FHIR R4's
    dateTime takes (up to 9): the admission is mapped, its time cut to the microsecond, and the
    retraction's time from meta.lastUpdated alike (tests/data/fhir/README.md)."""
    body = example("encounter-in-progress-dotnet-ticks")
    [admission] = translate(body).events
    assert admission["occurred_at"] == "2026-11-23T08:15:00.724752+01:00"
    [same] = translate(example("encounter-in-progress")).events
    assert admission["event_id"] == same["event_id"]
    retracted = {**body, "status": "entered-in-error"}
    del retracted["period"]
    [retraction] = translate(retracted).events
    assert retraction["occurred_at"] == "2026-11-23T08:20:00.188243+01:00"


@pytest.mark.parametrize("start", ["2026", "2026-11"])
def test_a_year_or_month_alone_is_refused_saying_a_whole_date_is_needed(start: str) -> None:
    """FHIR's dateTime may be a year or a month; an admission needs at least its day, and the
    refusal says so rather than calling the value no date."""
    error = refusal(encounter(period={"start": start}))
    assert (error.where, issue_code(error)) == ("Encounter.period.start", "value")
    assert error.problem == PARTIAL_OR_NO_TIME


def test_a_time_fhir_does_not_take_is_named_by_fhir_path() -> None:
    """fhir.resources' complaint becomes the element's FHIRPath, without pydantic's text."""
    error = refusal(encounter(period={"start": "2026-13-01T10:00:00+01:00"}))
    assert (error.where, issue_code(error)) == ("Encounter.period.start", "value")
    assert "2026-13-01" not in str(error)


def test_a_validation_error_of_fhir_resources_names_the_fhir_path() -> None:
    """validation_error works on fhir.resources' own exception, from the model's name."""
    with pytest.raises(ValidationError) as invalid:
        Encounter.model_validate(encounter(period={"start": "2026-11-23T08:15:00"}))
    error = validation_error(invalid.value)
    assert (error.where, error.severity, issue_code(error)) == (
        "Encounter.period.start",
        "error",
        "value",
    )


def test_an_end_before_the_start_is_refused() -> None:
    """An expected discharge before the admission is an error, not a value to pass on."""
    body = encounter(period={"start": "2026-11-23T08:15:00+01:00", "end": "2026-11-22"})
    assert refusal(body).where == "Encounter.period.end"


def test_an_unknown_kommunenummer_is_named() -> None:
    """A municipality carebus does not know cannot be the home municipality."""
    body = encounter()
    extension = body["contained"][0]["address"][0]["_district"]["extension"][0]
    extension["valueCoding"]["code"] = "9999"
    error = refusal(body)
    assert error.where == "Encounter.contained[0].address[0].district.extension[0].valueCoding.code"
    extension["valueCoding"]["code"] = "301"
    assert "4-digit" in refusal(body).problem


def test_the_kommunenummer_is_also_taken_on_address_extension() -> None:
    """Some senders put the no-basis extension on the Address itself."""
    body = encounter()
    address = body["contained"][0]["address"][0]
    address["extension"] = address.pop("_district")["extension"]
    [event] = translate(body).events
    assert event["payload"]["home_municipality_org"] == "940000301"


def test_without_a_municipality_the_admission_is_refused() -> None:
    """No Patient, or no kommunenummer on its address: the error names where it belongs."""
    alone = encounter(contained=None, subject={"identifier": {"system": FNR, "value": NINS[0]}})
    assert refusal(alone).where == "Patient.address.district.extension"
    body = encounter()
    body["contained"][0]["address"] = [{"use": "home", "city": "Oslo"}]
    error = refusal(body)
    assert (error.where, issue_code(error)) == (
        "Encounter.contained[0].address.district.extension",
        "required",
    )


def test_a_lone_encounter_needs_no_municipality_to_be_discharged_or_retracted() -> None:
    """Only the admission carries the home municipality."""
    assert translate(example("encounter-finished")).events
    assert translate(example("encounter-entered-in-error")).events


@pytest.mark.parametrize(
    ("codings", "reason"),
    [
        ([], "unknown"),
        ([{"system": "http://snomed.info/sct", "code": "55680006"}], "unknown"),
        ([{"system": "http://hl7.org/fhir/sid/icd-10-no", "code": "F10.3"}], "withdrawal"),
        ([{"system": "http://hl7.org/fhir/sid/icd-10", "code": "Z03.9"}], "other"),
        (
            [
                {"system": "http://hl7.org/fhir/sid/icd-10", "code": "T40.1"},
                {"system": "http://hl7.org/fhir/sid/icd-10", "code": "Y12"},
            ],
            "possible_suicide_attempt",
        ),
    ],
)
def test_only_icd10_codings_give_the_reason(codings: list[dict[str, str]], reason: str) -> None:
    """SNOMED CT and other systems are not read as ICD-10."""
    body = encounter(reasonCode=[{"coding": codings}] if codings else None)
    assert translate(body).events[0]["payload"]["reason"] == reason


def test_a_ward_carebus_cannot_carry_as_text_is_left_out() -> None:
    """payload.ward is text carebus shows: with a bidi override, NUL, over 200 characters or
    blank it is left out, and the admission still goes."""
    for display in ("Akutt\u202epost", "Akutt\x00post", "x" * 201, "  "):
        translation = translate(encounter(location=[{"location": {"display": display}}]))
        assert "ward" not in translation.events[0]["payload"]
        assert "events[0].payload.ward" not in translation.origins


# --- discharge destinations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "code", "destination"),
    [
        (DISCHARGE_DISPOSITION_SYSTEM, "home", "home"),
        (DISCHARGE_DISPOSITION_SYSTEM, "alt-home", "home"),
        (DISCHARGE_DISPOSITION_SYSTEM, "psy", "institution"),
        (DISCHARGE_DISPOSITION_SYSTEM, "snf", "institution"),
        (DISCHARGE_DISPOSITION_SYSTEM, "exp", "unknown"),
        (DISCHARGE_DISPOSITION_SYSTEM, "no-such-code", "unknown"),
        (CAREBUS_DESTINATION_SYSTEM, "municipal_housing", "municipal_housing"),
        (CAREBUS_DESTINATION_SYSTEM, "homeless", "homeless"),
        ("urn:other", "home", "unknown"),
    ],
)
def test_the_discharge_disposition_gives_the_destination(
    system: str, code: str, destination: str
) -> None:
    """HL7's codes by the table, carebus's own as they are, other systems not at all."""
    body = example("encounter-finished")
    body["hospitalization"] = {
        "dischargeDisposition": {"coding": [{"system": system, "code": code}]}
    }
    assert translate(body).events[0]["payload"]["destination"] == destination


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("aadvice", "against_advice"),
        ("other-hcf", "transfer"),
        ("psy", "transfer"),
        ("home", None),
        ("snf", None),
        ("rehab", None),
        ("exp", None),
        ("oth", None),
    ],
)
def test_the_discharge_disposition_gives_the_kind_where_a_code_says_it(
    code: str, kind: str | None
) -> None:
    """Left against advice and a transfer to another facility say how the stay ended; the other
    codes say only where the person went, so the kind is left out (unknown)."""
    body = example("encounter-finished")
    body["hospitalization"] = {
        "dischargeDisposition": {"coding": [{"system": DISCHARGE_DISPOSITION_SYSTEM, "code": code}]}
    }
    translation = translate(body)
    assert translation.events[0]["payload"].get("kind") == kind
    assert parse_event(translation.events[0])[1] == []
    if kind is not None:
        assert (
            translation.origin_of("events[0].payload.kind")
            == "Encounter.hospitalization.dischargeDisposition"
        )


def test_a_discharge_kind_is_read_from_hl7_s_codes_only() -> None:
    """carebus's destination code system says nothing of the kind; another system's aadvice
    is not HL7's."""
    body = example("encounter-finished")
    body["hospitalization"] = {
        "dischargeDisposition": {
            "coding": [
                {"system": CAREBUS_DESTINATION_SYSTEM, "code": "homeless"},
                {"system": "urn:other", "code": "aadvice"},
            ]
        }
    }
    assert "kind" not in translate(body).events[0]["payload"]


def test_carebus_s_own_code_outranks_hl7_s() -> None:
    """It can say what HL7's cannot (homeless)."""
    body = example("encounter-finished")
    body["hospitalization"]["dischargeDisposition"]["coding"].append(
        {"system": CAREBUS_DESTINATION_SYSTEM, "code": "homeless"}
    )
    assert translate(body).events[0]["payload"]["destination"] == "homeless"


def test_a_wrong_carebus_destination_code_and_a_missing_end_are_named() -> None:
    """A sender using carebus's own system must use its codes; a discharge needs its time."""
    body = example("encounter-finished")
    body["hospitalization"]["dischargeDisposition"]["coding"] = [
        {"system": CAREBUS_DESTINATION_SYSTEM, "code": "shelter"}
    ]
    assert refusal(body).where == "Encounter.hospitalization.dischargeDisposition.coding.code"
    body = example("encounter-finished")
    del body["period"]["end"]
    assert refusal(body).where == "Encounter.period.end"


# --- Bundles ------------------------------------------------------------------------------


def test_a_bundle_with_two_encounters_maps_both_in_order() -> None:
    """Every Encounter of the Bundle; origins point into each entry."""
    bundle = collection(
        patient_entry("urn:uuid:p1", NINS[1]),
        patient_entry("https://x.example/fhir/Patient/p2", NINS[2], code="5001"),
        encounter_entry("urn:uuid:e1", "urn:uuid:p1", "1"),
        encounter_entry("urn:uuid:e2", "Patient/p2", "2"),
    )
    translation = translate(bundle)  # p2 has no id: its RESTful fullUrl ends in Patient/p2
    assert [event["subject"]["nin"] for event in translation.events] == [NINS[1], NINS[2]]
    assert translation.origin_of("events[1].occurred_at") == "Bundle.entry[3].resource.period.start"


def test_a_bundle_with_one_bad_encounter_maps_to_nothing() -> None:
    """All or nothing: the error names the bad entry."""
    bundle = collection(
        patient_entry("urn:uuid:p1"),
        encounter_entry("urn:uuid:e1", "urn:uuid:p1", "1"),
        encounter_entry("urn:uuid:e2", "urn:uuid:p1", "2", period={"end": "2026-11-24"}),
    )
    assert refusal(bundle).where == "Bundle.entry[2].resource.period.start"


def test_the_same_encounter_twice_in_a_bundle_is_one_event() -> None:
    """Alike events are published once; alike ids with other content are refused."""
    entry = encounter_entry("urn:uuid:e1", "urn:uuid:p1", "1")
    bundle = collection(patient_entry("urn:uuid:p1"), entry, copy.deepcopy(entry))
    assert len(translate(bundle).events) == 1
    bundle["entry"][2]["resource"]["period"] = {"start": "2026-11-25"}
    error = refusal(bundle)
    assert (error.where, issue_code(error)) == ("Bundle.entry[2].resource", "processing")


def test_an_unresolved_reference_and_no_identifier_is_no_person() -> None:
    """A Patient not in the message is not fetched from anywhere."""
    bundle = collection(encounter_entry("urn:uuid:e1", "Patient/elsewhere", "1"))
    assert refusal(bundle).where == "Bundle.entry[0].resource.subject"


def test_a_bundle_without_encounters_publishes_nothing() -> None:
    """Patients alone are nothing to publish."""
    assert translate(collection(patient_entry("urn:uuid:p1"))).events == ()


@pytest.mark.parametrize("kind", ["searchset", "history", "document", "batch-response"])
def test_a_bundle_type_not_taken_is_rejected(kind: str) -> None:
    """Only message, transaction, batch and collection Bundles are posted to carebus."""
    error = refusal({"resourceType": "Bundle", "type": kind, "entry": []})
    assert (error.where, error.severity) == ("Bundle.type", "rejected")


def test_a_bundle_without_a_type_is_an_error_naming_it() -> None:
    """Bundle.type is required by FHIR itself."""
    error = refusal({"resourceType": "Bundle", "entry": []})
    assert (error.where, error.severity, issue_code(error)) == ("Bundle.type", "error", "required")


def test_a_message_bundle_must_start_with_its_message_header() -> None:
    """The message's header comes first (FHIR messaging)."""
    bundle = example("bundle-message")
    bundle["entry"].append(bundle["entry"].pop(0))
    error = refusal(bundle)
    assert (error.where, error.severity) == ("Bundle.entry[0].resource", "error")


def test_a_transaction_entry_that_deletes_or_reads_is_not_supported() -> None:
    """carebus takes POST and PUT entries; it serves no reads and deletes nothing."""
    bundle = example("bundle-transaction")
    bundle["entry"][0]["request"] = {"method": "DELETE", "url": "Patient/pasient-88"}
    error = refusal(bundle)
    assert (error.where, issue_code(error)) == ("Bundle.entry[0].request.method", "not-supported")


# --- wrong inputs ---------------------------------------------------------------------------


def deep(levels: int) -> dict[str, Any]:
    """An extension holding an extension, `levels` deep."""
    node: dict[str, Any] = {"url": "urn:x", "valueString": "y"}
    for _ in range(levels):
        node = {"url": "urn:x", "extension": [node]}
    return node


def nested_lists(levels: int) -> list[Any]:
    node: list[Any] = []
    for _ in range(levels):
        node = [node]
    return node


@pytest.mark.parametrize(
    "body",
    [
        None,
        "Encounter",
        17,
        [],
        [example("encounter-in-progress")],
        {},
        {"resourceType": "Patient"},
        {"resourceType": None},
        nested_lists(1000),
    ],
)
def test_what_is_not_an_encounter_is_rejected(body: object) -> None:
    """Not a FHIR Encounter at all: rejected, never a crash."""
    with pytest.raises(Untranslatable) as refused:
        translate_encounter(body, SENDER, DIRECTORY, SECRET)
    assert refused.value.severity == "rejected"
    with pytest.raises(Untranslatable):
        translate_bundle(body, SENDER, DIRECTORY, SECRET)


@pytest.mark.parametrize(
    "changes",
    [
        {"extension": [deep(1000)]},
        {"identifier": nested_lists(1000)},
        {"contained": [{"resourceType": "NoSuchResource", "id": "x"}]},
        {"contained": [{"resourceType": "Patient", "id": "x", "extension": [deep(40)]}]},
        {"status": None},
        {"status": ["in-progress"]},
        {"period": "2026-11-23"},
        {"period": {"start": 10**400}},
        {"period": {"start": float("nan")}},
        {"subject": {"identifier": {"system": FNR, "value": "1507650056\x00"}}},
        {"id": "a|b"},
        {"class": "IMP"},
        {"identifier": [{"value": "x" * 1_000_000}], "status": "planned"},
        {NINS[0]: True},
        {1: True},
    ],
)
def test_malformed_content_is_an_error_never_a_crash(changes: dict[Any, Any]) -> None:
    """Wrong types, huge values, NUL, deep nesting: Untranslatable, and no nin in it."""
    body = encounter()
    body.update(changes)
    if changes.get("status") == "planned":
        assert translate(body).events == ()
        return
    error = refusal(body)
    assert error.where.startswith("Encounter")


def test_an_unknown_nested_resource_type_is_named() -> None:
    """fhir.resources fails with a KeyError on one; the adapter names it first."""
    error = refusal(encounter(contained=[{"resourceType": "NoSuchResource", "id": "x"}]))
    assert error.where == "Encounter.contained[0].resourceType"


def test_an_element_named_by_a_nin_is_refused_without_showing_it() -> None:
    """A key of the message may itself be personal data."""
    body = encounter()
    body["period"] = {"start": "2026-11-23T08:15:00+01:00", NINS[0]: 1}
    assert refusal(body).where == "Encounter.period"


# --- the OperationOutcome --------------------------------------------------------------------


def test_the_operation_outcome_of_a_refusal_is_valid_fhir_and_names_the_place() -> None:
    """severity error, an issue type, the problem as diagnostics, the path as expression."""
    error = refusal(encounter(period={"end": "2026-11-30T12:00:00+01:00"}))
    outcome = operation_outcome(error)
    OperationOutcome.model_validate(outcome)
    assert outcome == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "required",
                "diagnostics": "is required",
                "expression": ["Encounter.period.start"],
            }
        ],
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Untranslatable("Encounter.period.start", "is not a real date and time"), "value"),
        (Untranslatable("Encounter", "must be a JSON object", "rejected"), "not-supported"),
        (
            FhirUntranslatable("Bundle.type", "must be one of", code="not-supported"),
            "not-supported",
        ),
    ],
)
def test_each_refusal_has_an_issue_type_of_fhirs_value_set(
    error: Untranslatable, code: str
) -> None:
    """The shared helpers' errors are value problems; a message not taken is not supported."""
    outcome = operation_outcome(error)
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["code"] == code


def test_the_operation_outcome_without_an_error_is_information() -> None:
    """An empty Translation is answered with information, e.g. nothing to publish."""
    outcome = operation_outcome(None, information="nothing to publish")
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"] == [
        {"severity": "information", "code": "informational", "diagnostics": "nothing to publish"}
    ]
    OperationOutcome.model_validate(operation_outcome(None))


# --- mutations ------------------------------------------------------------------------------

EXAMPLES = sorted(path.stem for path in DATA.glob("*.json"))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
CHARACTERS = st.sampled_from([*'{}[]":,0123456789-T+Z \x00\u202e', "x", "é"])


def holds(translate_result: object) -> None:
    """A Translation whose events all pass the contract (or the caller saw Untranslatable)."""
    assert isinstance(translate_result, Translation)
    for event in translate_result.events:
        parsed, problems = parse_event(dict(event))
        assert parsed is not None, problems


def attempt(body: object) -> None:
    outcome: Translation | Untranslatable
    try:
        outcome = translate(body)
    except Untranslatable as error:
        outcome = error
    if isinstance(outcome, Untranslatable):
        for nin in (*NINS, D_NUMMER):
            assert nin not in outcome.problem
            assert nin not in outcome.where
    else:
        holds(outcome)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(EXAMPLES),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["delete", "duplicate", "replace", "truncate"]),
            st.floats(min_value=0, max_value=1, exclude_max=True),
            CHARACTERS,
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_messages_translate_whole_or_are_untranslatable(
    name: str, edits: list[tuple[str, float, str]]
) -> None:
    """Characters deleted, duplicated, replaced, the text cut: what still parses as JSON maps
    to events that pass parse_event, or is Untranslatable; nothing else."""
    text = (DATA / f"{name}.json").read_text(encoding="utf-8")
    for kind, where, character in edits:
        at = int(where * len(text)) if text else 0
        if kind == "delete":
            text = text[:at] + text[at + 1 :]
        elif kind == "duplicate":
            text = text[: at + 1] + text[at : at + 1] + text[at + 1 :]
        elif kind == "replace":
            text = text[:at] + character + text[at + 1 :]
        else:
            text = text[:at]
    try:
        body = json.loads(text)
    except ValueError:
        return  # not JSON: the service's parser answers that, the adapter never sees it
    attempt(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(EXAMPLES), data=st.data())
def test_mutated_trees_translate_whole_or_are_untranslatable(
    name: str, data: st.DataObject
) -> None:
    """An element of a real message deleted, duplicated in its list or replaced by any JSON:
    a Translation that holds, or Untranslatable."""
    body: Any = example(name)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        places = list(_places(body))
        parent, key = data.draw(st.sampled_from(places))
        action = data.draw(st.sampled_from(["delete", "duplicate", "replace"]))
        if action == "delete":
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        else:
            parent[key] = data.draw(JSON_VALUES)
    attempt(body)


def test_a_source_endpoint_that_is_not_text_is_untranslatable() -> None:
    """fhir_core calls `startswith` on the endpoint before checking its type: an AttributeError
    inside the library is still a clear refusal, never a crash (found by the test above)."""
    body = example("bundle-message")
    header = next(
        entry["resource"]
        for entry in body["entry"]
        if entry["resource"]["resourceType"] == "MessageHeader"
    )
    header["source"]["endpoint"] = False
    with pytest.raises(Untranslatable):
        translate(body)


def _places(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) of a JSON tree."""
    found: list[tuple[Any, Any]] = []
    stack = [node]
    while stack:
        current = stack.pop()
        keys = list(current) if isinstance(current, dict) else range(len(current))
        for key in keys:
            found.append((current, key))
            if isinstance(current[key], dict | list):
                stack.append(current[key])
    return found


def test_oversized_requests_are_refused_before_validation() -> None:
    """More Encounters than one batch holds, or a reference list longer than 100, is refused
    as too costly (before fhir.resources validates it, which would take seconds)."""
    encounter = json.loads((DATA / "encounter-in-progress.json").read_bytes())
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": dict(encounter, id=f"e{n}")} for n in range(1001)],
    }
    started = time.process_time()
    with pytest.raises(FhirUntranslatable) as refused:
        translate_bundle(bundle, SENDER, DIRECTORY, SECRET)
    assert refused.value.code == "too-costly"
    assert time.process_time() - started < 1.0
    crowded = dict(encounter, diagnosis=[{"condition": {"reference": "#x"}}] * 101)
    with pytest.raises(FhirUntranslatable) as too_many:
        translate_encounter(crowded, SENDER, DIRECTORY, SECRET)
    assert too_many.value.where == "Encounter.diagnosis"


@pytest.mark.parametrize("code", ["AMB", "EMER", "VR", "HH"])
def test_only_a_stay_in_hospital_is_an_admission(code: str) -> None:
    """An outpatient, emergency, virtual or home contact in progress publishes nothing."""
    encounter = json.loads((DATA / "encounter-in-progress.json").read_bytes())
    encounter["class"] = {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": code,
    }
    assert translate_encounter(encounter, SENDER, DIRECTORY, SECRET).events == ()


def test_identifiers_that_join_alike_are_two_episodes() -> None:
    """`https://x|y` + `1` and `https://x` + `y|1` would join to one string; they are two."""
    encounter = json.loads((DATA / "encounter-in-progress.json").read_bytes())
    first = dict(encounter, identifier=[{"system": "https://x|y", "value": "1"}])
    second = dict(encounter, identifier=[{"system": "https://x", "value": "y|1"}])
    ids = {
        translate_encounter(e, SENDER, DIRECTORY, SECRET).events[0]["event_id"]
        for e in (first, second)
    }
    assert len(ids) == 2
