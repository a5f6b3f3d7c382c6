"""Consent and care-team changes: validating a request and building its record for the stream."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from carebus.domain import records
from carebus.domain.events import Problem, check_choice, check_org_id, check_text, parse_time
from carebus.domain.identity import validate_nin
from carebus.wire.topics import AGENCIES

CATEGORIES: Final = ("logistics", "health", "social", "police")
CONSENT_STATUSES: Final = ("given", "withdrawn", "objection")
CARE_TEAM_ROLES: Final = ("coordinator", "gp", "participant")
MEMBERSHIP_STATUSES: Final = ("member", "removed")
MAX_RECORDED_BY: Final = 200

_CONSENT_FIELDS: Final = frozenset(
    {
        "nin",
        "recipient",
        "categories",
        "status",
        "valid_from",
        "valid_to",
        "recorded_by",
        "statement_ref",
    }
)
_CARE_TEAM_FIELDS: Final = frozenset({"nin", "agency", "org_id", "role", "status"})


@dataclass(frozen=True, slots=True)
class Consent:
    """A validated consent, withdrawal or objection; times are UTC."""

    nin: str = field(repr=False)
    recipient_agency: str
    recipient_org: str | None  # None: every organisation of the agency
    categories: tuple[str, ...]
    status: str
    valid_from: datetime
    valid_to: datetime | None
    recorded_by: str = field(repr=False)  # a staff reference may name a person
    # Where the patient's statement is kept (a journal note, a signed form): proof of consent.
    statement_ref: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CareTeamChange:
    """A validated care-team change: an organisation joins or leaves a person's care team."""

    nin: str = field(repr=False)
    agency: str
    org_id: str
    role: str
    status: str


def parse_consent(raw: object) -> tuple[Consent | None, list[Problem]]:
    """The consent in a decoded JSON body, or None and every problem found."""
    if not isinstance(raw, dict):
        return None, [Problem("body", "must be a JSON object")]
    problems = _unknown_fields(raw, _CONSENT_FIELDS, "", "a consent")
    nin = _nin(raw.get("nin"), problems)
    recipient = _recipient(raw.get("recipient"), problems)
    status = check_choice(raw.get("status"), CONSENT_STATUSES, "status", problems)
    categories = _categories(raw.get("categories"), status, problems)
    valid_from = parse_time(raw.get("valid_from"), "valid_from", problems, required=True)
    valid_to = parse_time(raw.get("valid_to"), "valid_to", problems, required=False)
    if valid_from is not None and valid_to is not None and valid_to <= valid_from:
        problems.append(Problem("valid_to", "must be after valid_from"))
    recorded_by = check_text(raw.get("recorded_by"), "recorded_by", problems, MAX_RECORDED_BY)
    statement_ref = (
        None
        if raw.get("statement_ref") is None
        else check_text(raw.get("statement_ref"), "statement_ref", problems, MAX_RECORDED_BY)
    )
    if problems:
        return None, problems
    # Each check above reported a problem for anything missing, so these hold here.
    assert nin is not None
    assert recipient is not None
    assert categories is not None
    assert status is not None
    assert valid_from is not None
    assert recorded_by is not None
    consent = Consent(
        nin=nin,
        recipient_agency=recipient[0],
        recipient_org=recipient[1],
        categories=categories,
        status=status,
        valid_from=valid_from,
        valid_to=valid_to,
        recorded_by=recorded_by,
        statement_ref=statement_ref,
    )
    return consent, []


def parse_care_team_change(raw: object) -> tuple[CareTeamChange | None, list[Problem]]:
    """The care-team change in a decoded JSON body, or None and every problem found."""
    if not isinstance(raw, dict):
        return None, [Problem("body", "must be a JSON object")]
    problems = _unknown_fields(raw, _CARE_TEAM_FIELDS, "", "a care-team change")
    nin = _nin(raw.get("nin"), problems)
    agency = check_choice(raw.get("agency"), AGENCIES, "agency", problems)
    org_id = check_org_id(raw.get("org_id"), "org_id", problems, required=True)
    role = check_choice(raw.get("role"), CARE_TEAM_ROLES, "role", problems)
    status = check_choice(raw.get("status"), MEMBERSHIP_STATUSES, "status", problems)
    if problems:
        return None, problems
    assert nin is not None
    assert agency is not None
    assert org_id is not None
    assert role is not None
    assert status is not None
    return CareTeamChange(nin=nin, agency=agency, org_id=org_id, role=role, status=status), []


def consent_record(
    consent: Consent,
    *,
    consent_id: str,
    subject_key: str,
    recorded_by_org: str,
    recorded_at: datetime,
) -> records.ConsentChange:
    """The `ConsentChange` record of `consent`; it carries the subject key, never the nin."""
    return {
        "change_id": consent_id,
        "subject_key": subject_key,
        "recipient": {"agency": consent.recipient_agency, "org_id": consent.recipient_org},
        "categories": list(consent.categories),
        "status": consent.status,
        "valid_from": consent.valid_from,
        "valid_to": consent.valid_to,
        "recorded_by": consent.recorded_by,
        "recorded_by_org": recorded_by_org,
        "recorded_at": recorded_at,
    }


def care_team_record(
    change: CareTeamChange,
    *,
    change_id: str,
    subject_key: str,
    recorded_by_org: str,
    recorded_at: datetime,
) -> records.CareTeamChange:
    """The `CareTeamChange` record of `change`; it carries the subject key, never the nin."""
    return {
        "change_id": change_id,
        "subject_key": subject_key,
        "member": {"agency": change.agency, "org_id": change.org_id},
        "role": change.role,
        "status": change.status,
        "recorded_by_org": recorded_by_org,
        "recorded_at": recorded_at,
    }


# --- field checks: each appends a Problem naming the field and returns None when it fails ------


def _unknown_fields(
    raw: Mapping[str, object], allowed: frozenset[str], path: str, what: str
) -> list[Problem]:
    prefix = f"{path}." if path else ""
    return [
        Problem(f"{prefix}{name}", f"not a field of {what}") for name in raw if name not in allowed
    ]


def _nin(value: object, problems: list[Problem]) -> str | None:
    if value is None:
        problems.append(Problem("nin", "is required"))
        return None
    # The problem text names the rule that failed and never repeats the number.
    problem = validate_nin(value)
    if problem is not None:
        problems.append(Problem("nin", problem))
        return None
    assert isinstance(value, str)
    return value


def _recipient(value: object, problems: list[Problem]) -> tuple[str, str | None] | None:
    if value is None:
        problems.append(Problem("recipient", "is required"))
        return None
    if not isinstance(value, dict):
        problems.append(Problem("recipient", "must be an object with agency and optional org_id"))
        return None
    before = len(problems)
    problems.extend(
        _unknown_fields(value, frozenset({"agency", "org_id"}), "recipient", "a recipient")
    )
    agency = check_choice(value.get("agency"), AGENCIES, "recipient.agency", problems)
    org_id = check_org_id(value.get("org_id"), "recipient.org_id", problems, required=False)
    if agency is None or len(problems) > before:
        return None
    return agency, org_id


def _categories(
    value: object, status: str | None, problems: list[Problem]
) -> tuple[str, ...] | None:
    if value is None:
        problems.append(Problem("categories", "is required"))
        return None
    if not isinstance(value, list):
        problems.append(Problem("categories", "must be a list of categories"))
        return None
    # Withdrawals and objections cover the recipient whatever the categories; a consent
    # given for nothing would be a record that permits nothing, almost surely a mistake.
    if not value and status == "given":
        problems.append(Problem("categories", "must name at least one category when given"))
        return None
    before = len(problems)
    seen: set[str] = set()
    for index, category in enumerate(value):
        path = f"categories[{index}]"
        if not isinstance(category, str) or category not in CATEGORIES:
            problems.append(Problem(path, "must be one of: " + ", ".join(CATEGORIES)))
        elif category in seen:
            problems.append(Problem(path, "is listed twice"))
        else:
            seen.add(category)
    if len(problems) > before:
        return None
    return tuple(value)
