"""A delivery as a FHIR R4 message Bundle (issue 16, item 4): admissions, discharges and their
retractions as the Encounter that carebus.wire.fhir reads inbound, for an organisation whose
webhook chose `fhir`.

The Bundle (type `message`) holds, in order: the MessageHeader (`eventCoding` the carebus event
type, `focus` the Encounter), the Encounter, the Patient (fødselsnummer or D-nummer), and the
sending and receiving Organizations (ENH organisation number, HER-id when known). Everything
that names a resource is derived, never random: the Bundle and MessageHeader ids from the
delivery id, so a retry is the same message; the Encounter's id from the event it renders, so
a retraction names the Encounter its event's message carried. The table is in docs/adapters.md
("Outbound FHIR").

| delivery          | Encounter                                                            |
|-------------------|----------------------------------------------------------------------|
| admission         | in-progress, period.start (and the expected end as period.end)       |
| discharge         | finished, period.end, hospitalization.dischargeDisposition           |
| retraction of one | entered-in-error, the retracted event's Encounter id                 |
| anything else     | None: the dispatcher sends carebus JSON                              |

Nothing here reads a clock, a file or the network.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from carebus.domain.events import rfc3339
from carebus.domain.identity import is_d_number
from carebus.domain.text import embeds_nin
from carebus.wire.fhir import (
    CAREBUS_DESTINATION_SYSTEM,
    DISCHARGE_DISPOSITION_SYSTEM,
    DNR_SYSTEM,
    FNR_SYSTEM,
    MUNICIPALITY_EXTENSION,
    validation_error,
)
from carebus.wire.outbound import Addressee, Rendered, RenderError

__all__ = [
    "ADMISSION_KIND_EXTENSION",
    "CRISIS_PLAN_EXTENSION",
    "DELIVERY_SYSTEM",
    "DISPOSITION_OF_DESTINATION",
    "ENH_SYSTEM",
    "EVENT_SYSTEM",
    "EVENT_TYPE_SYSTEM",
    "FHIR_JSON",
    "FOLLOWUP_EXTENSION",
    "HER_SYSTEM",
    "HOME_MUNICIPALITY_EXTENSION",
    "HOUSING_STATUS_EXTENSION",
    "NEEDS_MUNICIPAL_SERVICES_EXTENSION",
    "REASON_SYSTEM",
    "RETRACTION_REASON_SYSTEM",
    "STAY_SYSTEM",
    "encounter_id",
    "render",
]

FHIR_JSON: Final = "application/fhir+json"

# The organisation registers: Enhetsregisteret (organisation number) and the
# Adresseregisteret's HER-id, as Norwegian FHIR profiles (no-basis) name them.
ENH_SYSTEM: Final = "urn:oid:2.16.578.1.12.4.1.4.101"
HER_SYSTEM: Final = "urn:oid:2.16.578.1.12.4.1.2"
# Volven 3402, the kommunenummer, in no-basis' municipality extension.
_KOMMUNENUMMER_SYSTEM: Final = "urn:oid:2.16.578.1.12.4.1.1.3402"
_ACT_CODE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

_CAREBUS: Final = "https://carebus.no/fhir"
EVENT_TYPE_SYSTEM: Final = f"{_CAREBUS}/CodeSystem/event-type"
REASON_SYSTEM: Final = f"{_CAREBUS}/CodeSystem/admission-reason"
RETRACTION_REASON_SYSTEM: Final = f"{_CAREBUS}/CodeSystem/retraction-reason"
_BASIS_SYSTEM: Final = f"{_CAREBUS}/CodeSystem/basis"
_ADMISSION_KIND_SYSTEM: Final = f"{_CAREBUS}/CodeSystem/admission-kind"
_HOUSING_STATUS_SYSTEM: Final = f"{_CAREBUS}/CodeSystem/housing-status"
_DISCHARGE_KIND_SYSTEM: Final = f"{_CAREBUS}/CodeSystem/discharge-kind"
# The stay is named by its admission's carebus event id, so the admission's and the discharge's
# Encounters are one stay to a receiver that follows Encounter.identifier; each Encounter also
# names the event it renders. Event ids are unique per sender, hence the assigner.
STAY_SYSTEM: Final = f"{_CAREBUS}/NamingSystem/stay"
EVENT_SYSTEM: Final = f"{_CAREBUS}/NamingSystem/event"
DELIVERY_SYSTEM: Final = f"{_CAREBUS}/NamingSystem/delivery"
# MessageHeader's endpoints are required in R4; they name the organisation's carebus connection,
# never its webhook URL.
_ENDPOINT: Final = f"{_CAREBUS}/endpoint/"
# What FHIR R4 and no-basis have no element for, in carebus's own extensions.
_EXTENSION: Final = f"{_CAREBUS}/StructureDefinition/"
ADMISSION_KIND_EXTENSION: Final = f"{_EXTENSION}admission-kind"
HOUSING_STATUS_EXTENSION: Final = f"{_EXTENSION}housing-status"
NEEDS_MUNICIPAL_SERVICES_EXTENSION: Final = f"{_EXTENSION}needs-municipal-services"
HOME_MUNICIPALITY_EXTENSION: Final = f"{_EXTENSION}home-municipality"
CRISIS_PLAN_EXTENSION: Final = f"{_EXTENSION}crisis-plan"
FOLLOWUP_EXTENSION: Final = f"{_EXTENSION}followup-at"
DISCHARGE_KIND_EXTENSION: Final = f"{_EXTENSION}discharge-kind"
DPS_CONTACT_EXTENSION: Final = f"{_EXTENSION}dps-contact"
CRISIS_PLAN_ID_EXTENSION: Final = f"{_EXTENSION}crisis-plan-id"
CRISIS_PLAN_REVIEWED_EXTENSION: Final = f"{_EXTENSION}crisis-plan-reviewed-at"

# The inverse of carebus.wire.fhir's reading of HL7's discharge-disposition, as close as HL7's
# codes come: municipal housing is the person's home; HL7 has no code for having none (`oth`,
# which reads back as unknown). The carebus coding beside it is exact, and is read first.
DISPOSITION_OF_DESTINATION: Final[Mapping[str, str]] = {
    "home": "home",
    "municipal_housing": "home",
    "institution": "other-hcf",
    "homeless": "oth",
    "temporary_housing": "oth",
}

# An involuntary admission (tvungent psykisk helsevern) is not elective: ACUTE. A voluntary or
# unknown one is an inpatient stay, IMP; the exact kind rides in ADMISSION_KIND_EXTENSION.
_CLASS_OF_KIND: Final[Mapping[str, tuple[str, str]]] = {
    "involuntary": ("ACUTE", "inpatient acute"),
}
_INPATIENT: Final = ("IMP", "inpatient encounter")
_RENDERED_RETRACTIONS: Final = ("admission", "discharge")

_NAMESPACE: Final = uuid.UUID("0f6f4c1e-8a53-5d2b-9c71-3e0b5a7d2f94")


def render(
    delivery: Mapping[str, Any], sender: Addressee, recipient: Addressee, now: datetime
) -> Rendered | None:
    """The delivery as a FHIR R4 message Bundle (`application/fhir+json`), validated; None when
    FHIR has no message for it here (another event type, an emergency disclosure, a person
    erased since, a retraction of an event that had none)."""
    subject = delivery.get("subject")
    if not isinstance(subject, Mapping) or subject.get("nin") is None or delivery.get("erased"):
        return None
    if delivery.get("emergency"):
        # An emergency disclosure's justification and accountable person have no FHIR element;
        # carebus JSON carries them.
        return None
    payload = delivery.get("payload")
    payload = payload if isinstance(payload, Mapping) else {}
    parties = _Parties(sender, recipient)
    encounter = _encounter_of(delivery, payload, parties)
    if encounter is None:
        return None
    nin = _nin(subject["nin"])
    bundle = _bundle(delivery, nin, encounter, payload, parties, now)
    try:
        Bundle.model_validate(bundle)
    except ValidationError as error:
        refusal = validation_error(error, "Bundle")
        raise RenderError(f"{refusal.where}: {refusal.problem}") from None
    return Rendered(orjson.dumps(bundle), FHIR_JSON)


def encounter_id(sender_org: str, event_id: str) -> str:
    """The id of the Encounter that renders `event_id` of `sender_org`: the same in the event's
    message and in its retraction's, and showing nothing of what it was made from."""
    return _uuid(f"encounter/{sender_org}/{event_id}")


def _encounter_of(
    delivery: Mapping[str, Any], payload: Mapping[str, Any], parties: _Parties
) -> dict[str, Any] | None:
    """The Encounter the delivery's event type calls for, or None."""
    event_type = delivery.get("event_type")
    if event_type not in ("admission", "discharge", "retraction"):
        return None
    occurred_at = _time(delivery.get("occurred_at"), "occurred_at")
    if event_type == "admission":
        return _admission(str(delivery["event_id"]), payload, occurred_at, parties)
    if event_type == "discharge":
        return _discharge(str(delivery["event_id"]), payload, occurred_at, parties)
    if payload.get("retracted_event_type") in _RENDERED_RETRACTIONS:
        return _retraction(payload, occurred_at, parties)
    return None


@dataclass(frozen=True, slots=True)
class _Parties:
    """The organisation the event came from and the one the message goes to."""

    sender: Addressee
    recipient: Addressee

    def municipality_number(self, org_id: str) -> str | None:
        """The kommunenummer of `org_id` if it is one of the two and a municipality."""
        for party in (self.recipient, self.sender):
            if party.org_id == org_id and party.agency == "municipality":
                return party.municipality_number
        return None


def _admission(
    event_id: str, payload: Mapping[str, Any], occurred_at: str, parties: _Parties
) -> dict[str, Any]:
    kind = _code(payload, "admission_kind")
    class_code, class_display = _CLASS_OF_KIND.get(kind or "", _INPATIENT)
    encounter = _encounter(event_id, event_id, "in-progress", class_code, class_display, parties)
    period = {"start": occurred_at}
    expected = _optional_time(payload, "expected_discharge_at")
    # FHIR's per-1: the end is not before the start. R4 has no planned end; carebus.wire.fhir
    # reads period.end of a stay in progress as the expected discharge.
    if expected is not None and _instant(expected) >= _instant(occurred_at):
        period["end"] = expected
    encounter["period"] = period
    reason = _code(payload, "reason")
    if reason is not None and reason != "unknown":
        encounter["reasonCode"] = [{"coding": [{"system": REASON_SYSTEM, "code": reason}]}]
    ward = payload.get("ward")
    if isinstance(ward, str) and ward.strip():
        encounter["location"] = [{"location": {"display": ward}}]
    extensions = [
        _coded(ADMISSION_KIND_EXTENSION, _ADMISSION_KIND_SYSTEM, kind),
        _coded(HOUSING_STATUS_EXTENSION, _HOUSING_STATUS_SYSTEM, _code(payload, "housing_status")),
        _flag(NEEDS_MUNICIPAL_SERVICES_EXTENSION, payload.get("needs_municipal_services")),
        _home_municipality(payload.get("home_municipality_org")),
    ]
    return _with_extensions(encounter, extensions)


def _discharge(
    event_id: str, payload: Mapping[str, Any], occurred_at: str, parties: _Parties
) -> dict[str, Any]:
    stay = _code(payload, "admission_event_id")
    encounter = _encounter(event_id, stay, "finished", *_INPATIENT, parties)
    encounter["period"] = {"end": occurred_at}
    destination = _code(payload, "destination")
    if destination is not None:
        codings = [{"system": CAREBUS_DESTINATION_SYSTEM, "code": destination}]
        if destination in DISPOSITION_OF_DESTINATION:
            hl7 = DISPOSITION_OF_DESTINATION[destination]
            codings.append({"system": DISCHARGE_DISPOSITION_SYSTEM, "code": hl7})
        encounter["hospitalization"] = {"dischargeDisposition": {"coding": codings}}
    followup = _optional_time(payload, "followup_at")
    reviewed = _optional_time(payload, "crisis_plan_reviewed_at")
    # How the stay ended rides in an extension, not in dischargeDisposition beside the
    # destination: one CodeableConcept's codings must mean the same thing.
    extensions = [
        _coded(DISCHARGE_KIND_EXTENSION, _DISCHARGE_KIND_SYSTEM, _code(payload, "kind")),
        _flag(CRISIS_PLAN_EXTENSION, payload.get("crisis_plan")),
        _text(CRISIS_PLAN_ID_EXTENSION, "valueIdentifier", payload.get("crisis_plan_id")),
        {"url": CRISIS_PLAN_REVIEWED_EXTENSION, "valueDateTime": reviewed} if reviewed else None,
        {"url": FOLLOWUP_EXTENSION, "valueDateTime": followup} if followup else None,
        # Whom the municipality should contact at the DPS about the follow-up (issue 17).
        _text(DPS_CONTACT_EXTENSION, "valueString", payload.get("dps_contact")),
    ]
    return _with_extensions(encounter, extensions)


def _retraction(
    payload: Mapping[str, Any], occurred_at: str, parties: _Parties
) -> dict[str, Any] | None:
    """The retracted event's Encounter, entered in error; None without the retracted event's id
    (a policy that hides it leaves nothing to name)."""
    retracted = _code(payload, "retracted_event_id")
    if retracted is None:
        return None
    # A discharge's own id is not its stay's: only a retracted admission names the stay.
    stay = retracted if payload.get("retracted_event_type") == "admission" else None
    encounter = _encounter(retracted, stay, "entered-in-error", *_INPATIENT, parties)
    # When it was marked in error: carebus.wire.fhir reads a retraction's time from here when
    # the Encounter has no period (the retraction does not repeat the stay's times).
    encounter["meta"] = {"lastUpdated": occurred_at}
    return encounter


def _encounter(
    event_id: str,
    stay: str | None,
    status: str,
    class_code: str,
    class_display: str,
    parties: _Parties,
) -> dict[str, Any]:
    """The Encounter that renders `event_id` (its id and event identifier), of the stay its
    admission `stay` began (the first identifier, which carebus.wire.fhir reads as the episode)."""
    assigner = {"identifier": _enh(parties.sender.org_id)}
    identifiers = [{"system": EVENT_SYSTEM, "value": event_id, "assigner": assigner}]
    if stay is not None:
        identifiers.insert(
            0, {"use": "official", "system": STAY_SYSTEM, "value": stay, "assigner": assigner}
        )
    return {
        "resourceType": "Encounter",
        "id": encounter_id(parties.sender.org_id, event_id),
        "identifier": identifiers,
        "status": status,
        "class": {"system": _ACT_CODE_SYSTEM, "code": class_code, "display": class_display},
        "serviceProvider": _reference(parties.sender),
    }


def _bundle(
    delivery: Mapping[str, Any],
    nin: str,
    encounter: dict[str, Any],
    payload: Mapping[str, Any],
    parties: _Parties,
    now: datetime,
) -> dict[str, Any]:
    delivery_id = str(delivery["delivery_id"])
    encounter_url = _urn(encounter["id"])
    patient_id = _uuid(f"patient/{delivery_id}")
    encounter["subject"] = {"reference": _urn(patient_id)}
    header = _message_header(delivery, encounter_url, payload, parties)
    patient = _patient(patient_id, nin, payload.get("home_municipality_org"), parties)
    resources = [
        header,
        encounter,
        patient,
        _organization(parties.sender),
        _organization(parties.recipient),
    ]
    if parties.recipient.org_id == parties.sender.org_id:
        resources.pop()
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": _uuid(f"bundle/{delivery_id}"),
        "identifier": {"system": DELIVERY_SYSTEM, "value": delivery_id},
        "type": "message",
        "timestamp": rfc3339(now),
        "entry": [
            {"fullUrl": _urn(resource["id"]), "resource": resource} for resource in resources
        ],
    }
    basis = delivery.get("basis")
    if isinstance(basis, str) and basis:
        bundle["meta"] = {"tag": [{"system": _BASIS_SYSTEM, "code": basis}]}
    return bundle


def _message_header(
    delivery: Mapping[str, Any],
    encounter_url: str,
    payload: Mapping[str, Any],
    parties: _Parties,
) -> dict[str, Any]:
    sender, recipient = parties.sender, parties.recipient
    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": _uuid(f"message-header/{delivery['delivery_id']}"),
        "eventCoding": {"system": EVENT_TYPE_SYSTEM, "code": delivery["event_type"]},
        "destination": [
            _named(
                {"endpoint": f"{_ENDPOINT}{recipient.org_id}", "receiver": _reference(recipient)},
                "name",
                recipient,
            )
        ],
        "sender": _reference(sender),
        "source": {"name": "carebus", "software": "carebus", "endpoint": _ENDPOINT + sender.org_id},
        "focus": [{"reference": encounter_url}],
    }
    reason = _code(payload, "reason")
    if delivery["event_type"] == "retraction" and reason is not None:
        header["reason"] = {"coding": [{"system": RETRACTION_REASON_SYSTEM, "code": reason}]}
    return header


def _patient(
    patient_id: str, nin: str, home_municipality: object, parties: _Parties
) -> dict[str, Any]:
    system = DNR_SYSTEM if is_d_number(nin) else FNR_SYSTEM
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [{"system": system, "value": nin}],
    }
    number = (
        parties.municipality_number(home_municipality)
        if isinstance(home_municipality, str)
        else None
    )
    if number is not None:
        # no-basis: the kommunenummer on Address.district, which carebus.wire.fhir reads back.
        municipality = {
            "url": MUNICIPALITY_EXTENSION,
            "valueCoding": {"system": _KOMMUNENUMMER_SYSTEM, "code": number},
        }
        patient["address"] = [{"use": "home", "_district": {"extension": [municipality]}}]
    return patient


def _organization(party: Addressee) -> dict[str, Any]:
    identifiers = [_enh(party.org_id)]
    if party.her_id:
        identifiers.append({"system": HER_SYSTEM, "value": party.her_id})
    organization = {
        "resourceType": "Organization",
        "id": _organization_id(party.org_id),
        "identifier": identifiers,
    }
    return _named(organization, "name", party)


def _organization_id(org_id: str) -> str:
    return _uuid(f"organization/{org_id}")


def _reference(party: Addressee) -> dict[str, Any]:
    """A reference to the party's Organization entry, with its organisation number (and its
    name, when the directory has one)."""
    url = _urn(_organization_id(party.org_id))
    return _named({"reference": url, "identifier": _enh(party.org_id)}, "display", party)


def _named(element: dict[str, Any], key: str, party: Addressee) -> dict[str, Any]:
    # FHIR's strings are never empty: an organisation the directory has no name for has none.
    if party.name.strip():
        element[key] = party.name
    return element


def _nin(nin: object) -> str:
    """The opened nin of the delivery (its format only: the gateway validated it)."""
    if not isinstance(nin, str) or len(nin) != 11 or not nin.isascii() or not nin.isdigit():
        raise RenderError("subject.nin: must be 11 digits (a delivery of an opened subject)")
    return nin


def _time(value: object, where: str) -> str:
    """An RFC 3339 time of the delivery as FHIR's dateTime, in UTC."""
    if not isinstance(value, str):
        raise RenderError(f"{where}: must be an RFC 3339 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RenderError(f"{where}: must be an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise RenderError(f"{where}: must carry an offset")
    return rfc3339(moment)


def _optional_time(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    return None if value is None else _time(value, f"payload.{name}")


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def _code(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    return value if isinstance(value, str) and value else None


def _coded(url: str, system: str, code: str | None) -> dict[str, Any] | None:
    return None if code is None else {"url": url, "valueCoding": {"system": system, "code": code}}


def _flag(url: str, value: object) -> dict[str, Any] | None:
    return {"url": url, "valueBoolean": value} if isinstance(value, bool) else None


def _text(url: str, element: str, value: object) -> dict[str, Any] | None:
    """A text extension (`valueString`), or an identifier's (`valueIdentifier`)."""
    if not isinstance(value, str) or not value:
        return None
    if element == "valueIdentifier":
        return {"url": url, "valueIdentifier": {"value": value}}
    return {"url": url, element: value}


def _home_municipality(org_id: object) -> dict[str, Any] | None:
    if not isinstance(org_id, str) or not org_id:
        return None
    return {"url": HOME_MUNICIPALITY_EXTENSION, "valueIdentifier": _enh(org_id)}


def _with_extensions(
    resource: dict[str, Any], extensions: list[dict[str, Any] | None]
) -> dict[str, Any]:
    present = [extension for extension in extensions if extension is not None]
    if present:
        resource["extension"] = present
    return resource


def _enh(org_id: str) -> dict[str, str]:
    return {"system": ENH_SYSTEM, "value": org_id}


def _urn(resource_id: str) -> str:
    return f"urn:uuid:{resource_id}"


def _uuid(name: str) -> str:
    """A UUID (v5) of `name`; one whose digits happen to hold a valid nin is derived again, so
    that no id a receiver stores ever looks like a person's number."""
    candidate = str(uuid.uuid5(_NAMESPACE, name))
    attempt = 0
    while embeds_nin(candidate):
        attempt += 1
        candidate = str(uuid.uuid5(_NAMESPACE, f"{name}#{attempt}"))
    return candidate
