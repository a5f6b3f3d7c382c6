"""Patterns at a place end to end: the registry's housing places, police callouts of three
persons at one site through the gateway, the SLA engine's place count, the alerts in the inbox.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from carebus.adapters.auth import create_token
from carebus.domain.identity import random_nin
from carebus.domain.places import place_key
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.testing import ServiceClients, ServiceProcess, TestStack
from tests.integration.test_sla import ORGS, Bus, callout

pytestmark = pytest.mark.integration

RULE = "place.repeated_incidents"
WAIT_S = 90.0
OTHER_HOUSING = "987650001"
OTHER_MUNICIPALITY = "940000001"  # refused before it is looked up


@pytest.fixture(scope="module")
def services(stack: TestStack) -> Iterator[dict[str, ServiceProcess]]:
    started = {
        name: stack.start_service(name)
        for name in ("gateway", "registry", "sla", "alert_store", "audit_store", "inbox")
    }
    yield started
    for service in reversed(list(started.values())):
        service.stop()


@pytest.fixture(scope="module")
async def bus(stack: TestStack, services: dict[str, ServiceProcess]) -> AsyncIterator[Bus]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    tokens = {
        agency: await create_token(conn, agency=agency, org_id=org, role="system")
        for agency, org in ORGS.items()
    }
    for agency in ("housing", "nav"):
        tokens[f"{agency}_admin"] = await create_token(
            conn, agency=agency, org_id=ORGS[agency], role="admin"
        )
    for agency in ("housing", "municipality"):
        tokens[f"{agency}_coordinator"] = await create_token(
            conn, agency=agency, org_id=ORGS[agency], role="coordinator"
        )
    tokens["operator"] = await create_token(
        conn, agency="operator", org_id=OPERATOR_ORG, role="operator"
    )
    tokens["other_housing_admin"] = await create_token(
        conn, agency="housing", org_id=OTHER_HOUSING, role="admin"
    )
    bus = Bus(stack, tokens=tokens, conn=conn)
    warmup = await bus.publish("police", "police_callout", random_nin(bus.rng), callout())
    await bus.tracked(warmup, timeout_s=180)
    yield bus
    await bus.close()
    await conn.close()


async def record_place(bus: ServiceClients, token: str, site: str, owner: str) -> Any:
    return await bus.registry.post(
        "/v1/housing-places",
        json={
            "housing_site_id": site,
            "owner_org": owner,
            "municipality_org": ORGS["municipality"],
        },
        headers=bus.auth(token),
    )


async def place_alerts(conn: asyncpg.Connection, key: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    rows: list[asyncpg.Record] = []
    while time.monotonic() < deadline:
        rows = await conn.fetch(
            "SELECT recipient_org, nin, subject_key, summary, event_ids, contact_org FROM alerts "
            "WHERE rule_id = $1 AND subject_key = $2 ORDER BY recipient_org",
            RULE,
            f"place:{key}",
        )
        if len(rows) >= count:
            return [dict(row) for row in rows]
        await asyncio.sleep(0.25)
    raise AssertionError(f"expected {count} place alerts, found {rows}")


async def refusals_of(bus: Bus, actors: list[str], count: int) -> set[tuple[str, str, str]]:
    deadline = time.monotonic() + WAIT_S
    audited: list[asyncpg.Record] = []
    while time.monotonic() < deadline and len(audited) < count:
        audited = await bus.conn.fetch(
            "SELECT actor_org, statement, field FROM authority_refusals "
            "WHERE rule_id = 'housing_place.operator' AND actor_org = ANY($1::text[])",
            actors,
        )
        await asyncio.sleep(0.25)
    return {(r["actor_org"], r["statement"], r["field"]) for r in audited}


async def test_only_the_operator_records_a_place(bus: Bus) -> None:
    """Security review: a housing admin recording even a place it names itself the owner of is
    refused 403 naming housing_place.operator, audited, nothing written (first come would let
    it take another's site); another agency's admin too. The operator records it: 201 with the
    key, never the site id stored."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    key = place_key(f"site:{site}", bus.settings.subject_key_secret.get_secret_value().encode())
    refused = await record_place(bus, "housing_admin", site, ORGS["housing"])
    assert refused.status_code == 403, refused.text
    assert "housing_place.operator" in refused.text
    assert "only the operator records a housing place" in refused.text
    refused = await record_place(bus, "nav_admin", site, ORGS["nav"])
    assert refused.status_code == 403, refused.text
    assert await bus.conn.fetchval("SELECT 1 FROM housing_places WHERE place_key = $1", key) is None
    assert await refusals_of(bus, [ORGS["housing"], ORGS["nav"]], 2) >= {
        (ORGS["housing"], "housing_place", "owner_org"),
        (ORGS["nav"], "housing_place", "owner_org"),
    }
    recorded = await record_place(bus, "operator", site, ORGS["housing"])
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["place_key"] == key
    stored = await bus.conn.fetchrow("SELECT * FROM housing_places WHERE place_key = $1", key)
    assert stored is not None
    assert site not in str(dict(stored))
    invalid = await record_place(bus, "operator", site, ORGS["nav"])
    assert invalid.status_code == 422, invalid.text
    assert "owner_org" in invalid.text


async def test_no_housing_admin_takes_or_moves_a_recorded_place(bus: Bus) -> None:
    """Another housing organisation's admin cannot take over a recorded place (and so its
    alerts), nor can the owner's admin move its municipality; the operator moves it, and the
    privacy officer of the owner it replaces is told."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    first = await record_place(bus, "operator", site, ORGS["housing"])
    assert first.status_code == 201, first.text
    key = first.json()["place_key"]
    taken = await record_place(bus, "other_housing_admin", site, OTHER_HOUSING)
    assert taken.status_code == 403, taken.text
    assert "housing_place.operator" in taken.text
    moved_municipality = await bus.registry.post(
        "/v1/housing-places",
        json={
            "housing_site_id": site,
            "owner_org": ORGS["housing"],
            "municipality_org": OTHER_MUNICIPALITY,
        },
        headers=bus.auth("housing_admin"),
    )
    assert moved_municipality.status_code == 403, moved_municipality.text
    row = await bus.conn.fetchrow(
        "SELECT owner_org, municipality_org FROM housing_places WHERE place_key = $1", key
    )
    assert row is not None
    assert (row["owner_org"], row["municipality_org"]) == (ORGS["housing"], ORGS["municipality"])
    moved = await record_place(bus, "operator", site, OTHER_HOUSING)
    assert moved.status_code == 201, moved.text
    assert moved.json()["owner_org"] == OTHER_HOUSING
    told = await bus.conn.fetch(
        "SELECT target_org FROM operator_actions WHERE action = 'housing_place_recorded' "
        "AND at >= now() - interval '5 minutes' AND target_org = ANY($1::text[])",
        [ORGS["housing"], OTHER_HOUSING],
    )
    assert {r["target_org"] for r in told} >= {ORGS["housing"], OTHER_HOUSING}


async def test_made_up_persons_do_not_reveal_a_callout_to_the_housing_owner(bus: Bus) -> None:
    """Security review (HIGH): the owner reports two incidents about two persons at its site;
    one police callout about a third, which routing did not tell it of, counts for the
    municipality (told of none, three persons) but not for the owner (what it was not told of
    is one person's), so the owner gets no alert holding the callout."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    recorded = await record_place(bus, "operator", site, ORGS["housing"])
    assert recorded.status_code == 201, recorded.text
    key = recorded.json()["place_key"]
    start = datetime.now(UTC) - timedelta(hours=6)
    incident = {"kind": "noise", "severity": "low", "housing_unit_id": f"{site}-1"}
    padding = [
        await bus.publish(
            "housing",
            "housing_incident",
            random_nin(bus.rng),
            {**incident, "housing_site_id": site},
            occurred_at=start + timedelta(hours=hour),
        )
        for hour in (0, 1)
    ]
    real = await bus.publish(
        "police",
        "police_callout",
        random_nin(bus.rng),
        {**callout(), "housing_site_id": site},
        occurred_at=start + timedelta(hours=2),
    )
    await place_alerts(bus.conn, key, 1)
    await bus.tracked(real)
    await asyncio.sleep(2)  # the owner's alert, were it raised, would be stored by now
    alerts = await place_alerts(bus.conn, key, 1)
    assert [a["recipient_org"] for a in alerts] == [ORGS["municipality"]]
    assert sorted(alerts[0]["event_ids"]) == sorted([*padding, real])


async def test_an_unregistered_place_alerts_the_operator_not_a_reporter(bus: Bus) -> None:
    """Security review (HIGH): reporting at an unregistered site does not make a housing
    organisation its owner; the alert goes to the operator's queue and names the place by its
    key only."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    key = place_key(f"site:{site}", bus.settings.subject_key_secret.get_secret_value().encode())
    start = datetime.now(UTC) - timedelta(hours=6)
    incident = {"kind": "noise", "severity": "low", "housing_unit_id": f"{site}-1"}
    sent = [
        await bus.publish(
            "housing",
            "housing_incident",
            random_nin(bus.rng),
            {**incident, "housing_site_id": site},
            occurred_at=start,
        )
    ]
    for hour in (1, 2):
        sent.append(
            await bus.publish(
                "police",
                "police_callout",
                random_nin(bus.rng),
                {**callout(), "housing_site_id": site},
                occurred_at=start + timedelta(hours=hour),
            )
        )
    await place_alerts(bus.conn, key, 1)
    await asyncio.sleep(2)  # a reporter's alert, were it raised, would be stored by now
    alerts = await place_alerts(bus.conn, key, 1)
    assert [a["recipient_org"] for a in alerts] == [None]
    assert sorted(alerts[0]["event_ids"]) == sorted(sent)
    assert site not in alerts[0]["summary"]
    assert key[:12] in alerts[0]["summary"]


async def test_three_callouts_of_three_persons_alert_owner_and_municipality_once(
    bus: Bus,
) -> None:
    """Three persons, three callouts at one registered site within a day: one alert to the
    housing organisation and one to the municipality, naming no one; a fourth callout in the
    same episode raises nothing more."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    recorded = await record_place(bus, "operator", site, ORGS["housing"])
    assert recorded.status_code == 201, recorded.text
    key = recorded.json()["place_key"]
    start = datetime.now(UTC) - timedelta(hours=6)
    sent = [
        await bus.publish(
            "police",
            "police_callout",
            random_nin(bus.rng),
            {**callout(), "housing_site_id": site},
            occurred_at=start + timedelta(hours=hour),
        )
        for hour in (0, 2, 4)
    ]
    alerts = await place_alerts(bus.conn, key, 2)
    assert [a["recipient_org"] for a in alerts] == sorted([ORGS["housing"], ORGS["municipality"]])
    for alert in alerts:
        assert alert["nin"] is None
        assert sorted(alert["event_ids"]) == sorted(sent)
        assert site not in alert["summary"]  # a site id may be an address: the key names it
        assert f"(place {key[:12]})" in alert["summary"]
        assert "police callouts 3" in alert["summary"]
    fourth = await bus.publish(
        "police",
        "police_callout",
        random_nin(bus.rng),
        {**callout(), "housing_site_id": site},
        occurred_at=start + timedelta(hours=5),
    )
    await bus.tracked(fourth)
    await asyncio.sleep(2)
    assert len(await place_alerts(bus.conn, key, 2)) == 2
    response = await bus.inbox.get(
        "/v1/alerts", params={"status": "open"}, headers=bus.auth("municipality_coordinator")
    )
    assert response.status_code == 200, response.text
    shown = [item for item in response.json()["items"] if item["rule_id"] == RULE]
    mine = [item for item in shown if set(sent) <= set(item["event_ids"])]
    assert len(mine) == 1
    assert mine[0].get("subject") is None  # the inbox leaves out a subject it has none of
    assert "person_url" not in mine[0]
    assert mine[0]["contact"] == {"agency": "housing", "org_id": ORGS["housing"]}
    state = await bus.conn.fetchval("SELECT state FROM sla_places WHERE place_key = $1", key)
    assert state is not None
    assert site not in state


async def test_a_retracted_callout_leaves_its_places_count(bus: Bus) -> None:
    """The police retract a callout sent in error: the place's stored count no longer holds it
    (the database finds the place by the event's id), and two more callouts make no pattern."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    key = place_key(f"site:{site}", bus.settings.subject_key_secret.get_secret_value().encode())
    nin = random_nin(bus.rng)
    wrong = await bus.publish(
        "police", "police_callout", nin, {**callout(), "housing_site_id": site}
    )
    await bus.tracked(wrong)
    retraction = await bus.publish(
        "police", "retraction", nin, {"retracted_event_id": wrong, "reason": "sent_in_error"}
    )
    assert retraction
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        state = await bus.conn.fetchval("SELECT state FROM sla_places WHERE place_key = $1", key)
        if state is not None and wrong not in state:
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError("the retracted callout is still counted at its place")
    for _ in range(2):
        more = await bus.publish(
            "police", "police_callout", random_nin(bus.rng), {**callout(), "housing_site_id": site}
        )
    await bus.tracked(more)
    await asyncio.sleep(1)
    assert (
        await bus.conn.fetchval(
            "SELECT count(*) FROM alerts WHERE subject_key = $1", f"place:{key}"
        )
        == 0
    )
