"""FHIR R4 through the adapters on the real stack: Encounters and Bundles in, OperationOutcomes
out, and the events they map to in the event store (docs/adapters.md)."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token
from carebus.adapters.directory import add_organisation
from carebus_dev.testing import TestStack, at_least

pytestmark = pytest.mark.integration

DATA = Path(__file__).parents[1] / "data" / "fhir"
DPS = "974705788"
# The example Patients' municipalities, by kommunenummer.
MUNICIPALITIES = {"0301": "958935420", "4601": "964338531", "5001": "942110464"}
FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
async def token(stack: TestStack, adapter_services: None) -> str:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        for number, org_id in MUNICIPALITIES.items():
            await add_organisation(
                conn,
                agency="municipality",
                org_id=org_id,
                name=f"Kommune {number}",
                municipality_number=number,
            )
        await add_organisation(conn, agency="dps", org_id=DPS, name="DPS")
        return await create_token(conn, agency="dps", org_id=DPS, role="system")
    finally:
        await conn.close()


def resource(name: str) -> bytes:
    return (DATA / name).read_bytes()


async def post(
    client: httpx.AsyncClient, path: str, token: str | None, body: bytes
) -> tuple[httpx.Response, dict[str, Any]]:
    headers = {"Content-Type": FHIR_JSON}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = await client.post(path, content=body, headers=headers)
    outcome = response.json() if response.headers.get("content-type") == FHIR_JSON else {}
    return response, outcome


async def stored(db: asyncpg.Connection, event_type: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT event_id, payload FROM events WHERE source_org = $1 AND event_type = $2"
        " AND event_id LIKE 'fhir-%'",
        DPS,
        event_type,
    )
    return [{"event_id": row["event_id"], "payload": json.loads(row["payload"])} for row in rows]


async def test_an_encounter_in_progress_is_an_admission_stored_once(
    adapters: httpx.AsyncClient, token: str, db: asyncpg.Connection
) -> None:
    """201 with an informational OperationOutcome; the admission, for an overdose (ICD-10 T40.1),
    in the Patient's municipality; the same Encounter again is the same event."""
    response, outcome = await post(
        adapters, "/fhir/Encounter", token, resource("encounter-in-progress.json")
    )
    assert response.status_code == 201, response.text
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "information"
    again, _ = await post(
        adapters, "/fhir/Encounter", token, resource("encounter-in-progress.json")
    )
    assert again.status_code == 201
    # As a .NET writer sends it, with a UTF-8 byte order mark first: the same Encounter.
    marked, _ = await post(
        adapters,
        "/fhir/Encounter",
        token,
        codecs.BOM_UTF8 + resource("encounter-in-progress.json"),
    )
    assert marked.status_code == 201, marked.text
    [admission] = await at_least(lambda: stored(db, "admission"), 1)
    assert admission["payload"]["reason"] == "overdose"
    assert admission["payload"]["home_municipality_org"] == MUNICIPALITIES["0301"]
    assert len(await stored(db, "admission")) == 1


async def test_a_finished_encounter_is_the_discharge_of_that_admission(
    adapters: httpx.AsyncClient, token: str, db: asyncpg.Connection
) -> None:
    """The discharge names the admission the same Encounter made while in progress."""
    await post(adapters, "/fhir/Encounter", token, resource("encounter-in-progress.json"))
    response, _ = await post(
        adapters, "/fhir/Encounter", token, resource("encounter-finished.json")
    )
    assert response.status_code == 201, response.text
    [discharge] = await at_least(lambda: stored(db, "discharge"), 1)
    [admission] = await at_least(lambda: stored(db, "admission"), 1)
    assert discharge["payload"]["admission_event_id"] == admission["event_id"]


async def test_a_bundle_maps_every_encounter_in_it(
    adapters: httpx.AsyncClient, token: str, db: asyncpg.Connection
) -> None:
    """A message Bundle (MessageHeader, Encounter, Patient, Condition) and a transaction."""
    for name in ("bundle-message.json", "bundle-transaction.json"):
        response, outcome = await post(adapters, "/fhir", token, resource(name))
        assert response.status_code == 200, response.text
        assert outcome["issue"][0]["severity"] == "information"
    assert len(await at_least(lambda: stored(db, "admission"), 3)) >= 3


@pytest.mark.parametrize(
    ("path", "body", "status", "expression"),
    [
        ("/fhir/Encounter", b"{not json", 400, None),
        ("/fhir/Encounter", b'{"resourceType": "Patient"}', 400, None),
        ("/fhir", b'{"resourceType": "Bundle", "type": "searchset"}', 400, "Bundle.type"),
        (
            "/fhir/Encounter",
            resource("encounter-in-progress.json").replace(
                b'"period": {"start": "2026-11-23T08:15:00+01:00"}', b'"period": {}'
            ),
            422,
            "Encounter.period.start",
        ),
        (
            "/fhir/Encounter",
            resource("encounter-in-progress.json").replace(b'"code": "0301"', b'"code": "9999"'),
            422,
            None,
        ),
    ],
    ids=["not-json", "not-an-encounter", "bundle-type", "no-start", "unknown-municipality"],
)
async def test_bad_input_is_an_operation_outcome_naming_the_place(
    adapters: httpx.AsyncClient,
    token: str,
    path: str,
    body: bytes,
    status: int,
    expression: str | None,
) -> None:
    """4xx with an OperationOutcome (severity error) and never the nin."""
    response, outcome = await post(adapters, path, token, body)
    assert response.status_code == status, response.text
    assert outcome["issue"][0]["severity"] == "error"
    if expression is not None:
        assert outcome["issue"][0]["expression"] == [expression]
    assert "15076500565" not in response.text


async def test_without_a_token_it_is_401(adapters: httpx.AsyncClient) -> None:
    """Every FHIR endpoint takes the agency's bearer token like the gateway."""
    response, _ = await post(
        adapters, "/fhir/Encounter", None, resource("encounter-in-progress.json")
    )
    assert response.status_code == 401


# FHIR Subscriptions: the organisation's webhook, set through the registry (docs/adapters.md,
# "Outbound FHIR").

ENDPOINT = "https://dps.example.no/carebus/fhir"
SECRET_EXTENSION = "https://carebus.no/fhir/StructureDefinition/webhook-secret"


@pytest.fixture(scope="module")
def registry_service(stack: TestStack, adapter_services: None) -> Iterator[None]:
    """The registry, which holds the webhook a Subscription sets."""
    with stack.running("registry"):
        yield


@pytest.fixture
async def registry(stack: TestStack, registry_service: None) -> AsyncIterator[httpx.AsyncClient]:
    settings = stack.settings
    async with httpx.AsyncClient(
        base_url=settings.service_url(settings.registry_port), timeout=30
    ) as client:
        yield client


def subscription(endpoint: str = ENDPOINT, **changes: Any) -> bytes:
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Innleggelser og utskrivninger fra carebus",
        "criteria": "Encounter",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": FHIR_JSON},
    }
    return json.dumps(resource | changes).encode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_subscription_is_the_organisations_fhir_webhook_until_deleted(
    adapters: httpx.AsyncClient,
    registry: httpx.AsyncClient,
    token: str,
    db: asyncpg.Connection,
) -> None:
    """201 with the Subscription (id the organisation number, active, its signing secret);
    the registry holds the endpoint as the organisation's webhook with format fhir; GET shows
    the Subscription without the secret; DELETE ends it, in the registry too."""
    response, created = await post(adapters, "/fhir/Subscription", token, subscription())
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/fhir/Subscription/{DPS}"
    assert (created["resourceType"], created["id"], created["status"]) == (
        "Subscription",
        DPS,
        "active",
    )
    assert created["channel"]["endpoint"] == ENDPOINT
    [secret] = [e["valueString"] for e in created["extension"] if e["url"] == SECRET_EXTENSION]
    assert len(secret) >= 32

    webhook = await registry.get("/v1/webhooks", headers=bearer(token))
    assert webhook.status_code == 200, webhook.text
    assert (webhook.json()["url"], webhook.json()["format"]) == (ENDPOINT, "fhir")
    row = await db.fetchrow("SELECT url, format FROM webhooks WHERE org_id = $1", DPS)
    assert row is not None
    assert (row["url"], row["format"]) == (ENDPOINT, "fhir")

    shown = await adapters.get(f"/fhir/Subscription/{DPS}", headers=bearer(token))
    assert shown.status_code == 200, shown.text
    assert shown.json()["channel"]["endpoint"] == ENDPOINT
    assert secret not in shown.text
    other = await adapters.get("/fhir/Subscription/958935420", headers=bearer(token))
    assert other.status_code == 404

    deleted = await adapters.delete(f"/fhir/Subscription/{DPS}", headers=bearer(token))
    assert deleted.status_code == 204, deleted.text
    assert (await registry.get("/v1/webhooks", headers=bearer(token))).status_code == 404
    gone = await adapters.get(f"/fhir/Subscription/{DPS}", headers=bearer(token))
    assert gone.status_code == 404


async def test_a_subscription_carebus_cannot_serve_changes_nothing(
    adapters: httpx.AsyncClient, registry: httpx.AsyncClient, token: str
) -> None:
    """A search criteria (422 naming Subscription.criteria, from the adapters) and an endpoint
    the registry refuses (a URL holding a nin: 422 naming Subscription.channel.endpoint, the
    nin never repeated) set no webhook."""
    response, outcome = await post(
        adapters, "/fhir/Subscription", token, subscription(criteria="Encounter?status=finished")
    )
    assert response.status_code == 422, response.text
    assert outcome["issue"][0]["expression"] == ["Subscription.criteria"]
    response, outcome = await post(
        adapters,
        "/fhir/Subscription",
        token,
        subscription("https://dps.example.no/hook/15076500565"),
    )
    assert response.status_code == 422, response.text
    assert outcome["issue"][0]["expression"] == ["Subscription.channel.endpoint"]
    assert "15076500565" not in response.text
    assert (await registry.get("/v1/webhooks", headers=bearer(token))).status_code == 404


async def test_a_subscription_without_a_token_is_401(
    adapters: httpx.AsyncClient, registry_service: None
) -> None:
    """No valid token, no Subscription: 401 before anything is read."""
    response, _ = await post(adapters, "/fhir/Subscription", None, subscription())
    assert response.status_code == 401
    response, _ = await post(adapters, "/fhir/Subscription", "not-a-token", subscription())
    assert response.status_code == 401
