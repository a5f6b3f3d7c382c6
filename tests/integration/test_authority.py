"""Authority end to end: who may say what about a person, tried as each agency would.

Every attack the authority issue describes is refused (403 or 422 naming the field), leaves
nothing behind (no ledger row, no record on the stream, no delivery) and is audited; the
legitimate flows that depend on the same statements keep working.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token
from carebus.domain.events import EXAMPLE_PAYLOADS, rfc3339
from carebus.domain.identity import random_nin
from carebus_dev.stack.devdata import DEV_ORGANISATIONS, OPERATOR_ORG
from carebus_dev.testing import TestStack, at_least

pytestmark = pytest.mark.integration

ORGS = DEV_ORGANISATIONS
OTHER_DPS = "974705796"
OTHER_MUNICIPALITY = "964338531"
UNREGISTERED = "123456785"


class Agencies:
    """Every service's client and one token per organisation and role."""

    def __init__(self, stack: TestStack, tokens: dict[str, str], conn: asyncpg.Connection) -> None:
        settings = stack.settings
        self.gateway = httpx.AsyncClient(base_url=settings.service_url(settings.gateway_port))
        self.registry = httpx.AsyncClient(base_url=settings.service_url(settings.registry_port))
        self.audit = httpx.AsyncClient(base_url=settings.service_url(settings.audit_port))
        self.tokens = tokens
        self.conn = conn
        self.rng = random.Random()

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def nin(self) -> str:
        return random_nin(self.rng)

    async def post(
        self,
        who: str,
        event_type: str,
        nin: str,
        payload: dict[str, Any],
        *,
        agency: str | None = None,
        org_id: str | None = None,
        **extra: Any,
    ) -> tuple[str, httpx.Response]:
        """POST an event from `who`'s organisation; its event_id and the response."""
        agency = agency or who
        event_id = f"{agency}-{uuid.uuid4().hex[:16]}"
        body = {
            "event_id": event_id,
            "event_type": event_type,
            "occurred_at": rfc3339(datetime.now(UTC)),
            "source": {"agency": agency, "org_id": org_id or ORGS[agency]},
            "subject": {"nin": nin},
            "payload": payload,
            **extra,
        }
        response = await self.gateway.post("/v1/events", json=body, headers=self.auth(who))
        return event_id, response

    async def accepted(
        self, who: str, event_type: str, nin: str, payload: dict[str, Any], **extra: Any
    ) -> str:
        event_id, response = await self.post(who, event_type, nin, payload, **extra)
        assert response.status_code == 202, response.text
        return event_id

    async def register(self, path: str, body: dict[str, Any]) -> None:
        response = await self.registry.post(path, json=body, headers=self.auth("operator"))
        assert response.status_code == 201, response.text

    async def deliveries(self, who: str, event_id: str) -> list[dict[str, Any]]:
        response = await self.audit.get(
            "/v1/deliveries", params={"limit": "1000"}, headers=self.auth(who)
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        while response.json()["next"]:
            response = await self.audit.get(
                "/v1/deliveries",
                params={"limit": "1000", "cursor": response.json()["next"]},
                headers=self.auth(who),
            )
            items += response.json()["items"]
        return [item for item in items if item["event_id"] == event_id]

    async def decisions(self, event_id: str, count: int) -> dict[str, dict[str, Any]]:
        """The stored routing decisions of `event_id` by recipient org, once `count` are in."""

        async def probe() -> list[dict[str, Any]]:
            rows = await self.conn.fetch(
                "SELECT recipient_org, decision, reason, basis FROM disclosures"
                " WHERE event_id = $1",
                event_id,
            )
            return [dict(row) for row in rows]

        found = await at_least(probe, count)
        return {row["recipient_org"]: row for row in found}

    async def refusals(self, rule_id: str, actor_org: str) -> list[dict[str, Any]]:
        async def probe() -> list[dict[str, Any]]:
            rows = await self.conn.fetch(
                "SELECT * FROM authority_refusals WHERE rule_id = $1 AND actor_org = $2",
                rule_id,
                actor_org,
            )
            return [dict(row) for row in rows]

        return await at_least(probe, 1)

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
async def agencies(stack: TestStack, services: None) -> AsyncIterator[Agencies]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    tokens = {
        agency: await create_token(conn, agency=agency, org_id=org, role="system")
        for agency, org in ORGS.items()
    }
    tokens["other_dps"] = await create_token(conn, agency="dps", org_id=OTHER_DPS, role="system")
    tokens["other_municipality"] = await create_token(
        conn, agency="municipality", org_id=OTHER_MUNICIPALITY, role="system"
    )
    tokens["privacy_officer"] = await create_token(
        conn, agency="municipality", org_id=ORGS["municipality"], role="privacy_officer"
    )
    tokens["admin"] = await create_token(
        conn, agency="municipality", org_id=ORGS["municipality"], role="admin"
    )
    tokens["operator"] = await create_token(
        conn, agency="operator", org_id=OPERATOR_ORG, role="operator"
    )
    bus = Agencies(stack, tokens, conn)
    # The router recovers and catches up first: wait until it routes one event.
    admitted = await bus.accepted("dps", "admission", bus.nin(), admission())
    await bus.decisions(admitted, 1)
    yield bus
    await bus.close()
    await conn.close()


def admission(home: str = ORGS["municipality"], **changes: Any) -> dict[str, Any]:
    return {
        "reason": "suicide_attempt",
        "admission_kind": "involuntary",
        "housing_status": "stable",
        "needs_municipal_services": True,
        "home_municipality_org": home,
        "ward": "Akutt",
        **changes,
    }


def plan(
    plan_id: str = "IP-1",
    *,
    coordinator: tuple[str, str] | None = None,
    participants: tuple[tuple[str, str], ...] = (),
    status: str = "active",
) -> dict[str, Any]:
    return {
        "plan_id": plan_id,
        "status": status,
        "coordinator": None
        if coordinator is None
        else {"agency": coordinator[0], "org_id": coordinator[1]},
        "participants": [{"agency": a, "org_id": o} for a, o in participants],
        "next_review_at": "2027-03-01T00:00:00+01:00",
        "crisis_plan": True,
    }


def discharge(admission_event_id: str) -> dict[str, Any]:
    return {"admission_event_id": admission_event_id, "destination": "home", "crisis_plan": True}


def release() -> dict[str, Any]:
    return {
        "release_at": rfc3339(datetime.now(UTC)),
        "home_municipality_org": ORGS["municipality"],
        "needs_municipal_services": True,
        "housing_status": "homeless",
    }


async def ledger_has(bus: Agencies, source_org: str, event_id: str) -> bool:
    return bool(
        await bus.conn.fetchval(
            "SELECT count(*) FROM accepted_events WHERE source_org = $1 AND event_id = $2",
            source_org,
            event_id,
        )
    )


def forbidden(response: httpx.Response, field: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert [d["field"] for d in error["details"]] == [field]


# --- the attacks ---------------------------------------------------------------------------


async def test_police_cannot_make_itself_coordinator(agencies: Agencies) -> None:
    """The police's ip_update naming itself coordinator is 403 naming event_type, leaves no
    ledger row, is audited, and the next admission never reaches the police."""
    bus = agencies
    nin = bus.nin()
    event_id, response = await bus.post(
        "police", "ip_update", nin, plan(coordinator=("dps", ORGS["police"]))
    )
    forbidden(response, "event_type")
    assert not await ledger_has(bus, ORGS["police"], event_id)
    [refusal] = await bus.refusals("sender.event_type", ORGS["police"])
    assert refusal["statement"] == "event:ip_update"
    admitted = await bus.accepted("dps", "admission", nin, admission())
    decisions = await bus.decisions(admitted, 1)
    assert ORGS["police"] not in decisions
    assert await bus.deliveries("police", admitted) == []
    metrics = await bus.gateway.get("/metrics")
    assert 'carebus_authority_refusals_total{rule="sender.event_type"}' in metrics.text


async def test_a_stranger_or_a_member_cannot_add_itself_to_the_team(agencies: Agencies) -> None:
    """A municipality with no relation cannot make a plan; one the home municipality added as a
    participant cannot name itself coordinator in a plan of its own; nothing changes."""
    bus = agencies
    nin = bus.nin()
    await bus.accepted("dps", "admission", nin, admission())
    _, stranger = await bus.post(
        "other_municipality",
        "ip_update",
        nin,
        plan(coordinator=("municipality", OTHER_MUNICIPALITY)),
        agency="municipality",
        org_id=OTHER_MUNICIPALITY,
    )
    forbidden(stranger, "subject")
    added = await bus.registry.post(
        "/v1/care-teams",
        json={
            "nin": nin,
            "agency": "municipality",
            "org_id": OTHER_MUNICIPALITY,
            "role": "participant",
            "status": "member",
        },
        headers=bus.auth("municipality"),
    )
    assert added.status_code == 201, added.text
    _, member = await bus.post(
        "other_municipality",
        "ip_update",
        nin,
        plan(coordinator=("municipality", OTHER_MUNICIPALITY)),
        agency="municipality",
        org_id=OTHER_MUNICIPALITY,
    )
    forbidden(member, "payload.coordinator.org_id")
    self_added = await bus.registry.post(
        "/v1/care-teams",
        json={
            "nin": nin,
            "agency": "nav",
            "org_id": ORGS["nav"],
            "role": "coordinator",
            "status": "member",
        },
        headers=bus.auth("nav"),
    )
    forbidden(self_added, "nin")
    await bus.refusals("care_team.self_add", OTHER_MUNICIPALITY)
    await bus.refusals("relation.required", OTHER_MUNICIPALITY)


async def test_a_stranger_cannot_post_a_persons_brukerplan_scores(agencies: Agencies) -> None:
    """Issue 17 item 8: a municipality with no relation to the person posting Brukerplan scores
    (which would shorten the home municipality's housing deadline) is 403 naming the subject,
    audited as relation.required; the home municipality may."""
    bus = agencies
    nin = bus.nin()
    await bus.accepted("dps", "admission", nin, admission())
    scores = dict(EXAMPLE_PAYLOADS["brukerplan_assessment"])
    _, stranger = await bus.post(
        "other_municipality",
        "brukerplan_assessment",
        nin,
        scores,
        agency="municipality",
        org_id=OTHER_MUNICIPALITY,
    )
    forbidden(stranger, "subject")
    await bus.refusals("relation.required", OTHER_MUNICIPALITY)
    await bus.accepted("municipality", "brukerplan_assessment", nin, scores)


async def test_nobody_grants_itself_consent_and_police_cannot_object_for_others(
    agencies: Agencies,
) -> None:
    """NAV without a relation is refused; NAV in the care team recording consent for itself gets
    a pending consent that delivers nothing until the home municipality confirms it; the police
    cannot record an objection against the DPS."""
    bus = agencies
    nin = bus.nin()
    first = await bus.accepted("dps", "admission", nin, admission())
    body = {
        "nin": nin,
        "recipient": {"agency": "nav", "org_id": ORGS["nav"]},
        "categories": ["logistics", "social"],
        "status": "given",
        "valid_from": "2026-01-01T00:00:00+01:00",
        "recorded_by": "saksbehandler",
    }
    stranger = await bus.registry.post("/v1/consents", json=body, headers=bus.auth("nav"))
    forbidden(stranger, "nin")
    for agency in ("nav", "police"):
        joined = await bus.registry.post(
            "/v1/care-teams",
            json={
                "nin": nin,
                "agency": agency,
                "org_id": ORGS[agency],
                "role": "participant",
                "status": "member",
            },
            headers=bus.auth("municipality"),
        )
        assert joined.status_code == 201, joined.text
    pending = await bus.registry.post("/v1/consents", json=body, headers=bus.auth("nav"))
    assert pending.status_code == 201, pending.text
    assert pending.json()["state"] == "pending"
    assert pending.json()["pending_reason"] == "consent.self_recipient"
    objection = await bus.registry.post(
        "/v1/consents",
        json={
            **body,
            "recipient": {"agency": "dps", "org_id": ORGS["dps"]},
            "status": "objection",
            "categories": [],
        },
        headers=bus.auth("police"),
    )
    forbidden(objection, "status")

    withheld = await bus.accepted("dps", "discharge", nin, discharge(first))
    assert (await bus.decisions(withheld, 3))[ORGS["nav"]]["reason"] == "no_consent"
    consent_id = pending.json()["consent_id"]
    by_nav = await bus.registry.post(f"/v1/consents/{consent_id}/confirm", headers=bus.auth("nav"))
    forbidden(by_nav, "consent_id")
    # The DPS discharged the person: no open admission, no relation, so it cannot confirm.
    stale = await bus.registry.post(f"/v1/consents/{consent_id}/confirm", headers=bus.auth("dps"))
    forbidden(stale, "consent_id")
    confirmed = await bus.registry.post(
        f"/v1/consents/{consent_id}/confirm", headers=bus.auth("municipality")
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["state"] == "confirmed"
    second = await bus.accepted("dps", "admission", nin, admission(reason="overdose"))
    decisions = await bus.decisions(second, 3)
    assert (decisions[ORGS["nav"]]["decision"], decisions[ORGS["nav"]]["basis"]) == (
        "delivered",
        "consent",
    )
    [delivery] = await bus.deliveries("nav", second)
    assert "reason" not in delivery["payload"]  # health stays with health


async def test_an_agency_admin_manages_only_its_own_organisation(agencies: Agencies) -> None:
    """The municipality's admin can neither mint a token for NAV nor point the DPS's webhook at
    itself; both are audited refusals and change nothing."""
    bus = agencies
    before = await bus.conn.fetchval(
        "SELECT count(*) FROM api_tokens WHERE org_id = $1", ORGS["nav"]
    )
    minted = await bus.registry.post(
        "/v1/tokens",
        json={"agency": "nav", "org_id": ORGS["nav"], "role": "system"},
        headers=bus.auth("admin"),
    )
    forbidden(minted, "org_id")
    hooked = await bus.registry.put(
        "/v1/webhooks",
        json={"url": "https://municipality.example/steal", "org_id": ORGS["dps"]},
        headers=bus.auth("admin"),
    )
    forbidden(hooked, "org_id")
    after = await bus.conn.fetchval(
        "SELECT count(*) FROM api_tokens WHERE org_id = $1", ORGS["nav"]
    )
    assert after == before
    assert (
        await bus.conn.fetchval(
            "SELECT count(*) FROM webhooks WHERE org_id = $1 AND url LIKE '%steal%'", ORGS["dps"]
        )
        == 0
    )
    refusals = await bus.refusals("operator.realm", ORGS["municipality"])
    assert {r["statement"] for r in refusals} <= {"token", "webhook"}


async def test_organisations_must_be_registered_as_the_agency_claimed(agencies: Agencies) -> None:
    """A plan naming an unregistered organisation, or an admission naming a NAV office as home
    municipality, is 422 naming the field; nothing is accepted."""
    bus = agencies
    nin = bus.nin()
    await bus.accepted("dps", "admission", nin, admission())
    event_id, response = await bus.post(
        "municipality",
        "ip_update",
        nin,
        plan(
            coordinator=("municipality", ORGS["municipality"]),
            participants=(("dps", UNREGISTERED), ("fastlege", ORGS["nav"])),
        ),
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"] == [
        {
            "field": "payload.participants[0].org_id",
            "problem": "is not a registered dps organisation",
        },
        {
            "field": "payload.participants[1].org_id",
            "problem": "is not a registered fastlege organisation",
        },
    ]
    assert not await ledger_has(bus, ORGS["municipality"], event_id)
    _, home = await bus.post("dps", "admission", nin, admission(home=ORGS["nav"]))
    assert home.status_code == 422
    assert home.json()["error"]["details"][0]["field"] == "payload.home_municipality_org"


async def test_a_crisis_plan_owner_must_be_a_registered_health_service(agencies: Agencies) -> None:
    """A plan whose crisis plan is said to be held by an unregistered DPS, or by NAV, is 422
    naming the owner's field; nothing is accepted. A registered DPS is accepted."""
    bus = agencies
    nin = bus.nin()
    await bus.accepted("dps", "admission", nin, admission())
    base = {**plan(coordinator=("municipality", ORGS["municipality"])), "crisis_plan_id": "KP-1"}
    unregistered = {**base, "crisis_plan_owner": {"agency": "dps", "org_id": UNREGISTERED}}
    event_id, response = await bus.post("municipality", "ip_update", nin, unregistered)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"] == [
        {
            "field": "payload.crisis_plan_owner.org_id",
            "problem": "is not a registered dps organisation",
        }
    ]
    assert not await ledger_has(bus, ORGS["municipality"], event_id)
    nav = {**base, "crisis_plan_owner": {"agency": "nav", "org_id": ORGS["nav"]}}
    _, response = await bus.post("municipality", "ip_update", nin, nav)
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == [
        "payload.crisis_plan_owner.agency"
    ]
    owned = {**base, "crisis_plan_owner": {"agency": "dps", "org_id": ORGS["dps"]}}
    await bus.accepted("municipality", "ip_update", nin, owned)


async def test_only_health_care_says_a_somatic_check_was_done(agencies: Agencies) -> None:
    """NAV's somatic_check_done is 403 naming event_type; the GP's is accepted."""
    bus = agencies
    nin = bus.nin()
    check = {"kind": "annual", "referral_needed": False}
    _, response = await bus.post("nav", "somatic_check_done", nin, check)
    forbidden(response, "event_type")
    await bus.accepted("fastlege", "somatic_check_done", nin, check)


async def test_nav_cannot_declare_an_emergency(agencies: Agencies) -> None:
    """An emergency request from NAV is 403 naming emergency."""
    bus = agencies
    _, response = await bus.post(
        "nav",
        "application_received",
        bus.nin(),
        {"application_id": "A-1", "service": "housing"},
        emergency={
            "justification": "urgent",
            "accountable": "leder",
            "recipients": [{"agency": "police", "org_id": ORGS["police"]}],
        },
    )
    forbidden(response, "emergency")


async def test_corrections_sends_prison_releases_and_nothing_else(agencies: Agencies) -> None:
    """Corrections may not send an admission, the police may not send a prison release (403
    naming event_type, audited); corrections' own release is accepted."""
    bus = agencies
    nin = bus.nin()
    admitted, response = await bus.post("corrections", "admission", nin, admission())
    forbidden(response, "event_type")
    assert not await ledger_has(bus, ORGS["corrections"], admitted)
    assert await bus.refusals("sender.event_type", ORGS["corrections"])
    _, response = await bus.post("police", "prison_release", nin, release())
    forbidden(response, "event_type")
    await bus.accepted("corrections", "prison_release", nin, release())


async def test_a_release_reaches_only_a_recipient_consented_for_justice(agencies: Agencies) -> None:
    """The GP on the GP list, consented for every category there was before `justice`, does
    not get a release (category_not_consented), nor does the home municipality outside the
    team (no rule); once the consent names justice and social, the GP gets the release."""
    bus = agencies
    nin = bus.nin()
    await bus.register(
        "/v1/population-register", {"nin": nin, "home_municipality_org": ORGS["municipality"]}
    )
    await bus.register("/v1/gp-list", {"nin": nin, "org_id": ORGS["fastlege"]})

    async def consent(categories: list[str]) -> None:
        body = {
            "nin": nin,
            "recipient": {"agency": "fastlege", "org_id": ORGS["fastlege"]},
            "categories": categories,
            "status": "given",
            "valid_from": "2026-01-01T00:00:00+01:00",
            "recorded_by": "test",
        }
        response = await bus.registry.post(
            "/v1/consents", json=body, headers=bus.auth("municipality")
        )
        assert response.status_code == 201, response.text
        assert response.json()["state"] == "effective"

    await consent(["logistics", "health", "social", "police"])
    first = await bus.accepted("corrections", "prison_release", nin, release())
    decisions = await bus.decisions(first, 2)
    assert decisions[ORGS["fastlege"]]["reason"] == "category_not_consented"
    assert decisions[ORGS["municipality"]]["reason"] == "not_permitted"
    assert await bus.deliveries("fastlege", first) == []

    await consent(["justice", "social"])
    second = await bus.accepted("corrections", "prison_release", nin, release())
    [delivery] = await at_least(lambda: bus.deliveries("fastlege", second), 1)
    assert delivery["basis"] == "consent"
    assert delivery["categories"] == ["social", "justice"]
    assert delivery["payload"]["housing_status"] == "homeless"
    assert await bus.deliveries("municipality", second) == []


# --- the legitimate flows ------------------------------------------------------------------


async def test_the_municipalitys_plan_names_a_dps_coordinator_and_a_gp(agencies: Agencies) -> None:
    """The home municipality's plan makes another DPS coordinator and the GP a member: both
    learn of the next discharge (presumed), and only the owner can close the plan."""
    bus = agencies
    nin = bus.nin()
    admitted = await bus.accepted("dps", "admission", nin, admission())
    await bus.accepted(
        "municipality",
        "ip_update",
        nin,
        plan(coordinator=("dps", OTHER_DPS), participants=(("fastlege", ORGS["fastlege"]),)),
    )
    discharged = await bus.accepted("dps", "discharge", nin, discharge(admitted))
    decisions = await bus.decisions(discharged, 3)
    assert decisions[OTHER_DPS]["basis"] == "presumed"
    assert decisions[ORGS["fastlege"]]["basis"] == "presumed"
    [gp] = await bus.deliveries("fastlege", discharged)
    assert gp["basis"] == "presumed"
    # The coordinating DPS closing "IP-1" closes a plan of its own, not the municipality's.
    await bus.accepted(
        "other_dps", "ip_update", nin, plan(status="closed"), agency="dps", org_id=OTHER_DPS
    )
    again = await bus.accepted(
        "dps",
        "discharge_ready",
        nin,
        {
            "admission_event_id": admitted,
            "needs_municipal_services": True,
            "housing_status": "stable",
        },
    )
    assert ORGS["fastlege"] in await bus.decisions(again, 3)


async def test_a_patient_objects_to_the_gp(agencies: Agencies) -> None:
    """The operator issues a patient token; the patient records an objection against the GP,
    and the GP's next delivery is withheld for it; the patient cannot speak for anyone else."""
    bus = agencies
    nin = bus.nin()
    await bus.register("/v1/gp-list", {"nin": nin, "org_id": ORGS["fastlege"]})
    await bus.accepted("dps", "admission", nin, admission())
    await bus.accepted(
        "municipality",
        "ip_update",
        nin,
        plan(
            coordinator=("municipality", ORGS["municipality"]),
            participants=(("fastlege", ORGS["fastlege"]),),
        ),
    )
    issued = await bus.registry.post(
        "/v1/tokens",
        json={"agency": "operator", "org_id": OPERATOR_ORG, "role": "patient", "nin": nin},
        headers=bus.auth("operator"),
    )
    assert issued.status_code == 201, issued.text
    patient = {"Authorization": f"Bearer {issued.json()['token']}"}
    objection = {
        "nin": nin,
        "recipient": {"agency": "fastlege", "org_id": ORGS["fastlege"]},
        "categories": [],
        "status": "objection",
        "valid_from": "2026-01-01T00:00:00+01:00",
        "recorded_by": "the patient",
    }
    recorded = await bus.registry.post("/v1/consents", json=objection, headers=patient)
    assert recorded.status_code == 201, recorded.text
    other = await bus.registry.post(
        "/v1/consents", json={**objection, "nin": bus.nin()}, headers=patient
    )
    assert other.status_code == 403
    ready = await bus.accepted(
        "dps",
        "discharge_ready",
        nin,
        {"admission_event_id": "x", "needs_municipal_services": True, "housing_status": "stable"},
    )
    decisions = await bus.decisions(ready, 2)
    assert decisions[ORGS["fastlege"]]["reason"] == "objection"
    assert await bus.deliveries("fastlege", ready) == []


async def test_an_emergency_by_the_dps_reaches_the_police_once(agencies: Agencies) -> None:
    """The DPS's emergency reaches the named police district, flagged; the police do not join
    the care team, so the next ordinary event does not reach them."""
    bus = agencies
    nin = bus.nin()
    urgent = await bus.accepted(
        "dps",
        "admission",
        nin,
        admission(),
        emergency={
            "justification": "trusler mot navngitt person",
            "accountable": "overlege",
            "recipients": [{"agency": "police", "org_id": ORGS["police"]}],
        },
    )
    [delivery] = await at_least(lambda: bus.deliveries("police", urgent), 1)
    assert delivery["basis"] == "emergency"
    ordinary = await bus.accepted("dps", "discharge", nin, discharge(urgent))
    assert ORGS["police"] not in await bus.decisions(ordinary, 1)


async def test_no_one_outside_health_grows_the_team_or_undoes_a_later_objection(
    agencies: Agencies,
) -> None:
    """NAV in the team cannot add members (it could recruit the witness for its own consent);
    a pending consent cannot be confirmed once the patient objected after it (409); the police
    cannot object for every police district."""
    bus = agencies
    nin = bus.nin()
    await bus.accepted("dps", "admission", nin, admission())
    joined = await bus.registry.post(
        "/v1/care-teams",
        json={
            "nin": nin,
            "agency": "nav",
            "org_id": ORGS["nav"],
            "role": "participant",
            "status": "member",
        },
        headers=bus.auth("municipality"),
    )
    assert joined.status_code == 201, joined.text
    recruited = await bus.registry.post(
        "/v1/care-teams",
        json={
            "nin": nin,
            "agency": "dps",
            "org_id": OTHER_DPS,
            "role": "coordinator",
            "status": "member",
        },
        headers=bus.auth("nav"),
    )
    forbidden(recruited, "org_id")
    await bus.refusals("care_team.recorder", ORGS["nav"])
    consent = {
        "nin": nin,
        "recipient": {"agency": "nav", "org_id": ORGS["nav"]},
        "categories": ["logistics"],
        "status": "given",
        "valid_from": "2026-01-01T00:00:00+01:00",
        "recorded_by": "saksbehandler",
    }
    pending = await bus.registry.post("/v1/consents", json=consent, headers=bus.auth("nav"))
    assert pending.json()["state"] == "pending", pending.text
    objection = {**consent, "status": "objection", "categories": [], "recorded_by": "lege"}
    objected = await bus.registry.post("/v1/consents", json=objection, headers=bus.auth("dps"))
    assert objected.status_code == 201, objected.text
    late = await bus.registry.post(
        f"/v1/consents/{pending.json()['consent_id']}/confirm", headers=bus.auth("municipality")
    )
    assert late.status_code == 409, late.text
    assert late.json()["error"]["details"][0]["field"] == "consent_id"
    everyone = await bus.registry.post(
        "/v1/consents",
        json={**objection, "recipient": {"agency": "police"}},
        headers=bus.auth("police"),
    )
    forbidden(everyone, "nin")


@pytest.mark.parametrize(
    "path",
    [
        "gateway:/v1/events",
        "registry:/v1/consents",
        "registry:/v1/care-teams",
        "audit:/v1/disclosures/query",
    ],
)
async def test_deeply_nested_json_is_a_400_not_a_500(agencies: Agencies, path: str) -> None:
    """JSON nested beyond the parser's depth is malformed input (400 naming the body)."""
    service, route = path.split(":")
    client: httpx.AsyncClient = getattr(agencies, service)
    who = "privacy_officer" if service == "audit" else "municipality"
    response = await client.post(
        route,
        content=b"[" * 2_000 + b"]" * 2_000,  # under every service's size limit
        headers={**agencies.auth(who), "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"][0]["field"] == "body"
