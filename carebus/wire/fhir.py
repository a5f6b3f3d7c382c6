"""FHIR R4 Encounters, posted alone or in a Bundle, mapped whole to carebus admission, discharge
and retraction events (issue 16), and the OperationOutcome that answers the sender.

The Encounter's status decides the event (the table is `EVENT_OF_STATUS`):

| Encounter.status                           | carebus event                                    |
|--------------------------------------------|--------------------------------------------------|
| in-progress, arrived, triaged, onleave     | `admission`                                      |
| finished                                   | `discharge` of the admission                     |
| cancelled, entered-in-error                | `retraction` of the admission (`sent_in_error`)  |
| planned, unknown                           | nothing (an empty Translation)                   |

The episode is the first `Encounter.identifier` with a value (`system|value`), else
`Encounter/<id>`; every event id is derived from it (`derived_event_id`), so the discharge and
the retraction name the admission without any stored state, and the same message maps to the
same events again. fhir.resources (its R4B models: Encounter, Patient, Bundle and the data types
are R4's) checks the structure; the codes it does not check (statuses, Bundle types) are checked
here. Nothing here reads a clock, a file or the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from carebus.domain.events import DESTINATIONS, MAX_TEXT
from carebus.domain.text import shown_field_name, text_problem
from carebus.wire.translation import (
    DNR_OID,
    FNR_OID,
    DirectoryView,
    Party,
    Translation,
    Untranslatable,
    admission_reason,
    derived_event_id,
    national_identity_number,
    norwegian_time,
)

__all__ = [
    "BUNDLE_TYPES",
    "CAREBUS_DESTINATION_SYSTEM",
    "DISCHARGE_DISPOSITION_SYSTEM",
    "EVENT_OF_STATUS",
    "ICD10_SYSTEMS",
    "MUNICIPALITY_EXTENSION",
    "PROTOCOL",
    "FhirUntranslatable",
    "IssueType",
    "issue_code",
    "operation_outcome",
    "translate_bundle",
    "translate_encounter",
    "validation_error",
]

PROTOCOL: Final = "fhir"

FNR_SYSTEM: Final = f"urn:oid:{FNR_OID}"
DNR_SYSTEM: Final = f"urn:oid:{DNR_OID}"

EVENT_OF_STATUS: Final[Mapping[str, str | None]] = {
    "in-progress": "admission",
    "onleave": "admission",
    # Arrived and triaged are an emergency department's or an outpatient clinic's flow, not
    # an admission (yet): nothing until the stay is in progress.
    "arrived": None,
    "triaged": None,
    # The admission was (or should have been) sent while the stay was in progress; its id is
    # derived from the episode, so the discharge finds it without asking anyone.
    "finished": "discharge",
    "cancelled": "retraction",
    "entered-in-error": "retraction",
    # Nothing has happened to the person yet, or the sender does not know what has.
    "planned": None,
    "unknown": None,
}

# The Bundle types whose Encounters are mapped; a search result, a history, a document or a
# response is not something a sender posts to carebus.
BUNDLE_TYPES: Final = ("message", "transaction", "batch", "collection")
_ENTRY_METHODS: Final = ("POST", "PUT")

# no-basis (HL7 Norway's base profiles, hl7.fhir.no.basis 2.x): the kommunenummer is a Coding
# (Volven 3402) in this extension on `Address.district`, in JSON
# `address[]._district.extension[]`. It is also taken straight on `Address.extension`, where
# some senders put it.
MUNICIPALITY_EXTENSION: Final = "http://hl7.no/fhir/StructureDefinition/no-basis-municipalitycode"
_KOMMUNENUMMER: Final = re.compile(r"[0-9]{4}")

# ICD-10: the Norwegian edition (Volven 7110) and the WHO's, under the URIs senders use.
ICD10_SYSTEMS: Final = (
    "urn:oid:2.16.578.1.12.4.1.1.7110",
    "http://hl7.org/fhir/sid/icd-10",
    "http://hl7.org/fhir/sid/icd-10-no",
)

DISCHARGE_DISPOSITION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
_DISPOSITION_DESTINATION: Final[Mapping[str, str]] = {
    "home": "home",
    "alt-home": "home",
    "other-hcf": "institution",
    "hosp": "institution",
    "long": "institution",
    "psy": "institution",
    "rehab": "institution",
    "snf": "institution",
    "aadvice": "unknown",
    "exp": "unknown",
    "oth": "unknown",
}
# The same codes -> the discharge's `kind`, only where the definition says how the stay ended:
# aadvice "The patient self discharged against medical advice"; other-hcf "The patient was
# transferred to another healthcare facility" and psy "The patient has been transferred to a
# psychiatric facility" are transfers. Every other code says where the person went, not how.
_DISPOSITION_KIND: Final[Mapping[str, str]] = {
    "aadvice": "against_advice",
    "other-hcf": "transfer",
    "psy": "transfer",
}
# carebus's own code system: its codes are the contract's destinations, for what HL7's codes
# cannot say (municipal housing, no home).
CAREBUS_DESTINATION_SYSTEM: Final = "https://carebus.no/fhir/CodeSystem/discharge-destination"

# Deeper than any Encounter, Patient or Bundle a sender writes, and shallow enough that
# fhir.resources' recursive validation never meets Python's recursion limit.
# Condition.verificationStatus codes (condition-ver-status) that withdraw a diagnosis.
_DISOWNED: Final = frozenset({"refuted", "entered-in-error"})
MAX_DEPTH: Final = 64

IssueType = Literal[
    "invalid",
    "structure",
    "required",
    "value",
    "not-supported",
    "processing",
    "informational",
    "too-costly",
]


class FhirUntranslatable(Untranslatable):
    """An Untranslatable that knows its OperationOutcome issue type (FHIR's issue-type value
    set), so the answer to the sender says what kind of problem it is."""

    def __init__(
        self,
        where: str,
        problem: str,
        *,
        code: IssueType,
        severity: Literal["rejected", "error"] = "error",
    ) -> None:
        super().__init__(where, problem, severity)
        self.code: IssueType = code


def issue_code(error: Untranslatable) -> IssueType:
    """The OperationOutcome issue type of a refusal: its own, else (the shared helpers' errors:
    a nin, a time) `value`, or `not-supported` for a message not taken at all."""
    if isinstance(error, FhirUntranslatable):
        return error.code
    return "not-supported" if error.severity == "rejected" else "value"


def operation_outcome(
    error: Untranslatable | None, *, information: str | None = None
) -> dict[str, Any]:
    """The OperationOutcome JSON answering a sender: the refusal (its place as the issue's
    expression), or information when there is none. Only paths and fixed texts: no value of
    the message, so never personal data."""
    if error is None:
        issue: dict[str, Any] = {
            "severity": "information",
            "code": "informational",
            "diagnostics": information or "translated",
        }
    else:
        issue = {"severity": "error", "code": issue_code(error), "diagnostics": error.problem}
        if error.where:
            issue["expression"] = [error.where]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def translate_encounter(
    body: object, sender: Party, directory: DirectoryView, secret: bytes
) -> Translation:
    """The events of one Encounter (`POST /fhir/Encounter`); its Patient and Conditions may be
    contained in it."""
    encounter = _root(body, "Encounter", Encounter)
    located = _Located(encounter, "Encounter")
    mapped = _map_encounter(located, _Resolver(), sender, directory, secret)
    return _translation([mapped])


def translate_bundle(
    body: object, sender: Party, directory: DirectoryView, secret: bytes
) -> Translation:
    """The events of every Encounter of a message, transaction, batch or collection Bundle
    (`POST /fhir`), in entry order; the whole Bundle maps or nothing does."""
    bundle = _root(body, "Bundle", Bundle)
    kind = bundle.get("type")
    if kind not in BUNDLE_TYPES:
        raise FhirUntranslatable(
            "Bundle.type",
            "must be one of: " + ", ".join(BUNDLE_TYPES),
            code="not-supported",
            severity="rejected",
        )
    entries = _entries(bundle)
    if kind == "message" and (not entries or _type_of(entries[0].resource) != "MessageHeader"):
        raise FhirUntranslatable(
            "Bundle.entry[0].resource",
            "a message Bundle must start with its MessageHeader",
            code="structure",
        )
    if kind in ("transaction", "batch"):
        _check_methods(bundle)
    resolver = _Resolver.of(entries)
    mapped = [
        _map_encounter(entry, resolver, sender, directory, secret)
        for entry in entries
        if _type_of(entry.resource) == "Encounter"
    ]
    return _translation(mapped)


def validation_error(error: ValidationError, root: str | None = None) -> Untranslatable:
    """fhir.resources' first complaint as a refusal naming its FHIRPath (`Encounter.period.start`,
    `Bundle.entry[2].resource.status`) from `root` (by default the model's name); pydantic's
    message and input are left out, they may quote the value."""
    root = root or error.title
    details = error.errors(include_url=False, include_context=False, include_input=False)
    if not details:
        return FhirUntranslatable(root, "is not valid FHIR R4", code="invalid")
    first = details[0]
    kind = str(first.get("type", ""))
    where = _fhir_path(root, first.get("loc", ()))
    if kind.endswith("missing"):
        return FhirUntranslatable(where, "is required", code="required")
    if kind == "extra_forbidden":
        return FhirUntranslatable(where, "is not an element FHIR R4 has here", code="structure")
    if kind.endswith("_type") or kind.startswith("fhir-validation-wrong"):
        return FhirUntranslatable(
            where, "has the wrong JSON type or resource type", code="structure"
        )
    return FhirUntranslatable(where, "is not a valid value of its FHIR data type", code="value")


@dataclass(frozen=True, slots=True)
class _Located:
    """A resource of the message and its FHIRPath there (`Bundle.entry[1].resource`)."""

    resource: Mapping[str, Any]
    path: str
    full_url: str | None = None


@dataclass(frozen=True, slots=True)
class _Mapped:
    """One Encounter's events, each with its fields' origins (`payload.reason` ->
    `Encounter.reasonCode`), and where the Encounter is."""

    events: tuple[tuple[dict[str, Any], dict[str, str]], ...]
    path: str


@dataclass(frozen=True, slots=True)
class _Resolver:
    """The Bundle's resources by `fullUrl` and by `Type/id`, for references inside it."""

    by_url: Mapping[str, _Located] = field(default_factory=dict)
    by_type_id: Mapping[str, _Located] = field(default_factory=dict)

    @staticmethod
    def of(entries: list[_Located]) -> _Resolver:
        by_url: dict[str, _Located] = {}
        by_type_id: dict[str, _Located] = {}
        for entry in entries:
            kind, rid = _type_of(entry.resource), _string(entry.resource, "id")
            if entry.full_url is not None:
                by_url.setdefault(entry.full_url, entry)
                if not entry.full_url.startswith("urn:"):  # a RESTful URL ends in Type/id
                    rid = rid or entry.full_url.rstrip("/").rpartition("/")[2]
            if kind is not None and rid is not None:
                by_type_id.setdefault(f"{kind}/{rid}", entry)
        return _Resolver(by_url, by_type_id)

    def resolve(self, reference: str, holder: _Located) -> _Located | None:
        """The resource `reference` names: contained in `holder` (`#id`), a Bundle entry by its
        fullUrl (`urn:uuid:...`, an absolute URL) or by `Type/id` (a version suffix ignored)."""
        if reference.startswith("#"):
            for index, contained in _objects(holder.resource, "contained"):
                if contained.get("id") == reference[1:]:
                    return _Located(contained, f"{holder.path}.contained[{index}]")
            return None
        if reference in self.by_url:
            return self.by_url[reference]
        parts = reference.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2:
            return self.by_type_id.get(f"{parts[-2]}/{parts[-1]}")
        return None


def _root(body: object, kind: str, model: type[FHIRAbstractModel]) -> Mapping[str, Any]:
    """`body` as a resource of `kind` that FHIR R4 takes, or the refusal."""
    if not isinstance(body, dict):
        raise FhirUntranslatable(
            kind, "must be a JSON object (a FHIR resource)", code="structure", severity="rejected"
        )
    if body.get("resourceType") != kind:
        raise FhirUntranslatable(
            f"{kind}.resourceType",
            f"must be {kind} here",
            code="not-supported",
            severity="rejected",
        )
    _check_sizes(body, kind)
    _check_shape(body, kind)
    try:
        model.model_validate(body)
    except ValidationError as error:
        raise validation_error(error, kind) from None
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError):
        # fhir.resources' own failures on input its models do not expect (a KeyError for an
        # unknown nested resource type; an AttributeError from fhir_core's url type, which calls
        # `startswith` on a boolean `endpoint` before checking its type); _check_shape catches
        # those it can name first.
        raise FhirUntranslatable(
            kind, "could not be read as a FHIR R4 resource", code="structure"
        ) from None
    return body


# How much one request may hold, checked before anything costly: the gateway takes at most
# 1,000 events a batch, and references inside a resource are resolved one by one.
MAX_ENCOUNTERS: Final = 1000
MAX_ENTRIES: Final = 5000
MAX_REFERENCES: Final = 100
_REFERENCE_LISTS: Final = ("contained", "diagnosis", "reasonReference", "reasonCode", "location")


def _check_sizes(body: Mapping[str, Any], root: str) -> None:
    """Refuse (before validating) a Bundle of more entries or Encounters, or a resource of
    longer reference lists, than one request may hold."""
    resources: list[tuple[object, str]] = [(body, root)]
    if root == "Bundle":
        entries = body.get("entry")
        if isinstance(entries, list):
            if len(entries) > MAX_ENTRIES:
                raise FhirUntranslatable(
                    "Bundle.entry", f"holds more than {MAX_ENTRIES} entries", code="too-costly"
                )
            resources = [
                (entry.get("resource"), f"Bundle.entry[{index}].resource")
                for index, entry in enumerate(entries)
                if isinstance(entry, dict)
            ]
            encounters = sum(
                1
                for resource, _ in resources
                if isinstance(resource, dict) and resource.get("resourceType") == "Encounter"
            )
            if encounters > MAX_ENCOUNTERS:
                raise FhirUntranslatable(
                    "Bundle.entry",
                    f"holds more than {MAX_ENCOUNTERS} Encounters (one request's events)",
                    code="too-costly",
                )
    for resource, path in resources:
        if not isinstance(resource, dict):
            continue
        for name in _REFERENCE_LISTS:
            listed = resource.get(name)
            if isinstance(listed, list) and len(listed) > MAX_REFERENCES:
                raise FhirUntranslatable(
                    f"{path}.{name}", f"holds more than {MAX_REFERENCES} items", code="too-costly"
                )


# The way from the root to a node of the walk: (the parent's trail, the key or index).
_Trail = tuple["_Trail", str | int] | None


def _check_shape(body: Mapping[str, Any], root: str) -> None:
    """What fhir.resources does not survive, refused by name: nesting deeper than MAX_DEPTH,
    non-string keys, a nested resource whose type FHIR R4B does not have. Only the scalars
    are skipped fast: the walk meets every node of a Bundle of a thousand Encounters."""
    stack: list[tuple[object, int, _Trail]] = [(body, 0, None)]
    while stack:
        value, depth, trail = stack.pop()
        if depth > MAX_DEPTH:
            raise FhirUntranslatable(
                _trail_path(root, trail), f"nests deeper than {MAX_DEPTH} levels", code="structure"
            )
        if isinstance(value, list):
            stack.extend(
                (item, depth + 1, (trail, index))
                for index, item in enumerate(value)
                if isinstance(item, dict | list)
            )
        elif isinstance(value, dict):
            if (
                depth > 0
                and "resourceType" in value
                and not _is_resource_type(value["resourceType"])
            ):
                raise FhirUntranslatable(
                    _trail_path(root, (trail, "resourceType")),
                    "is not a resource type of FHIR R4B",
                    code="not-supported",
                )
            for key, item in value.items():
                if not isinstance(key, str):
                    raise FhirUntranslatable(
                        _trail_path(root, trail), "has a key that is not a string", code="structure"
                    )
                if isinstance(item, dict | list):
                    stack.append((item, depth + 1, (trail, key)))


def _trail_path(root: str, trail: _Trail) -> str:
    steps: list[str | int] = []
    while trail is not None:
        trail, step = trail
        steps.append(step)
    path = root
    for step in reversed(steps):
        path = f"{path}[{step}]" if isinstance(step, int) else _child(path, step)
    return path


def _is_resource_type(kind: object) -> bool:
    if not isinstance(kind, str) or not kind.isalpha() or not kind[:1].isupper():
        return False
    try:
        get_fhir_model_class(kind)
    except (ValueError, KeyError):
        return False
    return True


def _child(path: str, key: str) -> str:
    """`path.key` in FHIRPath: a primitive's `_x` sibling is `x`; a key that may be personal
    data (a nin, control characters) is not shown."""
    if not shown_field_name(key):
        return path
    return f"{path}.{key.removeprefix('_')}"


def _fhir_path(root: str, loc: object) -> str:
    path = root
    if not isinstance(loc, tuple):
        return path
    for part in loc:
        if isinstance(part, int):
            path = f"{path}[{part}]"
        elif isinstance(part, str) and part != "root" and part.isidentifier():
            if not shown_field_name(part):
                break
            path = _child(path, part)
        else:  # pydantic's own step names (a validator, a union tag)
            continue
    return path


def _entries(bundle: Mapping[str, Any]) -> list[_Located]:
    """The Bundle's resources with their paths and fullUrls."""
    return [
        _Located(resource, f"Bundle.entry[{index}].resource", _string(entry, "fullUrl"))
        for index, entry in _objects(bundle, "entry")
        if isinstance(resource := entry.get("resource"), dict)
    ]


def _check_methods(bundle: Mapping[str, Any]) -> None:
    for index, entry in _objects(bundle, "entry"):
        request = entry.get("request")
        method = request.get("method") if isinstance(request, dict) else None
        if method not in _ENTRY_METHODS:
            raise FhirUntranslatable(
                f"Bundle.entry[{index}].request.method",
                "must be POST or PUT: carebus takes Encounters, it serves no reads or deletes",
                code="not-supported",
            )


def _translation(mapped: list[_Mapped]) -> Translation:
    """The events of all Encounters, in order, with their origins under `events[k]`; an event
    two entries map to alike is published once."""
    events: list[dict[str, Any]] = []
    origins: dict[str, str] = {}
    seen: dict[str, dict[str, Any]] = {}
    for encounter in mapped:
        for event, event_origins in encounter.events:
            earlier = seen.get(event["event_id"])
            if earlier is not None:
                if earlier != event:
                    raise FhirUntranslatable(
                        encounter.path,
                        "maps to the same carebus event as an earlier entry, with other content",
                        code="processing",
                    )
                continue
            seen[event["event_id"]] = event
            index = len(events)
            events.append(event)
            origins.update({f"events[{index}].{k}": v for k, v in event_origins.items()})
    return Translation(events=tuple(events), origins=origins)


# Encounter.class (v3 ActCode) of a stay in hospital: an outpatient (AMB), emergency (EMER),
# virtual (VR) or home (HH) contact is no admission.
INPATIENT_CLASSES: Final = ("IMP", "ACUTE", "NONAC")


def _inpatient(encounter: Mapping[str, Any]) -> bool:
    kind = encounter.get("class")
    return isinstance(kind, dict) and kind.get("code") in INPATIENT_CLASSES


def _map_encounter(
    encounter: _Located,
    resolver: _Resolver,
    sender: Party,
    directory: DirectoryView,
    secret: bytes,
) -> _Mapped:
    """The event the Encounter's status calls for (`EVENT_OF_STATUS`), or none."""
    at = encounter.path
    status = _string(encounter.resource, "status")
    if status is None or status not in EVENT_OF_STATUS:
        raise FhirUntranslatable(
            f"{at}.status", "must be a code of FHIR R4's encounter-status", code="value"
        )
    event_type = EVENT_OF_STATUS[status]
    if event_type is None or (event_type == "admission" and not _inpatient(encounter.resource)):
        return _Mapped((), at)
    episode, episode_origin = _episode(encounter)
    nin, nin_origin, patient = _person(encounter, resolver)
    admission_id = derived_event_id(secret, PROTOCOL, sender.org_id, "admission", episode)
    origins = {"event_type": f"{at}.status", "subject.nin": nin_origin}
    if event_type == "admission":
        occurred_at = _required_time(encounter, "start")
        payload, payload_origins = _admission(encounter, patient, resolver, directory, occurred_at)
        event_id = admission_id
        origins |= {"event_id": episode_origin, "occurred_at": f"{at}.period.start"}
    elif event_type == "discharge":
        occurred_at = _required_time(encounter, "end")
        payload, payload_origins = _discharge(encounter, admission_id, episode_origin)
        event_id = derived_event_id(secret, PROTOCOL, sender.org_id, "discharge", episode)
        origins |= {"event_id": episode_origin, "occurred_at": f"{at}.period.end"}
    else:
        occurred_at, time_origin = _retraction_time(encounter)
        payload = {"retracted_event_id": admission_id, "reason": "sent_in_error"}
        payload_origins = {"retracted_event_id": episode_origin, "reason": f"{at}.status"}
        event_id = derived_event_id(secret, PROTOCOL, sender.org_id, "retraction", admission_id)
        origins |= {"event_id": episode_origin, "occurred_at": time_origin}
    event = {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": occurred_at,
        "source": {"agency": sender.agency, "org_id": sender.org_id},
        "subject": {"nin": nin},
        "payload": payload,
    }
    origins |= {f"payload.{name}": where for name, where in payload_origins.items()}
    return _Mapped(((event, origins),), at)


def _episode(encounter: _Located) -> tuple[str, str]:
    """The episode key (`<length of system>:system|value` of the first identifier with a
    value, else `Encounter/<id>`) and where it is. The system's length goes first, so that
    `https://x|y` + `1` and `https://x` + `y|1` are two episodes, not one."""
    for index, identifier in _objects(encounter.resource, "identifier"):
        value = _string(identifier, "value")
        if value is not None:
            system = _string(identifier, "system") or ""
            return f"{len(system)}:{system}|{value}", f"{encounter.path}.identifier[{index}]"
    resource_id = _string(encounter.resource, "id")
    if resource_id is not None:
        # An id holds no '|' (FHIR's id type), so it never equals an identifier's key.
        return f"Encounter/{resource_id}", f"{encounter.path}.id"
    raise FhirUntranslatable(
        f"{encounter.path}.identifier",
        "is required (or Encounter.id): the episode the events are about",
        code="required",
    )


def _person(encounter: _Located, resolver: _Resolver) -> tuple[str, str, _Located | None]:
    """The person's nin, where it is, and the Patient the subject references if the message
    holds it."""
    at = encounter.path
    subject = encounter.resource.get("subject")
    if not isinstance(subject, dict):
        raise FhirUntranslatable(
            f"{at}.subject", "is required: the person (fødselsnummer or D-nummer)", code="required"
        )
    from_identifier = None
    identifier = subject.get("identifier")
    if isinstance(identifier, dict) and identifier.get("system") in (FNR_SYSTEM, DNR_SYSTEM):
        from_identifier = national_identity_number(
            _string(identifier, "value") or "", f"{at}.subject.identifier.value"
        )
    patient = None
    reference = _string(subject, "reference")
    if reference is not None:
        patient = resolver.resolve(reference, encounter)
        if patient is not None and _type_of(patient.resource) != "Patient":
            raise FhirUntranslatable(
                f"{at}.subject.reference", "must reference a Patient", code="value"
            )
    from_patient = _patient_nin(patient) if patient is not None else None
    if from_identifier is not None and from_patient is not None:
        if from_identifier != from_patient[0]:
            raise FhirUntranslatable(
                f"{at}.subject",
                "its identifier and the Patient it references are different persons",
                code="value",
            )
        return from_identifier, f"{at}.subject.identifier", patient
    if from_identifier is not None:
        return from_identifier, f"{at}.subject.identifier", patient
    if from_patient is not None:
        return from_patient[0], from_patient[1], patient
    raise FhirUntranslatable(
        f"{at}.subject",
        f"must identify the person by fødselsnummer ({FNR_SYSTEM}) or D-nummer ({DNR_SYSTEM}), "
        "on subject.identifier or on the Patient it references in the message",
        code="required",
    )


def _patient_nin(patient: _Located) -> tuple[str, str] | None:
    """The Patient's fødselsnummer, else its D-nummer (a person who has both is known by the
    fødselsnummer from then on), with where it is. A number the Patient says is no longer in
    use (`use` old, or a `period` that has ended) comes after every number in use: no-basis
    lets a person's earlier fødselsnummer be listed beside the current one, with the period
    each was valid, and in any order."""
    found = [
        (not _in_use(identifier), rank, index, identifier)
        for rank, system in enumerate((FNR_SYSTEM, DNR_SYSTEM))
        for index, identifier in _objects(patient.resource, "identifier")
        if identifier.get("system") == system
    ]
    if not found:
        return None
    _, _, index, identifier = min(found, key=lambda candidate: candidate[:3])
    where = f"{patient.path}.identifier[{index}]"
    value = _string(identifier, "value") or ""
    return national_identity_number(value, f"{where}.value"), where


def _in_use(identifier: Mapping[str, Any]) -> bool:
    """Whether an Identifier is not marked as replaced: `use` old, or a `period.end` (the end
    of the time the number was valid; a mapping reads no clock, and a number still in use has
    no end)."""
    period = identifier.get("period")
    ended = isinstance(period, dict) and _string(period, "end") is not None
    return identifier.get("use") != "old" and not ended


def _admission(
    encounter: _Located,
    patient: _Located | None,
    resolver: _Resolver,
    directory: DirectoryView,
    occurred_at: str,
) -> tuple[dict[str, Any], dict[str, str]]:
    at = encounter.path
    codes, codes_origin = _diagnosis_codes(encounter, resolver)
    municipality, municipality_origin = _home_municipality(patient, directory)
    payload: dict[str, Any] = {
        "reason": admission_reason(codes),
        # No FHIR R4 element or no-basis extension says whether an admission is involuntary
        # (HL7 Europe's encounter-legalStatus is R5 and binds no value set), nor the housing.
        "admission_kind": "unknown",
        "housing_status": "unknown",
        # An Encounter does not say; the municipality learns of the need through PLO.
        "needs_municipal_services": False,
        "home_municipality_org": municipality,
    }
    origins = {
        "reason": codes_origin,
        "admission_kind": at,
        "housing_status": at,
        "needs_municipal_services": at,
        "home_municipality_org": municipality_origin,
    }
    ward = _ward(encounter)
    if ward is not None:
        payload["ward"] = ward
        origins["ward"] = f"{at}.location[0].location.display"
    expected = _period_time(encounter, "end")
    if expected is not None:
        # period.end of a stay still going on is when it is planned to end (R4 has no
        # plannedEndDate; R5 added one).
        if datetime.fromisoformat(expected) < datetime.fromisoformat(occurred_at):
            raise FhirUntranslatable(
                f"{at}.period.end", "must not be before Encounter.period.start", code="value"
            )
        payload["expected_discharge_at"] = expected
        origins["expected_discharge_at"] = f"{at}.period.end"
    return payload, origins


def _diagnosis_codes(encounter: _Located, resolver: _Resolver) -> tuple[list[str], str]:
    """The ICD-10 codes of reasonCode and of the Conditions reasonReference and
    diagnosis.condition reference in the message (one not in it is not ours to fetch)."""
    at = encounter.path
    codes = [
        code
        for _, concept in _objects(encounter.resource, "reasonCode")
        for code in _icd10(concept)
    ]
    origin = f"{at}.reasonCode"
    references = [reference for _, reference in _objects(encounter.resource, "reasonReference")]
    references += [
        condition
        for _, diagnosis in _objects(encounter.resource, "diagnosis")
        if isinstance(condition := diagnosis.get("condition"), dict)
    ]
    for reference in references:
        target = _string(reference, "reference")
        condition = resolver.resolve(target, encounter) if target is not None else None
        if (
            condition is not None
            and _type_of(condition.resource) == "Condition"
            and not _disowned(condition.resource)
        ):
            found = _icd10(condition.resource.get("code"))
            if found and not codes:
                origin = f"{at}.diagnosis"
            codes += found
    return codes, origin


def _disowned(condition: Mapping[str, Any]) -> bool:
    """Whether the Condition's verificationStatus says it is not so: `refuted` (ruled out) or
    `entered-in-error`. Such a diagnosis is no reason for the admission: a ruled-out overdose
    must not tell the municipality the person overdosed."""
    status = condition.get("verificationStatus")
    if not isinstance(status, dict):
        return False
    return any(_string(coding, "code") in _DISOWNED for _, coding in _objects(status, "coding"))


def _icd10(concept: object) -> list[str]:
    if not isinstance(concept, dict):
        return []
    return [
        code
        for _, coding in _objects(concept, "coding")
        if coding.get("system") in ICD10_SYSTEMS and (code := _string(coding, "code")) is not None
    ]


def _home_municipality(patient: _Located | None, directory: DirectoryView) -> tuple[str, str]:
    """The organisation number of the municipality whose kommunenummer the Patient's current
    address carries (home addresses first), and where it is."""
    if patient is not None:
        for extension, where in _municipality_extensions(patient):
            coding = extension.get("valueCoding")
            code = _string(coding, "code") if isinstance(coding, dict) else None
            if code is None or not _KOMMUNENUMMER.fullmatch(code):
                raise FhirUntranslatable(
                    f"{where}.valueCoding.code", "must be a 4-digit kommunenummer", code="value"
                )
            municipality = directory.municipality(code)
            if municipality is None:
                raise FhirUntranslatable(
                    f"{where}.valueCoding.code",
                    "is not the kommunenummer of a municipality carebus knows",
                    code="value",
                )
            return municipality.org_id, where
    where = patient.path if patient is not None else "Patient"
    raise FhirUntranslatable(
        f"{where}.address.district.extension",
        f"is required: the home municipality ({MUNICIPALITY_EXTENSION}) on the Patient's "
        "address, the Patient contained in the Encounter or in the Bundle",
        code="required",
    )


def _municipality_extensions(patient: _Located) -> Iterator[tuple[Mapping[str, Any], str]]:
    addresses = [
        (index, address)
        for index, address in _objects(patient.resource, "address")
        if address.get("use") != "old"
    ]
    addresses.sort(key=lambda item: item[1].get("use") != "home")  # stable: home ones first
    for index, address in addresses:
        at = f"{patient.path}.address[{index}]"
        district = address.get("_district")
        places = [(district, f"{at}.district"), (address, at)]
        for holder, holder_path in places:
            if not isinstance(holder, dict):
                continue
            for position, extension in _objects(holder, "extension"):
                if extension.get("url") == MUNICIPALITY_EXTENSION:
                    yield extension, f"{holder_path}.extension[{position}]"


def _ward(encounter: _Located) -> str | None:
    """`location[0].location.display`, the ward as the sender names it, when carebus can carry
    it as text. A blank, over-long or unclean one (control or format characters) is left out
    rather than refused: the ward is optional, the admission is not, and the sender's ward
    register is not something it can fix for one message."""
    locations = encounter.resource.get("location")
    if not isinstance(locations, list) or not locations or not isinstance(locations[0], dict):
        return None
    location = locations[0].get("location")
    display = _string(location, "display") if isinstance(location, dict) else None
    if display is None or len(display) > MAX_TEXT or text_problem(display) is not None:
        return None
    return display


def _discharge(
    encounter: _Located, admission_id: str, episode_origin: str
) -> tuple[dict[str, Any], dict[str, str]]:
    at = encounter.path
    destination, destination_origin = _destination(encounter)
    payload = {
        "admission_event_id": admission_id,
        "destination": destination,
        # A discharge Encounter says nothing of a crisis plan or a follow-up appointment.
        "crisis_plan": False,
    }
    origins = {
        "admission_event_id": episode_origin,
        "destination": destination_origin,
        "crisis_plan": at,
    }
    kind = _kind(encounter)
    if kind is not None:
        payload["kind"] = kind
        origins["kind"] = f"{at}.hospitalization.dischargeDisposition"
    return payload, origins


def _kind(encounter: _Located) -> str | None:
    """carebus's discharge kind from HL7's hospitalization.dischargeDisposition, where a code
    says it; otherwise none (the contract's "unknown")."""
    hospitalization = encounter.resource.get("hospitalization")
    disposition = (
        hospitalization.get("dischargeDisposition") if isinstance(hospitalization, dict) else None
    )
    codes = [
        coding.get("code")
        for _, coding in _objects(disposition, "coding")
        if coding.get("system") == DISCHARGE_DISPOSITION_SYSTEM
    ]
    return next(
        (
            _DISPOSITION_KIND[code]
            for code in codes
            if isinstance(code, str) and code in _DISPOSITION_KIND
        ),
        None,
    )


def _destination(encounter: _Located) -> tuple[str, str]:
    """carebus's destination from hospitalization.dischargeDisposition: carebus's own code
    first (it can say municipal housing and homeless), else HL7's; `unknown` without either."""
    where = f"{encounter.path}.hospitalization.dischargeDisposition"
    hospitalization = encounter.resource.get("hospitalization")
    disposition = (
        hospitalization.get("dischargeDisposition") if isinstance(hospitalization, dict) else None
    )
    codings = [coding for _, coding in _objects(disposition, "coding")]
    for coding in codings:
        if coding.get("system") == CAREBUS_DESTINATION_SYSTEM:
            code = coding.get("code")
            if code not in DESTINATIONS:
                raise FhirUntranslatable(
                    f"{where}.coding.code",
                    "must be one of: " + ", ".join(DESTINATIONS),
                    code="value",
                )
            return str(code), where
    for coding in codings:
        if coding.get("system") == DISCHARGE_DISPOSITION_SYSTEM:
            code = coding.get("code")
            if isinstance(code, str) and code in _DISPOSITION_DESTINATION:
                return _DISPOSITION_DESTINATION[code], where
    return "unknown", where


def _retraction_time(encounter: _Located) -> tuple[str, str]:
    """When the retraction happened, as the message lets it be said again the same way:
    period.start, else period.end, else meta.lastUpdated. The episode's own times come first
    because a retraction sent again must be the same event (another occurred_at under the same
    id is a conflict at the gateway), and lastUpdated changes with every save of the record."""
    at = encounter.path
    for bound in ("start", "end"):
        moment = _period_time(encounter, bound)
        if moment is not None:
            return moment, f"{at}.period.{bound}"
    meta = encounter.resource.get("meta")
    updated = _string(meta, "lastUpdated") if isinstance(meta, dict) else None
    if updated is not None:
        return norwegian_time(updated, f"{at}.meta.lastUpdated"), f"{at}.meta.lastUpdated"
    raise FhirUntranslatable(
        f"{at}.period", "is required: when the retracted stay began", code="required"
    )


def _period_time(encounter: _Located, bound: Literal["start", "end"]) -> str | None:
    """`period.start` or `period.end` as RFC 3339 (a date alone: its midnight in Norway)."""
    period = encounter.resource.get("period")
    value = _string(period, bound) if isinstance(period, dict) else None
    return None if value is None else norwegian_time(value, f"{encounter.path}.period.{bound}")


def _required_time(encounter: _Located, bound: Literal["start", "end"]) -> str:
    moment = _period_time(encounter, bound)
    if moment is None:
        raise FhirUntranslatable(f"{encounter.path}.period.{bound}", "is required", code="required")
    return moment


def _objects(parent: object, name: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """The JSON objects of the list `parent[name]`, with their indexes in it."""
    if not isinstance(parent, dict):
        return
    items = parent.get(name)
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        if isinstance(item, dict):
            yield index, item


def _string(parent: object, name: str) -> str | None:
    if not isinstance(parent, dict):
        return None
    value = parent.get(name)
    return value if isinstance(value, str) and value.strip() else None


def _type_of(resource: Mapping[str, Any]) -> str | None:
    kind = resource.get("resourceType")
    return kind if isinstance(kind, str) else None
