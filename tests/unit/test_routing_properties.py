"""Property tests: routing agrees with a deliberately simple model of DESIGN's rules."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carebus.domain.events import (
    PAYLOAD_FIELDS,
    POLICY_EVENT_TYPES,
    event_to_record,
    parse_event,
)
from carebus.domain.policy import Policy
from carebus.domain.records import (
    CARE_TEAM_CHANGE,
    CONSENT_CHANGE,
    DELIVERY,
    DISCLOSURE,
    Organisation,
    event_schema_name,
)
from carebus.domain.routing import PersonState, apply, route
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.codec import Codec
from carebus.wire.policy_files import load_policy
from carebus_dev.testing import EventFactory

CODEC = Codec.default()
POLICY: Policy = load_policy(PROJECT_ROOT / "policy" / "routing.yaml")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

# Two organisations per agency, so organisation-specific and agency-wide consents differ.
ORGS: dict[str, tuple[str, str]] = {
    "dps": ("974705788", "974705796"),
    "municipality": ("940493021", "940493039"),
    "fastlege": ("912345675", "912345683"),
    "nav": ("889640782", "889640790"),
    "police": ("974760673", "974760681"),
    "housing": ("987654325", "987654333"),
    "corrections": ("971278374", "971278382"),
}
AGENCY_OF = {org_id: agency for agency, orgs in ORGS.items() for org_id in orgs}
FACTORY = EventFactory(seed=11, orgs={agency: orgs[0] for agency, orgs in ORGS.items()})
PERSONS = tuple(FACTORY.nin() for _ in range(2))

# --- the model ------------------------------------------------------------------------------
# DESIGN "Data categories" and "Routing rules", written from the text, not from carebus.
CATEGORY_OF_FIELD = {
    **dict.fromkeys(
        (
            "ward",
            "expected_discharge_at",
            "needs_municipal_services",
            "destination",
            "followup_at",
            "admission_event_id",
            "discharge_ready_event_id",
            "can_receive",
            "expected_ready_at",
            "home_municipality_org",
            "plan_id",
            "status",
            "coordinator",
            "participants",
            "next_review_at",
            "application_id",
            "service",
            "expected_decision_at",
            "outcome",
            "related_event_id",
            "dps_contact",
            "service_kind",
            "with_org",
        ),
        "logistics",
    ),
    "reason": "health",
    "admission_kind": "health",
    "crisis_plan": "health",
    "crisis_plan_id": "health",
    "crisis_plan_reviewed_at": "health",
    "crisis_plan_owner": "health",
    "recipient_org": "health",
    "treatment_id": "health",
    "last_contact_at": "health",
    "referral_needed": "health",
    "referral_id": "health",
    "to": "health",
    "housing_status": "social",
}
# A discharge after these is a risk discharge: the home municipality still learns only the
# statutory notice's logistics (the property below checks that it never learns why).
RISK_REASONS = ("overdose", "suicide_attempt", "possible_suicide_attempt")
ADMISSION_IDS = ("adm-1", "adm-2", "adm-3")
ADMITTING = ("admission", "discharge")
TYPE_CATEGORY_OF_FIELD = {
    ("followup_contact", "kind"): "health",
    ("somatic_check_done", "kind"): "health",
    ("discharge", "kind"): "health",
    ("treatment_interrupted", "kind"): "health",
    ("prison_release", "release_at"): "justice",
    ("prison_release", "home_municipality_org"): "justice",
    ("prison_release", "needs_municipal_services"): "justice",
    ("housing_incident", "kind"): "social",
    ("housing_incident", "severity"): "social",
    ("housing_incident", "housing_unit_id"): "social",
    ("housing_incident", "housing_site_id"): "social",
    ("police_callout", "kind"): "police",
    ("police_callout", "injuries"): "police",
    ("police_callout", "location_type"): "police",
    ("police_callout", "housing_unit_id"): "police",
    # The housing pathway (issue 17 item 2): all social, even an application id or an outcome.
    ("housing_waitlisted", "application_id"): "social",
    ("housing_waitlisted", "housing_kind"): "social",
    ("housing_waitlisted", "position"): "social",
    ("temporary_housing_started", "stay_id"): "social",
    ("temporary_housing_started", "housing_kind"): "social",
    ("temporary_housing_started", "housing_unit_id"): "social",
    ("temporary_housing_ended", "stay_id"): "social",
    ("temporary_housing_ended", "outcome"): "social",
    ("tenancy_at_risk", "cause"): "social",
    ("tenancy_at_risk", "eviction_at"): "social",
    ("tenancy_at_risk", "housing_unit_id"): "social",
    # Brukerplan (item 8): physical health, mental health and substance use are health.
    ("brukerplan_assessment", "assessment_year"): "logistics",
    ("brukerplan_assessment", "housing"): "social",
    ("brukerplan_assessment", "meaningful_activity"): "social",
    ("brukerplan_assessment", "finances"): "social",
    ("brukerplan_assessment", "social_functioning"): "social",
    ("brukerplan_assessment", "network"): "social",
    ("brukerplan_assessment", "physical_health"): "health",
    ("brukerplan_assessment", "mental_health"): "health",
    ("brukerplan_assessment", "substance_use"): "health",
    ("police_callout", "housing_site_id"): "police",
}
FACT_CATEGORY = {
    "police_callout": "police",
    "housing_incident": "social",
    "housing_work_started": "social",
    "treatment_interrupted": "health",
    "prison_release": "justice",
    "housing_waitlisted": "social",
    "temporary_housing_started": "social",
    "temporary_housing_ended": "social",
    "tenancy_at_risk": "social",
    "brukerplan_assessment": "health",
    "somatic_check_done": "health",
    "somatic_referral": "health",
}


def category(event_type: str, name: str) -> str:
    return TYPE_CATEGORY_OF_FIELD.get((event_type, name)) or CATEGORY_OF_FIELD[name]


def fact_category(event_type: str) -> str:
    return FACT_CATEGORY.get(event_type, "logistics")


@dataclass(frozen=True)
class Expected:
    decision: str
    reason: str | None = None
    basis: str | None = None
    fields: frozenset[str] = frozenset()


PLAN_SENDERS = ("municipality", "dps")  # DESIGN: who may send ip_update


def model_team(history: list[tuple[str, dict[str, Any]]]) -> set[str]:
    """Members since an organisation last stepped out (removed itself): every organisation that
    recorded it and did not take that back, or an active plan (by its owner and id, from a
    municipality or a DPS) whose latest update names it."""
    team = set()
    for org_id in AGENCY_OF:
        left_at = max(
            (
                i
                for i, (kind, r) in enumerate(history)
                if kind == "team"
                and r["member"]["org_id"] == org_id
                and r["status"] == "removed"
                and r["recorded_by_org"] == org_id
            ),
            default=-1,
        )
        recorded: dict[str, bool] = {}
        plans: dict[tuple[str, str], dict[str, Any]] = {}
        for kind, r in history[left_at + 1 :]:
            if kind == "team" and r["member"]["org_id"] == org_id:
                recorded[r["recorded_by_org"]] = r["status"] == "member"
            if plan_sent(kind, r):
                plans[(r["source"]["org_id"], r["payload"]["plan_id"])] = r["payload"]
        in_plan = any(
            p["status"] == "active" and org_id in named_by_plan(p) for p in plans.values()
        )
        if any(recorded.values()) or in_plan:
            team.add(org_id)
    return team


def plan_sent(kind: str, record: dict[str, Any]) -> bool:
    return (
        kind == "event"
        and record["event_type"] == "ip_update"
        and record["source"]["agency"] in PLAN_SENDERS
    )


def named_by_plan(payload: dict[str, Any]) -> set[str]:
    named = {p["org_id"] for p in payload["participants"]}
    if payload.get("coordinator"):
        named.add(payload["coordinator"]["org_id"])
    return named


def model_consent(history: list[tuple[str, dict[str, Any]]], org_id: str) -> dict[str, Any] | None:
    """The last consent record in the whole history that covers `org_id`."""
    covering = [
        r
        for kind, r in history
        if kind == "consent"
        and r["recipient"]["agency"] == AGENCY_OF[org_id]
        and r["recipient"]["org_id"] in (None, org_id)
    ]
    return covering[-1] if covering else None


# DESIGN "Payload fields": a discharge's `kind` left out is unknown, which says nothing.
LEFT_OUT = {("discharge", "kind"): "unknown"}


def present(record: dict[str, Any], allowed: set[str]) -> frozenset[str]:
    left_out = {name: v for (t, name), v in LEFT_OUT.items() if t == record["event_type"]}
    return frozenset(
        name
        for name, value in record["payload"].items()
        if value is not None and value != left_out.get(name) and name in allowed
    )


def granted_fields(categories: Any, only: set[str] | None = None) -> set[str]:
    return {
        name
        for category_name, names in categories.items()
        if only is None or category_name in only
        for name in names
    }


def model_decision(
    record: dict[str, Any],
    history: list[tuple[str, dict[str, Any]]],
    org_id: str,
    team: set[str],
    home: str | None,
) -> Expected:
    event_type = record["event_type"]
    if record["emergency"]:
        grant = POLICY.emergency[event_type]
        return Expected(
            "delivered", basis="emergency", fields=present(record, granted_fields(grant.categories))
        )
    outcome: Expected | None = None
    if org_id in team:
        rule = POLICY.rule(event_type, AGENCY_OF[org_id])
        latest = model_consent(history, org_id)
        if rule is None:
            outcome = Expected("withheld", "not_permitted")
        elif rule.basis == "presumed":
            if latest is not None and latest["status"] == "objection":
                outcome = Expected("withheld", "objection")
            else:
                outcome = Expected(
                    "delivered",
                    basis="presumed",
                    fields=present(record, granted_fields(rule.categories)),
                )
        elif latest is None:
            outcome = Expected("withheld", "no_consent")
        elif latest["status"] in ("withdrawn", "objection"):
            reason = "consent_withdrawn" if latest["status"] == "withdrawn" else "objection"
            outcome = Expected("withheld", reason)
        elif latest["valid_to"] is not None and latest["valid_to"] <= NOW:
            outcome = Expected("withheld", "consent_expired")
        elif latest["valid_from"] > NOW:
            outcome = Expected("withheld", "no_consent")
        elif fact_category(event_type) not in latest["categories"]:
            outcome = Expected("withheld", "category_not_consented")
        else:
            allowed = granted_fields(rule.categories, set(latest["categories"]))
            outcome = Expected("delivered", basis="consent", fields=present(record, allowed))
    if org_id == home and (outcome is None or outcome.decision == "withheld"):
        statutory = POLICY.rule(event_type, "home_municipality")
        if statutory is not None:
            outcome = Expected(
                "delivered",
                basis="statutory",
                fields=present(record, granted_fields(statutory.categories)),
            )
    return outcome or Expected("withheld", "not_permitted")


# --- generated histories --------------------------------------------------------------------

organisations = st.sampled_from(sorted(AGENCY_OF))
# Mostly current windows, so that consents often decide; sometimes expired or not yet valid.
valid_froms = st.sampled_from([NOW - 10 * DAY, NOW - 10 * DAY, NOW - DAY, NOW + DAY])
durations = st.none() | st.sampled_from([5 * DAY, 20 * DAY])
consented = st.sampled_from(
    [
        ["health", "logistics", "police", "social"],
        ["health", "logistics", "police", "social"],
        # A release needs `justice`; every category before it existed does not cover one.
        ["health", "justice", "logistics", "police", "social"],
        ["justice", "social"],
        ["logistics", "social"],
        ["logistics"],
        ["police"],
        ["social"],
        [],
    ]
)


Operation = tuple[int, str, dict[str, Any]]
# Mostly the first person, so that one history grows long; the second checks isolation.
persons = st.sampled_from((0, 0, 0, 1))


def is_municipality(org_id: str) -> bool:
    return AGENCY_OF[org_id] == "municipality"


def organisation(org_id: str) -> dict[str, str]:
    return {"agency": AGENCY_OF[org_id], "org_id": org_id}


@st.composite
def consent_changes(draw: st.DrawFn, involved: st.SearchStrategy[str]) -> Operation:
    org_id = draw(involved)
    valid_from = draw(valid_froms)
    duration = draw(durations)
    record = {
        "change_id": "c",
        "subject_key": "",
        "recipient": {"agency": AGENCY_OF[org_id], "org_id": draw(st.none() | st.just(org_id))},
        "categories": draw(consented),
        "status": draw(st.sampled_from(("given", "given", "withdrawn", "objection"))),
        "valid_from": valid_from,
        "valid_to": None if duration is None else valid_from + duration,
        "recorded_by": "test",
        "recorded_by_org": ORGS["municipality"][0],
        "recorded_at": NOW,
    }
    return draw(persons), "consent", record


@st.composite
def care_team_changes(draw: st.DrawFn, involved: st.SearchStrategy[str]) -> Operation:
    org_id = draw(involved)
    record = {
        "change_id": "t",
        "subject_key": "",
        "member": organisation(org_id),
        "role": draw(st.sampled_from(("coordinator", "gp", "participant"))),
        "status": draw(st.sampled_from(("member", "member", "removed"))),
        # Sometimes the member itself (stepping out), mostly another organisation.
        "recorded_by_org": draw(st.just(org_id) | involved),
        "recorded_at": NOW,
    }
    return draw(persons), "team", record


@st.composite
def events(draw: st.DrawFn, involved: st.SearchStrategy[str]) -> Operation:
    person = draw(persons)
    # Admissions and discharges often, mostly from a DPS, so that discharges meet the
    # admissions they name (a risk discharge adds to the home municipality's notice).
    event_type = draw(st.sampled_from(POLICY_EVENT_TYPES) | st.sampled_from(ADMITTING))
    dps = st.sampled_from(ORGS["dps"])
    source = draw(dps | dps | organisations if event_type in ADMITTING else organisations)
    payload: dict[str, Any] = {}
    for name, spec in PAYLOAD_FIELDS[event_type].items():
        if not spec.required and draw(st.booleans()):
            payload[name] = None  # the factory drops it: an optional field left out
    event_id = None
    if event_type == "admission":
        # Often a municipality of the cast, so a home municipality is also in the team.
        home = st.sampled_from(ORGS["municipality"])
        payload["home_municipality_org"] = draw(involved.filter(is_municipality) | home)
        # A few ids and reasons, so that discharges meet their (risk) admissions.
        event_id = draw(st.sampled_from(ADMISSION_IDS))
        if "reason" not in payload:
            payload["reason"] = draw(st.sampled_from((*RISK_REASONS, "psychosis")))
    if event_type == "discharge":
        payload["admission_event_id"] = draw(st.sampled_from((*ADMISSION_IDS, "adm-unknown")))
    if event_type == "ip_update":
        payload["plan_id"] = draw(st.sampled_from(("IP-1", "IP-2")))
        payload["status"] = draw(st.sampled_from(("active", "active", "closed")))
        payload["participants"] = [
            organisation(o) for o in draw(st.lists(involved, max_size=3, unique=True))
        ]
        if "coordinator" not in payload:
            payload["coordinator"] = organisation(draw(involved))
    emergency = None
    if draw(st.integers(0, 9)) == 0:
        named = draw(st.lists(involved, min_size=1, max_size=2, unique=True))
        emergency = {
            "justification": "to avert serious harm",
            "accountable": "vakthavende lege",
            "recipients": [organisation(o) for o in named],
        }
    raw = FACTORY.event(
        event_type,
        nin=PERSONS[person],
        agency=AGENCY_OF[source],
        org_id=source,
        occurred_at=NOW - DAY,
        emergency=emergency,
        event_id=event_id,
        **payload,
    )
    parsed, problems = parse_event(raw)
    assert problems == [], problems
    assert parsed is not None
    return person, "event", event_to_record(parsed, f"subject-{person}", NOW - DAY)


@st.composite
def histories(draw: st.DrawFn) -> list[Operation]:
    """Operations that mostly involve a small cast of organisations, so that consents, team
    memberships and events meet often enough to exercise every decision."""
    cast = [
        draw(st.sampled_from(ORGS["municipality"])),
        *draw(st.lists(organisations, min_size=0, max_size=3, unique=True)),
    ]
    involved = st.one_of(st.sampled_from(cast), st.sampled_from(cast), organisations)
    operation = st.one_of(
        events(involved),
        events(involved),
        consent_changes(involved),
        care_team_changes(involved),
        care_team_changes(involved),
    )
    return draw(st.lists(operation, min_size=10, max_size=40))


# --- the property ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_routing_agrees_with_the_model(history: list[tuple[int, str, dict[str, Any]]]) -> None:
    """For any interleaving of events, consents and care-team changes of several persons, every
    decision is the model's: candidates, basis, reason and fields, each candidate audited once."""
    states = [PersonState() for _ in PERSONS]
    seen: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in PERSONS]
    schema = {"consent": CONSENT_CHANGE, "team": CARE_TEAM_CHANGE}
    for person, kind, record in history:
        seen[person].append((kind, record))
        schema_name = schema.get(kind) or event_schema_name(record["event_type"])
        # What the router keeps between records is the JSON form (its changelog).
        state = PersonState.from_json(json.loads(json.dumps(states[person].to_json())))
        states[person] = apply(state, schema_name, record)
        if kind == "event":
            check_event(record, seen[person], states[person])


def check_event(
    record: dict[str, Any], history: list[tuple[str, dict[str, Any]]], state: PersonState
) -> None:
    routing = route(record, state, POLICY, NOW)
    source = record["source"]["org_id"]

    team = model_team(history)
    if plan_sent("event", record):
        team |= named_by_plan(record["payload"])
    admissions = [
        r
        for kind, r in history
        if kind == "event" and r["event_type"] == "admission" and r["source"]["agency"] == "dps"
    ]
    home = admissions[-1]["payload"]["home_municipality_org"] if admissions else None
    named = (
        {r["org_id"] for r in record["emergency"]["recipients"]} if record["emergency"] else set()
    )
    candidates: set[str] = (team | named | ({home} if home else set())) - {source}

    for delivery in routing.deliveries:
        CODEC.encode(DELIVERY, delivery)
    for disclosure in routing.disclosures:
        CODEC.encode(DISCLOSURE, disclosure)

    if not candidates:
        assert [d["decision"] for d in routing.disclosures] == ["no_candidate"]
        assert routing.deliveries == []
        return
    audited = [_org(d["recipient"]) for d in routing.disclosures]
    assert sorted(audited) == sorted(candidates), "every candidate audited exactly once"
    assert {d["recipient"]["org_id"] for d in routing.deliveries} <= candidates

    deliveries = {d["recipient"]["org_id"]: d for d in routing.deliveries}
    for disclosure in routing.disclosures:
        org_id = _org(disclosure["recipient"])
        expected = model_decision(record, history, org_id, team, home)
        assert disclosure["decision"] == expected.decision, (org_id, disclosure, expected)
        assert disclosure["reason"] == expected.reason
        assert disclosure["basis"] == expected.basis
        assert set(disclosure["fields"]) == expected.fields
        if expected.decision == "withheld":
            assert org_id not in deliveries
            continue
        delivery = deliveries[org_id]
        assert delivery["basis"] in ("statutory", "presumed", "consent", "emergency")
        assert set(json.loads(delivery["payload_json"])) == expected.fields
        delivered_categories = {category(record["event_type"], f) for f in expected.fields}
        assert set(delivery["categories"]) == delivered_categories | {
            fact_category(record["event_type"])
        }
        if delivery["basis"] == "consent":
            latest = model_consent(history, org_id)
            assert latest is not None
            assert set(delivery["categories"]) <= set(latest["categories"])
        if delivery["basis"] == "statutory":
            assert org_id == home
            assert set(delivery["categories"]) <= {"logistics", "social"}
            social = {
                f for f in expected.fields if category(record["event_type"], f) != "logistics"
            }
            assert social <= {"housing_status"}
        if delivery["basis"] == "emergency":
            assert delivery["emergency"] is not None
            assert disclosure["emergency"] is True


def _org(recipient: Organisation | None) -> str:
    """A routing candidate's organisation (the no-candidate audit names none)."""
    assert recipient is not None, "a candidate's disclosure names its recipient"
    return recipient["org_id"]
