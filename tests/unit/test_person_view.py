"""The person view's cuts (services/inbox/person.py; issue 17, item 7): who is related, which
of the care team a caller sees, which owed obligations and under which title, the timeline's
items."""

from __future__ import annotations

from typing import Any

import pytest

from carebus.domain.obligations import SlaState
from carebus.domain.records import Obligation
from carebus.domain.routing import Member, PersonState
from carebus.wire.policy_files import load_rules
from carebus.wire.sealing import DataKey, Keyring, new_data_key, seal
from services.inbox.alerts import ContactPerson
from services.inbox.person import (
    brukerplan,
    care_team,
    first_sealed_nin,
    obligations,
    plan,
    received_item,
    relations,
    seen_events,
    sent_item,
    view,
    well_formed,
)
from services.inbox.person_store import _subject

RULES = load_rules("policy/sla.yaml")
HOME = "940493021"
DPS = "974705788"
NAV = "889640782"
GP = "976543210"
HOUSING = "964338531"
KEY = "ab" * 32

ROUTING = PersonState(
    team={
        HOME: Member("municipality", {"registry:x": "coordinator"}),
        DPS: Member("dps", {"registry:x": "participant"}),
        NAV: Member("nav", {"registry:x": "participant"}),
        GP: Member("fastlege", {"registry:x": "gp"}),
    },
    home_municipality=HOME,
)


OBLIGATION_ADMISSION = "dps-adm-1"  # the admission a trigger discharge names


def trigger(source: str = DPS, event_id: str = "dps-1", nin: str = "sealed") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "discharge",
        "occurred_at": "2026-11-23T08:15:00Z",
        "source": {"agency": "dps", "org_id": source},
        "subject_key": KEY,
        "subject": {"nin": nin},
        "payload": {"admission_event_id": OBLIGATION_ADMISSION},
    }


def obligation(
    rule_id: str, status: str = "open", deadline: str | None = "2026-11-30T08:15:00Z", **kw: Any
) -> Obligation:
    return {
        "rule_id": rule_id,
        "identity": "",
        "trigger": trigger(**kw),
        "deadline": deadline,
        "status": status,
        "breached_at": None,
        "alerts": [],
    }


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        (KEY, True),
        ("AB" * 32, False),  # upper case is not how carebus writes it
        ("ab" * 31, False),
        ("ab" * 32 + "\n", False),
        ("12345678901", False),  # a nin is never a key
        ("../" + "ab" * 30, False),
    ],
)
def test_only_64_lower_case_hex_digits_are_a_subject_key(key: str, ok: bool) -> None:
    """Anything else is answered 404 like an unknown person, without a look-up."""
    assert well_formed(key) is ok


def test_relations_are_routings_own() -> None:
    """The home municipality in the care team has both relations; a stranger none."""
    assert relations(ROUTING, HOME) == ["care_team", "home_municipality"]
    assert relations(ROUTING, "999999999") == []


def test_a_health_organisation_sees_the_whole_team_coordinator_first() -> None:
    """The municipality, the DPS and the GP see every member with its role."""
    for org in (HOME, DPS, GP):
        agency = {HOME: "municipality", DPS: "dps", GP: "fastlege"}[org]
        team = care_team(ROUTING, agency, org)
        assert team[0] == {
            "agency": "municipality",
            "org_id": HOME,
            "role": "coordinator",
            "contacts": [],
        }
        assert {m["org_id"] for m in team} == {HOME, DPS, NAV, GP}


@pytest.mark.parametrize("agency", ["nav", "police", "housing"])
def test_outside_health_care_a_caller_sees_only_its_own_entry(agency: str) -> None:
    """The team's list reveals specialist care: NAV, the police and housing see themselves."""
    assert care_team(ROUTING, agency, NAV) == (
        [{"agency": "nav", "org_id": NAV, "role": "participant", "contacts": []}]
    )
    assert care_team(ROUTING, agency, HOUSING) == []


CONTACTS = {
    HOME: [
        ContactPerson(HOME, "coordinator", "deputy", "Per Vara", None, None),
        ContactPerson(HOME, "coordinator", "accountable", "Kari Koordinator", None, "91234567"),
    ],
    DPS: [ContactPerson(DPS, "pathway_coordinator", "accountable", "Lege Forløp", "1234567", None)],
    NAV: [ContactPerson(NAV, "contact", "accountable", "Nina Nav", None, None)],
}


def test_each_care_team_entry_lists_its_contact_persons_accountable_first() -> None:
    """A health organisation sees every member's named staff: position, name, role, HPR."""
    team = {m["org_id"]: m["contacts"] for m in care_team(ROUTING, "dps", DPS, CONTACTS)}
    assert [(c["position"], c["name"]) for c in team[HOME]] == [
        ("accountable", "Kari Koordinator"),
        ("deputy", "Per Vara"),
    ]
    assert team[DPS] == [
        {
            "position": "accountable",
            "name": "Lege Forløp",
            "role": "pathway_coordinator",
            "hpr_number": "1234567",
            "phone": None,
        }
    ]
    assert team[GP] == []


def test_outside_health_care_a_caller_sees_only_its_own_contact_persons() -> None:
    """NAV sees its own entry and its own named staff, never the DPS's pathway coordinator."""
    team = care_team(ROUTING, "nav", NAV, CONTACTS)
    assert [(m["org_id"], [c["name"] for c in m["contacts"]]) for m in team] == [
        (NAV, ["Nina Nav"])
    ]
    assert "Lege" not in str(team)


def test_obligations_show_only_those_whose_trigger_the_caller_sent_or_received() -> None:
    """The DPS sent the discharge: it sees the specific title. The municipality was delivered
    the discharge and the admission's reason: specific too. NAV was delivered the discharge
    and the admission without its reason: the neutral title, whatever categories it got. The
    GP was told nothing of it: the obligation is not shown."""
    state = SlaState(obligations={"o1": obligation("followup.discharge_48h")})
    rule = RULES.rule("followup.discharge_48h")
    assert rule is not None
    admission = OBLIGATION_ADMISSION
    seen_home = {
        (DPS, "dps-1"): frozenset({"admission_event_id", "destination", "crisis_plan"}),
        (DPS, admission): frozenset({"reason", "ward"}),
    }
    seen_nav = {
        (DPS, "dps-1"): frozenset({"admission_event_id", "destination"}),
        (DPS, admission): frozenset({"housing_status"}),
    }
    seen_plan_only = {(DPS, "dps-1"): frozenset({"crisis_plan"})}

    assert [o["title"] for o in obligations(state, RULES, DPS, {})] == [rule.title]
    assert [o["title"] for o in obligations(state, RULES, HOME, seen_home)] == [rule.title]
    assert [o["title"] for o in obligations(state, RULES, NAV, seen_nav)] == [rule.neutral_title]
    assert [o["title"] for o in obligations(state, RULES, HOME, seen_plan_only)] == [
        rule.neutral_title
    ]
    assert obligations(state, RULES, GP, {}) == []
    # Another source's event of the same id is another event.
    assert obligations(state, RULES, GP, {("123456789", "dps-1"): frozenset({"reason"})}) == []


def test_only_owed_obligations_of_known_non_emergency_rules_earliest_deadline_first() -> None:
    """Open and breached are owed; closed, retracted and removed rules are not; an emergency
    disclosure is a review, not an obligation; one without a deadline yet comes last."""
    state = SlaState(
        obligations={
            "a": obligation("epikrise.after_discharge", deadline="2026-12-01T00:00:00Z"),
            "b": obligation("followup.discharge_7d", status="breached"),
            "c": obligation("followup.at_agreed_time", deadline=None),
            "d": obligation("followup.discharge_48h", status="closed"),
            "e": obligation("followup.discharge_48h", status="retracted"),
            "f": obligation("no.such_rule"),
            "g": obligation("emergency_disclosure", status="breached", deadline=None),
        }
    )
    shown = obligations(state, RULES, DPS, {})
    assert [(o["rule_id"], o["status"]) for o in shown] == [
        ("followup.discharge_7d", "breached"),
        ("epikrise.after_discharge", "open"),
        ("followup.at_agreed_time", "open"),
    ]
    assert set(shown[0]) == {"rule_id", "title", "deadline", "status"}


def test_seen_events_join_the_fields_of_every_delivery_of_an_event() -> None:
    rows = [
        {"source_org": DPS, "event_id": "dps-1", "fields": ["destination"]},
        {"source_org": DPS, "event_id": "dps-1", "fields": ["crisis_plan"]},
    ]
    assert seen_events(rows) == {(DPS, "dps-1"): frozenset({"destination", "crisis_plan"})}


def test_a_received_item_is_the_delivery_as_delivered_without_the_subject() -> None:
    """The payload is exactly the delivered one; the person is named once, at the top."""
    delivery = {
        "delivery_id": "d1",
        "event_id": "dps-1",
        "event_type": "discharge",
        "occurred_at": "2026-11-23T08:15:00Z",
        "subject": {"nin": "12345678901"},
        "basis": "statutory",
        "categories": ["logistics"],
        "payload": {"destination": "home"},
    }
    item = received_item(delivery)
    unnamed = {k: v for k, v in delivery.items() if k != "subject"}
    assert item == {"direction": "received", **unnamed}
    assert sent_item("m-1", "ip_update", "2026-11-23T08:15:00Z", {"status": "active"}) == {
        "direction": "sent",
        "event_id": "m-1",
        "event_type": "ip_update",
        "occurred_at": "2026-11-23T08:15:00Z",
        "payload": {"status": "active"},
    }


def test_the_subject_opens_or_reads_erased() -> None:
    """The nin opens under the person's key; once the key is erased the view says so."""
    key = DataKey(KEY, 1, new_data_key())
    sealed = seal(key, "subject.nin", "12345678901")
    assert _subject(sealed, KEY, Keyring.of([key])) == {"nin": "12345678901"}
    assert _subject(sealed, KEY, Keyring.of([DataKey(KEY, 1, None)])) == {
        "nin": None,
        "erased": True,
    }
    assert _subject(None, KEY, Keyring({})) is None


def test_a_nin_is_taken_only_from_a_trigger_the_caller_sent_or_was_delivered() -> None:
    """A care-team member routing told nothing (NAV without consent) learns no nin from the
    person's obligations; the source and a recipient of the trigger do."""
    state = SlaState(obligations={"o": obligation("followup.discharge_7d", nin="sealed-nin")})
    assert first_sealed_nin(state, DPS, {}) == "sealed-nin"
    assert first_sealed_nin(state, HOME, {(DPS, "dps-1"): frozenset({"logistics"})}) == (
        "sealed-nin"
    )
    assert first_sealed_nin(state, NAV, {}) is None


def test_the_view_has_exactly_the_documented_keys() -> None:
    shown = view(
        subject={"nin": "12345678901"},
        routing=ROUTING,
        state=SlaState(),
        rules=RULES,
        agency="nav",
        org_id=NAV,
        seen={},
        items=[],
        next_cursor=None,
    )
    assert shown == {
        "subject": {"nin": "12345678901"},
        "relations": ["care_team"],
        "care_team": [{"agency": "nav", "org_id": NAV, "role": "participant", "contacts": []}],
        "plan": None,
        "obligations": [],
        "brukerplan": None,
        "events": {"items": [], "next": None},
    }


def test_an_organisation_led_by_an_alert_reads_relation_alert() -> None:
    """No relation left, an unresolved alert naming the person: `relations` says `alert`."""
    shown = view(
        subject=None,
        routing=PersonState(home_municipality=HOME),
        state=SlaState(),
        rules=RULES,
        agency="dps",
        org_id="974705788",
        seen={},
        items=[],
        next_cursor=None,
        alerted=True,
    )
    assert shown["relations"] == ["alert"]


SCORES = {
    "housing": "red",
    "meaningful_activity": "yellow",
    "finances": "red",
    "physical_health": "yellow",
    "mental_health": "yellow",
    "substance_use": "red",
    "social_functioning": "yellow",
    "network": "green",
}


def assessed(event_id: str, at: str) -> dict[str, Any]:
    return {"event_id": event_id, "source_org": HOME, "occurred_at": at, "scores": dict(SCORES)}


def test_brukerplan_shows_the_latest_assessment_as_far_as_the_caller_was_given_it() -> None:
    """The municipality that made it sees every score; a DPS the domains delivered to it; an
    organisation never told of the assessment sees none (issue 17, item 8)."""
    state = SlaState()
    state.person["brukerplan"] = [
        assessed("bp-old", "2025-11-01T10:00:00Z"),
        {**assessed("bp-new", "2026-11-01T10:00:00Z"), "scores": {**SCORES, "housing": "green"}},
    ]
    own = brukerplan(state, HOME, {})
    assert own is not None
    assert own["event_id"] == "bp-new"
    assert own["assessed_at"] == "2026-11-01T10:00:00Z"
    assert own["scores"]["housing"] == "green"
    assert set(own["scores"]) == set(SCORES)
    told = {(HOME, "bp-new"): frozenset({"housing", "network", "assessment_year"})}
    dps = brukerplan(state, DPS, told)
    assert dps is not None
    assert dps["scores"] == {"housing": "green", "network": "green"}
    assert brukerplan(state, NAV, {}) is None
    assert brukerplan(state, DPS, {(HOME, "bp-old"): frozenset(SCORES)}) is None
    assert brukerplan(SlaState(), HOME, {}) is None


def test_the_plan_is_the_latest_ip_update_as_the_caller_holds_it() -> None:
    """Only the fields of the item the caller was delivered or sent; the crisis plan as a shared
    reference (id, owner, last reviewed) under `crisis_plan`."""
    item = received_item(
        {
            "delivery_id": "d-1",
            "event_id": "muni-ip-1",
            "event_type": "ip_update",
            "occurred_at": "2026-12-01T10:00:00Z",
            "payload": {
                "plan_id": "IP-1",
                "status": "active",
                "next_review_at": "2027-03-01T10:00:00Z",
                "crisis_plan": True,
                "crisis_plan_id": "KP-1",
                "crisis_plan_owner": {"agency": "dps", "org_id": DPS},
            },
        }
    )
    shown = plan(item)
    assert shown == {
        "plan_id": "IP-1",
        "status": "active",
        "next_review_at": "2027-03-01T10:00:00Z",
        "crisis_plan": {"exists": True, "id": "KP-1", "owner": {"agency": "dps", "org_id": DPS}},
        "event_id": "muni-ip-1",
        "occurred_at": "2026-12-01T10:00:00Z",
    }
    bare = plan({"event_id": "x", "occurred_at": "t", "payload": {"plan_id": "IP-1"}})
    assert bare is not None
    assert "crisis_plan" not in bare
    assert plan(None) is None
