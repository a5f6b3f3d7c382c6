"""Tests for carebus.wire.requests: request bodies that refuse in the event contract's words."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import Field, TypeAdapter, ValidationError

from carebus.domain.events import ORG_ID_PROBLEM, TIME_PROBLEM, Problem
from carebus.wire.requests import (
    Nin,
    OrgId,
    RequestBody,
    Time,
    field_path,
    parse,
    request_body,
    reword,
)

NIN = "14038512324"


class Member(RequestBody):
    noun = "a member"

    org_id: OrgId
    role: Literal["gp", "coordinator"]


class Team(RequestBody):
    """A test body with a nested object and a list of them."""

    noun = "a team"

    nin: Nin
    lead: Member
    members: list[Member]
    since: Time | None = None
    active: bool = True


def team(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "nin": NIN,
        "lead": {"org_id": "912345675", "role": "gp"},
        "members": [{"org_id": "889640782", "role": "coordinator"}],
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        ((), ""),
        (("nin",), "nin"),
        (("recipient", "org_id"), "recipient.org_id"),
        (("categories", 1), "categories[1]"),
        (("members", 0, "org_id"), "members[0].org_id"),
        (("chains", 1, 0), "chains[1][0]"),
    ],
)
def test_field_paths_are_written_as_the_event_contract_writes_them(
    loc: tuple[int | str, ...], path: str
) -> None:
    """Names joined by dots, list positions in brackets."""
    assert field_path(loc) == path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (team(nin=None), [("nin", "is required")]),
        ({k: v for k, v in team().items() if k != "lead"}, [("lead", "is required")]),
        (team(lead=None), [("lead", "is required")]),
        (team(lead="912345675"), [("lead", "must be a JSON object")]),
        (team(lead={"org_id": "1", "role": "gp"}), [("lead.org_id", ORG_ID_PROBLEM)]),
        (
            team(lead={"org_id": "912345675", "role": "x"}),
            [("lead.role", "must be one of: gp, coordinator")],
        ),
        (team(lead={"org_id": "912345675", "role": None}), [("lead.role", "is required")]),
        (
            team(lead={"org_id": "912345675", "role": "gp", "x": 1}),
            [("lead.x", "not a field of a member")],
        ),
        (team(members={"org_id": "912345675"}), [("members", "must be a list")]),
        (
            team(members=[{"org_id": "912345675", "role": 3}]),
            [("members[0].role", "must be one of: gp, coordinator")],
        ),
        (team(since="tomorrow"), [("since", TIME_PROBLEM)]),
        (team(active="yes"), [("active", "must be true or false")]),
        (team(x=1), [("x", "not a field of a team")]),
        ("a team", [("body", "must be a JSON object")]),
    ],
)
def test_pydantics_refusals_are_reworded_by_the_model_that_holds_the_field(
    body: object, expected: list[tuple[str, str]]
) -> None:
    """Missing or null is required, an unknown key is not a field of the object it is in, a
    choice lists its symbols; the domain's own field rules keep their words."""
    parsed, problems = parse(Team, body)
    assert parsed is None
    assert problems == [Problem(field, problem) for field, problem in expected]


def test_a_refusal_never_holds_the_input() -> None:
    """Neither a problem text nor the error's own text repeats what was sent."""
    wrong = NIN[:-1] + "5"
    with pytest.raises(ValidationError) as refused:
        Team.model_validate(team(nin=wrong, lead={"org_id": "99999999", "role": "gp"}))
    assert wrong not in str(refused.value)
    assert "99999999" not in str(refused.value)
    _, problems = parse(Team, team(nin=wrong))
    assert problems == [Problem("nin", "check digit does not match")]


def test_a_valid_body_is_read_with_utc_times() -> None:
    """Valid input passes through the domain's rules; times become UTC."""
    parsed, problems = parse(Team, team(since="2026-11-23T08:00:00+01:00"))
    assert problems == []
    assert parsed is not None
    assert parsed.since is not None
    assert parsed.since.isoformat() == "2026-11-23T07:00:00+00:00"
    assert parsed.lead == Member(org_id="912345675", role="gp")


def test_the_openapi_request_body_holds_nested_models_in_place() -> None:
    """The schema has no `$defs` to dangle: nested models are written where they are used."""
    body = request_body(Team)["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert body["required"] is True
    assert "$defs" not in schema
    assert "$ref" not in str(schema)
    assert schema["properties"]["lead"]["properties"]["org_id"]["pattern"] == "^[0-9]{9}$"
    assert schema["properties"]["members"]["items"]["required"] == ["org_id", "role"]
    assert schema["properties"]["nin"]["writeOnly"] is True
    assert schema["description"] == Team.__doc__


@pytest.mark.parametrize(
    ("annotation", "value", "words"),
    [
        (Annotated[int, Field(ge=1, le=1000)], "many", "must be an integer"),
        (Annotated[int, Field(ge=1, le=1000)], 1001, "must be at most 1000"),
        (Annotated[int, Field(ge=1, le=1000)], 0, "must be at least 1"),
        (Literal["dps", "nav"], "bank", "must be one of: dps, nav"),
        (bool, "perhaps", "must be true or false"),
        (int, None, "is required"),
    ],
)
def test_fastapis_own_refusals_are_reworded_without_quoting_the_input(
    annotation: Any, value: object, words: str
) -> None:
    """Query and path checks FastAPI runs itself (carebus.adapters.http's 422 handler)."""
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(annotation).validate_python(value)
    [line] = caught.value.errors()
    assert reword(line) == words
    assert str(value) not in reword(line) or value is None
