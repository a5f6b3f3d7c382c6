"""Tests for services.registry.requests: the registry's request bodies, their refusals as the
registry answers them, and the OpenAPI request bodies made from them.

Consents and care-team changes: tests/unit/test_registry_changes.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, get_args

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from carebus.adapters.auth import OPERATOR, Principal
from carebus.domain.agencies import AGENCIES
from carebus.domain.events import ORG_ID_PROBLEM
from carebus.domain.policy import CATEGORIES
from carebus.runtime.config import Settings
from carebus.wire.requests import parse
from services.registry.app import build_app
from services.registry.requests import (
    Agency,
    CareTeamChangeRequest,
    CareTeamContactRequest,
    Category,
    ConsentRequest,
    GpListEntry,
    HomeMunicipalityEntry,
    HousingPlaceEntry,
    OrganisationEntry,
    Realm,
    TokenRequest,
    WebhookRequest,
)

NIN = "14038512324"
ORG = "889640782"
CONTACT = {
    "nin": NIN,
    "org_id": ORG,
    "role": "coordinator",
    "position": "accountable",
    "name": "Kari Nordmann",
    "status": "active",
}
CONTROL = "must not contain control or format characters (Unicode Cc, Cf, Cs, Zl, Zp)"


@pytest.mark.parametrize(
    ("model", "body", "expected"),
    [
        (TokenRequest, {"agency": "nav", "org_id": "88964078", "role": "admin"}, [
            ("org_id", "must be a 9-digit organisation number")
        ]),
        (TokenRequest, {"agency": "bank", "org_id": ORG, "role": "admin"}, [
            ("agency", "must be one of: " + ", ".join(get_args(Realm)))
        ]),
        (TokenRequest, {"agency": "nav", "org_id": ORG}, [("role", "is required")]),
        (TokenRequest, {"agency": "nav", "org_id": ORG, "role": "admin", "label": " "}, [
            ("label", "must not be empty")
        ]),
        (TokenRequest, {"agency": "nav", "org_id": ORG, "role": "admin", "label": 7}, [
            ("label", "must be a string")
        ]),
        (TokenRequest, {"agency": "nav", "org_id": ORG, "role": "patient", "nin": "14038512325"}, [
            ("nin", "check digit does not match")
        ]),
        (TokenRequest, {"agency": "nav", "org_id": ORG, "role": "admin", "scope": "all"}, [
            ("scope", "not a field of a token request")
        ]),
        (OrganisationEntry, {"org_id": ORG, "agency": "nav", "name": "NAV\u202e"}, [
            ("name", "must not contain control or format characters (Unicode Cc, Cf, Cs, Zl, Zp)")
        ]),
        (OrganisationEntry, {"org_id": ORG, "agency": "nav", "name": "NAV", "her_id": "12a"}, [
            ("her_id", "must be 1 to 9 digits")
        ]),
        (HomeMunicipalityEntry, {"nin": NIN}, [("home_municipality_org", "is required")]),
        (GpListEntry, {"nin": NIN, "org_id": 912345675}, [
            ("org_id", "must be a 9-digit organisation number")
        ]),
        (WebhookRequest, {"url": "ftp://nav.example/hook"}, [
            ("url", "must be an http or https URL")
        ]),
        (WebhookRequest, {"org_id": "12"}, [
            ("url", "is required"), ("org_id", "must be a 9-digit organisation number")
        ]),
        (WebhookRequest, {"url": "https://nav.example/hook", "secret": "x"}, [
            ("secret", "not a field of a webhook")
        ]),
        (WebhookRequest, ["https://nav.example/hook"], [("body", "must be a JSON object")]),
        (CareTeamChangeRequest, {"nin": NIN, "agency": "municipality", "org_id": ORG,
                                 "role": "pathway_coordinator", "status": "member"}, [
            ("role", "pathway_coordinator is a role of a dps only")
        ]),
        (CareTeamContactRequest, {**CONTACT, "role": "gp"}, [
            ("hpr_number", "is required for the role gp")
        ]),
        (CareTeamContactRequest, {**CONTACT, "hpr_number": "12345"}, [
            ("hpr_number", "must be an HPR number of 6 to 9 digits")
        ]),
        (CareTeamContactRequest, {**CONTACT, "hpr_number": 1234567}, [
            ("hpr_number", "must be an HPR number of 6 to 9 digits")
        ]),
        (CareTeamContactRequest, {**CONTACT, "name": "Kari\u202e"}, [
            ("name", "must not contain control or format characters (Unicode Cc, Cf, Cs, Zl, Zp)")
        ]),
        (CareTeamContactRequest, {**CONTACT, "name": " "}, [("name", "must not be empty")]),
        (CareTeamContactRequest, {**CONTACT, "position": "boss", "phone": "ring me"}, [
            ("position", "must be one of: accountable, deputy"),
            ("phone", "must be a phone number: 8 to 15 digits, optionally after +"),
        ]),
        (CareTeamContactRequest, {**CONTACT, "role": "participant", "status": "gone"}, [
            ("role", "must be one of: coordinator, pathway_coordinator, gp, contact"),
            ("status", "must be one of: active, ended"),
        ]),
        (CareTeamContactRequest, {k: v for k, v in CONTACT.items() if k != "name"}, [
            ("name", "is required")
        ]),
        (HousingPlaceEntry, {"owner_org": ORG, "municipality_org": ORG}, [
            ("housing_unit_id", "required when housing_site_id is not given")
        ]),
        (HousingPlaceEntry, {
            "housing_site_id": "KH", "housing_unit_id": "KH-1", "owner_org": ORG,
            "municipality_org": ORG,
        }, [("housing_unit_id", "give housing_site_id or housing_unit_id, not both")]),
        (HousingPlaceEntry, {"housing_site_id": "KH\n1", "owner_org": "1"}, [
            ("housing_site_id", CONTROL),
            ("owner_org", "must be a 9-digit organisation number"),
            ("municipality_org", "is required"),
        ]),
    ],
)  # fmt: skip
def test_each_body_is_refused_naming_the_field_in_the_contracts_words(
    model: type[BaseModel], body: object, expected: list[tuple[str, str]]
) -> None:
    """Every problem comes back with its field path and the event contract's wording."""
    parsed, problems = parse(model, body)
    assert parsed is None
    assert [(p.field, p.problem) for p in problems] == expected


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (TokenRequest, {"agency": "operator", "org_id": ORG, "role": "patient", "nin": NIN}),
        (TokenRequest, {"agency": "nav", "org_id": ORG, "role": "admin", "label": ""}),
        (OrganisationEntry, {"org_id": ORG, "agency": "nav", "name": "NAV", "her_id": "1"}),
        (HomeMunicipalityEntry, {"nin": NIN, "home_municipality_org": None}),
        (GpListEntry, {"nin": NIN, "org_id": "912345675"}),
        (HousingPlaceEntry, {"housing_site_id": "KH", "owner_org": ORG, "municipality_org": ORG}),
        (HousingPlaceEntry, {"housing_unit_id": "KB-1", "owner_org": ORG, "municipality_org": ORG}),
        (WebhookRequest, {"url": "http://127.0.0.1:9/hook", "org_id": None}),
        (CareTeamContactRequest, CONTACT),
        (CareTeamContactRequest, {**CONTACT, "role": "gp", "hpr_number": "123456789",
                                  "phone": "+4791234567", "position": "deputy"}),
        (CareTeamChangeRequest, {"nin": NIN, "agency": "dps", "org_id": ORG,
                                 "role": "pathway_coordinator", "status": "member"}),
    ],
)  # fmt: skip
def test_valid_bodies_are_read_and_their_repr_holds_no_nin(
    model: type[BaseModel], body: dict[str, Any]
) -> None:
    """A valid body of each kind is read as given; a nin it carries is not in its repr."""
    parsed, problems = parse(model, body)
    assert problems == []
    assert parsed is not None
    assert parsed.model_dump() == {**parsed.model_dump(), **body}
    assert NIN not in repr(parsed)


def test_the_bodies_choices_are_the_domains() -> None:
    """The closed choices the models declare are the domain's lists, in the same order (the
    refusal lists them in it)."""
    assert get_args(Agency) == AGENCIES
    assert get_args(Realm) == (*AGENCIES, OPERATOR)
    assert get_args(Category) == CATEGORIES


# --- through HTTP ----------------------------------------------------------------------------


class FakeTokens:
    """A token names its role: `Bearer operator` is the operator's, `Bearer coordinator` a
    municipality coordinator's."""

    async def principal(self, token: str) -> Principal:
        agency = "operator" if token == "operator" else "municipality"
        return Principal(uuid.uuid4(), "940493021", agency, token)


@pytest.fixture(scope="module")
def app() -> FastAPI:
    """The registry's app without its lifespan (no database or broker): enough to refuse."""
    app = build_app(Settings())
    app.state.tokens = FakeTokens()
    return app


@pytest.fixture
async def registry(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # runs no lifespan
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        yield client


def auth(role: str = "coordinator") -> dict[str, str]:
    return {"Authorization": f"Bearer {role}"}


def error_of(response: httpx.Response) -> tuple[int, str, str, list[tuple[str, str]]]:
    error = response.json()["error"]
    details = [(d["field"], d["problem"]) for d in error["details"]]
    return response.status_code, error["code"], error["message"], details


async def test_a_consent_refused_by_its_model_is_the_registrys_422(
    registry: httpx.AsyncClient,
) -> None:
    """The consent route answers 422 `invalid` with its own message and every problem, and
    never echoes the nin."""
    response = await registry.post(
        "/v1/consents",
        json={"nin": "14038512325", "status": "maybe", "purpose": "x"},
        headers=auth(),
    )
    assert error_of(response) == (
        422,
        "invalid",
        "the consent is invalid",
        [
            ("nin", "check digit does not match"),
            ("recipient", "is required"),
            ("status", "must be one of: given, withdrawn, objection"),
            ("categories", "is required"),
            ("valid_from", "is required"),
            ("recorded_by", "is required"),
            ("purpose", "not a field of a consent"),
        ],
    )
    assert "14038512325" not in response.text


@pytest.mark.parametrize(
    ("method", "path", "body", "message", "details"),
    [
        (
            "POST",
            "/v1/care-teams",
            {"nin": NIN, "agency": "nav", "org_id": "1", "role": "friend", "status": "member"},
            "the care-team change is invalid",
            [
                ("org_id", "must be a 9-digit organisation number"),
                ("role", "must be one of: coordinator, pathway_coordinator, gp, participant"),
            ],
        ),
        (
            "POST",
            "/v1/care-teams/contacts",
            {**CONTACT, "hpr_number": "1"},
            "the contact person is invalid",
            [("hpr_number", "must be an HPR number of 6 to 9 digits")],
        ),
        (
            # The caller is a municipality: its staff are no DPS's pathway coordinator.
            "POST",
            "/v1/care-teams/contacts",
            {**CONTACT, "role": "pathway_coordinator"},
            "the contact person is invalid",
            [("role", "pathway_coordinator is a role of a dps only")],
        ),
        (
            "POST",
            "/v1/care-teams/contacts",
            {**CONTACT, "role": "gp", "hpr_number": "1234567"},
            "the contact person is invalid",
            [("role", "gp is a role of a fastlege only")],
        ),
        (
            "PUT",
            "/v1/webhooks",
            {"url": "https://user:pw@nav.example/hook", "org_id": "12"},
            "the webhook is invalid",
            [("url", "must not contain credentials"), ("org_id", ORG_ID_PROBLEM)],
        ),
    ],
)
async def test_care_team_and_webhook_bodies_are_refused_by_their_models(
    registry: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any],
    message: str,
    details: list[tuple[str, str]],
) -> None:
    """Care-team changes and webhooks answer 422 with their message and every problem."""
    response = await registry.request(method, path, json=body, headers=auth("system"))
    assert error_of(response) == (422, "invalid", message, details)


async def test_a_body_the_registry_reads_itself_keeps_its_http_answers(
    registry: httpx.AsyncClient,
) -> None:
    """Without a token 401 comes first; a body too large is 413, one that is not JSON 400, and
    JSON sent without a Content-Type is read as JSON."""
    unauthenticated = await registry.post("/v1/consents", content=b'{"nin": ')
    too_large = await registry.post(
        "/v1/consents", content=b" " * (Settings().http_max_body_bytes + 1), headers=auth()
    )
    malformed = await registry.post("/v1/consents", content=b'{"nin": ', headers=auth())
    untyped = await registry.post("/v1/care-teams", content=b'{"nin": null}', headers=auth())
    assert error_of(unauthenticated)[:2] == (401, "unauthenticated")
    assert error_of(too_large)[:2] == (413, "too_large")
    assert error_of(malformed) == (
        400, "malformed_request", "the body is not valid JSON", [("body", "malformed JSON")]
    )  # fmt: skip
    assert error_of(untyped)[3][0] == ("nin", "is required")


async def test_a_body_fastapi_reads_is_refused_in_the_same_words(
    registry: httpx.AsyncClient,
) -> None:
    """POST /v1/tokens (a FastAPI body parameter, answered by carebus.adapters.http) refuses
    with the same field paths and words."""
    response = await registry.post(
        "/v1/tokens",
        json={"agency": "nav", "org_id": "88964078", "role": "root", "nin": NIN[:-1]},
        headers=auth("operator"),
    )
    assert error_of(response) == (
        422,
        "invalid",
        "the request is invalid",
        [
            ("org_id", ORG_ID_PROBLEM),
            (
                "role",
                "must be one of: system, coordinator, privacy_officer, admin, operator, patient",
            ),
            ("nin", "must be 11 digits"),
        ],
    )
    assert NIN[:-1] not in response.text


async def test_the_openapi_request_bodies_are_the_models(registry: httpx.AsyncClient) -> None:
    """Every registry request body in /openapi.json is its model's schema: in place for the
    routes that read their bodies themselves (no dangling `$defs` reference), by reference for
    FastAPI's body parameters."""
    document = (await registry.get("/openapi.json")).json()
    paths = document["paths"]
    schemas = document["components"]["schemas"]
    bodies: dict[type[BaseModel], Any] = {
        ConsentRequest: paths["/v1/consents"]["post"]["requestBody"],
        CareTeamChangeRequest: paths["/v1/care-teams"]["post"]["requestBody"],
        WebhookRequest: paths["/v1/webhooks"]["put"]["requestBody"],
    }
    for model, body in bodies.items():
        schema = body["content"]["application/json"]["schema"]
        assert body["required"] is True
        assert "$ref" not in json.dumps(body)
        assert schema["additionalProperties"] is False
        assert list(schema["properties"]) == list(model.model_fields)
        assert schema["required"] == [n for n, f in model.model_fields.items() if f.is_required()]
    consent = bodies[ConsentRequest]["content"]["application/json"]["schema"]["properties"]
    assert consent["recipient"]["required"] == ["agency"]
    assert consent["status"]["enum"] == ["given", "withdrawn", "objection"]
    assert consent["nin"]["writeOnly"] is True
    by_reference: dict[type[BaseModel], Any] = {
        TokenRequest: paths["/v1/tokens"]["post"],
        OrganisationEntry: paths["/v1/organisations"]["post"],
        HomeMunicipalityEntry: paths["/v1/population-register"]["post"],
        GpListEntry: paths["/v1/gp-list"]["post"],
    }
    for model, operation in by_reference.items():
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        name = schema["$ref"].removeprefix("#/components/schemas/")
        assert list(schemas[name]["properties"]) == list(model.model_fields)
    assert schemas["TokenRequest"]["properties"]["org_id"]["pattern"] == "^[0-9]{9}$"


def test_a_contact_persons_name_and_phone_are_not_in_its_repr() -> None:
    """A staff member's name and phone are personal data: a logged request shows neither."""
    parsed, problems = parse(CareTeamContactRequest, {**CONTACT, "phone": "91234567"})
    assert problems == []
    assert "Kari" not in repr(parsed)
    assert "91234567" not in repr(parsed)
    assert parsed is not None
    assert "Kari" not in repr(parsed.contact())
    assert parsed.contact().name == "Kari Nordmann"


def test_a_housing_place_is_named_as_the_place_engine_names_it() -> None:
    """`site:<id>` for a site, `unit:<id>` for a unit: the key the SLA engine computes."""
    site, _ = parse(
        HousingPlaceEntry, {"housing_site_id": "KH", "owner_org": ORG, "municipality_org": ORG}
    )
    unit, _ = parse(
        HousingPlaceEntry, {"housing_unit_id": "KB-1", "owner_org": ORG, "municipality_org": ORG}
    )
    assert isinstance(site, HousingPlaceEntry)
    assert isinstance(unit, HousingPlaceEntry)
    assert (site.place(), unit.place()) == ("site:KH", "unit:KB-1")
