"""The registry's request bodies, declared once: what each call accepts, its OpenAPI schema and
every refusal with its field path (`carebus.wire.requests` words them as the event contract
does)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails

from carebus.adapters.directory import MAX_NAME
from carebus.adapters.webhook_registrations import url_problem
from carebus.wire.requests import (
    Nin,
    OrgId,
    RequestBody,
    Time,
    identifier,
    plain_text,
    refused,
    text,
)
from services.registry.changes import CareTeamChange, CareTeamContact, Consent

Agency = Literal["dps", "municipality", "fastlege", "nav", "police", "housing", "corrections"]
# The agencies and the operator: whose tokens, organisations and webhooks there are.
Realm = Literal[
    "dps", "municipality", "fastlege", "nav", "police", "housing", "corrections", "operator"
]
Role = Literal["system", "coordinator", "privacy_officer", "admin", "operator", "patient"]
Category = Literal["logistics", "health", "social", "police", "justice"]
ConsentStatus = Literal["given", "withdrawn", "objection"]
CareTeamRole = Literal["coordinator", "pathway_coordinator", "gp", "participant"]
MembershipStatus = Literal["member", "removed"]
ContactRole = Literal["coordinator", "pathway_coordinator", "gp", "contact"]
ContactPosition = Literal["accountable", "deputy"]
ContactStatus = Literal["active", "ended"]
MAX_CONTACT_NAME = 200
MAX_RECORDED_BY = 200
MAX_LABEL = 200
StaffText = Annotated[str, Field(max_length=MAX_RECORDED_BY), text(MAX_RECORDED_BY)]
# A reference into the recording organisation's own systems: an identifier it chose.
StaffReference = Annotated[str, Field(max_length=MAX_RECORDED_BY), identifier(MAX_RECORDED_BY)]
CaseReference = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9/._-]{0,39}$"),
    identifier(40),
]


def _label(value: object) -> object:
    if not isinstance(value, str):
        raise refused("must be a string")
    return plain_text(value, MAX_LABEL) if value else value  # an empty label is no label


def _url(value: object) -> object:
    problem = "is required" if value is None else url_problem(value)
    if problem is not None:
        raise refused(problem)
    return value


def _her_id(value: object) -> object:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,9}", value):
        raise refused("must be 1 to 9 digits")
    return value


def _municipality_number(value: object) -> object:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}", value):
        raise refused("must be a 4-digit kommunenummer")
    return value


class Recipient(RequestBody):
    """Whom a consent is about: an agency, or one organisation of it."""

    noun = "a recipient"
    shape = "must be an object with agency and optional org_id"

    agency: Agency
    org_id: OrgId | None = None


class ConsentRequest(RequestBody):
    """A consent, its withdrawal or an objection; without recipient.org_id it covers every
    organisation of the agency."""

    noun = "a consent"

    nin: Nin = Field(repr=False)
    recipient: Recipient
    status: ConsentStatus
    # Withdrawals and objections cover the recipient whatever the categories.
    categories: list[Category]
    valid_from: Time
    valid_to: Time | None = None
    recorded_by: StaffText = Field(repr=False)  # a staff reference may name a person
    # Where the patient's statement is kept (a journal note, a signed form): proof of consent.
    statement_ref: StaffReference | None = Field(default=None, repr=False)

    @field_validator("categories")
    @classmethod
    def _named_once(cls, categories: list[str], info: ValidationInfo) -> list[str]:
        # A consent given for nothing would permit nothing: almost surely a mistake.
        if not categories and info.data.get("status") == "given":
            raise refused("must name at least one category when given")
        twice = [
            InitErrorDetails(type=refused("is listed twice"), loc=(index,), input=category)
            for index, category in enumerate(categories)
            if category in categories[:index]
        ]
        if twice:
            raise ValidationError.from_exception_data(cls.__name__, twice, hide_input=True)
        return categories

    @field_validator("valid_to")
    @classmethod
    def _after_valid_from(cls, valid_to: datetime | None, info: ValidationInfo) -> datetime | None:
        valid_from = info.data.get("valid_from")  # absent when it was refused
        if valid_to is not None and isinstance(valid_from, datetime) and valid_to <= valid_from:
            raise refused("must be after valid_from")
        return valid_to

    def consent(self) -> Consent:
        return Consent(
            nin=self.nin,
            recipient_agency=self.recipient.agency,
            recipient_org=self.recipient.org_id,
            categories=tuple(self.categories),
            status=self.status,
            valid_from=self.valid_from,
            valid_to=self.valid_to,
            recorded_by=self.recorded_by,
            statement_ref=self.statement_ref,
        )


class CareTeamChangeRequest(RequestBody):
    """An organisation joins (member) or leaves (removed) a person's care team."""

    noun = "a care-team change"

    nin: Nin = Field(repr=False)
    agency: Agency
    org_id: OrgId
    role: CareTeamRole
    status: MembershipStatus

    @field_validator("role")
    @classmethod
    def _pathway_coordinator_is_a_dps(cls, role: str, info: ValidationInfo) -> str:
        # The specialist service's forløpskoordinator (seed 003): a DPS role only.
        agency = info.data.get("agency")
        if role == "pathway_coordinator" and agency is not None and agency != "dps":
            raise refused("pathway_coordinator is a role of a dps only")
        return role

    def change(self) -> CareTeamChange:
        return CareTeamChange(
            nin=self.nin, agency=self.agency, org_id=self.org_id, role=self.role, status=self.status
        )


def _hpr_number(value: object) -> object:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{6,9}", value):
        raise refused("must be an HPR number of 6 to 9 digits")
    return value


def _phone(value: object) -> object:
    if not isinstance(value, str) or not re.fullmatch(r"\+?[0-9]{8,15}", value):
        raise refused("must be a phone number: 8 to 15 digits, optionally after +")
    return value


class CareTeamContactRequest(RequestBody):
    """A named member of staff of a care-team organisation, accountable for the person or the
    deputy, in a care-team role; `ended` takes the person off that position."""

    noun = "a contact person"

    nin: Nin = Field(repr=False)
    org_id: OrgId
    role: ContactRole
    position: ContactPosition
    name: Annotated[
        str, Field(min_length=1, max_length=MAX_CONTACT_NAME), text(MAX_CONTACT_NAME)
    ] = Field(repr=False)
    hpr_number: (
        Annotated[
            str,
            Field(pattern=r"^[0-9]{6,9}$", description="Helsepersonellregisteret number"),
            BeforeValidator(_hpr_number),
        ]
        | None
    ) = Field(default=None, validate_default=True)
    phone: Annotated[str, Field(pattern=r"^\+?[0-9]{8,15}$"), BeforeValidator(_phone)] | None = (
        Field(default=None, repr=False)
    )
    status: ContactStatus

    @field_validator("hpr_number")
    @classmethod
    def _hpr_for_a_gp(cls, hpr_number: str | None, info: ValidationInfo) -> str | None:
        # A GP is health personnel by definition: the HPR number identifies the doctor.
        # A municipal coordinator is often a social worker (seed 003: "sosionom"): optional.
        if hpr_number is None and info.data.get("role") == "gp":
            raise refused("is required for the role gp")
        return hpr_number

    def contact(self) -> CareTeamContact:
        return CareTeamContact(
            nin=self.nin,
            org_id=self.org_id,
            role=self.role,
            position=self.position,
            name=self.name,
            hpr_number=self.hpr_number,
            phone=self.phone,
            status=self.status,
        )


class WebhookRequest(RequestBody):
    """Where the organisation receives its deliveries; each call issues a new signing secret."""

    noun = "a webhook"

    url: Annotated[str, Field(json_schema_extra={"format": "uri"}), BeforeValidator(_url)]
    org_id: OrgId | None = Field(
        default=None, description="the operator only; default: the caller's"
    )
    format: Literal["carebus", "plo", "fhir"] | None = Field(
        default=None,
        description="What the webhook receives: carebus's delivery JSON, PLO 1.6 in MsgHead"
        " 1.2 (application/xml), or a FHIR R4 message Bundle (application/fhir+json); a delivery"
        " the chosen standard has no message for goes as carebus JSON (docs/adapters.md)."
        " Absent: the registration's format stays (carebus for a new one). PLO and FHIR are for"
        " the DPS, the municipality and the GP only",
    )


class TokenRequest(RequestBody):
    """A token to issue: an agency's admin for its own organisation, the operator for any."""

    noun = "a token request"

    agency: Realm
    org_id: OrgId
    role: Role
    label: Annotated[str, Field(max_length=MAX_LABEL), BeforeValidator(_label)] = ""
    nin: Nin | None = Field(
        default=None,
        description="patient tokens only (operator): the person the token reads about",
        repr=False,
    )


class OrganisationEntry(RequestBody):
    """An organisation of the directory: whom events and requests may name."""

    noun = "an organisation"

    org_id: OrgId
    agency: Realm
    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME), text(MAX_NAME)]
    her_id: Annotated[str, Field(pattern=r"^[0-9]{1,9}$"), BeforeValidator(_her_id)] | None = None
    # A municipality's kommunenummer (HL7 v2 and FHIR name the patient's municipality by it).
    municipality_number: (
        Annotated[str, Field(pattern=r"^[0-9]{4}$"), BeforeValidator(_municipality_number)] | None
    ) = None


class HomeMunicipalityEntry(RequestBody):
    """A population-register entry: the person's home municipality (null clears it)."""

    noun = "a population-register entry"

    nin: Nin = Field(repr=False)
    home_municipality_org: OrgId | None


class GpListEntry(RequestBody):
    """A GP-list entry: the person's GP office (null clears it)."""

    noun = "a GP-list entry"

    nin: Nin = Field(repr=False)
    org_id: OrgId | None


Identifier = Annotated[str, identifier()]


class HousingPlaceEntry(RequestBody):
    """A housing place: a site (or, for a unit outside any site, the unit) as events name it,
    the housing organisation that owns or runs it and the municipality it lies in."""

    noun = "a housing place"

    housing_site_id: Identifier | None = None
    housing_unit_id: Identifier | None = Field(default=None, validate_default=True)
    owner_org: OrgId
    municipality_org: OrgId

    @field_validator("housing_unit_id")
    @classmethod
    def _one_place(cls, unit: str | None, info: ValidationInfo) -> str | None:
        # housing_site_id comes first; absent from info.data when it was refused.
        site = info.data.get("housing_site_id")
        if unit is not None and site is not None:
            raise refused("give housing_site_id or housing_unit_id, not both")
        if unit is None and site is None and "housing_site_id" in info.data:
            raise refused("required when housing_site_id is not given")
        return unit

    def place(self) -> str:
        """The place as carebus.domain.places.place_of names it."""
        if self.housing_site_id is not None:
            return f"site:{self.housing_site_id}"
        return f"unit:{self.housing_unit_id}"


class ErasureRequest(RequestBody):
    """A person's erasure on a lawful request: whom, and the request it answers."""

    noun = "an erasure"

    nin: Nin = Field(repr=False)
    # The data protection officer's reference to the request: a case number (letters, digits
    # and / . _ -, at most 40), never free text — it is kept for good beside the erased key, so
    # a name typed into it could never be removed (and it holds no nin: the input rule).
    request_ref: CaseReference
