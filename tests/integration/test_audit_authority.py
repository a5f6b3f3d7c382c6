"""Who may read whose disclosures, who looked, what was refused, and the patient's own log."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token
from carebus.adapters.publisher import OutgoingRecord, Publisher
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.testing import ServiceProcess, TestStack
from tests.integration.test_audit import (
    Person,
    auth,
    disclosure,
    new_org,
    produce_disclosures,
    token,
    wait_for,
)

pytestmark = pytest.mark.integration

CODEC = Codec.default()
AUTHORITY_REFUSAL = "no.carebus.v1.AuthorityRefusal"
QUERY = "/v1/disclosures/query"
ME = "/v1/me/disclosures"


@pytest.fixture(scope="module")
def audit_store(stack: TestStack) -> Iterator[ServiceProcess]:
    service = stack.start_service("audit_store")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def audit(stack: TestStack) -> Iterator[ServiceProcess]:
    service = stack.start_service("audit")
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def client(audit: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=audit.url or "", timeout=10) as http:
        yield http


async def named_org(db: asyncpg.Connection, agency: str, name: str) -> tuple[str, str]:
    """A fresh organisation registered in the directory under `name`."""
    org_id = new_org()
    await db.execute(
        "INSERT INTO organisations (org_id, agency, name) VALUES ($1, $2, $3)", org_id, agency, name
    )
    return agency, org_id


async def dpo_token(db: asyncpg.Connection) -> str:
    """A token of the operator's privacy officer: carebus's data protection officer."""
    return await create_token(db, agency="operator", org_id=OPERATOR_ORG, role="privacy_officer")


async def patient_token(db: asyncpg.Connection, person: Person) -> str:
    return await create_token(
        db, agency="operator", org_id=OPERATOR_ORG, role="patient", subject_key=person.key
    )


def refusal(person: Person | None, actor: tuple[str, str], statement: str) -> dict[str, Any]:
    """An AuthorityRefusal record as the gateway or the registry writes it."""
    return {
        "audit_id": str(uuid.uuid4()),
        "subject_key": person.key if person else None,
        "actor_org": actor[1],
        "actor_agency": actor[0],
        "actor_role": "system",
        "statement": statement,
        "rule_id": "care_team.self_add",
        "field": "payload.coordinator",
        "policy_version": "2026.1",
        "decided_at": datetime.now(UTC),
    }


async def publish_refusals(stack: TestStack, records: list[dict[str, Any]]) -> None:
    """Publish on care.audit.refusals.v1 with the project's publisher, keyed as the services
    key them."""
    publisher = Publisher.connect(stack.settings, f"test-refusals-{uuid.uuid4().hex[:8]}")
    try:
        await publisher.publish(
            [
                OutgoingRecord(
                    topics.REFUSALS,
                    (record["subject_key"] or record["actor_org"]).encode(),
                    CODEC.encode(AUTHORITY_REFUSAL, record),
                )
                for record in records
            ]
        )
    finally:
        publisher.close()


async def query(
    client: httpx.AsyncClient, bearer: str, person: Person, **extra: Any
) -> dict[str, Any]:
    response = await client.post(QUERY, json={"nin": person.nin, **extra}, headers=auth(bearer))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def lookups_of(db: asyncpg.Connection, person: Person) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT * FROM disclosure_lookups WHERE subject_key = $1 ORDER BY looked_at",
            person.key,
        )
    )


# --- the sink -------------------------------------------------------------------------------


async def test_authority_refusals_are_stored_once_each_and_reported_to_their_actor(
    stack: TestStack,
    audit_store: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    """Refusals published twice are one row each; the actor and the DPO see them, no one else."""
    person = Person(stack)
    police = await named_org(db, "police", "Test police district")
    municipality = ("municipality", new_org())
    about_person = refusal(person, police, "event:ip_update")
    about_nobody = refusal(None, police, "token")
    await publish_refusals(stack, [about_person, about_nobody, about_person])
    ids = [about_person["audit_id"], about_nobody["audit_id"]]
    assert await wait_for(db, "authority_refusals", "audit_id", ids) == 2
    stored = await db.fetchrow(
        "SELECT * FROM authority_refusals WHERE audit_id = $1", about_person["audit_id"]
    )
    assert stored is not None
    assert (stored["subject_key"], stored["actor_org"], stored["rule_id"]) == (
        person.key,
        police[1],
        "care_team.self_add",
    )

    # Both organisations have a relation: each was a candidate recipient of one decision.
    decisions = [
        disclosure(person, police, "withheld", reason="not_permitted"),
        disclosure(person, municipality, "delivered"),
    ]
    produce_disclosures(stack, decisions)
    assert await wait_for(db, "disclosures", "audit_id", [d["audit_id"] for d in decisions]) == 2

    expected = {
        "actor": {"agency": "police", "org_id": police[1]},
        "statement": "event:ip_update",
        "rule_id": "care_team.self_add",
        "field": "payload.coordinator",
        "decided_at": about_person["decided_at"].isoformat().replace("+00:00", "Z"),
    }
    police_officer = await token(db, *police, role="privacy_officer")
    assert (await query(client, police_officer, person))["refusals"] == [expected]
    municipal_officer = await token(db, *municipality, role="privacy_officer")
    assert (await query(client, municipal_officer, person))["refusals"] == []
    assert (await query(client, await dpo_token(db), person))["refusals"] == [expected]

    log = (await client.get(ME, headers=auth(await patient_token(db, person)))).json()["items"]
    refused = [row for row in log if row["kind"] == "refusal"]
    assert [row["text"] for row in refused] == [
        f"Test police district (police {police[1]}) tried to report your individual plan; "
        "carebus refused, because it is not entitled to."
    ]


# --- POST /v1/disclosures/query -----------------------------------------------------------


async def test_an_organisation_sees_only_its_own_decisions_and_the_dpo_sees_all(
    stack: TestStack,
    audit_store: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    """A privacy officer sees decisions its organisation sent or was the recipient of."""
    person = Person(stack)
    dps = ("dps", new_org())
    housing = ("housing", new_org())
    gp = ("fastlege", new_org())
    nav = ("nav", new_org())
    municipality = ("municipality", new_org())
    start = datetime.now(UTC) - timedelta(minutes=5)
    records = [
        disclosure(person, gp, "delivered", source_org=dps[1], decided_at=start),
        disclosure(
            person,
            nav,
            "withheld",
            reason="no_consent",
            source_org=dps[1],
            decided_at=start + timedelta(seconds=1),
        ),
        disclosure(
            person,
            municipality,
            "delivered",
            source_org=housing[1],
            decided_at=start + timedelta(seconds=2),
        ),
    ]
    produce_disclosures(stack, records)
    assert await wait_for(db, "disclosures", "audit_id", [r["audit_id"] for r in records]) == 3

    async def seen_by(bearer: str) -> list[str]:
        return [i["recipient"]["org_id"] for i in (await query(client, bearer, person))["items"]]

    for org, expected in [
        (dps, [gp[1], nav[1]]),  # the source of two
        (housing, [municipality[1]]),
        (gp, [gp[1]]),
        (nav, [nav[1]]),  # withheld from it: it is still its decision
        (municipality, [municipality[1]]),
    ]:
        assert await seen_by(await token(db, *org, role="privacy_officer")) == expected, org
    dpo = await dpo_token(db)
    assert await seen_by(dpo) == [gp[1], nav[1], municipality[1]]

    # The DPO is never refused for want of relation; everyone else still is.
    assert (await query(client, dpo, Person(stack)))["items"] == []
    stranger = await token(db, "nav", new_org(), role="privacy_officer")
    refused = await client.post(QUERY, json={"nin": person.nin}, headers=auth(stranger))
    assert refused.status_code == 403
    assert [d["field"] for d in refused.json()["error"]["details"]] == ["nin"]


async def test_every_answered_query_is_recorded_and_shown_to_the_next_one(
    stack: TestStack,
    audit_store: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    """Who looked, when, why and how many items; shown to the same organisation, the DPO and
    the patient; refused and invalid queries leave no record."""
    person = Person(stack)
    municipality = await named_org(db, "municipality", "Test municipality")
    gp = ("fastlege", new_org())
    records = [disclosure(person, municipality, "delivered"), disclosure(person, gp, "delivered")]
    produce_disclosures(stack, records)
    assert await wait_for(db, "disclosures", "audit_id", [r["audit_id"] for r in records]) == 2

    officer = await token(db, *municipality, role="privacy_officer")
    token_id = await db.fetchval(
        "SELECT token_id FROM api_tokens WHERE org_id = $1 AND role = 'privacy_officer'",
        municipality[1],
    )
    first = await query(client, officer, person, purpose="  The patient asked for a copy ")
    assert first["lookups"] == []
    [recorded] = await lookups_of(db, person)
    assert (
        recorded["org_id"],
        recorded["role"],
        recorded["token_id"],
        recorded["purpose"],
        recorded["items"],
    ) == (municipality[1], "privacy_officer", token_id, "The patient asked for a copy", 1)

    second = await query(client, officer, person)
    looked_at = recorded["looked_at"].isoformat().replace("+00:00", "Z")
    assert second["lookups"] == [
        {
            "org_id": municipality[1],
            "agency": "municipality",
            "role": "privacy_officer",
            "purpose": "The patient asked for a copy",
            "looked_at": looked_at,
            "what": "disclosure_query",
        }
    ]
    # Another organisation does not learn that this one looked; the DPO does.
    gp_officer = await token(db, *gp, role="privacy_officer")
    assert (await query(client, gp_officer, person))["lookups"] == []
    dpo = await dpo_token(db)
    assert [lk["org_id"] for lk in (await query(client, dpo, person))["lookups"]] == [
        municipality[1],
        municipality[1],
        gp[1],
    ]
    assert len(await lookups_of(db, person)) == 4

    stranger = await token(db, "police", new_org(), role="privacy_officer")
    assert (
        await client.post(QUERY, json={"nin": person.nin}, headers=auth(stranger))
    ).status_code == 403
    bad = await client.post(
        QUERY, json={"nin": person.nin, "purpose": "why\nnot"}, headers=auth(officer)
    )
    assert bad.status_code == 422
    assert len(await lookups_of(db, person)) == 4

    log = (await client.get(ME, headers=auth(await patient_token(db, person)))).json()["items"]
    lookups = [row for row in log if row["kind"] == "lookup"]
    assert len(lookups) == 4
    assert lookups[0]["text"] == (
        f"The privacy officer of Test municipality (municipality {municipality[1]}) looked up "
        'who received information about you, giving the reason "The patient asked for a copy".'
    )
    assert lookups[0]["at"] == looked_at
    assert lookups[-1]["text"].startswith("The data protection officer of ")


@pytest.mark.parametrize(
    "purpose",
    ["line\nbreak", "bell\u0007", "\u202eright-to-left override", "zero\u200bwidth", "x" * 201, 7],
)
async def test_a_bad_purpose_is_refused_naming_purpose(
    stack: TestStack,
    audit_store: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    purpose: object,
) -> None:
    """Control and format characters, overlong or non-text purposes: 422 naming `purpose`."""
    person = Person(stack)
    record = disclosure(person, ("nav", new_org()), "withheld", reason="objection")
    produce_disclosures(stack, [record])
    assert await wait_for(db, "disclosures", "audit_id", [record["audit_id"]]) == 1
    officer = await token(db, "dps", record["source_org"], role="privacy_officer")
    response = await client.post(
        QUERY, json={"nin": person.nin, "purpose": purpose}, headers=auth(officer)
    )
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == ["purpose"]
    assert await lookups_of(db, person) == []

    both = await client.post(QUERY, json={"nin": "123", "purpose": purpose}, headers=auth(officer))
    assert [d["field"] for d in both.json()["error"]["details"]] == ["nin", "purpose"]


# --- GET /v1/me/disclosures ---------------------------------------------------------------


async def test_a_patient_reads_their_own_log_in_plain_words_and_nothing_else(
    stack: TestStack,
    audit_store: ServiceProcess,
    audit: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    """Deliveries, withholdings and consent changes about the token's person, oldest first."""
    alice, bob = Person(stack), Person(stack)
    dps = await named_org(db, "dps", "Test DPS")
    nav = await named_org(db, "nav", "Test NAV office")
    gp = ("fastlege", new_org())  # not named in the directory
    start = datetime.now(UTC) - timedelta(hours=1)
    records = [
        disclosure(person, gp, "withheld", reason="objection", source_org=dps[1], decided_at=at)
        for person, at in [(alice, start + timedelta(minutes=2)), (bob, start)]
    ] + [disclosure(alice, nav, "delivered", source_org=dps[1], decided_at=start)]
    produce_disclosures(stack, records)
    assert await wait_for(db, "disclosures", "audit_id", [r["audit_id"] for r in records]) == 3
    await db.execute(
        "INSERT INTO consents (consent_id, subject_key, recipient_agency, recipient_org,"
        " categories, status, valid_from, recorded_by, recorded_by_org, recorded_at, state,"
        " statement_ref, recorded_by_role, confirmed_by_org, confirmed_at)"
        " VALUES ($1, $2, 'nav', $3, '{logistics}', 'given', $4, 'Nurse Free Text', $3, $4,"
        " 'confirmed', 'ref-free-text', 'system', $5, $6)",
        uuid.uuid4(),
        alice.key,
        nav[1],
        start + timedelta(minutes=1),
        dps[1],
        start + timedelta(minutes=3),
    )

    alice_token = await patient_token(db, alice)
    # Parameters are ignored: the token decides whose log it is.
    response = await client.get(
        ME, params={"nin": bob.nin, "subject_key": bob.key}, headers=auth(alice_token)
    )
    assert response.status_code == 200, response.text
    rows = response.json()["items"]
    assert [row["kind"] for row in rows] == [
        "delivered",
        "consent",
        "withheld",
        "consent_confirmed",
    ]
    assert [row["text"] for row in rows] == [
        f"Test NAV office (nav {nav[1]}) was told about your admission by Test DPS "
        f"(dps {dps[1]}): practical details and health information, because you had not "
        "objected.",
        f"Test NAV office (nav {nav[1]}) recorded that you consent to Test NAV office "
        f"(nav {nav[1]}) getting practical details; it takes effect only when a health service "
        "or you confirm it.",
        f"The fastlege organisation {gp[1]} was not told about your admission: you objected.",
        f"Your consent for Test NAV office (nav {nav[1]}) to get practical details was "
        f"confirmed by Test DPS (dps {dps[1]}) and took effect.",
    ]
    assert rows[0]["at"] == start.isoformat().replace("+00:00", "Z")
    assert rows[0]["source"] == {"agency": "dps", "org_id": dps[1], "name": "Test DPS"}
    assert rows[2]["recipient"] == {"agency": "fastlege", "org_id": gp[1], "name": None}
    assert (rows[1]["status"], rows[1]["state"]) == ("given", "confirmed")
    text = response.text
    assert alice.nin not in text
    assert bob.nin not in text
    assert alice.key not in text
    assert "Free Text" not in text
    assert "ref-free-text" not in text

    bob_rows = (await client.get(ME, headers=auth(await patient_token(db, bob)))).json()["items"]
    assert [(row["kind"], row["event_id"]) for row in bob_rows] == [
        ("withheld", records[1]["event_id"])
    ]
    assert alice.nin not in audit.log_text()


async def test_only_patient_tokens_read_a_patients_log(
    stack: TestStack, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """401 without a token; 403 for every other role, the operator's included; a patient
    token reads no one's disclosures or deliveries."""
    assert (await client.get(ME)).status_code == 401
    org = ("dps", new_org())
    for role in ("system", "coordinator", "privacy_officer", "admin"):
        response = await client.get(ME, headers=auth(await token(db, *org, role=role)))
        assert response.status_code == 403, role
        assert set(response.json()["error"]) == {"code", "message", "details"}
    for role in ("operator", "privacy_officer"):
        bearer = await create_token(db, agency="operator", org_id=OPERATOR_ORG, role=role)
        assert (await client.get(ME, headers=auth(bearer))).status_code == 403, role

    person = Person(stack)
    patient = await patient_token(db, person)
    assert (await client.get(ME, headers=auth(patient))).json() == {"items": []}
    response = await client.post(QUERY, json={"nin": person.nin}, headers=auth(patient))
    assert response.status_code == 403
    assert (await client.get("/v1/deliveries", headers=auth(patient))).status_code == 403

    openapi = (await client.get("/openapi.json")).json()
    assert openapi["paths"][ME]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/PatientLog"}
    assert {"lookups", "refusals"} <= set(
        openapi["components"]["schemas"]["Disclosures"]["properties"]
    )
    query_body = openapi["paths"][QUERY]["post"]["requestBody"]["content"]["application/json"]
    assert "purpose" in query_body["schema"]["properties"]
