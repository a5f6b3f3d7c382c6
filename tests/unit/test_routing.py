"""Tests for carebus.domain.routing: person state, candidates, bases, withheld reasons, records."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carebus.domain.deliveries import delivery_id, delivery_to_json, no_candidate_audit_id
from carebus.domain.events import (
    EVENT_TYPES,
    POLICY_EVENT_TYPES,
    event_to_record,
    parse_event,
)
from carebus.domain.policy import CATEGORIES, EVENT_CATEGORY, FIELD_CATEGORY, Policy
from carebus.domain.records import (
    CARE_TEAM_CHANGE,
    CONSENT_CHANGE,
    DELIVERY,
    DISCLOSURE,
    REGISTER_CHANGE,
    Delivery,
    Disclosure,
    event_schema_name,
)
from carebus.domain.routing import PersonState, Routing, apply, route
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.codec import Codec
from carebus.wire.policy_files import load_policy
from carebus.wire.topics import AGENCIES
from carebus_dev.stack.devdata import DEV_ORGANISATIONS
from carebus_dev.testing import TYPICAL_SOURCE, EventFactory

CODEC = Codec.default()
POLICY: Policy = load_policy(PROJECT_ROOT / "policy" / "routing.yaml")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SUBJECT_KEY = "5" * 64
FACTORY = EventFactory(seed=3)
NIN = FACTORY.nin()

# Care-team organisations, never the dev organisations the factory publishes from.
MEMBER = {
    "dps": "974705796",
    "municipality": "940493039",
    "fastlege": "912345683",
    "nav": "889640790",
    "police": "974760681",
    "housing": "987654333",
    "corrections": "971278382",
}
OTHER = {  # a second organisation of each agency
    "dps": "974705800",
    "municipality": "940493055",
    "fastlege": "912345691",
    "nav": "889640804",
    "police": "974760690",
    "housing": "987654341",
    "corrections": "971278390",
}
HOME = "940493047"  # the person's home municipality, outside the care team unless a test adds it
SOURCE = DEV_ORGANISATIONS

Change = tuple[str, dict[str, Any]]


# --- builders -------------------------------------------------------------------------------


def over_the_wire(schema_name: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` as the router would decode it from Kafka."""
    decoded = CODEC.decode(CODEC.encode(schema_name, record))
    assert decoded.schema_name == schema_name
    return decoded.record


def event(
    event_type: str,
    *,
    emergency: Mapping[str, Any] | None = None,
    source: tuple[str, str] | None = None,
    **payload: Any,
) -> dict[str, Any]:
    """A valid event record of `event_type` about NIN, decoded as the router sees it."""
    if event_type == "admission":
        payload.setdefault("home_municipality_org", HOME)
    agency, org_id = source or (TYPICAL_SOURCE[event_type], SOURCE[TYPICAL_SOURCE[event_type]])
    raw = FACTORY.event(
        event_type,
        nin=NIN,
        agency=agency,
        org_id=org_id,
        occurred_at=NOW - timedelta(hours=1),
        emergency=emergency,
        **payload,
    )
    parsed, problems = parse_event(raw)
    assert problems == []
    assert parsed is not None
    record = event_to_record(parsed, SUBJECT_KEY, NOW - timedelta(minutes=59))
    return over_the_wire(event_schema_name(event_type), record)


def consent(
    agency: str,
    org_id: str | None = None,
    *,
    status: str = "given",
    categories: Iterable[str] = CATEGORIES,
    valid_from: datetime = NOW - DAY,
    valid_to: datetime | None = None,
) -> Change:
    """A ConsentChange record as the registry writes it."""
    record = {
        "change_id": str(uuid.uuid4()),
        "subject_key": SUBJECT_KEY,
        "recipient": {"agency": agency, "org_id": org_id},
        "categories": list(categories),
        "status": status,
        "valid_from": valid_from,
        "valid_to": valid_to,
        "recorded_by": "test",
        "recorded_by_org": SOURCE["municipality"],
        "recorded_at": NOW - DAY,
    }
    return CONSENT_CHANGE, over_the_wire(CONSENT_CHANGE, record)


def member(
    agency: str,
    org_id: str | None = None,
    *,
    role: str = "participant",
    status: str = "member",
    recorded_by: str = SOURCE["municipality"],
) -> Change:
    """A CareTeamChange record as the registry writes it."""
    record = {
        "change_id": str(uuid.uuid4()),
        "subject_key": SUBJECT_KEY,
        "member": {"agency": agency, "org_id": org_id or MEMBER[agency]},
        "role": role,
        "status": status,
        "recorded_by_org": recorded_by,
        "recorded_at": NOW - DAY,
    }
    return CARE_TEAM_CHANGE, over_the_wire(CARE_TEAM_CHANGE, record)


def state_of(*changes: Change, state: PersonState | None = None) -> PersonState:
    for schema_name, record in changes:
        state = apply(state or PersonState(), schema_name, record)
    return state or PersonState()


def routed(record: dict[str, Any], state: PersonState, now: datetime = NOW) -> Routing:
    """Apply the event, then route it, as the router does; checks every record encodes."""
    state = apply(state, event_schema_name(record["event_type"]), record)
    routing = route(record, state, POLICY, now)
    for delivery in routing.deliveries:
        CODEC.encode(DELIVERY, delivery)
    for disclosure in routing.disclosures:
        CODEC.encode(DISCLOSURE, disclosure)
    delivered = {d["audit_id"] for d in routing.disclosures if d["decision"] == "delivered"}
    assert delivered == {d["delivery_id"] for d in routing.deliveries}
    return routing


def decision_for(routing: Routing, org_id: str) -> Disclosure:
    found = [
        d for d in routing.disclosures if d["recipient"] and d["recipient"]["org_id"] == org_id
    ]
    assert len(found) == 1, f"{len(found)} disclosures for {org_id}"
    return found[0]


def delivery_for(routing: Routing, org_id: str) -> Delivery | None:
    found = [d for d in routing.deliveries if d["recipient"]["org_id"] == org_id]
    assert len(found) <= 1
    return found[0] if found else None


def recipients(routing: Routing) -> set[str]:
    return {d["recipient"]["org_id"] for d in routing.disclosures if d["recipient"]}


def payload_of(delivery: Mapping[str, Any]) -> dict[str, Any]:
    payload = json.loads(delivery["payload_json"])
    assert isinstance(payload, dict)
    return payload


# --- every event type x agency x consent state ----------------------------------------------


def consent_state(name: str, agency: str, event_type: str) -> list[Change]:
    org_id = MEMBER[agency]
    others = [c for c in CATEGORIES if c != EVENT_CATEGORY[event_type]]
    return {
        "none": [],
        "given": [consent(agency, org_id)],
        "withdrawn": [consent(agency, org_id), consent(agency, org_id, status="withdrawn")],
        "objection": [consent(agency, org_id, status="objection")],
        "expired": [consent(agency, org_id, valid_from=NOW - 30 * DAY, valid_to=NOW - DAY)],
        "not_yet_valid": [consent(agency, org_id, valid_from=NOW + DAY)],
        "wrong_category": [consent(agency, org_id, categories=others)],
    }[name]


CONSENT_STATES = (
    "none",
    "given",
    "withdrawn",
    "objection",
    "expired",
    "not_yet_valid",
    "wrong_category",
)

# What each basis makes of each consent state: None means delivered.
WITHHELD_BY_BASIS: dict[str, dict[str, str | None]] = {
    "presumed": {state: "objection" if state == "objection" else None for state in CONSENT_STATES},
    "consent": {
        "none": "no_consent",
        "given": None,
        "withdrawn": "consent_withdrawn",
        "objection": "objection",
        "expired": "consent_expired",
        "not_yet_valid": "no_consent",
        "wrong_category": "category_not_consented",
    },
}


@pytest.mark.parametrize("consent_name", CONSENT_STATES)
@pytest.mark.parametrize("agency", AGENCIES)
@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_type_agency_and_consent_state(
    event_type: str, agency: str, consent_name: str
) -> None:
    """A care-team member gets what its rule and the consent state allow, or the right reason."""
    state = state_of(member(agency), *consent_state(consent_name, agency, event_type))
    record = event(event_type)
    routing = routed(record, state)
    disclosure = decision_for(routing, MEMBER[agency])
    delivery = delivery_for(routing, MEMBER[agency])
    rule = POLICY.rule(event_type, agency)

    if rule is None:
        assert disclosure["decision"] == "withheld"
        assert disclosure["reason"] == "not_permitted"
        assert disclosure["rule_id"] is None
        assert delivery is None
        return
    reason = WITHHELD_BY_BASIS[rule.basis][consent_name]
    assert disclosure["rule_id"] == rule.rule_id
    assert disclosure["policy_version"] == POLICY.version
    if reason is not None:
        assert disclosure["decision"] == "withheld"
        assert disclosure["reason"] == reason
        assert disclosure["basis"] is None
        assert disclosure["fields"] == []
        assert disclosure["delivery_id"] is None
        assert delivery is None
        return
    granted = [name for names in rule.categories.values() for name in names]
    expected = [name for name in record["payload"] if name in granted]
    assert disclosure["decision"] == "delivered"
    assert disclosure["reason"] is None
    assert disclosure["basis"] == rule.basis
    assert disclosure["fields"] == expected
    assert delivery is not None
    assert delivery["fields"] == expected
    assert list(payload_of(delivery)) == expected
    assert delivery["basis"] == rule.basis
    assert delivery["rule_id"] == rule.rule_id
    assert delivery["emergency"] is None
    categories = {FIELD_CATEGORY[(event_type, name)] for name in expected}
    assert set(delivery["categories"]) == categories | {EVENT_CATEGORY[event_type]}


# --- consent semantics ----------------------------------------------------------------------


def test_nav_with_logistics_and_social_consent_learns_discharge_never_reason() -> None:
    """NAV consented for logistics and social learns a discharge and where to, and the housing
    status at admission, never why the person was admitted."""
    state = state_of(member("nav"), consent("nav", categories=["logistics", "social"]))
    admission = delivery_for(routed(event("admission", reason="overdose"), state), MEMBER["nav"])
    assert admission is not None
    assert payload_of(admission) == {
        "housing_status": "homeless",
        "expected_discharge_at": "2026-11-30T11:00:00Z",
    }
    assert admission["categories"] == ["logistics", "social"]
    discharge = delivery_for(
        routed(event("discharge", destination="homeless"), state), MEMBER["nav"]
    )
    assert discharge is not None
    assert payload_of(discharge) == {
        "admission_event_id": "dps-974705788-2026-000123",
        "destination": "homeless",
    }
    assert discharge["categories"] == ["logistics"]
    for event_type in EVENT_TYPES:
        delivery = delivery_for(routed(event(event_type), state), MEMBER["nav"])
        if delivery is not None:
            assert "reason" not in payload_of(delivery)
            assert "health" not in delivery["categories"]


def test_a_consent_narrower_than_the_rule_narrows_the_delivery() -> None:
    """NAV consented for logistics only gets the admission without the housing status."""
    state = state_of(member("nav"), consent("nav", categories=["logistics"]))
    delivery = delivery_for(routed(event("admission"), state), MEMBER["nav"])
    assert delivery is not None
    assert delivery["fields"] == ["expected_discharge_at"]
    assert delivery["categories"] == ["logistics"]


def test_the_event_category_is_delivered_without_a_field() -> None:
    """Housing work started reaches NAV as social information though only an id is sent."""
    state = state_of(member("nav"), consent("nav", categories=["logistics", "social"]))
    delivery = delivery_for(routed(event("housing_work_started"), state), MEMBER["nav"])
    assert delivery is not None
    assert delivery["categories"] == ["logistics", "social"]
    only_social = state_of(member("nav"), consent("nav", categories=["social"]))
    delivery = delivery_for(routed(event("housing_work_started"), only_social), MEMBER["nav"])
    assert delivery is not None
    assert delivery["fields"] == []
    assert delivery["categories"] == ["social"]
    assert payload_of(delivery) == {}


def test_an_agency_wide_consent_covers_every_organisation_of_the_agency() -> None:
    """A consent without org_id covers any NAV office in the care team."""
    state = state_of(member("nav"), member("nav", OTHER["nav"]), consent("nav"))
    routing = routed(event("discharge"), state)
    assert decision_for(routing, MEMBER["nav"])["decision"] == "delivered"
    assert decision_for(routing, OTHER["nav"])["decision"] == "delivered"


def test_an_organisation_consent_covers_only_that_organisation() -> None:
    """A consent for one NAV office does not cover another NAV office, nor another agency."""
    state = state_of(
        member("nav"), member("nav", OTHER["nav"]), member("housing"), consent("nav", MEMBER["nav"])
    )
    routing = routed(event("discharge"), state)
    assert decision_for(routing, MEMBER["nav"])["decision"] == "delivered"
    assert decision_for(routing, OTHER["nav"])["reason"] == "no_consent"
    assert decision_for(routing, MEMBER["housing"])["reason"] == "no_consent"


def test_the_latest_covering_record_wins_whatever_its_scope() -> None:
    """An agency-wide withdrawal after an organisation's consent withdraws it, and an
    organisation's consent after an agency-wide withdrawal restores that one organisation."""
    state = state_of(
        member("nav"),
        member("nav", OTHER["nav"]),
        consent("nav", MEMBER["nav"]),
        consent("nav", status="withdrawn"),
    )
    routing = routed(event("discharge"), state)
    assert decision_for(routing, MEMBER["nav"])["reason"] == "consent_withdrawn"
    assert decision_for(routing, OTHER["nav"])["reason"] == "consent_withdrawn"
    state = state_of(consent("nav", OTHER["nav"]), state=state)
    routing = routed(event("discharge"), state)
    assert decision_for(routing, MEMBER["nav"])["reason"] == "consent_withdrawn"
    assert decision_for(routing, OTHER["nav"])["decision"] == "delivered"


def test_consent_given_again_after_a_withdrawal_delivers() -> None:
    """Given, withdrawn, given: the last record decides, so delivery resumes."""
    state = state_of(
        member("housing"),
        consent("housing"),
        consent("housing", status="withdrawn"),
        consent("housing"),
    )
    assert decision_for(routed(event("discharge"), state), MEMBER["housing"])["decision"] == (
        "delivered"
    )


def test_consent_is_judged_at_decision_time() -> None:
    """The same consent is valid before valid_to and expired from valid_to on."""
    state = state_of(member("nav"), consent("nav", valid_to=NOW + DAY))
    record = event("discharge")
    before = routed(record, state, NOW + DAY - timedelta(microseconds=1))
    at = routed(record, state, NOW + DAY)
    assert decision_for(before, MEMBER["nav"])["decision"] == "delivered"
    assert decision_for(at, MEMBER["nav"])["reason"] == "consent_expired"


def test_an_objection_blocks_presumed_for_its_recipient_only() -> None:
    """An objection for one DPS blocks it, not another DPS, until consent is given again."""
    state = state_of(
        member("dps"),
        member("dps", OTHER["dps"]),
        consent("dps", MEMBER["dps"], status="objection"),
    )
    record = event("admission", source=("dps", SOURCE["dps"]))
    routing = routed(record, state)
    assert decision_for(routing, MEMBER["dps"])["reason"] == "objection"
    assert decision_for(routing, OTHER["dps"])["decision"] == "delivered"
    state = state_of(consent("dps", MEMBER["dps"]), state=state)
    assert decision_for(routed(record, state), MEMBER["dps"])["decision"] == "delivered"


def test_an_agency_wide_objection_blocks_every_organisation_of_the_agency() -> None:
    """An objection without org_id blocks every GP office, however presumed their basis."""
    state = state_of(
        member("fastlege"),
        member("fastlege", OTHER["fastlege"]),
        consent("fastlege", status="objection"),
    )
    routing = routed(event("discharge"), state)
    assert decision_for(routing, MEMBER["fastlege"])["reason"] == "objection"
    assert decision_for(routing, OTHER["fastlege"])["reason"] == "objection"
    assert routing.deliveries == []


# --- home municipality ----------------------------------------------------------------------


def test_the_home_municipality_gets_logistics_only_without_consent() -> None:
    """An admission reaches its own home municipality as a statutory logistics notice, even
    over an objection, never with the reason or the kind of admission; with the housing status
    (the regulation has the municipality told when a patient will have no suitable housing)."""
    state = state_of(consent("municipality", HOME, status="objection"))
    routing = routed(event("admission"), state)
    assert recipients(routing) == {HOME}
    delivery = delivery_for(routing, HOME)
    assert delivery is not None
    assert delivery["basis"] == "statutory"
    assert delivery["rule_id"] == "admission.home_municipality"
    assert delivery["categories"] == ["logistics", "social"]
    assert set(payload_of(delivery)) == {
        "needs_municipal_services",
        "home_municipality_org",
        "ward",
        "expected_discharge_at",
        "housing_status",
    }


@pytest.mark.parametrize(
    "event_type",
    [
        "admission",
        "discharge_ready",
        "discharge_ready_withdrawn",
        "discharge",
        "followup_scheduled",
    ],
)
def test_the_logistics_messages_reach_the_home_municipality(event_type: str) -> None:
    """The four PLO logistics messages, and the follow-up time set after a discharge, reach a
    home municipality outside the care team."""
    state = state_of((event_schema_name("admission"), event("admission")))
    disclosure = decision_for(routed(event(event_type), state), HOME)
    assert disclosure["decision"] == "delivered"
    assert disclosure["basis"] == "statutory"
    beyond = {
        name for name in disclosure["fields"] if FIELD_CATEGORY[(event_type, name)] != "logistics"
    }
    assert beyond <= {"housing_status"}


def test_the_home_municipality_learns_whom_to_contact_at_the_dps_not_how_the_stay_ended() -> None:
    """The statutory discharge notice carries the DPS contact and the follow-up time, never the
    discharge kind, the crisis plan or its reference (health), even over an objection."""
    state = state_of(
        (event_schema_name("admission"), event("admission")),
        consent("municipality", HOME, status="objection"),
    )
    routing = routed(event("discharge", kind="against_advice"), state)
    delivery = delivery_for(routing, HOME)
    assert delivery is not None
    assert delivery["rule_id"] == "discharge.home_municipality"
    assert delivery["categories"] == ["logistics"]
    assert payload_of(delivery) == {
        "admission_event_id": "dps-974705788-2026-000123",
        "destination": "municipal_housing",
        "followup_at": "2026-12-03T09:00:00Z",
        "dps_contact": "Kari Nordmann, sykepleier, 22 00 00 00",
    }


@pytest.mark.parametrize("agency", ["dps", "municipality", "fastlege"])
def test_the_care_team_gets_the_discharge_kind_and_crisis_plan_reference(agency: str) -> None:
    """Health services in the team learn how the stay ended, whom to contact and which crisis
    plan, last reviewed when; an objection withholds it all."""
    routing = routed(event("discharge", kind="self_discharge"), state_of(member(agency)))
    delivery = delivery_for(routing, MEMBER[agency])
    assert delivery is not None
    payload = payload_of(delivery)
    assert payload["kind"] == "self_discharge"
    assert payload["dps_contact"] == "Kari Nordmann, sykepleier, 22 00 00 00"
    assert payload["crisis_plan_id"] == "KP-2026-17"
    assert payload["crisis_plan_reviewed_at"] == "2026-11-27T13:00:00Z"
    assert payload["crisis_plan_owner"] == {"agency": "dps", "org_id": "974705788"}
    assert delivery["categories"] == ["logistics", "health"]
    objected = state_of(member(agency), consent(agency, MEMBER[agency], status="objection"))
    assert delivery_for(routed(event("discharge"), objected), MEMBER[agency]) is None


def test_a_discharge_kind_left_out_is_not_delivered_as_unknown() -> None:
    """The wire record says `unknown` for a kind left out; no recipient is told that."""
    record = event("discharge", kind=None, crisis_plan_id=None, crisis_plan_reviewed_at=None)
    assert record["payload"]["kind"] == "unknown"
    delivery = delivery_for(routed(record, state_of(member("fastlege"))), MEMBER["fastlege"])
    assert delivery is not None
    assert "kind" not in payload_of(delivery)
    assert "kind" not in delivery["fields"]


@pytest.mark.parametrize("agency", ["nav", "housing"])
def test_nav_and_housing_never_get_the_dps_contact_or_the_kind(agency: str) -> None:
    """With a consent for every category, NAV and the housing office still get only that the
    person was discharged and where to."""
    state = state_of(member(agency), consent(agency))
    delivery = delivery_for(
        routed(event("discharge", kind="against_advice"), state), MEMBER[agency]
    )
    assert delivery is not None
    assert set(payload_of(delivery)) == {"admission_event_id", "destination"}


def test_a_crisis_plan_reference_in_a_plan_goes_to_health_members_only() -> None:
    """The individual plan's crisis-plan id and review time reach the GP, not NAV."""
    state = state_of(member("fastlege"), member("nav"), consent("nav"))
    routing = routed(event("ip_update"), state)
    gp = delivery_for(routing, MEMBER["fastlege"])
    nav = delivery_for(routing, MEMBER["nav"])
    assert gp is not None
    assert nav is not None
    assert payload_of(gp)["crisis_plan_id"] == "KP-2026-17"
    assert payload_of(gp)["crisis_plan_owner"] == {"agency": "dps", "org_id": "974705788"}
    crisis_plan = {"crisis_plan", "crisis_plan_id", "crisis_plan_reviewed_at", "crisis_plan_owner"}
    assert crisis_plan.isdisjoint(payload_of(nav))


def test_the_service_kind_of_an_application_goes_with_the_application() -> None:
    """NAV with a logistics consent learns what the application is for."""
    state = state_of(member("nav"), consent("nav", categories=["logistics"]))
    delivery = delivery_for(routed(event("application_received"), state), MEMBER["nav"])
    assert delivery is not None
    assert payload_of(delivery)["service_kind"] == "housing"


def test_a_scheduled_follow_up_reaches_health_care_and_the_home_municipality_only() -> None:
    """The DPS's follow-up time reaches the GP and the home municipality; NAV has no rule."""
    state = state_of(
        (event_schema_name("admission"), event("admission")),
        member("fastlege"),
        member("nav"),
        consent("nav"),
    )
    routing = routed(event("followup_scheduled"), state)
    expected = {
        "related_event_id": "dps-974705788-2026-000125",
        "followup_at": "2026-12-03T09:00:00Z",
        "with_org": "940493021",
    }
    gp = delivery_for(routing, MEMBER["fastlege"])
    home = delivery_for(routing, HOME)
    assert gp is not None
    assert home is not None
    assert payload_of(gp) == payload_of(home) == expected
    assert (gp["basis"], home["basis"]) == ("presumed", "statutory")
    assert decision_for(routing, MEMBER["nav"])["reason"] == "not_permitted"


def gp_list_entry(org_id: str) -> Change:
    """The operator's GP-list entry naming `org_id` as the person's GP."""
    return REGISTER_CHANGE, {
        "change_id": str(uuid.uuid4()),
        "subject_key": "7" * 64,
        "register": "gp",
        "organisation": {"agency": "fastlege", "org_id": org_id},
        "recorded_by_org": "918000008",
        "recorded_at": NOW,
    }


def test_a_treatment_interruption_reaches_health_care_in_the_team_and_the_listed_gp() -> None:
    """The DPS's treatment interruption reaches the municipal services in the team and the GP
    on the GP list (presumed, health); NAV and housing, even with consent, and a home
    municipality outside the team have no rule."""
    state = state_of(
        (event_schema_name("admission"), event("admission")),
        gp_list_entry(MEMBER["fastlege"]),
        member("municipality"),
        member("nav"),
        consent("nav"),
        member("housing"),
        consent("housing"),
    )
    routing = routed(event("treatment_interrupted"), state)
    expected = {
        "treatment_id": "LAR-2026-0042",
        "kind": "missed_appointments",
        "last_contact_at": "2026-11-20T09:00:00Z",
    }
    for agency in ("fastlege", "municipality"):
        delivery = delivery_for(routing, MEMBER[agency])
        assert delivery is not None, agency
        assert payload_of(delivery) == expected
        assert delivery["basis"] == "presumed"
        assert delivery["categories"] == ["health"]
    for org_id in (MEMBER["nav"], MEMBER["housing"], HOME):
        assert decision_for(routing, org_id)["reason"] == "not_permitted"


def test_an_objection_withholds_a_treatment_interruption_from_the_gp() -> None:
    """Presumed sharing ends where the patient objects, for this too."""
    state = state_of(
        gp_list_entry(MEMBER["fastlege"]),
        consent("fastlege", MEMBER["fastlege"], status="objection"),
    )
    decision = decision_for(routed(event("treatment_interrupted"), state), MEMBER["fastlege"])
    assert (decision["decision"], decision["reason"]) == ("withheld", "objection")


def test_a_prison_release_needs_a_consent_that_names_justice() -> None:
    """A consent given for every other category does not cover a release (no consent widens
    with the new category): withheld as category_not_consented."""
    state = state_of(
        member("municipality"),
        consent("municipality", categories=["logistics", "health", "social", "police"]),
    )
    decision = decision_for(routed(event("prison_release"), state), MEMBER["municipality"])
    assert (decision["decision"], decision["reason"]) == ("withheld", "category_not_consented")


def test_a_justice_consent_delivers_the_release_and_social_adds_the_housing_status() -> None:
    """With `justice` the municipality learns the release; the housing status only where the
    consent names `social` too."""
    release = event("prison_release")
    justice_only = state_of(member("municipality"), consent("municipality", categories=["justice"]))
    delivery = delivery_for(routed(release, justice_only), MEMBER["municipality"])
    assert delivery is not None
    assert payload_of(delivery) == {
        "release_at": "2026-12-10T08:00:00Z",
        "home_municipality_org": SOURCE["municipality"],
        "needs_municipal_services": True,
    }
    assert (delivery["basis"], delivery["categories"]) == ("consent", ["justice"])
    both = state_of(
        member("municipality"), consent("municipality", categories=["justice", "social"])
    )
    delivery = delivery_for(routed(release, both), MEMBER["municipality"])
    assert delivery is not None
    assert payload_of(delivery)["housing_status"] == "homeless"
    assert delivery["categories"] == ["social", "justice"]


def test_a_prison_release_reaches_no_one_on_a_presumed_or_statutory_basis() -> None:
    """No consent: the GP and the DPS in the team get nothing; the home municipality outside
    the team and the police (with consent) have no rule."""
    state = state_of(
        (event_schema_name("admission"), event("admission")),
        gp_list_entry(MEMBER["fastlege"]),
        member("dps"),
        member("police"),
        consent("police"),
    )
    routing = routed(event("prison_release"), state)
    assert routing.deliveries == []
    assert decision_for(routing, MEMBER["fastlege"])["reason"] == "no_consent"
    assert decision_for(routing, MEMBER["dps"])["reason"] == "no_consent"
    assert decision_for(routing, MEMBER["police"])["reason"] == "not_permitted"
    assert decision_for(routing, HOME)["reason"] == "not_permitted"


def test_a_prison_release_does_not_set_the_home_municipality() -> None:
    """Only an admission or the population register names the home municipality: a release
    naming one changes nothing, so corrections cannot steer who gets statutory notices."""
    release = event("prison_release", home_municipality_org=OTHER["municipality"])
    assert state_of((event_schema_name("prison_release"), release)) == PersonState()
    admitted = state_of((event_schema_name("admission"), event("admission")))
    after = state_of((event_schema_name("prison_release"), release), state=admitted)
    assert after.home_municipality == HOME


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        ("somatic_check_done", {"kind": "annual", "referral_needed": True}),
        (
            "somatic_referral",
            {
                "referral_id": "HV-2026-0042",
                "to": "dental",
                "related_event_id": "gp-912345678-2026-000007",
            },
        ),
    ],
)
def test_a_somatic_check_reaches_health_care_in_the_team_only(
    event_type: str, expected: dict[str, Any]
) -> None:
    """Physical health is health care's business: the DPS and the municipality in the team get
    it whole on the presumed basis; NAV (with consent for everything), housing and the home
    municipality outside the team get nothing."""
    state = state_of(
        (event_schema_name("admission"), event("admission")),
        member("dps"),
        member("municipality"),
        member("nav"),
        member("housing"),
        consent("nav"),
        consent("housing"),
    )
    routing = routed(event(event_type), state)
    for agency in ("dps", "municipality"):
        delivery = delivery_for(routing, MEMBER[agency])
        assert delivery is not None
        assert delivery["basis"] == "presumed"
        assert payload_of(delivery) == expected
    for org_id in (MEMBER["nav"], MEMBER["housing"], HOME):
        assert delivery_for(routing, org_id) is None
        assert decision_for(routing, org_id)["reason"] == "not_permitted"


def test_the_gp_on_the_gp_list_gets_the_somatic_check_of_another_health_service() -> None:
    """The municipal health service did the check; the GP from the GP list, a care-team member
    with role gp by default, gets it without any care-team entry."""
    record = {
        "change_id": str(uuid.uuid4()),
        "subject_key": SUBJECT_KEY,
        "register": "gp",
        "organisation": {"agency": "fastlege", "org_id": MEMBER["fastlege"]},
        "recorded_by_org": "918000008",
        "recorded_at": NOW - DAY,
    }
    state = state_of((REGISTER_CHANGE, over_the_wire(REGISTER_CHANGE, record)))
    check = event("somatic_check_done", source=("municipality", SOURCE["municipality"]))
    delivery = delivery_for(routed(check, state), MEMBER["fastlege"])
    assert delivery is not None
    assert payload_of(delivery) == {"kind": "annual", "referral_needed": True}


def test_an_objection_keeps_a_somatic_check_from_a_team_member() -> None:
    """The patient may object to a member learning of a somatic check, as to any presumed rule."""
    state = state_of(
        member("municipality"), consent("municipality", MEMBER["municipality"], status="objection")
    )
    routing = routed(event("somatic_check_done"), state)
    assert delivery_for(routing, MEMBER["municipality"]) is None
    assert decision_for(routing, MEMBER["municipality"])["reason"] == "objection"


def test_other_events_are_not_permitted_to_a_home_municipality_outside_the_team() -> None:
    """The home municipality is a candidate for a police callout but has no rule for it."""
    state = state_of((event_schema_name("admission"), event("admission")))
    disclosure = decision_for(routed(event("police_callout"), state), HOME)
    assert disclosure["decision"] == "withheld"
    assert disclosure["reason"] == "not_permitted"
    assert disclosure["rule_id"] is None


def test_a_home_municipality_in_the_team_gets_its_care_team_rule() -> None:
    """In the care team, the home municipality gets the presumed rule, health fields included."""
    state = state_of(member("municipality", HOME))
    delivery = delivery_for(routed(event("admission", reason="suicide_attempt"), state), HOME)
    assert delivery is not None
    assert delivery["basis"] == "presumed"
    assert payload_of(delivery)["reason"] == "suicide_attempt"


def test_a_withheld_team_rule_falls_back_to_the_statutory_notice() -> None:
    """A home municipality in the team that the patient objected to still gets the logistics."""
    state = state_of(
        (event_schema_name("admission"), event("admission")),
        member("municipality", HOME),
        consent("municipality", HOME, status="objection"),
    )
    disclosure = decision_for(routed(event("discharge"), state), HOME)
    assert disclosure["decision"] == "delivered"
    assert disclosure["basis"] == "statutory"
    assert disclosure["rule_id"] == "discharge.home_municipality"
    assert "crisis_plan" not in disclosure["fields"]


def test_a_withheld_team_rule_without_a_statutory_notice_keeps_its_reason() -> None:
    """Without a statutory rule for the type, the team rule's withheld reason stands."""
    state = state_of(
        (event_schema_name("admission"), event("admission")),
        member("municipality", HOME),
        consent("municipality", HOME, status="objection"),
    )
    disclosure = decision_for(
        routed(event("followup_contact", source=("fastlege", SOURCE["fastlege"])), state), HOME
    )
    assert disclosure["reason"] == "objection"
    assert disclosure["rule_id"] == "followup_contact.municipality"


def test_another_municipality_never_sees_the_person() -> None:
    """A municipality that is neither home nor in the team is not even a candidate."""
    state = state_of(member("dps"))
    routing = routed(event("admission"), state)
    assert OTHER["municipality"] not in recipients(routing)
    assert recipients(routing) == {MEMBER["dps"], HOME}


def test_the_latest_admission_sets_the_home_municipality() -> None:
    """After a second admission naming another municipality, the first is no longer home."""
    state = state_of(
        (event_schema_name("admission"), event("admission")),
        (
            event_schema_name("admission"),
            event("admission", home_municipality_org=OTHER["municipality"]),
        ),
    )
    assert state.home_municipality == OTHER["municipality"]
    assert recipients(routed(event("discharge"), state)) == {OTHER["municipality"]}


# --- candidates -----------------------------------------------------------------------------


def test_the_source_organisation_is_never_a_candidate() -> None:
    """The organisation that published the event is not routed to, even in the care team."""
    state = state_of(member("dps", SOURCE["dps"]), member("fastlege"))
    routing = routed(event("discharge"), state)
    assert SOURCE["dps"] not in recipients(routing)
    assert MEMBER["fastlege"] in recipients(routing)


def test_an_event_with_no_candidate_gets_one_no_candidate_record() -> None:
    """No care team and no home municipality: one `no_candidate` record, nothing delivered."""
    record = event("police_callout")
    routing = routed(record, PersonState())
    assert routing.deliveries == []
    assert routing.disclosures == [
        {
            "audit_id": no_candidate_audit_id(SOURCE["police"], record["event_id"]),
            "event_id": record["event_id"],
            "event_type": "police_callout",
            "source_org": SOURCE["police"],
            "subject_key": SUBJECT_KEY,
            "recipient": None,
            "decision": "no_candidate",
            "reason": None,
            "basis": None,
            "categories": [],
            "fields": [],
            "rule_id": None,
            "policy_version": POLICY.version,
            "decided_at": NOW,
            "delivery_id": None,
            "emergency": False,
        }
    ]


def test_a_home_municipality_that_is_the_source_leaves_no_candidate() -> None:
    """An admission whose home municipality published it has no candidate."""
    record = event("admission", home_municipality_org=SOURCE["dps"])
    assert [d["decision"] for d in routed(record, PersonState()).disclosures] == ["no_candidate"]


def test_ip_update_builds_the_care_team_and_reaches_it() -> None:
    """An active plan adds its coordinator and participants (a GP as `gp`) and reaches them."""
    plan = event(
        "ip_update",
        source=("municipality", SOURCE["municipality"]),
        coordinator={"agency": "municipality", "org_id": MEMBER["municipality"]},
        participants=[
            {"agency": "dps", "org_id": MEMBER["dps"]},
            {"agency": "fastlege", "org_id": MEMBER["fastlege"]},
            {"agency": "nav", "org_id": MEMBER["nav"]},
        ],
    )
    state = apply(PersonState(), event_schema_name("ip_update"), plan)
    roles = {org_id: m.role for org_id, m in state.team.items()}
    assert roles == {
        MEMBER["municipality"]: "coordinator",
        MEMBER["dps"]: "participant",
        MEMBER["fastlege"]: "gp",
        MEMBER["nav"]: "participant",
    }
    routing = routed(plan, PersonState())
    assert recipients(routing) == set(roles)
    assert decision_for(routing, MEMBER["dps"])["decision"] == "delivered"
    assert decision_for(routing, MEMBER["nav"])["reason"] == "no_consent"


def test_closing_a_plan_removes_its_members_but_tells_them() -> None:
    """A closed plan leaves the team, except registry members, yet its members get the news."""
    participants = [
        {"agency": "dps", "org_id": MEMBER["dps"]},
        {"agency": "fastlege", "org_id": MEMBER["fastlege"]},
    ]
    active = event("ip_update", participants=participants)
    closed = event("ip_update", status="closed", participants=participants)
    state = state_of(member("fastlege"), (event_schema_name("ip_update"), active))
    routing = routed(closed, state)
    assert {MEMBER["dps"], MEMBER["fastlege"]} <= recipients(routing)
    after = apply(state, event_schema_name("ip_update"), closed)
    assert set(after.team) == {MEMBER["fastlege"]}
    assert set(after.team[MEMBER["fastlege"]].sources) == set(
        {f"registry:{SOURCE['municipality']}"}
    )


def test_a_plan_that_drops_a_participant_drops_it_from_the_team() -> None:
    """An active plan's membership is replaced by its latest participant list."""
    first = event("ip_update", participants=[{"agency": "dps", "org_id": MEMBER["dps"]}])
    second = event("ip_update", participants=[{"agency": "housing", "org_id": MEMBER["housing"]}])
    state = state_of(
        (event_schema_name("ip_update"), first), (event_schema_name("ip_update"), second)
    )
    assert MEMBER["dps"] not in state.team
    assert MEMBER["housing"] in state.team


def test_a_member_stepping_out_ends_its_membership_from_every_source() -> None:
    """An organisation removing itself leaves the team even if a plan and a registry call had
    added it: restricting its own access always takes effect."""
    plan = event("ip_update", participants=[{"agency": "dps", "org_id": MEMBER["dps"]}])
    state = state_of(
        (event_schema_name("ip_update"), plan),
        member("dps"),
        member("dps", status="removed", recorded_by=MEMBER["dps"]),
    )
    assert MEMBER["dps"] not in state.team
    assert MEMBER["dps"] not in recipients(routed(event("discharge"), state))


def test_a_removal_by_another_organisation_takes_back_only_its_own_membership() -> None:
    """No organisation can cut another's member out of the team: a removal by someone else
    ends only the membership that organisation recorded; the plan's stays."""
    plan = event("ip_update", participants=[{"agency": "dps", "org_id": MEMBER["dps"]}])
    state = state_of(
        (event_schema_name("ip_update"), plan),
        member("dps", recorded_by=OTHER["municipality"]),
        member("dps", status="removed", recorded_by=OTHER["municipality"]),
        member("dps", status="removed", recorded_by=OTHER["housing"]),
    )
    owner = SOURCE["municipality"]
    assert set(state.team[MEMBER["dps"]].sources) == set(
        {f"plan:{owner}:{plan['payload']['plan_id']}"}
    )
    alone = state_of(
        member("dps", recorded_by=OTHER["municipality"]),
        member("dps", status="removed", recorded_by=OTHER["municipality"]),
    )
    assert MEMBER["dps"] not in alone.team


# --- emergency ------------------------------------------------------------------------------

EMERGENCY = {
    "justification": "Pasienten har uttalt trusler mot navngitt person",
    "accountable": "overlege Kari Nordmann",
    "recipients": [{"agency": "police", "org_id": MEMBER["police"]}],
}


def test_an_emergency_reaches_named_recipients_flagged() -> None:
    """The police named in an emergency request get the emergency grant, flagged."""
    routing = routed(event("admission", emergency=EMERGENCY, reason="psychosis"), PersonState())
    delivery = delivery_for(routing, MEMBER["police"])
    assert delivery is not None
    assert delivery["basis"] == "emergency"
    assert delivery["rule_id"] == "admission.emergency"
    assert delivery["emergency"] == {
        "justification": EMERGENCY["justification"],
        "accountable": EMERGENCY["accountable"],
    }
    assert payload_of(delivery)["reason"] == "psychosis"
    assert "housing_status" not in payload_of(delivery)
    assert delivery_to_json(delivery)["emergency"]["accountable"] == EMERGENCY["accountable"]
    disclosure = decision_for(routing, MEMBER["police"])
    assert disclosure["emergency"] is True
    assert disclosure["basis"] == "emergency"
    assert recipients(routing) == {MEMBER["police"], HOME}


def test_an_emergency_overrides_objections_and_missing_consent_for_every_candidate() -> None:
    """Every candidate, whatever its consent state, gets the grant on basis emergency."""
    state = state_of(
        member("dps"),
        member("nav"),
        consent("dps", status="objection"),
        consent("nav", status="withdrawn"),
    )
    routing = routed(event("discharge", emergency=EMERGENCY), state)
    assert {d["decision"] for d in routing.disclosures} == {"delivered"}
    assert {d["basis"] for d in routing.deliveries} == {"emergency"}
    assert recipients(routing) == {MEMBER["dps"], MEMBER["nav"], MEMBER["police"]}


@pytest.mark.parametrize("event_type", POLICY_EVENT_TYPES)
def test_an_emergency_delivers_the_grant_of_every_type(event_type: str) -> None:
    """For each type, an emergency delivers exactly the grant's fields present in the payload."""
    record = event(event_type, emergency=EMERGENCY)
    delivery = delivery_for(routed(record, PersonState()), MEMBER["police"])
    assert delivery is not None
    grant = POLICY.emergency[event_type]
    granted = {name for names in grant.categories.values() for name in names}
    assert set(delivery["fields"]) == granted & {
        k for k, v in record["payload"].items() if v is not None
    }
    assert EVENT_CATEGORY[event_type] in delivery["categories"]


def test_an_emergency_recipient_that_is_the_source_is_left_out() -> None:
    """Naming oneself in an emergency request does not make oneself a candidate."""
    emergency = {**EMERGENCY, "recipients": [{"agency": "police", "org_id": SOURCE["police"]}]}
    routing = routed(event("police_callout", emergency=emergency), PersonState())
    assert [d["decision"] for d in routing.disclosures] == ["no_candidate"]


def test_named_recipients_are_candidates_only_in_an_emergency() -> None:
    """Without an emergency request, police outside the team are no candidates at all."""
    routing = routed(event("admission"), PersonState())
    assert MEMBER["police"] not in recipients(routing)


# --- records --------------------------------------------------------------------------------


def test_records_carry_deterministic_ids_and_the_decision_time() -> None:
    """delivery_id and audit_id derive from source, event and recipient; routing is repeatable."""
    record = event("discharge")
    state = state_of(member("fastlege"))
    first, second = routed(record, state), routed(record, state)
    assert first == second
    expected = delivery_id(SOURCE["dps"], record["event_id"], MEMBER["fastlege"])
    (delivery,) = first.deliveries
    assert delivery["delivery_id"] == expected
    assert decision_for(first, MEMBER["fastlege"])["audit_id"] == expected
    assert decision_for(first, MEMBER["fastlege"])["delivery_id"] == expected
    assert delivery["decided_at"] == NOW
    assert delivery["subject"] == {"nin": NIN}
    assert delivery["subject_key"] == SUBJECT_KEY
    assert delivery["source"]["org_id"] == SOURCE["dps"]
    assert delivery["recipient"] == {"agency": "fastlege", "org_id": MEMBER["fastlege"]}


def test_the_delivery_json_has_designs_shape_and_utc_times() -> None:
    """A delivery renders as DESIGN's delivery JSON; payload times are RFC 3339 with Z."""
    state = state_of(member("fastlege"))
    (delivery,) = routed(event("discharge"), state).deliveries
    body = delivery_to_json(delivery)
    assert set(body) == {
        "delivery_id",
        "event_id",
        "event_type",
        "occurred_at",
        "subject",
        "basis",
        "categories",
        "payload",
    }
    assert body["payload"]["followup_at"] == "2026-12-03T09:00:00Z"
    assert body["occurred_at"] == "2026-11-23T11:00:00Z"


def test_withheld_candidates_are_audited_without_fields() -> None:
    """A withheld decision names the reason, the rule and the policy version, and no field."""
    state = state_of(member("nav"))
    disclosure = decision_for(routed(event("discharge"), state), MEMBER["nav"])
    assert disclosure["decision"] == "withheld"
    assert disclosure["reason"] == "no_consent"
    assert disclosure["rule_id"] == "discharge.nav"
    assert disclosure["policy_version"] == POLICY.version
    assert disclosure["categories"] == []
    assert disclosure["fields"] == []
    assert disclosure["emergency"] is False


def test_route_needs_an_aware_time() -> None:
    """A naive decision time is refused rather than guessed."""
    with pytest.raises(ValueError, match="timezone-aware"):
        route(event("discharge"), PersonState(), POLICY, datetime(2026, 11, 23, 12, 0))


# --- person state ---------------------------------------------------------------------------


def test_person_state_survives_json() -> None:
    """to_json gives plain JSON that from_json turns back into an equal state."""
    state = state_of(
        member("dps"),
        consent("nav", categories=["logistics", "social"], valid_to=NOW + DAY),
        consent("housing", MEMBER["housing"], status="objection"),
        (event_schema_name("admission"), event("admission")),
        (event_schema_name("ip_update"), event("ip_update")),
    )
    text = json.dumps(state.to_json())
    assert PersonState.from_json(json.loads(text)) == state
    assert PersonState.from_json(PersonState().to_json()) == PersonState()


def test_person_state_keeps_one_consent_per_recipient() -> None:
    """Superseded records for the same recipient are dropped, so state stays small."""
    state = state_of(
        *(consent("nav", status=s) for s in ("given", "withdrawn", "given", "objection"))
    )
    assert [c.status for c in state.consents] == ["objection"]
    state = state_of(consent("nav", MEMBER["nav"]), consent("nav"), state=state)
    assert [(c.org_id, c.status) for c in state.consents] == [
        (MEMBER["nav"], "given"),
        (None, "given"),
    ]


def test_apply_ignores_records_that_change_nothing() -> None:
    """Deliveries, other event types and unknown statuses leave the state as it was."""
    state = state_of(member("dps"))
    assert apply(state, event_schema_name("discharge"), event("discharge")) is state
    assert apply(state, DELIVERY, {"event_type": "admission"}) is state
    _, unknown = member("dps", status="unknown")
    assert apply(state, CARE_TEAM_CHANGE, unknown) is state


def test_apply_returns_the_same_state_when_a_record_repeats_what_it_knows() -> None:
    """An admission naming the known home municipality, a plan update naming the same members
    and a re-published change leave the state object as it was: the router writes its table
    and changelog only for a real change."""
    admission = (event_schema_name("admission"), event("admission"))
    plan = (event_schema_name("ip_update"), event("ip_update"))
    state = state_of(member("dps"), consent("nav"), admission, plan)
    for schema_name, record in (admission, plan, member("dps"), consent("nav")):
        assert apply(state, schema_name, record) is state
    moved = event("admission", home_municipality_org=OTHER["municipality"])
    assert (
        apply(state, event_schema_name("admission"), moved).home_municipality
        == (OTHER["municipality"])
    )


def test_a_late_republished_consent_never_overrides_a_newer_one() -> None:
    """An outbox re-publication of an older change arriving after a newer one changes nothing."""
    from datetime import UTC, datetime

    from carebus.domain.records import CONSENT_CHANGE
    from carebus.domain.routing import PersonState, apply

    def change(status: str, hour: int, org_id: str | None) -> dict[str, object]:
        return {
            "change_id": f"c-{status}-{hour}",
            "subject_key": "k",
            "recipient": {"agency": "nav", "org_id": org_id},
            "categories": ["logistics"],
            "status": status,
            "valid_from": datetime(2026, 1, 1, tzinfo=UTC),
            "valid_to": None,
            "recorded_by": "test",
            "recorded_by_org": "940493021",
            "recorded_at": datetime(2026, 11, 23, hour, tzinfo=UTC),
        }

    given = change("given", 8, None)
    withdrawn = change("withdrawn", 9, "889640782")
    state = apply(apply(PersonState(), CONSENT_CHANGE, given), CONSENT_CHANGE, withdrawn)
    state = apply(state, CONSENT_CHANGE, given)  # the older change, published again late
    latest = state.latest_consent("nav", "889640782")
    assert latest is not None
    assert latest.status == "withdrawn"
    assert PersonState.from_json(state.to_json()) == state


@pytest.mark.parametrize("recipient", ["987654321", "-", "ø/æ/å 1"])
def test_delivery_ids_are_the_rfc_4122_version_5_uuids_of_their_names(recipient: str) -> None:
    """The hand-rolled id is exactly uuid5: ids stored before it keep matching."""
    namespace = uuid.UUID("6f1c2a4e-1f7d-5b8e-9c3a-2d4b6e8f0a1c")
    event_id = str(uuid.uuid4())
    assert delivery_id("111111111", event_id, recipient) == str(
        uuid.uuid5(namespace, f"event/111111111/{event_id}/{recipient}")
    )
    assert no_candidate_audit_id("111111111", event_id) == str(
        uuid.uuid5(namespace, f"event/111111111/{event_id}/-")
    )


# --- a risk discharge to the home municipality (issue 17, item 1) ------------------------------


@pytest.mark.parametrize("reason", ["overdose", "suicide_attempt", "possible_suicide_attempt"])
def test_a_risk_discharge_tells_the_home_municipality_what_to_do_never_why(reason: str) -> None:
    """Outside the care team the home municipality gets the statutory notice: by when the
    follow-up is agreed and whom to ask at the DPS, never the admission's reason, the kind of
    discharge or the crisis plan (the SLA engine's notice says follow-up is needed)."""
    admitted = event("admission", reason=reason)
    state = state_of((event_schema_name("admission"), admitted))
    discharge = event(
        "discharge",
        admission_event_id=admitted["event_id"],
        dps_contact="Vakthavende sykepleier",
        kind="against_advice",
    )
    routing = routed(discharge, state)
    delivery = delivery_for(routing, HOME)
    assert delivery is not None
    assert (delivery["rule_id"], delivery["basis"]) == ("discharge.home_municipality", "statutory")
    assert delivery["categories"] == ["logistics"]
    payload = payload_of(delivery)
    assert payload["dps_contact"] == "Vakthavende sykepleier"
    assert "followup_at" in payload
    assert not {"reason", "kind", "crisis_plan", "crisis_plan_id"} & set(payload)
    assert [d["audit_id"] for d in routing.disclosures if _to(d) == HOME] == [
        delivery["delivery_id"]
    ]


def _to(disclosure: Disclosure) -> str | None:
    return None if disclosure["recipient"] is None else disclosure["recipient"]["org_id"]


@pytest.mark.parametrize(
    "event_type",
    [
        "housing_waitlisted",
        "temporary_housing_started",
        "temporary_housing_ended",
        "tenancy_at_risk",
    ],
)
def test_the_housing_pathway_reaches_the_team_only_with_consent(event_type: str) -> None:
    """A waiting-list entry, a temporary stay or a tenancy at risk comes from the housing office
    or NAV (not health personnel): the GP and NAV get it with consent, not without, and a home
    municipality outside the care team has no rule (not a hospital logistics notice)."""
    state = state_of(
        (event_schema_name("admission"), event("admission")),
        member("fastlege"),
        member("nav"),
        consent("fastlege"),
    )
    routing = routed(event(event_type, source=("housing", SOURCE["housing"])), state)
    gp = delivery_for(routing, MEMBER["fastlege"])
    assert gp is not None
    assert gp["basis"] == "consent"
    assert decision_for(routing, MEMBER["nav"])["decision"] == "withheld"
    assert delivery_for(routing, HOME) is None


def test_the_gp_learns_a_tenancy_risk_but_not_the_flat() -> None:
    """Health care learns the cause and the eviction date; the unit goes to housing and NAV."""
    state = state_of(member("fastlege"), member("nav"), consent("fastlege"), consent("nav"))
    routing = routed(event("tenancy_at_risk", source=("housing", SOURCE["housing"])), state)
    gp = delivery_for(routing, MEMBER["fastlege"])
    nav = delivery_for(routing, MEMBER["nav"])
    assert gp is not None
    assert nav is not None
    assert set(payload_of(gp)) == {"cause", "eviction_at"}
    assert set(payload_of(nav)) == {"cause", "eviction_at", "housing_unit_id"}


def test_brukerplan_scores_reach_health_care_in_the_team_only() -> None:
    """The scores go, presumed, to the GP in the team (all eight domains); NAV and the housing
    office get nothing even with consent, and neither does a home municipality outside it."""
    state = state_of(
        member("fastlege"), member("nav"), member("housing"), consent("nav"), consent("housing")
    )
    routing = routed(
        event("brukerplan_assessment", source=("municipality", SOURCE["municipality"])), state
    )
    gp = delivery_for(routing, MEMBER["fastlege"])
    assert gp is not None
    assert gp["basis"] == "presumed"
    assert payload_of(gp)["housing"] == "red"
    assert payload_of(gp)["substance_use"] == "red"
    for agency in ("nav", "housing"):
        assert decision_for(routing, MEMBER[agency])["reason"] == "not_permitted"
    assert delivery_for(routing, HOME) is None
