"""Contact persons through the registry (issue 17, item 4): an organisation in the person's care
team names its own staff, 201; anyone else 403, audited, nothing written; a bad body 422 naming
the field; the name is sealed under the person's key, so an erasure makes it unreadable; the
inbox names the accountable person and the deputy on an alert that names the person."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from carebus.adapters import person_keys
from carebus.adapters.auth import create_token
from carebus.domain.identity import random_nin, subject_key
from carebus.wire.sealing import KeyWrap, SealedUnreadableError, open_sealed
from carebus_dev.stack.devdata import DEV_ORGANISATIONS, OPERATOR_ORG
from carebus_dev.testing import TestStack, at_least

pytestmark = pytest.mark.integration

ORGS = DEV_ORGANISATIONS
NAME = "Kari Koordinator"


@pytest.fixture(scope="module")
def services(stack: TestStack) -> Iterator[None]:
    started = [stack.start_service(name) for name in ("registry", "audit_store", "inbox")]
    yield
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def tokens(db: asyncpg.Connection) -> dict[str, str]:
    async def token(agency: str, org_id: str, role: str) -> str:
        return await create_token(db, agency=agency, org_id=org_id, role=role)

    return {
        "municipality": await token("municipality", ORGS["municipality"], "coordinator"),
        "dps": await token("dps", ORGS["dps"], "system"),
        "nav": await token("nav", ORGS["nav"], "coordinator"),
        "operator": await token("operator", OPERATOR_ORG, "operator"),
        "dpo": await token("operator", OPERATOR_ORG, "privacy_officer"),
    }


@pytest.fixture
async def registry(stack: TestStack, services: None) -> AsyncIterator[httpx.AsyncClient]:
    url = stack.settings.service_url(stack.settings.registry_port)
    async with httpx.AsyncClient(base_url=url) as client:
        yield client


def auth(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def contact(nin: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nin": nin,
        "org_id": ORGS["municipality"],
        "role": "coordinator",
        "position": "accountable",
        "name": NAME,
        "status": "active",
    }
    body.update(changes)
    return body


async def in_team(registry: httpx.AsyncClient, tokens: dict[str, str]) -> str:
    """A new person whose home municipality (the demo one) named itself coordinator."""
    nin = random_nin(random.Random())
    response = await registry.post(
        "/v1/population-register",
        json={"nin": nin, "home_municipality_org": ORGS["municipality"]},
        headers=auth(tokens, "operator"),
    )
    assert response.status_code == 201, response.text
    response = await registry.post(
        "/v1/care-teams",
        json={
            "nin": nin,
            "agency": "municipality",
            "org_id": ORGS["municipality"],
            "role": "coordinator",
            "status": "member",
        },
        headers=auth(tokens, "municipality"),
    )
    assert response.status_code == 201, response.text
    return nin


def key_of(stack: TestStack, nin: str) -> str:
    return subject_key(nin, stack.settings.subject_key_secret.get_secret_value())


async def rows(db: asyncpg.Connection, key: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT * FROM care_team_contacts WHERE subject_key = $1 ORDER BY recorded_at", key
        )
    )


async def test_a_member_names_its_own_staff_and_the_name_is_sealed(
    stack: TestStack, registry: httpx.AsyncClient, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """201 with the contact's id; the row holds the HPR number and phone as given and the name
    only sealed under the person's key (it opens to the name given)."""
    nin = await in_team(registry, tokens)
    response = await registry.post(
        "/v1/care-teams/contacts",
        json=contact(nin, hpr_number="1234567", phone="+4791234567"),
        headers=auth(tokens, "municipality"),
    )
    assert response.status_code == 201, response.text
    assert set(response.json()) == {"contact_id"}
    key = key_of(stack, nin)
    [row] = await rows(db, key)
    assert str(row["contact_id"]) == response.json()["contact_id"]
    assert (row["org_id"], row["role"], row["position"], row["status"]) == (
        ORGS["municipality"],
        "coordinator",
        "accountable",
        "active",
    )
    assert (row["hpr_number"], row["phone"], row["recorded_by_org"]) == (
        "1234567",
        "+4791234567",
        ORGS["municipality"],
    )
    assert NAME not in row["name"]
    keys = await person_keys.keyring(db, KeyWrap.from_settings(stack.settings), [key])
    assert open_sealed(keys, key, "contact.name", row["name"]) == NAME


@pytest.mark.parametrize(
    ("who", "changes", "field"),
    [
        ("nav", {"org_id": ORGS["nav"]}, "nin"),  # NAV is not in this person's team
        ("dps", {"org_id": ORGS["dps"], "role": "pathway_coordinator"}, "nin"),
        ("nav", {}, "org_id"),  # the municipality's staff, named by NAV
    ],
)
async def test_anyone_else_is_refused_audited_and_nothing_is_written(
    stack: TestStack,
    registry: httpx.AsyncClient,
    db: asyncpg.Connection,
    tokens: dict[str, str],
    who: str,
    changes: dict[str, Any],
    field: str,
) -> None:
    """An organisation outside the care team names no one, not even its own staff, and no one
    names another organisation's staff: 403 naming rule contact.own_staff, a refusal in the
    person's log, no row."""
    nin = await in_team(registry, tokens)
    response = await registry.post(
        "/v1/care-teams/contacts", json=contact(nin, **changes), headers=auth(tokens, who)
    )
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert "contact.own_staff" in error["message"]
    assert [d["field"] for d in error["details"]] == [field]
    assert NAME not in response.text
    key = key_of(stack, nin)
    assert await rows(db, key) == []

    async def refused() -> list[dict[str, Any]]:
        found = await db.fetch(
            "SELECT statement, rule_id FROM authority_refusals WHERE subject_key = $1", key
        )
        return [dict(row) for row in found]

    [refusal] = await at_least(refused, 1)
    assert (refusal["statement"], refusal["rule_id"]) == ("contact", "contact.own_staff")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"role": "gp"}, "hpr_number"),
        ({"hpr_number": "12345"}, "hpr_number"),
        ({"name": "Kari\u0000"}, "name"),
        ({"position": "chief"}, "position"),
        ({"role": "pathway_coordinator"}, "role"),  # a municipality's staff
    ],
)
async def test_a_bad_contact_is_422_naming_the_field_and_changes_nothing(
    stack: TestStack,
    registry: httpx.AsyncClient,
    db: asyncpg.Connection,
    tokens: dict[str, str],
    changes: dict[str, Any],
    field: str,
) -> None:
    """HPR number required for a GP and 6 to 9 digits, the name by the text rule, the position
    and role from their lists and the role of the caller's agency: 422 naming the field."""
    nin = await in_team(registry, tokens)
    response = await registry.post(
        "/v1/care-teams/contacts",
        json=contact(nin, **changes),
        headers=auth(tokens, "municipality"),
    )
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["error"]["details"]]
    assert await rows(db, key_of(stack, nin)) == []


async def test_erasing_the_person_makes_the_name_unreadable(
    stack: TestStack, registry: httpx.AsyncClient, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """The operator's data protection officer erases the person: the contact row stays (its
    retention is its own) but its name no longer opens."""
    nin = await in_team(registry, tokens)
    response = await registry.post(
        "/v1/care-teams/contacts", json=contact(nin), headers=auth(tokens, "municipality")
    )
    assert response.status_code == 201, response.text
    erased = await registry.post(
        "/v1/erasures",
        json={"nin": nin, "request_ref": f"DPO-{uuid.uuid4().hex[:8]}"},
        headers=auth(tokens, "dpo"),
    )
    assert erased.status_code == 201, erased.text
    key = key_of(stack, nin)
    [row] = await rows(db, key)
    keys = await person_keys.keyring(db, KeyWrap.from_settings(stack.settings), [key])
    with pytest.raises(SealedUnreadableError):
        open_sealed(keys, key, "contact.name", row["name"])


async def test_the_inbox_names_the_accountable_person_and_deputy_on_the_alert(
    stack: TestStack, registry: httpx.AsyncClient, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """An alert to the municipality, routed by municipal_coordinator and naming the person:
    `accountable` and `deputy` are the coordinator and deputy the municipality registered; the
    ended deputy of before is not named; an alert that does not name the person names no one."""
    nin = await in_team(registry, tokens)
    for body in (
        contact(nin, position="deputy", name="Old Deputy"),
        contact(nin, position="deputy", name="Old Deputy", status="ended"),
        contact(nin),
        contact(nin, position="deputy", name="Per Vara", phone="91234567"),
        contact(nin, role="contact", name="Ola Kontakt"),
    ):
        response = await registry.post(
            "/v1/care-teams/contacts", json=body, headers=auth(tokens, "municipality")
        )
        assert response.status_code == 201, response.text
    key = key_of(stack, nin)
    named = await stored_alert(db, key, nin, "municipal_coordinator")
    nameless = await stored_alert(db, key, None, "municipal_coordinator")
    inbox = stack.settings.service_url(stack.settings.inbox_port)
    async with httpx.AsyncClient(base_url=inbox) as client:
        shown = await client.get(f"/v1/alerts/{named}", headers=auth(tokens, "municipality"))
        hidden = await client.get(f"/v1/alerts/{nameless}", headers=auth(tokens, "municipality"))
    assert shown.status_code == 200, shown.text
    alert = shown.json()
    assert alert["recipient_role"] == "municipal_coordinator"
    assert alert["accountable"] == {
        "name": NAME,
        "role": "coordinator",
        "hpr_number": None,
        "phone": None,
    }
    assert alert["deputy"] == {
        "name": "Per Vara",
        "role": "coordinator",
        "hpr_number": None,
        "phone": "91234567",
    }
    assert hidden.status_code == 200, hidden.text
    assert "accountable" not in hidden.json()
    assert NAME not in hidden.text


async def stored_alert(
    db: asyncpg.Connection, key: str, nin: str | None, recipient_role: str
) -> str:
    """An open alert to the demo municipality's coordinators as the alert store keeps it."""
    alert_id = f"alert-contacts-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    await db.execute(
        "INSERT INTO alerts (alert_id, rule_id, title, kind, status, subject_key, nin,"
        " recipient_agency, recipient_org, audience, breached_at, escalate_at, summary,"
        " event_ids, rules_version, recipient_role) VALUES ($1, 'followup.discharge_7d',"
        " 'Follow-up', 'deadline_missed', 'open', $2, $3, 'municipality', $4, 'coordinator',"
        " $5, $6, 'No follow-up.', ARRAY['dps-1'], 'test', $7)",
        alert_id,
        key,
        nin,
        ORGS["municipality"],
        now,
        now + timedelta(days=1),
        recipient_role,
    )
    return alert_id


async def test_the_coordinator_names_the_dps_pathway_coordinator_and_no_one_else_does(
    stack: TestStack, registry: httpx.AsyncClient, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """The municipal coordinator names the DPS pathway coordinator (201, on the stream as
    `pathway_coordinator`); a DPS without the person admitted may not name itself (403); a
    municipality is no pathway coordinator (422 naming role)."""
    nin = await in_team(registry, tokens)
    change = {"nin": nin, "agency": "dps", "org_id": ORGS["dps"], "status": "member"}
    named = await registry.post(
        "/v1/care-teams",
        json={**change, "role": "pathway_coordinator"},
        headers=auth(tokens, "municipality"),
    )
    assert named.status_code == 201, named.text
    row = await db.fetchrow(
        "SELECT role, recorded_by_org FROM care_team_changes WHERE change_id = $1",
        uuid.UUID(named.json()["change_id"]),
    )
    assert row is not None
    assert (row["role"], row["recorded_by_org"]) == ("pathway_coordinator", ORGS["municipality"])

    other = await in_team(registry, tokens)
    itself = await registry.post(
        "/v1/care-teams",
        json={**change, "nin": other, "role": "pathway_coordinator"},
        headers=auth(tokens, "dps"),
    )
    assert itself.status_code == 403, itself.text
    municipal = await registry.post(
        "/v1/care-teams",
        json={**change, "nin": other, "agency": "municipality", "org_id": ORGS["municipality"],
              "role": "pathway_coordinator"},
        headers=auth(tokens, "municipality"),
    )  # fmt: skip
    assert municipal.status_code == 422, municipal.text
    assert [d["field"] for d in municipal.json()["error"]["details"]] == ["role"]
