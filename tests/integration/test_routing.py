"""Consent-aware routing end to end: gateway → router → deliveries and audit, over HTTP only."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token
from carebus.domain.identity import random_nin
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.testing import TestStack, at_least

pytestmark = pytest.mark.integration

ORGS = {
    "dps": "974705788",
    "municipality": "940493021",
    "fastlege": "912345675",
    "nav": "889640782",
    "police": "974760673",
    "housing": "987654325",
}
OTHER_MUNICIPALITY = "964338531"


class Bus:
    """The running services and one token per organisation and role."""

    def __init__(self, stack: TestStack, tokens: dict[str, str]) -> None:
        settings = stack.settings
        self.gateway = httpx.AsyncClient(base_url=settings.service_url(settings.gateway_port))
        self.registry = httpx.AsyncClient(base_url=settings.service_url(settings.registry_port))
        self.audit = httpx.AsyncClient(base_url=settings.service_url(settings.audit_port))
        self.tokens = tokens
        self.rng = random.Random()
        self.related: set[str] = set()

    async def relate(self, nin: str) -> None:
        """Make the demo municipality the person's home municipality (the operator's population
        register): the relation it needs to record consents and care-team changes."""
        if nin in self.related:
            return
        response = await self.registry.post(
            "/v1/population-register",
            json={"nin": nin, "home_municipality_org": ORGS["municipality"]},
            headers=self.auth("operator"),
        )
        assert response.status_code == 201, response.text
        self.related.add(nin)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def publish(
        self, agency: str, event_type: str, nin: str, payload: dict[str, Any], **extra: Any
    ) -> str:
        event_id = f"{agency}-{uuid.uuid4().hex[:16]}"
        body = {
            "event_id": event_id,
            "event_type": event_type,
            "occurred_at": "2026-11-23T08:15:00+01:00",
            "source": {"agency": agency, "org_id": ORGS[agency]},
            "subject": {"nin": nin},
            "payload": payload,
            **extra,
        }
        response = await self.gateway.post("/v1/events", json=body, headers=self.auth(agency))
        assert response.status_code == 202, response.text
        return event_id

    async def consent(
        self,
        nin: str,
        agency: str,
        status: str,
        categories: list[str],
        org_id: str | None = None,
        **extra: Any,
    ) -> None:
        await self.relate(nin)
        recipient = {"agency": agency, **({"org_id": org_id} if org_id else {})}
        body = {
            "nin": nin,
            "recipient": recipient,
            "categories": categories,
            "status": status,
            "valid_from": "2026-01-01T00:00:00+01:00",
            "recorded_by": "test",
            **extra,
        }
        response = await self.registry.post(
            "/v1/consents", json=body, headers=self.auth("municipality")
        )
        assert response.status_code == 201, response.text

    async def member(
        self, nin: str, agency: str, role: str, org_id: str | None = None, status: str = "member"
    ) -> None:
        await self.relate(nin)
        body = {
            "nin": nin,
            "agency": agency,
            "org_id": org_id or ORGS[agency],
            "role": role,
            "status": status,
        }
        response = await self.registry.post(
            "/v1/care-teams", json=body, headers=self.auth("municipality")
        )
        assert response.status_code == 201, response.text

    async def deliveries(self, who: str, event_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            response = await self.audit.get("/v1/deliveries", params=params, headers=self.auth(who))
            assert response.status_code == 200, response.text
            page = response.json()
            items.extend(i for i in page["items"] if i["event_id"] == event_id)
            cursor = page["next"]
            if not cursor:
                return items

    async def decisions(self, nin: str) -> list[dict[str, Any]]:
        response = await self.audit.post(
            "/v1/disclosures/query", json={"nin": nin}, headers=self.auth("dpo")
        )
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    async def decisions_for(self, nin: str, event_id: str, count: int) -> list[dict[str, Any]]:
        """The audit records of `event_id`, once `count` of them are stored."""
        return await at_least(lambda: self._decisions_of(nin, event_id), count)

    async def _decisions_of(self, nin: str, event_id: str) -> list[dict[str, Any]]:
        return [d for d in await self.decisions(nin) if d["event_id"] == event_id]

    async def close(self) -> None:
        for client in (self.gateway, self.registry, self.audit):
            await client.aclose()


@pytest.fixture(scope="module")
def services(stack: TestStack) -> Iterator[None]:
    started = [
        stack.start_service(name)
        for name in ("gateway", "registry", "audit_store", "audit", "router")
    ]
    yield
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="module")
async def bus(stack: TestStack, services: None) -> AsyncIterator[Bus]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        tokens = {
            agency: await create_token(conn, agency=agency, org_id=org, role="system")
            for agency, org in ORGS.items()
        }
        tokens["other_municipality"] = await create_token(
            conn, agency="municipality", org_id=OTHER_MUNICIPALITY, role="system"
        )
        tokens["privacy_officer"] = await create_token(
            conn, agency="municipality", org_id=ORGS["municipality"], role="privacy_officer"
        )
        # The operator keeps the population register; its privacy officer (the bus's data
        # protection officer) sees every decision about a person.
        tokens["operator"] = await create_token(
            conn, agency="operator", org_id=OPERATOR_ORG, role="operator"
        )
        tokens["dpo"] = await create_token(
            conn, agency="operator", org_id=OPERATOR_ORG, role="privacy_officer"
        )
    finally:
        await conn.close()
    bus = Bus(stack, tokens)
    # A freshly started router first recovers its table and catches up with what earlier tests
    # left on the stream; wait for one routed event before timing anything.
    event_id = await bus.publish("dps", "admission", random_nin(bus.rng), admission())
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:

        async def audited() -> list[dict[str, Any]]:
            rows = await conn.fetch(
                "SELECT decision FROM disclosures WHERE event_id = $1", event_id
            )
            return [dict(row) for row in rows]

        await at_least(audited, 1, timeout_s=180)
    finally:
        await conn.close()
    yield bus
    await bus.close()


def admission(home: str = ORGS["municipality"], **changes: Any) -> dict[str, Any]:
    return {
        "reason": "overdose",
        "admission_kind": "voluntary",
        "housing_status": "homeless",
        "needs_municipal_services": True,
        "home_municipality_org": home,
        **changes,
    }


def discharge(admission_event_id: str) -> dict[str, Any]:
    return {
        "admission_event_id": admission_event_id,
        "destination": "municipal_housing",
        "crisis_plan": True,
    }


async def test_consent_given_then_withdrawn(bus: Bus) -> None:
    """NAV with consent gets logistics and social fields only; after withdrawal it gets nothing."""
    nin = random_nin(bus.rng)
    await bus.member(nin, "nav", "participant")
    await bus.consent(nin, "nav", "given", ["logistics", "social"])
    admitted = await bus.publish("dps", "admission", nin, admission())
    [delivery] = await at_least(lambda: bus.deliveries("nav", admitted), 1)
    assert delivery["basis"] == "consent"
    assert delivery["subject"] == {"nin": nin}
    assert "reason" not in delivery["payload"]
    assert "admission_kind" not in delivery["payload"]
    assert delivery["payload"]["housing_status"] == "homeless"
    assert set(delivery) <= {
        "delivery_id",
        "event_id",
        "event_type",
        "occurred_at",
        "subject",
        "basis",
        "categories",
        "payload",
        "emergency",
    }

    await bus.consent(nin, "nav", "withdrawn", ["logistics", "social"])
    # Posted the instant the registry answered: the withdrawal is ordered before it.
    discharged = await bus.publish("dps", "discharge", nin, discharge(admitted))
    decisions = await bus.decisions_for(nin, discharged, 2)
    nav = [d for d in decisions if d["recipient"]["agency"] == "nav"]
    assert [(d["decision"], d.get("reason")) for d in nav] == [("withheld", "consent_withdrawn")]
    assert await bus.deliveries("nav", discharged) == []


async def test_objection_blocks_presumed(bus: Bus) -> None:
    """The GP in the care team gets a discharge by presumed consent unless the patient objected."""
    nin = random_nin(bus.rng)
    await bus.member(nin, "fastlege", "gp")
    admitted = await bus.publish("dps", "admission", nin, admission())
    [delivered] = await at_least(lambda: bus.deliveries("fastlege", admitted), 1)
    assert delivered["basis"] == "presumed"
    await bus.consent(
        nin, "fastlege", "objection", ["logistics", "health"], org_id=ORGS["fastlege"]
    )
    discharged = await bus.publish("dps", "discharge", nin, discharge(admitted))
    decisions = await bus.decisions_for(nin, discharged, 2)
    gp = [d for d in decisions if d["recipient"]["agency"] == "fastlege"]
    assert [(d["decision"], d.get("reason")) for d in gp] == [("withheld", "objection")]


async def test_home_municipality_gets_logistics_only_without_consent(bus: Bus) -> None:
    """The home municipality outside the care team gets the admission's logistics and the
    housing status (the regulation: a patient without suitable housing), no health."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission())
    [delivery] = await at_least(lambda: bus.deliveries("municipality", admitted), 1)
    assert delivery["basis"] == "statutory"
    assert delivery["categories"] == ["logistics", "social"]
    assert set(delivery["payload"]) <= {
        "ward",
        "expected_discharge_at",
        "needs_municipal_services",
        "home_municipality_org",
        "housing_status",
    }
    assert delivery["payload"]["needs_municipal_services"] is True
    assert delivery["payload"]["housing_status"] == "homeless"


async def test_a_risk_discharge_tells_the_home_municipality_what_to_do_never_why(
    bus: Bus,
) -> None:
    """A discharge after an overdose admission reaches the home municipality outside the care
    team as the statutory notice: whom to ask at the DPS, never the reason or the kind."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission(reason="overdose"))
    payload = {**discharge(admitted), "dps_contact": "Vakthavende", "kind": "against_advice"}
    discharged = await bus.publish("dps", "discharge", nin, payload)
    [delivery] = await at_least(lambda: bus.deliveries("municipality", discharged), 1)
    assert (delivery["basis"], delivery["categories"]) == ("statutory", ["logistics"])
    assert delivery["payload"]["dps_contact"] == "Vakthavende"
    assert not {"reason", "kind", "crisis_plan"} & set(delivery["payload"])


async def test_another_municipality_never_sees_the_person(bus: Bus) -> None:
    """A second municipality's deliveries never include the first municipality's person."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission())
    await at_least(lambda: bus.deliveries("municipality", admitted), 1)
    assert await bus.deliveries("other_municipality", admitted) == []


async def test_no_candidate_is_audited(bus: Bus, stack: TestStack) -> None:
    """An event about a person with no care team and no home municipality is audited as such."""
    nin = random_nin(bus.rng)
    callout = await bus.publish(
        "police",
        "police_callout",
        nin,
        {"kind": "welfare_check", "injuries": False, "location_type": "public"},
    )
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:

        async def rows() -> list[dict[str, Any]]:
            found = await conn.fetch(
                "SELECT decision, recipient_org FROM disclosures WHERE event_id = $1", callout
            )
            return [dict(row) for row in found]

        assert await at_least(rows, 1) == [{"decision": "no_candidate", "recipient_org": None}]
    finally:
        await conn.close()


async def test_disclosure_query_lists_every_decision(bus: Bus) -> None:
    """The privacy officer sees who received what, on which basis, and what was withheld."""
    nin = random_nin(bus.rng)
    await bus.member(nin, "municipality", "coordinator")
    await bus.member(nin, "police", "participant")
    admitted = await bus.publish("dps", "admission", nin, admission())
    decisions = await bus.decisions_for(nin, admitted, 2)
    by_agency = {d["recipient"]["agency"]: d for d in decisions}
    assert by_agency["municipality"]["decision"] == "delivered"
    assert by_agency["municipality"]["basis"] == "presumed"
    assert "reason" in by_agency["municipality"]["fields"]
    assert by_agency["police"]["decision"] == "withheld"
    assert by_agency["police"]["reason"] in {"not_permitted", "no_consent"}
    for decision in decisions:
        assert {
            "event_id",
            "event_type",
            "recipient",
            "decision",
            "rule_id",
            "policy_version",
            "decided_at",
        } <= set(decision)
