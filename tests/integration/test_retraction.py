"""Retractions end to end on the real broker and database: gateway → router, SLA engine, event
store and audit store, over HTTP where the contract is HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from carebus.domain.identity import random_nin
from carebus_dev.testing import TestStack, at_least
from tests.integration import test_routing
from tests.integration.test_routing import ORGS, Bus, admission

pytestmark = pytest.mark.integration

REPLY_RULE = "municipal_reply.discharge_ready"
# The routing tests' `bus` fixture (tokens, HTTP clients, a router caught up), here run on this
# module's `services`.
bus = test_routing.bus


@pytest.fixture(scope="module")
def services(stack: TestStack) -> Iterator[None]:
    started = [
        stack.start_service(name)
        for name in (
            "gateway",
            "registry",
            "audit_store",
            "audit",
            "router",
            "sla",
            "alert_store",
            "event_store",
        )
    ]
    yield
    for service in reversed(started):
        service.stop()


@pytest.fixture
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


async def post(
    bus: Bus,
    agency: str,
    event_type: str,
    nin: str,
    payload: dict[str, Any],
    *,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> httpx.Response:
    body = {
        "event_id": event_id or f"{agency}-{uuid.uuid4().hex[:16]}",
        "event_type": event_type,
        "occurred_at": (occurred_at or datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
        "source": {"agency": agency, "org_id": ORGS[agency]},
        "subject": {"nin": nin},
        "payload": payload,
    }
    return await bus.gateway.post("/v1/events", json=body, headers=bus.auth(agency))


async def retract(
    bus: Bus, agency: str, nin: str, target: str, reason: str = "wrong_person", **kw: Any
) -> httpx.Response:
    return await post(
        bus, agency, "retraction", nin, {"retracted_event_id": target, "reason": reason}, **kw
    )


async def delivered_to(bus: Bus, nin: str, event_id: str, count: int) -> dict[str, Any]:
    """The audit records of `event_id` by recipient organisation, once `count` are stored."""
    found = await bus.decisions_for(nin, event_id, count)
    return {d["recipient"]["org_id"]: d for d in found if d["recipient"]}


async def test_a_retraction_reaches_exactly_the_organisations_that_got_the_event(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """NAV (by consent) and the home municipality (statutory) got an admission; then the patient
    objects to NAV and the GP joins the team. The retraction goes to NAV and the municipality,
    not the GP; each is a delivery saying what to do, audited; the event store marks the
    admission retracted; the same retraction again is 202 once, another one 409."""
    nin = random_nin(bus.rng)
    await bus.member(nin, "nav", "participant")
    await bus.consent(nin, "nav", "given", ["logistics", "social"])
    admitted = await bus.publish("dps", "admission", nin, admission())
    got = await delivered_to(bus, nin, admitted, 2)
    assert {org for org, d in got.items() if d["decision"] == "delivered"} == {
        ORGS["nav"],
        ORGS["municipality"],
    }
    await bus.consent(nin, "nav", "objection", ["logistics", "social"])
    await bus.member(nin, "fastlege", "gp")

    retraction_id = f"dps-{uuid.uuid4().hex[:16]}"
    sent_at = datetime.now(UTC) - timedelta(seconds=5)
    response = await retract(bus, "dps", nin, admitted, event_id=retraction_id, occurred_at=sent_at)
    assert response.status_code == 202, response.text

    decisions = await delivered_to(bus, nin, retraction_id, 2)
    assert set(decisions) == {ORGS["nav"], ORGS["municipality"]}
    assert {(d["decision"], d["basis"]) for d in decisions.values()} == {
        ("delivered", "retraction")
    }
    [notice] = await at_least(lambda: bus.deliveries("nav", retraction_id), 1)
    assert notice["event_type"] == "retraction"
    assert notice["payload"] == {
        "retracted_event_id": admitted,
        "reason": "wrong_person",
        "retracted_event_type": "admission",
        "action": "delete",
    }
    assert notice["subject"] == {"nin": nin}
    assert await bus.deliveries("fastlege", retraction_id) == []

    async def marked() -> list[dict[str, Any]]:
        rows = await db.fetch(
            "SELECT retracted_by, retraction_reason FROM events "
            "WHERE source_org = $1 AND event_id = $2 AND retracted_by IS NOT NULL",
            ORGS["dps"],
            admitted,
        )
        return [dict(row) for row in rows]

    assert await at_least(marked, 1) == [
        {"retracted_by": retraction_id, "retraction_reason": "wrong_person"}
    ]

    again = await retract(bus, "dps", nin, admitted, event_id=retraction_id, occurred_at=sent_at)
    assert again.status_code == 202, again.text
    assert again.json()["event_id"] == retraction_id
    other = await retract(bus, "dps", nin, admitted, reason="sent_in_error")
    assert other.status_code == 409, other.text
    assert [d["field"] for d in other.json()["error"]["details"]] == ["payload.retracted_event_id"]
    assert retraction_id in other.json()["error"]["details"][0]["problem"]
    rows = await db.fetch(
        "SELECT retraction_event_id FROM retractions WHERE source_org = $1 "
        "AND retracted_event_id = $2",
        ORGS["dps"],
        admitted,
    )
    assert [row["retraction_event_id"] for row in rows] == [retraction_id]
    assert len(await bus._decisions_of(nin, retraction_id)) == 2

    # The disclosure log marks the admission withdrawn, and keeps doing so once retention has
    # removed the event itself from the event store (the log outlives it by years).
    def withdrawn(items: list[dict[str, Any]]) -> set[str | None]:
        return {item.get("retracted_by") for item in items if item["event_id"] == admitted}

    assert withdrawn(await bus.decisions(nin)) == {retraction_id}
    await db.execute(
        "DELETE FROM events WHERE source_org = $1 AND event_id = $2", ORGS["dps"], admitted
    )
    assert withdrawn(await bus.decisions(nin)) == {retraction_id}


async def test_another_organisations_or_persons_retraction_is_refused_and_audited(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """The municipality cannot retract the DPS's admission, nor the DPS its admission of
    another person: 422 naming payload.retracted_event_id, one answer for both, audited as an
    authority refusal; nothing of either is recorded or published."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission())
    refused = []
    for agency, about in (("municipality", nin), ("dps", random_nin(bus.rng))):
        event_id = f"{agency}-{uuid.uuid4().hex[:16]}"
        response = await retract(bus, agency, about, admitted, event_id=event_id)
        assert response.status_code == 422, response.text
        [detail] = response.json()["error"]["details"]
        assert detail["field"] == "payload.retracted_event_id"
        refused.append((detail["problem"], event_id, ORGS[agency]))
        assert about not in response.text
    assert refused[0][0] == refused[1][0]
    for _problem, event_id, org in refused:
        assert (
            await db.fetchval("SELECT count(*) FROM accepted_events WHERE event_id = $1", event_id)
            == 0
        )

        async def audited(org: str = org) -> list[dict[str, Any]]:
            rows = await db.fetch(
                "SELECT rule_id, statement, field FROM authority_refusals "
                "WHERE actor_org = $1 AND rule_id = 'retraction.own_event' "
                "AND decided_at > now() - interval '5 minutes'",
                org,
            )
            return [dict(row) for row in rows]

        found = await at_least(audited, 1)
        assert found[-1] == {
            "rule_id": "retraction.own_event",
            "statement": "event:retraction",
            "field": "payload.retracted_event_id",
        }
    assert (
        await db.fetchval(
            "SELECT count(*) FROM retractions WHERE retracted_event_id = $1", admitted
        )
        == 0
    )


async def test_obligations_and_alerts_the_event_opened_are_withdrawn(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """A discharge-ready notice sent long ago breaches the municipality's reply deadline at
    once; another, just sent, opens it. Retracting both resolves the alert as retracted and
    withdraws the open obligation."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission())
    ready = {
        "admission_event_id": admitted,
        "needs_municipal_services": True,
        "housing_status": "homeless",
    }
    late = await post(
        bus, "dps", "discharge_ready", nin, ready, occurred_at=datetime.now(UTC) - timedelta(days=1)
    )
    assert late.status_code == 202, late.text
    late_id, subject_key = late.json()["event_id"], late.json()["subject_key"]
    fresh = await post(bus, "dps", "discharge_ready", nin, ready)
    assert fresh.status_code == 202, fresh.text
    fresh_id = fresh.json()["event_id"]

    async def alerts() -> list[dict[str, Any]]:
        rows = await db.fetch(
            "SELECT alert_id, status, resolution FROM alerts "
            "WHERE rule_id = $1 AND $2 = ANY(event_ids)",
            REPLY_RULE,
            late_id,
        )
        return [dict(row) for row in rows]

    # A freshly started SLA engine first catches up with what earlier modules left on the
    # shared stream.
    raised = await at_least(alerts, 1, timeout_s=90)
    assert {a["status"] for a in raised} == {"open"}

    for target in (late_id, fresh_id):
        response = await retract(bus, "dps", nin, target, reason="sent_in_error")
        assert response.status_code == 202, response.text

    async def resolved() -> list[dict[str, Any]]:
        return [a for a in await alerts() if a["status"] == "resolved"]

    settled = await at_least(resolved, len(raised))
    assert {a["resolution"] for a in settled} == {"retracted"}

    async def obligations() -> list[dict[str, Any]]:
        state = await db.fetchval(
            "SELECT state FROM sla_persons WHERE subject_key = $1", subject_key
        )
        found = orjson.loads(state)["obligations"] if state else {}
        return [
            {"status": o["status"]}
            for o in found.values()
            if o["rule_id"] == REPLY_RULE
            and o["trigger"]["event_id"] == fresh_id
            and o["status"] == "retracted"
        ]

    assert await at_least(obligations, 1) == [{"status": "retracted"}]
