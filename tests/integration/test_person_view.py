"""The inbox's person view end to end (issue 17, item 7): events through the gateway, the router,
the SLA engine and the stores, read back at `GET /v1/persons/{subject_key}/timeline` by the
real inbox under its own database role."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token, ensure_organisation, hash_token
from carebus.domain.events import EXAMPLE_PAYLOADS, rfc3339
from carebus.domain.identity import random_nin, subject_key
from carebus.wire.policy_files import load_rules
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.testing import TestStack, at_least
from tests.integration import test_routing
from tests.integration.test_routing import ORGS, OTHER_MUNICIPALITY, Bus, admission, discharge

pytestmark = pytest.mark.integration

# The routing tests' `bus` fixture (tokens, HTTP clients, a router caught up), here run on this
# module's `services`.
bus = test_routing.bus
RULES = load_rules("policy/sla.yaml")


@pytest.fixture(scope="module")
def services(stack: TestStack) -> Iterator[None]:
    with stack.running(
        "gateway",
        "registry",
        "audit_store",
        "audit",
        "router",
        "sla",
        "alert_store",
        "event_store",
        "inbox",
    ):
        yield


@pytest.fixture
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def inbox(stack: TestStack, services: None) -> AsyncIterator[httpx.AsyncClient]:
    settings = stack.settings
    async with httpx.AsyncClient(
        base_url=settings.service_url(settings.inbox_port), timeout=30
    ) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def path(key: str) -> str:
    return f"/v1/persons/{key}/timeline"


class Person:
    """A person admitted after an overdose and discharged an hour ago: the demo municipality is
    home municipality and coordinator, NAV a participant without consent."""

    def __init__(self, nin: str, key: str, admitted: str, discharged: str) -> None:
        self.nin = nin
        self.key = key
        self.admitted = admitted
        self.discharged = discharged


@pytest.fixture(scope="module")
async def person(stack: TestStack, bus: Bus) -> Person:
    nin = random_nin(bus.rng)
    await bus.member(nin, "municipality", "coordinator")
    await bus.member(nin, "nav", "participant")
    now = datetime.now(UTC)
    admitted = await bus.publish(
        "dps", "admission", nin, admission(), occurred_at=rfc3339(now - timedelta(hours=3))
    )
    discharged = await bus.publish(
        "dps",
        "discharge",
        nin,
        # With the follow-up time agreed, the DPS owes nothing at the end of the day: without
        # it, `followup.time_in_hand` alerted the DPS from 23:00 UTC (Oslo's midnight), and that
        # alert, naming the person, gave the DPS the view the tests below expect it to lack.
        {**discharge(admitted), "followup_at": rfc3339(now + timedelta(hours=36))},
        occurred_at=rfc3339(now - timedelta(hours=1)),
    )
    key = subject_key(nin, stack.settings.subject_key_secret.get_secret_value())
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:

        async def delivered() -> list[dict[str, Any]]:
            rows = await conn.fetch(
                "SELECT event_id FROM deliveries WHERE subject_key = $1 AND recipient_org = $2",
                key,
                ORGS["municipality"],
            )
            return [dict(row) for row in rows]

        async def tracked() -> list[dict[str, Any]]:
            rows = await conn.fetch(
                "SELECT 1 FROM sla_persons WHERE subject_key = $1 AND state::text LIKE $2",
                key,
                f"%{discharged}%",
            )
            return [dict(row) for row in rows]

        await at_least(delivered, 2, timeout_s=60)
        await at_least(tracked, 1, timeout_s=60)
    finally:
        await conn.close()
    return Person(nin, key, admitted, discharged)


async def token(db: asyncpg.Connection, agency: str, org_id: str, role: str) -> str:
    return await create_token(db, agency=agency, org_id=org_id, role=role)


async def lookups(db: asyncpg.Connection, key: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM disclosure_lookups WHERE subject_key = $1 AND what = 'person_timeline'"
        " ORDER BY looked_at",
        key,
    )


async def test_the_home_municipalitys_coordinator_sees_the_person(
    inbox: httpx.AsyncClient, db: asyncpg.Connection, person: Person
) -> None:
    """The nin, both relations, the whole care team, the follow-up owed after the overdose under
    its specific title, and the deliveries as delivered, newest first."""
    coordinator = await token(db, "municipality", ORGS["municipality"], "coordinator")
    response = await inbox.get(path(person.key), headers=auth(coordinator))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "subject",
        "relations",
        "care_team",
        "plan",
        "obligations",
        "brukerplan",
        "events",
    }
    assert body["subject"] == {"nin": person.nin}
    assert body["relations"] == ["care_team", "home_municipality"]
    assert body["care_team"][0] == {
        "agency": "municipality",
        "org_id": ORGS["municipality"],
        "role": "coordinator",
        "contacts": [],  # no one named (tests/e2e/test_person_page.py names them)
    }
    assert {m["org_id"] for m in body["care_team"]} == {ORGS["municipality"], ORGS["nav"]}
    followup = RULES.rule("followup.discharge_48h")
    assert followup is not None
    owed = {o["rule_id"]: o for o in body["obligations"]}
    assert owed["followup.discharge_48h"]["title"] == followup.title
    assert owed["followup.discharge_48h"]["status"] == "open"
    assert owed["followup.discharge_48h"]["deadline"] is not None
    items = body["events"]["items"]
    assert [(i["event_id"], i["direction"]) for i in items] == [
        (person.discharged, "received"),
        (person.admitted, "received"),
    ]
    assert items[1]["payload"]["reason"] == "overdose"  # exactly as delivered
    assert "subject" not in items[0]
    assert body["events"]["next"] is None


async def test_the_events_page_newest_first_with_an_opaque_cursor(
    inbox: httpx.AsyncClient, db: asyncpg.Connection, person: Person
) -> None:
    """`limit` 1: the discharge, then the admission, then nothing; a cursor the inbox did not
    issue, and a limit outside 1..200, are 422."""
    coordinator = await token(db, "municipality", ORGS["municipality"], "coordinator")
    first = await inbox.get(path(person.key), params={"limit": "1"}, headers=auth(coordinator))
    assert first.status_code == 200, first.text
    page = first.json()["events"]
    assert [i["event_id"] for i in page["items"]] == [person.discharged]
    assert page["next"]
    second = await inbox.get(
        path(person.key), params={"limit": "1", "before": page["next"]}, headers=auth(coordinator)
    )
    assert second.status_code == 200, second.text
    page = second.json()["events"]
    assert [i["event_id"] for i in page["items"]] == [person.admitted]
    assert page["next"] is None
    for limit in ("0", "201"):
        refused = await inbox.get(
            path(person.key), params={"limit": limit}, headers=auth(coordinator)
        )
        assert refused.status_code == 422
    bad = await inbox.get(path(person.key), params={"before": "nope"}, headers=auth(coordinator))
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "before"


async def test_unrelated_unknown_and_malformed_keys_get_one_and_the_same_404(
    inbox: httpx.AsyncClient, db: asyncpg.Connection, person: Person
) -> None:
    """Another municipality's coordinator, a key carebus does not know and strings that are not
    keys: the same status, body and headers; no lookup is recorded."""
    other = await token(db, "municipality", OTHER_MUNICIPALITY, "coordinator")
    before = len(await lookups(db, person.key))
    answers = []
    for key in (person.key, uuid.uuid4().hex * 2, "not-a-key", person.key.upper(), person.nin):
        response = await inbox.get(path(key), headers=auth(other))
        answers.append((response.status_code, response.content, response.headers["content-type"]))
    assert answers[0][0] == 404
    assert json.loads(answers[0][1]) == {
        "error": {
            "code": "not_found",
            "message": "no such person",
            "details": [{"field": "subject_key", "problem": "unknown"}],
        }
    }
    assert all(answer == answers[0] for answer in answers)
    assert person.nin.encode() not in answers[0][1]
    assert len(await lookups(db, person.key)) == before


async def test_a_refused_look_at_a_known_person_is_kept_in_the_persons_log(
    inbox: httpx.AsyncClient, db: asyncpg.Connection, person: Person, bus: Bus
) -> None:
    """policy/authority.yaml `person_view.relation`: an organisation with no relation to a known
    person is answered 404 and its attempt is a refusal in the person's log (who, which role,
    which rule), one row an hour however often it tries, which the patient reads in plain
    words; a key no person has leaves no row."""
    stranger = f"8{uuid.uuid4().int % 10**8:08d}"
    await ensure_organisation(db, agency="municipality", org_id=stranger)
    other = await token(db, "municipality", stranger, "coordinator")
    patient = await create_token(
        db, agency="operator", org_id=OPERATOR_ORG, role="patient", subject_key=person.key
    )

    async def refusals() -> list[dict[str, Any]]:
        return [
            dict(row)
            for row in await db.fetch(
                "SELECT * FROM authority_refusals WHERE actor_org = $1 ORDER BY decided_at",
                stranger,
            )
        ]

    for _ in range(3):
        assert (await inbox.get(path(person.key), headers=auth(other))).status_code == 404
    for key in (uuid.uuid4().hex * 2, "not-a-key", person.nin):
        assert (await inbox.get(path(key), headers=auth(other))).status_code == 404
    kept = await at_least(refusals, 1, timeout_s=30)
    # One row per organisation, role, person and hour (two if the looks straddled an hour).
    assert 1 <= len(kept) <= 2, kept
    assert {row["subject_key"] for row in kept} == {person.key}, "no row for the other keys"
    row = kept[-1]
    assert (row["statement"], row["actor_agency"], row["actor_role"], row["rule_id"]) == (
        "person_view",
        "municipality",
        "coordinator",
        "person_view.relation",
    )
    assert row["field"] == "subject_key"

    log = await bus.audit.get("/v1/me/disclosures", headers=auth(patient))
    assert log.status_code == 200, log.text
    tried = [
        r
        for r in log.json()["items"]
        if r.get("statement") == "person_view" and r["actor"]["org_id"] == stranger
    ]
    assert len(tried) == len(kept), log.text
    assert "tried to open your page in the coordinators' inbox" in tried[-1]["text"]
    assert tried[-1]["rule_id"] == "person_view.relation"


async def test_a_system_token_and_the_operator_are_refused(
    inbox: httpx.AsyncClient, db: asyncpg.Connection, person: Person
) -> None:
    """The view is for coordinators and privacy officers: a system's token is 403, as is the
    operator (its data protection officer has no relation to anyone: 404)."""
    system = await token(db, "municipality", ORGS["municipality"], "system")
    response = await inbox.get(path(person.key), headers=auth(system))
    assert response.status_code == 403, response.text
    operator = await token(db, "operator", OPERATOR_ORG, "operator")
    assert (await inbox.get(path(person.key), headers=auth(operator))).status_code == 403
    dpo = await token(db, "operator", OPERATOR_ORG, "privacy_officer")
    assert (await inbox.get(path(person.key), headers=auth(dpo))).status_code == 404
    # The data protection officer reads the person's log through the audit API: a look here is
    # not an attempt the person should read about.
    assert not await db.fetchval(
        "SELECT count(*) FROM authority_refusals WHERE actor_org = $1 AND statement = $2",
        OPERATOR_ORG,
        "person_view",
    )
    assert (await inbox.get(path(person.key))).status_code == 401


async def test_a_nav_coordinator_in_the_team_sees_only_itself_and_nothing_it_was_not_told(
    inbox: httpx.AsyncClient, db: asyncpg.Connection, person: Person
) -> None:
    """NAV is a participant without consent: its own entry of the care team, no obligation
    (it was delivered neither event), no events, and no nin (it holds nothing naming them)."""
    nav = await token(db, "nav", ORGS["nav"], "coordinator")
    response = await inbox.get(path(person.key), headers=auth(nav))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["relations"] == ["care_team"]
    assert body["care_team"] == [
        {"agency": "nav", "org_id": ORGS["nav"], "role": "participant", "contacts": []}
    ]
    assert body["obligations"] == []
    assert body["events"] == {"items": [], "next": None}
    assert body["subject"] is None
    assert person.nin not in response.text


async def test_every_answer_is_recorded_in_the_disclosure_log_and_the_patient_reads_it(
    inbox: httpx.AsyncClient, db: asyncpg.Connection, person: Person, bus: Bus
) -> None:
    """Who (organisation, role, token), whose (the subject key), when and what
    (`person_timeline`), and the person's own log says so in plain words."""
    officer = await token(db, "municipality", ORGS["municipality"], "privacy_officer")
    token_id = await db.fetchval(
        "SELECT token_id FROM api_tokens WHERE token_hash = $1", hash_token(officer)
    )
    before = len(await lookups(db, person.key))
    response = await inbox.get(path(person.key), headers=auth(officer))
    assert response.status_code == 200, response.text
    recorded = await lookups(db, person.key)
    assert len(recorded) == before + 1
    row = recorded[-1]
    assert (row["org_id"], row["role"], row["token_id"], row["items"]) == (
        ORGS["municipality"],
        "privacy_officer",
        token_id,
        len(response.json()["events"]["items"]),
    )
    assert row["looked_by_subject"] is None
    assert row["purpose"] is None

    patient = await create_token(
        db, agency="operator", org_id=OPERATOR_ORG, role="patient", subject_key=person.key
    )
    log = await bus.audit.get("/v1/me/disclosures", headers=auth(patient))
    assert log.status_code == 200, log.text
    looked = [r for r in log.json()["items"] if r.get("what") == "person_timeline"]
    assert looked
    assert looked[-1]["text"].startswith("A privacy officer of ")
    assert "looked at your page in the coordinators' inbox" in looked[-1]["text"]


async def test_the_page_is_served_with_the_inboxs_strict_headers(
    inbox: httpx.AsyncClient, person: Person
) -> None:
    """The same page for any key (it holds no data); CSP, nosniff, no-store, no referrer."""
    for key in (person.key, "whatever"):
        page = await inbox.get(f"/persons/{key}")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "/static/person.js" in page.text
    script = await inbox.get("/static/person.js")
    assert script.status_code == 200
    assert "innerHTML" not in script.text


async def dps_alert(db: asyncpg.Connection, person: Person, nin: str | None) -> str:
    """An open alert to the DPS's coordinators about the person, as the alert store keeps it
    (`nin` None: one that does not name the person)."""
    alert_id = f"alert-person-view-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    await db.execute(
        "INSERT INTO alerts (alert_id, rule_id, title, kind, status, subject_key, nin,"
        " recipient_agency, recipient_org, audience, breached_at, escalate_at, summary,"
        " event_ids, rules_version, recipient_role) VALUES ($1, 'epikrise.after_discharge',"
        " 'Epikrise', 'deadline_missed', 'open', $2, $3, 'dps', $4, 'coordinator',"
        " $5, $6, 'No epikrise.', ARRAY[$7], 'test', 'source')",
        alert_id,
        person.key,
        nin,
        ORGS["dps"],
        now,
        now + timedelta(days=1),
        person.discharged,
    )
    return alert_id


async def test_an_unresolved_alert_keeps_the_way_to_the_person_open(
    inbox: httpx.AsyncClient, db: asyncpg.Connection, person: Person
) -> None:
    """The discharge ended the DPS's relation, but an alert that names the person to its
    coordinators (the epikrise it owes) still leads to the person: relation `alert`, its own
    events. Not for an alert that names no one, not for the DPS's privacy officer, and no more
    once the alert is resolved."""
    dps = await token(db, "dps", ORGS["dps"], "coordinator")
    officer = await token(db, "dps", ORGS["dps"], "privacy_officer")
    assert (await inbox.get(path(person.key), headers=auth(dps))).status_code == 404
    neutral = await dps_alert(db, person, None)
    assert (await inbox.get(path(person.key), headers=auth(dps))).status_code == 404
    named = await dps_alert(db, person, person.nin)
    response = await inbox.get(path(person.key), headers=auth(dps))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["relations"] == ["alert"]
    assert body["subject"] == {"nin": person.nin}
    assert [(i["event_id"], i["direction"]) for i in body["events"]["items"]] == [
        (person.discharged, "sent"),
        (person.admitted, "sent"),
    ]
    assert (await inbox.get(path(person.key), headers=auth(officer))).status_code == 404
    await db.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = now() WHERE alert_id = ANY($1)",
        [neutral, named],
    )
    assert (await inbox.get(path(person.key), headers=auth(dps))).status_code == 404


async def test_a_dps_with_an_open_admission_sees_the_events_it_sent(
    inbox: httpx.AsyncClient, db: asyncpg.Connection, person: Person, bus: Bus, stack: TestStack
) -> None:
    """Once discharged, the DPS has no relation left (404); a new admission makes it the
    admitting DPS, and its own events read as sent, newest first, payload as it sent them.
    (Last in the module: it changes the person.)"""
    dps = await token(db, "dps", ORGS["dps"], "coordinator")
    assert (await inbox.get(path(person.key), headers=auth(dps))).status_code == 404
    again = await bus.publish(
        "dps",
        "admission",
        person.nin,
        admission(reason="psychosis"),
        occurred_at=rfc3339(datetime.now(UTC)),
    )

    async def admitting() -> list[dict[str, Any]]:
        # Related once the SLA engine has the admission; listed once the event store has it.
        response = await inbox.get(path(person.key), headers=auth(dps))
        if response.status_code != 200 or len(response.json()["events"]["items"]) < 3:
            return []
        return [response.json()]

    [body] = await at_least(admitting, 1, timeout_s=60)
    assert body["relations"] == ["admitting"]
    assert [(i["event_id"], i["direction"]) for i in body["events"]["items"]] == [
        (again, "sent"),
        (person.discharged, "sent"),
        (person.admitted, "sent"),
    ]
    assert body["events"]["items"][0]["payload"]["reason"] == "psychosis"
    assert body["subject"] == {"nin": person.nin}


async def test_the_plan_and_brukerplan_as_far_as_the_caller_was_given_them(
    stack: TestStack, bus: Bus, inbox: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """The municipality's individual plan with its crisis plan as a shared reference (id, owner,
    last reviewed) and its Brukerplan scores (issue 17, items 4 and 8) show to its coordinator;
    NAV in the team without consent is told of neither and sees neither."""
    nin = random_nin(bus.rng)
    await bus.member(nin, "municipality", "coordinator")
    await bus.member(nin, "nav", "participant")
    now = datetime.now(UTC)
    payload = dict(EXAMPLE_PAYLOADS["ip_update"])
    payload["coordinator"] = {"agency": "municipality", "org_id": ORGS["municipality"]}
    payload["participants"] = [{"agency": "nav", "org_id": ORGS["nav"]}]
    payload["crisis_plan_owner"] = {"agency": "municipality", "org_id": ORGS["municipality"]}
    plan = await bus.publish(
        "municipality", "ip_update", nin, payload, occurred_at=rfc3339(now - timedelta(hours=2))
    )
    assessment = await bus.publish(
        "municipality",
        "brukerplan_assessment",
        nin,
        dict(EXAMPLE_PAYLOADS["brukerplan_assessment"]),
        occurred_at=rfc3339(now - timedelta(hours=1)),
    )
    key = subject_key(nin, stack.settings.subject_key_secret.get_secret_value())

    async def kept() -> list[dict[str, Any]]:
        rows = await db.fetch(
            "SELECT 1 FROM sla_persons WHERE subject_key = $1 AND state::text LIKE $2",
            key,
            f"%{assessment}%",
        )
        stored = await db.fetch("SELECT 1 FROM events WHERE event_id = $1", plan)
        return [dict(row) for row in rows] if stored else []

    await at_least(kept, 1, timeout_s=60)
    coordinator = await token(db, "municipality", ORGS["municipality"], "coordinator")
    body = (await inbox.get(path(key), headers=auth(coordinator))).json()
    assert body["plan"]["plan_id"] == payload["plan_id"]
    assert body["plan"]["event_id"] == plan
    assert body["plan"]["crisis_plan"] == {
        "exists": True,
        "id": payload["crisis_plan_id"],
        "owner": payload["crisis_plan_owner"],
        "reviewed_at": body["plan"]["crisis_plan"]["reviewed_at"],
    }
    assert body["brukerplan"]["event_id"] == assessment
    assert body["brukerplan"]["scores"]["housing"] == "red"
    assert body["brukerplan"]["scores"]["substance_use"] == "red"
    nav = await token(db, "nav", ORGS["nav"], "coordinator")
    seen_by_nav = (await inbox.get(path(key), headers=auth(nav))).json()
    assert seen_by_nav["brukerplan"] is None
    assert seen_by_nav["plan"] is None or "crisis_plan" not in seen_by_nav["plan"]
