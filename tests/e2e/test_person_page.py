"""The person view's page in headless Chromium (issue 17, item 7): from an alert's row to the
person's care team, open obligations with their deadlines and events newest first, built
without breaking the page's CSP and without the nin in any URL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import orjson
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from carebus.adapters import person_keys
from carebus.domain.events import rfc3339
from carebus.domain.identity import subject_key
from carebus.domain.obligations import SlaState
from carebus.domain.routing import Member, PersonState
from carebus.wire.policy_files import load_rules
from carebus.wire.sealing import KeyWrap, seal
from carebus_dev.stack.devdata import DEMO_MUNICIPALITY
from carebus_dev.testing import ServiceProcess, TestStack
from tests.e2e.test_inbox_page import (
    FACTORY,
    OSLO,
    Caller,
    InboxPage,
    alert,
    coordinator,
    produce,
    stored,
    until,
)

pytestmark = pytest.mark.integration

__all__ = ["coordinator"]  # the fixture, imported for this module's tests

DPS = "974705788"
RULE = load_rules("policy/sla.yaml").rule("followup.discharge_48h")


@dataclass(frozen=True)
class Person:
    nin: str
    key: str
    admitted: str
    discharged: str
    deadline: datetime


def delivery(nin: str, event_id: str, event_type: str, at: datetime, payload: Any) -> Any:
    return {
        "delivery_id": f"del-{uuid.uuid4().hex}",
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": rfc3339(at),
        "subject": {"nin": nin},
        "basis": "presumed",
        "categories": ["logistics", "health"],
        "payload": payload,
    }


@pytest.fixture
async def person(stack: TestStack, db: asyncpg.Connection) -> Person:
    """A person the demo municipality coordinates, admitted after an overdose and discharged an
    hour ago by the DPS, as the SLA engine, the router and the audit store leave it."""
    nin = FACTORY.nin()
    key = subject_key(nin, stack.settings.subject_key_secret.get_secret_value())
    now = datetime.now(UTC).replace(microsecond=0)
    admitted, discharged = f"dps-e2e-{uuid.uuid4().hex[:12]}", f"dps-e2e-{uuid.uuid4().hex[:12]}"
    plan = f"dps-e2e-{uuid.uuid4().hex[:12]}"
    deliveries = [
        delivery(
            nin,
            plan,
            "ip_update",
            now - timedelta(hours=6),
            {
                "plan_id": "IP-E2E",
                "status": "active",
                "crisis_plan": True,
                "crisis_plan_id": "KP-E2E",
                "crisis_plan_owner": {"agency": "dps", "org_id": DPS},
            },
        ),
        delivery(
            nin,
            admitted,
            "admission",
            now - timedelta(hours=5),
            {"reason": "overdose", "needs_municipal_services": True},
        ),
        delivery(
            nin,
            discharged,
            "discharge",
            now - timedelta(hours=1),
            {"admission_event_id": admitted, "destination": "home"},
        ),
    ]
    routing = PersonState(
        team={
            DEMO_MUNICIPALITY: Member("municipality", {"registry:e2e": "coordinator"}),
            DPS: Member("dps", {"registry:e2e": "participant"}),
        },
        home_municipality=DEMO_MUNICIPALITY,
    )
    deadline = now + timedelta(hours=47)
    assert RULE is not None
    state = SlaState(
        obligations={
            f"{RULE.rule_id}:e2e": {
                "rule_id": RULE.rule_id,
                "identity": "",
                "trigger": {
                    "event_id": discharged,
                    "event_type": "discharge",
                    "occurred_at": rfc3339(now - timedelta(hours=1)),
                    "source": {"agency": "dps", "org_id": DPS},
                    "subject_key": key,
                    "subject": {"nin": nin},
                    "payload": {"admission_event_id": admitted},
                },
                "deadline": rfc3339(deadline),
                "status": "open",
                "breached_at": None,
                "alerts": [],
            }
        },
        # The municipality's own Brukerplan assessment, as the engine keeps it.
        person={
            "brukerplan": [
                {
                    "event_id": f"muni-e2e-{uuid.uuid4().hex[:12]}",
                    "source_org": DEMO_MUNICIPALITY,
                    "occurred_at": rfc3339(now - timedelta(days=30)),
                    "scores": {"housing": "red", "network": "green"},
                }
            ]
        },
    )
    await db.execute(
        "INSERT INTO sla_persons (subject_key, state, routing) VALUES ($1, $2::json, $3::json)",
        key,
        orjson.dumps(state.to_json()).decode(),
        orjson.dumps(routing.to_json()).decode(),
    )
    for body in deliveries:
        await db.execute(
            "INSERT INTO deliveries (delivery_id, recipient_org, recipient_agency, event_id,"
            " event_type, subject_key, occurred_at, body) VALUES ($1, $2, 'municipality', $3,"
            " $4, $5, $6, $7::jsonb)",
            body["delivery_id"],
            DEMO_MUNICIPALITY,
            body["event_id"],
            body["event_type"],
            key,
            datetime.fromisoformat(body["occurred_at"]),
            orjson.dumps(body).decode(),
        )
        await db.execute(
            "INSERT INTO disclosures (audit_id, event_id, event_type, source_org, subject_key,"
            " recipient_agency, recipient_org, decision, basis, categories, fields,"
            " policy_version, decided_at, delivery_id) VALUES ($1, $2, $3, $4, $5,"
            " 'municipality', $6, 'delivered', 'presumed', $7, $8, 'e2e', now(), $9)",
            str(uuid.uuid4()),
            body["event_id"],
            body["event_type"],
            DPS,
            key,
            DEMO_MUNICIPALITY,
            body["categories"],
            list(body["payload"]),  # the fields delivered: what the titles are cut by
            body["delivery_id"],
        )
    # The municipality named its coordinator and deputy, the DPS its pathway coordinator: the
    # registry's rows, names sealed under the person's key (services.registry.history).
    data_key = (await person_keys.current(db, KeyWrap.from_settings(stack.settings), [key]))[key]
    for org_id, role, position, name, hpr in CONTACTS:
        await db.execute(
            "INSERT INTO organisations (org_id, agency) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            org_id,
            "dps" if org_id == DPS else "municipality",
        )
        await db.execute(
            "INSERT INTO care_team_contacts (contact_id, subject_key, org_id, role, position,"
            " name, hpr_number, status, recorded_by_org) VALUES ($1, $2, $3, $4, $5, $6, $7,"
            " 'active', $3)",
            uuid.uuid4(),
            key,
            org_id,
            role,
            position,
            seal(data_key, "contact.name", name),
            hpr,
        )
    return Person(nin, key, admitted, discharged, deadline)


CONTACTS = (
    (DEMO_MUNICIPALITY, "coordinator", "accountable", "Kari Koordinator", None),
    (DEMO_MUNICIPALITY, "coordinator", "deputy", "Per Vara", None),
    (DPS, "pathway_coordinator", "accountable", "Lege Forløp", "1234567"),
)


def cells(browser: WebDriver, table: str) -> list[dict[str, str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, f"table#{table} tbody tr")
    return [
        {
            str(td.get_attribute("data-field")): td.text.strip()
            for td in row.find_elements(By.CSS_SELECTOR, "td")
        }
        for row in rows
    ]


def test_an_alert_leads_to_the_persons_view(
    stack: TestStack,
    inbox: ServiceProcess,
    browser: WebDriver,
    coordinator: Caller,
    person: Person,
) -> None:
    """The coordinator sees whom the alert is for (its accountable person and deputy), follows
    the person link of the alert's row and sees the care team with its coordinator and each
    member's named staff, the open follow-up with its deadline and the events newest first."""
    record = alert(stack, coordinator.org_id, title=f"Follow-up overdue {uuid.uuid4().hex[:8]}")
    record["subject"] = {"nin": person.nin}
    record["subject_key"] = person.key
    record["recipient_role"] = "municipal_coordinator"
    produce(stack, [record])
    # Stored before the page opens, so its first load lists it (as the operator-action test
    # in test_inbox_page.py: a slow store on a busy box is not the page's fault).
    until(partial(stored, stack, record["alert_id"]), "the alert is stored", 90.0)

    page = InboxPage(browser, inbox)
    page.open()
    page.sign_in(coordinator.person)
    row = page.wait(lambda: page.row(record["alert_id"]), "the alert's row appears")
    responsible = row.find_element(By.CSS_SELECTOR, '[data-field="responsible"]').text.strip()
    assert responsible == "accountable: Kari Koordinator; deputy: Per Vara"
    link = row.find_element(By.CSS_SELECTOR, '[data-field="subject"] a.person-link')
    assert link.text.strip() == person.nin
    link.click()

    page.wait(lambda: page.element("main#person").is_displayed(), "the person view is shown")
    assert browser.current_url == f"{inbox.url}/persons/{person.key}"
    assert person.nin not in browser.current_url
    assert page.text("#nin") == person.nin
    assert page.text("#relations") == "care team, home municipality"
    assert cells(browser, "care-team") == [
        {
            "agency": "municipality",
            "org_id": DEMO_MUNICIPALITY,
            "role": "coordinator",
            "contacts": "accountable: Kari Koordinator (coordinator); deputy: Per Vara"
            " (coordinator)",
        },
        {
            "agency": "dps",
            "org_id": DPS,
            "role": "participant",
            "contacts": "accountable: Lege Forløp (pathway coordinator, HPR 1234567)",
        },
    ]
    [owed] = cells(browser, "obligations")
    assert RULE is not None
    assert (owed["title"], owed["rule_id"], owed["status"]) == (RULE.title, RULE.rule_id, "open")
    assert person.deadline.astimezone(OSLO).strftime("%H:%M") in owed["deadline"], owed
    events = cells(browser, "events")
    assert [(e["event_id"], e["direction"]) for e in events][:2] == [
        (person.discharged, "received"),
        (person.admitted, "received"),
    ]
    assert len(events) == 3  # and the plan, oldest
    # The plan with its crisis plan as a shared reference, and the Brukerplan scores.
    plan = page.element("#plan").text
    assert "IP-E2E" in plan
    assert "KP-E2E" in plan
    assert f"dps {DPS}" in plan
    scores = page.element("#brukerplan").text
    assert "housing" in scores
    assert "red" in scores
    assert "reason: overdose" in events[1]["payload"]
    assert not page.element("#error").is_displayed(), page.diagnostics()
    assert page.csp_violations() == [], "the page broke its own CSP"


def test_the_page_shows_the_same_refusal_for_a_person_the_caller_does_not_know(
    inbox: ServiceProcess, browser: WebDriver, coordinator: Caller
) -> None:
    """An unknown key: the API's 404 message, nothing else."""
    page = InboxPage(browser, inbox)
    page.open()
    page.sign_in(coordinator.person)
    browser.get(f"{inbox.url}/persons/{'ab' * 32}")
    page.wait(lambda: page.element("#error").is_displayed(), "the refusal is shown")
    assert page.text("#error") == "404 no such person"
    assert not page.element("main#person").is_displayed()
    assert page.csp_violations() == [], "the page broke its own CSP"
