"""Tests for consent and care-team changes: their request bodies (services.registry.requests)
and their stream records (services.registry.changes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from carebus.adapters.webhook_registrations import url_problem
from carebus.domain.events import NO_OFFSET_PROBLEM, Problem
from carebus.domain.records import CARE_TEAM_CHANGE, CONSENT_CHANGE
from carebus.wire.codec import Codec
from carebus.wire.requests import parse
from services.registry.changes import CareTeamChange, Consent, care_team_record, consent_record
from services.registry.requests import CareTeamChangeRequest, ConsentRequest

NIN = "14038512324"
RECORDED_AT = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def consent_body(**changes: Any) -> dict[str, Any]:
    """A valid consent body; the value `...` removes a field."""
    body: dict[str, Any] = {
        "nin": NIN,
        "recipient": {"agency": "nav", "org_id": "889640782"},
        "categories": ["logistics", "social"],
        "status": "given",
        "valid_from": "2026-11-23T08:00:00+01:00",
        "valid_to": "2027-11-23T08:00:00+01:00",
        "recorded_by": "coordinator K. Nordmann",
    }
    for name, value in changes.items():
        if value is ...:
            body.pop(name)
        else:
            body[name] = value
    return body


def care_team_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nin": NIN,
        "agency": "fastlege",
        "org_id": "912345675",
        "role": "gp",
        "status": "member",
    }
    body.update(changes)
    return body


def parse_consent(raw: object) -> tuple[Consent | None, list[Problem]]:
    request, problems = parse(ConsentRequest, raw)
    return (None if request is None else request.consent()), problems


def parse_care_team_change(raw: object) -> tuple[CareTeamChange | None, list[Problem]]:
    request, problems = parse(CareTeamChangeRequest, raw)
    return (None if request is None else request.change()), problems


def fields(problems: list[Problem]) -> list[str]:
    return [p.field for p in problems]


def test_a_valid_consent_parses_with_utc_times() -> None:
    """A valid consent keeps every field; times become UTC."""
    consent, problems = parse_consent(consent_body())
    assert problems == []
    assert consent is not None
    assert consent.recipient_agency == "nav"
    assert consent.recipient_org == "889640782"
    assert consent.categories == ("logistics", "social")
    assert consent.valid_from == datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    assert consent.valid_to == datetime(2027, 11, 23, 7, 0, tzinfo=UTC)
    assert NIN not in repr(consent)


def test_a_consent_without_org_id_or_valid_to_covers_the_agency_indefinitely() -> None:
    """recipient.org_id and valid_to are optional (null is the same as absent)."""
    consent, problems = parse_consent(
        consent_body(recipient={"agency": "housing", "org_id": None}, valid_to=...)
    )
    assert problems == []
    assert consent is not None
    assert consent.recipient_org is None
    assert consent.valid_to is None


@pytest.mark.parametrize("status", ["withdrawn", "objection"])
def test_withdrawal_and_objection_may_name_no_category(status: str) -> None:
    """Withdrawals and objections cover the recipient whatever the categories."""
    consent, problems = parse_consent(consent_body(status=status, categories=[]))
    assert problems == []
    assert consent is not None
    assert consent.categories == ()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (consent_body(nin="14038512325"), "nin"),
        (consent_body(nin="1403851232"), "nin"),
        (consent_body(nin=14038512324), "nin"),
        (consent_body(nin=...), "nin"),
        (consent_body(recipient=...), "recipient"),
        (consent_body(recipient="nav"), "recipient"),
        (consent_body(recipient={"agency": "bank"}), "recipient.agency"),
        (consent_body(recipient={"org_id": "889640782"}), "recipient.agency"),
        (consent_body(recipient={"agency": "nav", "org_id": "88964078"}), "recipient.org_id"),
        (consent_body(recipient={"agency": "nav", "name": "x"}), "recipient.name"),
        (consent_body(categories=["logistics", "gossip"]), "categories[1]"),
        (consent_body(categories=["health", "health"]), "categories[1]"),
        (consent_body(categories=[]), "categories"),
        (consent_body(categories="health"), "categories"),
        (consent_body(categories=...), "categories"),
        (consent_body(status="maybe"), "status"),
        (consent_body(status=...), "status"),
        (consent_body(valid_from="2026-11-23T08:00:00"), "valid_from"),
        (consent_body(valid_from="2026-11-23"), "valid_from"),
        (consent_body(valid_from=...), "valid_from"),
        (consent_body(valid_to="tomorrow"), "valid_to"),
        (consent_body(valid_to="2026-11-23T07:00:00Z"), "valid_to"),
        (consent_body(valid_to="2026-11-23T08:00:00+01:00"), "valid_to"),
        (consent_body(recorded_by=" "), "recorded_by"),
        (consent_body(recorded_by="x" * 201), "recorded_by"),
        (consent_body(recorded_by=...), "recorded_by"),
        (consent_body(purpose="research"), "purpose"),
    ],
)
def test_an_invalid_consent_names_the_field(body: dict[str, Any], field: str) -> None:
    """Each invalid part is reported with its field path, and nothing is parsed."""
    consent, problems = parse_consent(body)
    assert consent is None
    assert fields(problems) == [field]


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        (consent_body(nin=...), "nin", "is required"),
        (consent_body(nin=14038512324), "nin", "must be a string of 11 digits"),
        (consent_body(recipient=None), "recipient", "is required"),
        (
            consent_body(recipient="nav"),
            "recipient",
            "must be an object with agency and optional org_id",
        ),
        (
            consent_body(recipient={"agency": "nav", "name": "x"}),
            "recipient.name",
            "not a field of a recipient",
        ),
        (
            consent_body(recipient={"agency": "bank"}),
            "recipient.agency",
            "must be one of: dps, municipality, fastlege, nav, police, housing, corrections",
        ),
        (consent_body(categories=["health", "health"]), "categories[1]", "is listed twice"),
        (consent_body(categories=[]), "categories", "must name at least one category when given"),
        (consent_body(status=None), "status", "is required"),
        (consent_body(valid_from="2026-11-23T08:00:00"), "valid_from", NO_OFFSET_PROBLEM),
        (consent_body(valid_to="2026-11-23T07:00:00Z"), "valid_to", "must be after valid_from"),
        (consent_body(recorded_by="x" * 201), "recorded_by", "must be at most 200 characters"),
        (consent_body(purpose="research"), "purpose", "not a field of a consent"),
    ],
)
def test_a_consent_problem_is_worded_as_the_event_contract_words_it(
    body: dict[str, Any], field: str, problem: str
) -> None:
    """pydantic's own texts ("Field required", "Input should be ...") never reach a caller."""
    assert parse_consent(body) == (None, [Problem(field, problem)])


def test_every_problem_of_a_consent_is_reported_and_the_nin_never_echoed() -> None:
    """Several problems come back at once; no problem text repeats the number."""
    wrong = "14038512325"
    consent, problems = parse_consent(
        consent_body(nin=wrong, status="maybe", categories=["police", 7])
    )
    assert consent is None
    assert fields(problems) == ["nin", "status", "categories[1]"]
    assert all(wrong not in p.problem for p in problems)
    request, _ = parse(ConsentRequest, consent_body())
    assert NIN not in repr(request)
    assert "K. Nordmann" not in repr(request)  # recorded_by may name a person


def test_a_consent_body_must_be_an_object() -> None:
    """A JSON array or string is not a consent."""
    assert parse_consent([consent_body()]) == (None, [Problem("body", "must be a JSON object")])


def test_a_valid_care_team_change_parses() -> None:
    """A valid care-team change keeps every field."""
    change, problems = parse_care_team_change(care_team_body())
    assert problems == []
    assert change is not None
    assert (change.agency, change.org_id, change.role, change.status) == (
        "fastlege",
        "912345675",
        "gp",
        "member",
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (care_team_body(nin="00000000000"), "nin"),
        (care_team_body(agency="church"), "agency"),
        (care_team_body(org_id=None), "org_id"),
        (care_team_body(org_id="ABCDEFGHI"), "org_id"),
        (care_team_body(role="friend"), "role"),
        (care_team_body(status="left"), "status"),
        (care_team_body(since="2026-01-01"), "since"),
    ],
)
def test_an_invalid_care_team_change_names_the_field(body: dict[str, Any], field: str) -> None:
    """Each invalid part of a care-team change is reported with its field."""
    change, problems = parse_care_team_change(body)
    assert change is None
    assert fields(problems) == [field]


def test_a_care_team_problem_is_worded_as_the_event_contract_words_it() -> None:
    """A null or missing field is required; an unknown one is not a field of the change."""
    assert parse_care_team_change(care_team_body(org_id=None, since="x")) == (
        None,
        [Problem("org_id", "is required"), Problem("since", "not a field of a care-team change")],
    )


def test_the_consent_record_encodes_and_carries_no_nin() -> None:
    """The ConsentChange record fits its schema and holds the subject key, not the nin."""
    consent, _ = parse_consent(consent_body(recipient={"agency": "nav"}, valid_to=None))
    assert consent is not None
    record = consent_record(
        consent,
        consent_id="c0ffee00-0000-4000-8000-000000000001",
        subject_key="ab" * 32,
        recorded_by_org="940493021",
        recorded_at=RECORDED_AT,
    )
    codec = Codec.default()
    decoded = codec.decode(codec.encode(CONSENT_CHANGE, record))
    assert decoded.schema_name == CONSENT_CHANGE
    assert decoded.record == {**record, "recipient": {"agency": "nav", "org_id": None}}
    assert NIN not in repr(decoded.record)


def test_the_care_team_record_encodes_and_carries_no_nin() -> None:
    """The CareTeamChange record fits its schema and holds the subject key, not the nin."""
    change, _ = parse_care_team_change(care_team_body(role="coordinator", status="removed"))
    assert change is not None
    record = care_team_record(
        change,
        change_id="c0ffee00-0000-4000-8000-000000000002",
        subject_key="cd" * 32,
        recorded_by_org="940493021",
        recorded_at=RECORDED_AT,
    )
    codec = Codec.default()
    decoded = codec.decode(codec.encode(CARE_TEAM_CHANGE, record))
    assert decoded.record["member"] == {"agency": "fastlege", "org_id": "912345675"}
    assert (decoded.record["role"], decoded.record["status"]) == ("coordinator", "removed")
    assert NIN not in repr(decoded.record)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://nav.example/carebus/deliveries", True),
        ("http://127.0.0.1:8080/hook?x=1", True),
        ("ftp://nav.example/hook", False),
        ("https://", False),
        ("nav.example/hook", False),
        ("https://user:pw@nav.example/hook", False),
        ("https://nav.example:99999/hook", False),
        ("https://nav.example/a hook", False),
        ("https://nav.example/" + "x" * 2000, False),
        (42, False),
    ],
)
def test_webhook_urls_are_absolute_http_urls(url: object, ok: bool) -> None:
    """Only absolute http(s) URLs with a host and without credentials are accepted."""
    assert (url_problem(url) is None) is ok
