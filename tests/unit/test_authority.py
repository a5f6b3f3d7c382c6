"""Tests for carebus.domain.authority: who may say what about a person, and its relations."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from carebus.domain.authority import (
    RULES,
    Actor,
    AuthorityPolicy,
    AuthorityPolicyError,
    Claim,
    ConsentVerdict,
    Refusal,
    claim_problems,
    event_claims,
)
from carebus.domain.events import EVENT_TYPES, Problem, event_to_record, parse_event
from carebus.domain.policy import Policy
from carebus.domain.records import (
    CARE_TEAM_CHANGE,
    CONSENT_CHANGE,
    REGISTER_CHANGE,
    event_schema_name,
)
from carebus.domain.routing import STATE_SENDERS, PersonState, apply, route
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.policy_files import AUTHORITY_PATH as DEFAULT_PATH
from carebus.wire.policy_files import load_authority, load_policy
from carebus.wire.topics import AGENCIES
from carebus_dev.testing import EventFactory

AUTHORITY: AuthorityPolicy = load_authority()
ROUTING: Policy = load_policy(PROJECT_ROOT / "policy" / "routing.yaml")
RAW: dict[str, Any] = yaml.safe_load(DEFAULT_PATH.read_text())
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SUBJECT_KEY = "a" * 64

# Three organisations per agency: the first two may be related to the person (home, admitting,
# GP, members), the third is a stranger unless a test relates it.
ORGS: dict[str, tuple[str, str, str]] = {
    "dps": ("974705788", "974705796", "974705800"),
    "municipality": ("940493021", "940493039", "940493055"),
    "fastlege": ("912345675", "912345683", "912345691"),
    "nav": ("889640782", "889640790", "889640804"),
    "police": ("974760673", "974760681", "974760690"),
    "housing": ("987654325", "987654333", "987654341"),
    "corrections": ("971278374", "971278382", "971278390"),
}
AGENCY_OF = {org_id: agency for agency, orgs in ORGS.items() for org_id in orgs}
FACTORY = EventFactory(seed=12, orgs={agency: orgs[0] for agency, orgs in ORGS.items()})
NIN = FACTORY.nin()

HOME = ORGS["municipality"][0]
ADMITTING = ORGS["dps"][0]
GP = ORGS["fastlege"][0]
MUNICIPAL_MEMBER = ORGS["municipality"][1]  # in the care team, not the home municipality
DPS_MEMBER = ORGS["dps"][1]  # in the care team, no admission
NAV = ORGS["nav"][0]
POLICE = ORGS["police"][0]
HOUSING = ORGS["housing"][0]
STRANGER = {agency: orgs[2] for agency, orgs in ORGS.items()}

HEALTH = ("dps", "municipality", "fastlege")
NON_HEALTH = ("nav", "police", "housing")


# --- builders -------------------------------------------------------------------------------


def actor(org_id: str, role: str = "system") -> Actor:
    return Actor(org_id, AGENCY_OF[org_id], role)


def patient() -> Actor:
    return Actor("", "", "patient")


def organisation(org_id: str) -> dict[str, str]:
    return {"agency": AGENCY_OF[org_id], "org_id": org_id}


def event_record(
    event_type: str, source: str, emergency: Mapping[str, Any] | None = None, **payload: Any
) -> dict[str, Any]:
    """A valid wire record of `event_type` sent by `source` about NIN."""
    raw = FACTORY.event(
        event_type,
        nin=NIN,
        agency=AGENCY_OF[source],
        org_id=source,
        occurred_at=NOW - timedelta(hours=1),
        emergency=emergency,
        **payload,
    )
    parsed, problems = parse_event(raw)
    assert problems == [], problems
    assert parsed is not None
    return event_to_record(parsed, SUBJECT_KEY, NOW)


def admission(dps: str, home: str = HOME) -> dict[str, Any]:
    return event_record("admission", dps, home_municipality_org=home)


def discharge(dps: str, admission_event_id: str) -> dict[str, Any]:
    return event_record("discharge", dps, admission_event_id=admission_event_id)


def plan(
    owner: str,
    coordinator: str | None,
    participants: tuple[str, ...] = (),
    *,
    plan_id: str = "IP-1",
    status: str = "active",
) -> dict[str, Any]:
    """An ip_update record from `owner`."""
    return event_record(
        "ip_update",
        owner,
        plan_id=plan_id,
        status=status,
        coordinator=None if coordinator is None else organisation(coordinator),
        participants=[organisation(o) for o in participants],
    )


def care_team_change(
    org_id: str, recorded_by: str, *, status: str = "member", role: str = "participant"
) -> dict[str, Any]:
    return {
        "change_id": str(uuid.uuid4()),
        "subject_key": SUBJECT_KEY,
        "member": organisation(org_id),
        "role": role,
        "status": status,
        "recorded_by_org": recorded_by,
        "recorded_at": NOW,
    }


def register_change(register: str, org_id: str | None) -> dict[str, Any]:
    """The operator's population-register (home_municipality) or GP-list (gp) entry."""
    return {
        "change_id": str(uuid.uuid4()),
        "subject_key": SUBJECT_KEY,
        "register": register,
        "organisation": None if org_id is None else organisation(org_id),
        "recorded_by_org": "918000008",
        "recorded_at": NOW,
    }


def folded(*records: tuple[str, dict[str, Any]], state: PersonState | None = None) -> PersonState:
    state = state or PersonState()
    for schema_name, record in records:
        state = apply(state, schema_name, record)
    return state


def event(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return event_schema_name(record["event_type"]), record


def team(org_id: str, recorded_by: str = HOME, role: str = "participant") -> tuple[str, Any]:
    return CARE_TEAM_CHANGE, care_team_change(org_id, recorded_by, role=role)


def register(register_name: str, org_id: str | None) -> tuple[str, dict[str, Any]]:
    return REGISTER_CHANGE, register_change(register_name, org_id)


def person() -> PersonState:
    """A person admitted by ADMITTING with HOME as home municipality, GP on the GP list, and
    MUNICIPAL_MEMBER, DPS_MEMBER and one organisation of each non-health agency in the care
    team (put there by the home municipality)."""
    return folded(
        event(admission(ADMITTING)),
        register("gp", GP),
        team(MUNICIPAL_MEMBER),
        team(DPS_MEMBER),
        team(NAV),
        team(POLICE),
        team(HOUSING),
    )


STATE = person()


def judge_event(
    state: PersonState, sender: str, event_type: str, payload: Mapping[str, Any]
) -> Refusal | None:
    """What the gateway decides: the sender check, then the check against the state."""
    who = actor(sender)
    return AUTHORITY.sender_refusal(who, event_type, False) or AUTHORITY.event_refusal(
        state, who, event_type, payload
    )


def rule_of(refusal: Refusal | None) -> tuple[str, str] | None:
    return None if refusal is None else (refusal.rule_id, refusal.field)


def verdict_of(verdict: ConsentVerdict) -> str:
    if verdict.refusal is not None:
        return verdict.refusal.rule_id
    return verdict.effect if verdict.pending_reason is None else verdict.pending_reason


# --- who may send what ----------------------------------------------------------------------


@pytest.mark.parametrize("agency", AGENCIES)
@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_an_agency_sends_exactly_the_event_types_the_policy_lists(
    event_type: str, agency: str
) -> None:
    """Every event type from every agency is accepted exactly when `senders` lists the agency,
    and otherwise refused under sender.event_type naming the field event_type."""
    refusal = AUTHORITY.sender_refusal(actor(ORGS[agency][0]), event_type, False)
    if agency in RAW["senders"][event_type]["agencies"]:
        assert refusal is None
    else:
        assert rule_of(refusal) == ("sender.event_type", "event_type")
        assert refusal is not None
        assert event_type in refusal.message
        assert NIN not in refusal.message


@pytest.mark.parametrize(
    ("event_type", "agencies"),
    [
        ("admission", {"dps"}),
        ("discharge", {"dps"}),
        ("discharge_ready", {"dps"}),
        ("epikrise_sent", {"dps"}),
        ("police_callout", {"police"}),
        ("housing_incident", {"housing", "municipality"}),
        ("ip_update", {"municipality", "dps"}),
        ("application_received", {"municipality", "nav"}),
        ("application_preliminary_reply", {"municipality", "nav"}),
        ("application_decided", {"municipality", "nav"}),
        ("treatment_interrupted", {"dps", "municipality"}),
        ("prison_release", {"corrections"}),
    ],
)
def test_the_senders_the_issue_names_are_the_policys(event_type: str, agencies: set[str]) -> None:
    """The senders issue 12 spells out are the ones the loaded policy enforces."""
    assert AUTHORITY.senders[event_type] == agencies


@pytest.mark.parametrize("event_type", ["somatic_check_done", "somatic_referral"])
def test_only_health_care_states_a_somatic_check_or_referral(event_type: str) -> None:
    """Issue 17 item 5: the GP, the municipal health service or the DPS does the check and
    refers; NAV, housing and police may not say that one was done."""
    assert AUTHORITY.senders[event_type] == {"fastlege", "municipality", "dps"}


def test_a_refused_event_type_names_its_path_in_a_batch() -> None:
    """In a batch, the refusal's field carries the event's path."""
    refusal = AUTHORITY.sender_refusal(actor(POLICE), "admission", False, path="events[3].")
    assert rule_of(refusal) == ("sender.event_type", "events[3].event_type")


# One event type each agency may send, to put an emergency on.
OWN_EVENT = {
    "dps": "admission",
    "municipality": "followup_contact",
    "fastlege": "followup_contact",
    "police": "police_callout",
    "nav": "application_received",
    "housing": "housing_incident",
    "corrections": "prison_release",
}


@pytest.mark.parametrize("agency", AGENCIES)
def test_only_health_agencies_and_the_police_declare_an_emergency(agency: str) -> None:
    """An emergency is declared by dps, municipality, fastlege or police; from nav, housing or
    corrections it is refused under emergency.declarer naming the field emergency."""
    refusal = AUTHORITY.sender_refusal(actor(ORGS[agency][0]), OWN_EVENT[agency], True)
    if agency in ("dps", "municipality", "fastlege", "police"):
        assert refusal is None
    else:
        assert rule_of(refusal) == ("emergency.declarer", "emergency")


def test_an_emergency_on_a_forbidden_event_type_is_refused_for_the_event_type() -> None:
    """An agency that may not send the event type is refused for that first."""
    refusal = AUTHORITY.sender_refusal(actor(NAV), "admission", True)
    assert rule_of(refusal) == ("sender.event_type", "event_type")


# --- plans: sender × relation × what the plan names -------------------------------------------

OTHER_MEMBERS = (GP, NAV)  # organisations other than the sender that a plan may name


def payload_of(record: Mapping[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = record["payload"]
    return payload


def names_self_as_coordinator(sender: str) -> dict[str, Any]:
    return payload_of(plan(sender, sender, OTHER_MEMBERS))


def names_self_as_participant(sender: str) -> dict[str, Any]:
    other_coordinator = MUNICIPAL_MEMBER if sender != MUNICIPAL_MEMBER else HOME
    return payload_of(plan(sender, other_coordinator, (GP, sender)))


def names_others(sender: str) -> dict[str, Any]:
    other_coordinator = MUNICIPAL_MEMBER if sender != MUNICIPAL_MEMBER else HOME
    return payload_of(plan(sender, other_coordinator, OTHER_MEMBERS))


CLAIMS: dict[str, Callable[[str], dict[str, Any]]] = {
    "self as coordinator": names_self_as_coordinator,
    "self as participant": names_self_as_participant,
    "others": names_others,
}
SELF_ADD_FIELD = {
    "self as coordinator": "payload.coordinator.org_id",
    "self as participant": "payload.participants[1].org_id",
}
PLAN_SENDERS = {
    "home municipality": HOME,
    "admitting DPS": ADMITTING,
    "member municipality": MUNICIPAL_MEMBER,
    "member DPS": DPS_MEMBER,
    "GP on the GP list": GP,
    "member police": POLICE,
    "stranger municipality": STRANGER["municipality"],
    "stranger DPS": STRANGER["dps"],
    "stranger police": STRANGER["police"],
}


def expected_plan_refusal(sender: str, claim: str) -> tuple[str, str] | None:
    if sender in (GP, POLICE, STRANGER["police"]):
        return ("sender.event_type", "event_type")
    if sender in (STRANGER["municipality"], STRANGER["dps"]):
        return ("relation.required", "subject")
    if sender in (HOME, ADMITTING) or claim == "others":
        return None
    return ("care_team.self_add", SELF_ADD_FIELD[claim])


@pytest.mark.parametrize("claim", CLAIMS)
@pytest.mark.parametrize("sender_name", PLAN_SENDERS)
def test_a_plan_is_judged_by_its_senders_relation_and_what_it_names(
    sender_name: str, claim: str
) -> None:
    """Only the home municipality or the admitting DPS names itself in its plan; another member
    may name others; a GP or the police sends no plan; a stranger makes no plan at all."""
    sender = PLAN_SENDERS[sender_name]
    state = folded(
        event(admission(ADMITTING)),
        register("gp", GP),
        team(MUNICIPAL_MEMBER),
        team(DPS_MEMBER),
        team(POLICE),
    )
    refusal = judge_event(state, sender, "ip_update", CLAIMS[claim](sender))
    assert rule_of(refusal) == expected_plan_refusal(sender, claim)


@pytest.mark.parametrize("status", ["active", "closed"])
def test_a_stranger_cannot_close_or_open_a_plan(status: str) -> None:
    """A municipality with no relation is refused any plan, active or closed."""
    payload = plan(STRANGER["municipality"], HOME, (GP,), status=status)["payload"]
    refusal = judge_event(STATE, STRANGER["municipality"], "ip_update", payload)
    assert rule_of(refusal) == ("relation.required", "subject")


def test_a_plan_without_a_coordinator_is_judged_by_its_participants() -> None:
    """A member naming itself among the participants of a plan without coordinator is refused."""
    payload = plan(MUNICIPAL_MEMBER, None, (GP, NAV, MUNICIPAL_MEMBER))["payload"]
    refusal = judge_event(STATE, MUNICIPAL_MEMBER, "ip_update", payload)
    assert rule_of(refusal) == ("care_team.self_add", "payload.participants[2].org_id")


def test_the_home_municipality_from_the_register_names_itself_coordinator() -> None:
    """The population register's home municipality may make itself coordinator of its plan."""
    state = folded(register("home_municipality", HOME))
    assert judge_event(state, HOME, "ip_update", names_self_as_coordinator(HOME)) is None


def test_an_admissions_home_outranked_by_the_register_is_a_stranger() -> None:
    """A municipality an admission named after the register named another has no relation."""
    other = STRANGER["municipality"]
    state = folded(register("home_municipality", HOME), event(admission(ADMITTING, home=other)))
    refusal = judge_event(state, other, "ip_update", names_self_as_coordinator(other))
    assert rule_of(refusal) == ("relation.required", "subject")


def test_the_police_naming_itself_dps_coordinator_is_refused() -> None:
    """The issue's attack: a police ip_update naming itself coordinator is refused outright."""
    payload = plan(POLICE, None, ())["payload"]
    payload["coordinator"] = {"agency": "dps", "org_id": POLICE}
    refusal = judge_event(STATE, POLICE, "ip_update", payload)
    assert rule_of(refusal) == ("sender.event_type", "event_type")


def test_a_discharged_dps_no_longer_names_itself() -> None:
    """After its discharge the DPS is only a care-team member: it may not name itself again."""
    admitted = admission(ADMITTING)
    state = folded(
        event(admitted),
        event(plan(ADMITTING, ADMITTING, (GP,))),
        event(discharge(ADMITTING, admitted["event_id"])),
    )
    refusal = judge_event(state, ADMITTING, "ip_update", names_self_as_coordinator(ADMITTING))
    assert rule_of(refusal) == ("care_team.self_add", "payload.coordinator.org_id")


@pytest.mark.parametrize(
    "event_type", [t for t in EVENT_TYPES if t not in ("ip_update", "brukerplan_assessment")]
)
def test_only_plans_and_brukerplan_need_a_relation(event_type: str) -> None:
    """Events other than ip_update and brukerplan_assessment are judged by their sender alone."""
    payload = event_record(event_type, ORGS[OWN_EVENT_ANY[event_type]][1])["payload"]
    who = actor(ORGS[OWN_EVENT_ANY[event_type]][1])
    assert AUTHORITY.event_refusal(PersonState(), who, event_type, payload) is None


OWN_EVENT_ANY = {t: sorted(RAW["senders"][t]["agencies"])[0] for t in EVENT_TYPES}


# --- care-team changes ------------------------------------------------------------------------

TEAM_ACTORS = {
    "home municipality": HOME,
    "admitting DPS": ADMITTING,
    "member municipality": MUNICIPAL_MEMBER,
    "member NAV": NAV,
    "GP on the GP list": GP,
    "stranger DPS": STRANGER["dps"],
    "stranger NAV": STRANGER["nav"],
}


def expected_team_refusal(
    recorder: str, target: str, status: str, role: str
) -> tuple[str, str] | None:
    if status == "removed" and target == "self":
        return None  # stepping out is always allowed
    if recorder in (STRANGER["dps"], STRANGER["nav"]):
        return ("relation.required", "nin")
    if status == "removed":
        return None  # takes back only what the recorder itself recorded
    if target == "self" and recorder not in (HOME, ADMITTING):
        return ("care_team.self_add", "org_id")
    if AGENCY_OF[recorder] not in ("dps", "municipality", "fastlege"):
        return ("care_team.recorder", "org_id")  # membership brings health sharing
    if role == "coordinator" and recorder not in (HOME, ADMITTING):
        return ("care_team.recorder", "role")
    if role == "pathway_coordinator" and not (target == "self" and recorder == ADMITTING):
        return ("care_team.recorder", "role")  # the DPS names itself, or the coordinator
    return None


@pytest.mark.parametrize("role", ["participant", "coordinator", "pathway_coordinator"])
@pytest.mark.parametrize("status", ["member", "removed"])
@pytest.mark.parametrize("target", ["self", "other"])
@pytest.mark.parametrize("recorder_name", TEAM_ACTORS)
def test_a_care_team_change_is_judged_by_its_recorders_relation(
    recorder_name: str, target: str, status: str, role: str
) -> None:
    """Self-adding is refused unless home or admitting, stepping out is always allowed, members
    are added only by health organisations, coordinators named only by the home municipality or
    the admitting DPS, and a stranger changes nothing else."""
    recorder = TEAM_ACTORS[recorder_name]
    org_id = recorder if target == "self" else ORGS["housing"][1]
    refusal = AUTHORITY.care_team_refusal(STATE, actor(recorder), org_id, status, role)
    assert rule_of(refusal) == expected_team_refusal(recorder, target, status, role)


def test_the_coordinator_may_add_members_and_hand_over() -> None:
    """The coordinator (NAV here, named by the registry) may add a member and name another
    coordinator, though NAV is not a health organisation."""
    state = folded(team(NAV, role="coordinator"), state=STATE)
    for role in ("participant", "coordinator", "pathway_coordinator"):
        assert AUTHORITY.care_team_refusal(state, actor(NAV), DPS_MEMBER, "member", role) is None


def test_a_gp_relation_comes_only_from_the_gp_list() -> None:
    """A GP not on the GP list is a stranger to the person, whatever it claims."""
    refusal = AUTHORITY.care_team_refusal(
        STATE, actor(STRANGER["fastlege"]), GP, "member", "participant"
    )
    assert rule_of(refusal) == ("relation.required", "nin")


# --- contact persons (issue 17, item 4) ------------------------------------------------------

# The home municipality is in the team here (as coordinator): STATE leaves it outside.
CONTACT_STATE = folded(team(HOME, role="coordinator"), state=STATE)
CONTACT_CASES = {
    # recorder, the organisation it names staff of -> the refusal
    "home municipality, its own staff": (HOME, HOME, None),
    "member municipality, its own staff": (MUNICIPAL_MEMBER, MUNICIPAL_MEMBER, None),
    "GP on the GP list, its own staff": (GP, GP, None),
    "member NAV, its own staff": (NAV, NAV, None),
    "member municipality, another member's staff": (
        MUNICIPAL_MEMBER, DPS_MEMBER, ("contact.own_staff", "org_id")
    ),
    "stranger DPS, its own staff": (STRANGER["dps"], STRANGER["dps"], ("contact.own_staff", "nin")),
    "stranger DPS, a member's staff": (
        STRANGER["dps"], DPS_MEMBER, ("contact.own_staff", "org_id")
    ),
    "stranger GP, its own staff": (
        STRANGER["fastlege"], STRANGER["fastlege"], ("contact.own_staff", "nin")
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CONTACT_CASES)
def test_an_organisation_names_only_its_own_staff_and_only_while_it_serves_the_person(
    case: str,
) -> None:
    """Contact persons: one's own staff only, and only in the care team or as the GP on the GP
    list; the home municipality names its staff because it is a member here."""
    recorder, org_id, expected = CONTACT_CASES[case]
    refusal = AUTHORITY.contact_refusal(CONTACT_STATE, actor(recorder), org_id)
    assert rule_of(refusal) == expected


def test_outside_the_team_no_one_is_named_not_even_by_the_home_municipality() -> None:
    """An open admission or being the home municipality is a relation but not care-team
    membership: the DPS names its pathway coordinator once it is in the team. A member that
    stepped out names no one any more."""
    assert rule_of(AUTHORITY.contact_refusal(STATE, actor(HOME), HOME)) == (
        "contact.own_staff",
        "nin",
    )
    assert rule_of(AUTHORITY.contact_refusal(STATE, actor(ADMITTING), ADMITTING)) == (
        "contact.own_staff",
        "nin",
    )
    stepped_out = care_team_change(DPS_MEMBER, DPS_MEMBER, status="removed")
    out = folded((CARE_TEAM_CHANGE, stepped_out), state=CONTACT_STATE)
    assert rule_of(AUTHORITY.contact_refusal(out, actor(DPS_MEMBER), DPS_MEMBER)) == (
        "contact.own_staff",
        "nin",
    )


# --- consents and objections ------------------------------------------------------------------

COORDINATOR_NAV = ORGS["nav"][1]  # the coordinator, from the registry
CONSENT_STATE = folded(team(COORDINATOR_NAV, role="coordinator"), state=STATE)

Recipient = tuple[str, str | None]


def consent_verdict(recorder: Actor, recipient: Recipient, status: str) -> str:
    verdict = AUTHORITY.consent_verdict(CONSENT_STATE, recorder, recipient[0], recipient[1], status)
    return verdict_of(verdict)


@pytest.mark.parametrize("recorder", [HOME, ADMITTING, GP, MUNICIPAL_MEMBER, DPS_MEMBER])
@pytest.mark.parametrize("agency_wide", [False, True])
def test_a_health_organisation_with_a_relation_records_consent_for_another(
    recorder: str, agency_wide: bool
) -> None:
    """A consent given by a health organisation with a relation for another recipient (of
    another agency, or another organisation of its own) takes effect at once."""
    if agency_wide:
        recipient: Recipient = ("nav", None)
    else:
        recipient = ("dps", STRANGER["dps"]) if recorder != STRANGER["dps"] else ("nav", NAV)
    assert consent_verdict(actor(recorder), recipient, "given") == "effective"


@pytest.mark.parametrize("recorder", [HOME, ADMITTING, GP, NAV, POLICE, HOUSING])
@pytest.mark.parametrize("agency_wide", [False, True])
def test_a_consent_for_the_recorder_itself_waits(recorder: str, agency_wide: bool) -> None:
    """A consent naming the recorder (or its whole agency) as recipient is pending with the
    reason consent.self_recipient."""
    recipient = (AGENCY_OF[recorder], None if agency_wide else recorder)
    assert consent_verdict(actor(recorder), recipient, "given") == "consent.self_recipient"


@pytest.mark.parametrize("recorder", [NAV, POLICE, HOUSING, COORDINATOR_NAV])
def test_a_consent_recorded_outside_health_care_waits(recorder: str) -> None:
    """A consent for another recipient recorded by nav, police or housing with a relation is
    pending with the reason consent.non_health_recorder."""
    verdict = consent_verdict(actor(recorder), ("dps", STRANGER["dps"]), "given")
    assert verdict == "consent.non_health_recorder"


@pytest.mark.parametrize("status", ["given", "withdrawn", "objection"])
@pytest.mark.parametrize("recorder", [STRANGER["dps"], STRANGER["municipality"], STRANGER["nav"]])
def test_a_stranger_records_nothing_about_others(recorder: str, status: str) -> None:
    """An organisation without a relation is refused under relation.required (field nin)."""
    state = PersonState()
    verdict = AUTHORITY.consent_verdict(state, actor(recorder), "fastlege", GP, status)
    assert verdict.refusal is not None
    assert (verdict.refusal.rule_id, verdict.refusal.field) == ("relation.required", "nin")


@pytest.mark.parametrize("status", ["withdrawn", "objection"])
@pytest.mark.parametrize("recorder", [NAV, POLICE, HOUSING])
@pytest.mark.parametrize(
    "recipient", [("dps", ADMITTING), ("fastlege", None), ("municipality", HOME)]
)
def test_nav_police_and_housing_cannot_cut_others_off(
    recorder: str, recipient: Recipient, status: str
) -> None:
    """An objection or withdrawal by nav, police or housing against another organisation is
    refused under objection.recorder (field status)."""
    verdict = AUTHORITY.consent_verdict(
        CONSENT_STATE, actor(recorder), recipient[0], recipient[1], status
    )
    assert verdict.refusal is not None
    assert (verdict.refusal.rule_id, verdict.refusal.field) == ("objection.recorder", "status")


@pytest.mark.parametrize("status", ["withdrawn", "objection"])
@pytest.mark.parametrize("recorder", [NAV, POLICE, HOUSING, STRANGER["police"], GP])
def test_an_organisation_may_always_restrict_its_own_access(recorder: str, status: str) -> None:
    """An objection or withdrawal naming the recorder itself takes effect at once, relation or
    not."""
    recipient = (AGENCY_OF[recorder], recorder)
    assert consent_verdict(actor(recorder), recipient, status) == "effective"


@pytest.mark.parametrize("status", ["withdrawn", "objection"])
@pytest.mark.parametrize("recorder", [NAV, POLICE, HOUSING, STRANGER["police"]])
def test_no_one_outside_health_restricts_its_whole_agency(recorder: str, status: str) -> None:
    """An agency-wide objection or withdrawal blinds the recorder's sister organisations too:
    police, NAV and housing may not record it (a stranger: no relation)."""
    verdict = AUTHORITY.consent_verdict(
        CONSENT_STATE, actor(recorder), AGENCY_OF[recorder], None, status
    )
    assert verdict.refusal is not None
    assert verdict.refusal.rule_id in ("objection.recorder", "relation.required")


def test_a_confirmation_never_undoes_a_later_restriction() -> None:
    """A withdrawal or objection covering a pending consent's recipient, recorded after the
    consent, makes it unconfirmable; one recorded before does not."""
    state = folded(objection_record(GP, "objection", NOW - timedelta(hours=1)), state=STATE)
    assert AUTHORITY.restricted_since(state, "fastlege", GP, NOW - timedelta(hours=2))
    assert AUTHORITY.restricted_since(state, "fastlege", None, NOW - timedelta(hours=2))
    assert not AUTHORITY.restricted_since(state, "fastlege", GP, NOW)
    assert not AUTHORITY.restricted_since(state, "nav", None, NOW - timedelta(hours=2))


@pytest.mark.parametrize("status", ["withdrawn", "objection"])
@pytest.mark.parametrize("recorder", [HOME, ADMITTING, GP, MUNICIPAL_MEMBER, COORDINATOR_NAV])
def test_health_members_and_the_coordinator_restrict_others(recorder: str, status: str) -> None:
    """Health organisations with a relation and the coordinator (of any agency) record
    objections and withdrawals against others, effective at once."""
    assert consent_verdict(actor(recorder), ("dps", DPS_MEMBER), status) == "effective"


@pytest.mark.parametrize("status", ["given", "withdrawn", "objection"])
@pytest.mark.parametrize("recipient", [("police", None), ("police", POLICE), ("dps", ADMITTING)])
def test_the_patients_own_word_takes_effect(recipient: Recipient, status: str) -> None:
    """Whatever the patient states through their own channel takes effect at once."""
    verdict = AUTHORITY.consent_verdict(
        PersonState(), patient(), recipient[0], recipient[1], status
    )
    assert verdict == ConsentVerdict()


# --- confirmations --------------------------------------------------------------------------

CONFIRMATIONS: list[tuple[str, Actor, Recipient, bool]] = [
    ("a health organisation with a relation", actor(GP), ("nav", None), True),
    ("the admitting DPS for another DPS", actor(ADMITTING), ("dps", DPS_MEMBER), True),
    ("the recipient itself", actor(NAV), ("nav", NAV), False),
    ("a member of the recipient agency", actor(DPS_MEMBER), ("dps", None), False),
    ("NAV with a relation", actor(NAV), ("dps", ADMITTING), False),
    ("the police with a relation", actor(POLICE), ("fastlege", GP), False),
    ("a health stranger", actor(STRANGER["dps"]), ("nav", NAV), False),
    ("the patient", patient(), ("police", None), True),
]


@pytest.mark.parametrize(
    ("confirmer", "recipient", "confirms"),
    [case[1:] for case in CONFIRMATIONS],
    ids=[case[0] for case in CONFIRMATIONS],
)
def test_a_pending_consent_is_confirmed_by_a_disinterested_health_organisation(
    confirmer: Actor, recipient: Recipient, confirms: bool
) -> None:
    """A health organisation with a relation that the consent does not cover, or the patient,
    confirms; anyone else is refused under consent.confirmer (field consent_id)."""
    refusal = AUTHORITY.confirmation_refusal(STATE, confirmer, recipient[0], recipient[1])
    assert rule_of(refusal) == (None if confirms else ("consent.confirmer", "consent_id"))


# --- the loader -----------------------------------------------------------------------------


def write_variant(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    raw = yaml.safe_load(DEFAULT_PATH.read_text())
    change(raw)
    path = tmp_path / "authority.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_policy_loads_as_written() -> None:
    """The checked-in policy loads, explains every rule and lists every event type."""
    assert set(AUTHORITY.senders) == set(EVENT_TYPES)
    assert AUTHORITY.health_agencies == {"dps", "municipality", "fastlege"}
    assert AUTHORITY.emergency_declarers == {"dps", "municipality", "fastlege", "police"}
    assert set(RULES) <= set(RAW["rules"])


def drop_why(raw: dict[str, Any]) -> None:
    del raw["rules"]["care_team.self_add"]["why"]


def drop_rule(raw: dict[str, Any]) -> None:
    del raw["rules"]["objection.recorder"]


def drop_pending(raw: dict[str, Any]) -> None:
    del raw["pending"]["consent.non_health_recorder"]


def drop_source(raw: dict[str, Any]) -> None:
    del raw["senders"]["admission"]["source"]


def blank_source(raw: dict[str, Any]) -> None:
    raw["emergency_declarers"]["source"] = "  "


def unknown_agency(raw: dict[str, Any]) -> None:
    raw["senders"]["admission"]["agencies"].append("hospital")


def unknown_health_agency(raw: dict[str, Any]) -> None:
    raw["health_agencies"].append("pharmacy")


def missing_event_type(raw: dict[str, Any]) -> None:
    del raw["senders"]["epikrise_sent"]


def unknown_event_type(raw: dict[str, Any]) -> None:
    raw["senders"]["prescription"] = {"agencies": ["fastlege"], "source": "x"}


def no_senders(raw: dict[str, Any]) -> None:
    raw["senders"]["discharge"]["agencies"] = []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (drop_why, "rules.care_team.self_add"),
        (drop_rule, "rules.objection.recorder"),
        (drop_pending, "pending.consent.non_health_recorder"),
        (drop_source, "senders.admission: must cite a source"),
        (blank_source, "emergency_declarers: must cite a source"),
        (unknown_agency, "unknown agencies ['hospital']"),
        (unknown_health_agency, "unknown agencies ['pharmacy']"),
        (missing_event_type, "no entry for ['epikrise_sent']"),
        (unknown_event_type, "unknown event types ['prescription']"),
        (no_senders, "senders.discharge.agencies"),
    ],
)
def test_the_loader_refuses_an_incomplete_policy(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], named: str
) -> None:
    """A policy missing an explanation, a source, an event type, or naming an unknown agency
    or event type is refused with an error naming the entry."""
    with pytest.raises(AuthorityPolicyError) as raised:
        load_authority(write_variant(tmp_path, change))
    assert named in str(raised.value)


def test_the_loader_refuses_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    """A policy file that is not YAML mapping is refused."""
    path = tmp_path / "authority.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(AuthorityPolicyError, match="must be a mapping"):
        load_authority(path)


def test_the_loader_refuses_a_missing_file(tmp_path: Path) -> None:
    """A missing policy file is refused, naming the file."""
    with pytest.raises(AuthorityPolicyError, match="cannot read"):
        load_authority(tmp_path / "absent.yaml")


def test_the_fold_repeats_the_policys_senders() -> None:
    """STATE_SENDERS, the senders the fold trusts, are the policy's for those event types."""
    assert {t: AUTHORITY.senders[t] for t in STATE_SENDERS} == dict(STATE_SENDERS)


REFUSED_STATE_SENDERS = [
    (event_type, agency)
    for event_type in sorted(STATE_SENDERS)
    for agency in AGENCIES
    if agency not in AUTHORITY.senders[event_type]
]


@pytest.mark.parametrize(("event_type", "agency"), REFUSED_STATE_SENDERS)
def test_a_state_event_from_an_agency_that_may_not_send_it_changes_nothing(
    event_type: str, agency: str
) -> None:
    """A record of a state-changing event from an agency the policy refuses leaves the state as
    it was, however it reached the stream."""
    source = ORGS[agency][1]
    payload: dict[str, Any] = {}
    if event_type == "ip_update":
        payload = {"coordinator": organisation(source), "participants": [organisation(source)]}
    if event_type == "admission":
        payload = {"home_municipality_org": STRANGER["municipality"]}
    state = apply(STATE, *event(event_record(event_type, source, **payload)))
    assert state is STATE


# --- relations --------------------------------------------------------------------------------


def test_an_organisation_without_a_relation_has_none() -> None:
    """A stranger's relations are empty."""
    assert STATE.relations(STRANGER["dps"]) == frozenset()


def test_a_care_team_member_from_the_registry_is_related() -> None:
    """A registry member-add makes the member related through the care team."""
    assert folded(team(NAV)).relations(NAV) == {"care_team"}


def test_a_plans_members_are_related_and_its_closing_removes_them() -> None:
    """Whom an active plan names is in the care team until the plan closes."""
    opened = folded(register("home_municipality", HOME), event(plan(HOME, HOME, (GP, NAV))))
    assert opened.relations(NAV) == {"care_team"}
    assert opened.relations(HOME) == {"care_team", "home_municipality"}
    closed = folded(event(plan(HOME, None, (), status="closed")), state=opened)
    assert closed.relations(NAV) == frozenset()
    assert closed.relations(HOME) == {"home_municipality"}


def test_stepping_out_ends_the_care_team_relation() -> None:
    """A member that removes itself is no longer related, whoever added it."""
    state = folded(team(NAV), team(NAV, recorded_by=GP))
    left = folded((CARE_TEAM_CHANGE, care_team_change(NAV, NAV, status="removed")), state=state)
    assert left.relations(NAV) == frozenset()


def test_a_recorder_takes_back_only_its_own_membership() -> None:
    """Removing a member another organisation also recorded leaves it in the team."""
    state = folded(team(NAV), team(NAV, recorded_by=GP))
    removed = folded((CARE_TEAM_CHANGE, care_team_change(NAV, GP, status="removed")), state=state)
    assert removed.relations(NAV) == {"care_team"}


def test_an_admission_names_the_home_municipality() -> None:
    """A DPS admission's home municipality is related as home municipality."""
    assert folded(event(admission(ADMITTING))).relations(HOME) == {"home_municipality"}


def test_the_latest_admission_names_the_home_municipality() -> None:
    """A later admission naming another home municipality replaces the earlier one."""
    other = STRANGER["municipality"]
    state = folded(event(admission(ADMITTING)), event(admission(DPS_MEMBER, home=other)))
    assert state.home_municipality == other
    assert state.relations(HOME) == frozenset()


@pytest.mark.parametrize("register_first", [True, False])
def test_the_population_register_outranks_an_admission(register_first: bool) -> None:
    """The operator's register entry is the home municipality, before or after an admission."""
    other = STRANGER["municipality"]
    records = [register("home_municipality", HOME), event(admission(ADMITTING, home=other))]
    state = folded(*(records if register_first else records[::-1]))
    assert state.relations(HOME) == {"home_municipality"}
    assert state.relations(other) == frozenset()


def test_clearing_the_register_leaves_no_home_until_an_admission_names_one() -> None:
    """A cleared register entry leaves no home municipality; the next admission names it."""
    other = STRANGER["municipality"]
    cleared = folded(register("home_municipality", HOME), register("home_municipality", None))
    assert cleared.home_municipality is None
    assert folded(event(admission(ADMITTING, home=other)), state=cleared).relations(other) == {
        "home_municipality"
    }


def test_the_gp_list_makes_the_gp_related() -> None:
    """The GP on the GP list is related as gp and is a care-team member with the role gp
    (issue 17: the GP hears of discharges without anyone adding it); another GP, or the GP once
    cleared or replaced, is neither."""
    state = folded(register("gp", GP))
    assert state.relations(GP) == {"gp", "care_team"}
    assert state.team[GP].role == "gp"
    assert state.relations(STRANGER["fastlege"]) == frozenset()
    assert folded(register("gp", None), state=state).relations(GP) == frozenset()
    moved = folded(register("gp", STRANGER["fastlege"]), state=state)
    assert moved.relations(GP) == frozenset()
    assert moved.relations(STRANGER["fastlege"]) == {"gp", "care_team"}


def test_an_admission_opens_the_admitting_relation_and_its_discharge_closes_it() -> None:
    """A DPS is admitting from its admission until a discharge naming that admission."""
    admitted = admission(ADMITTING)
    state = folded(event(admitted))
    assert state.relations(ADMITTING) == {"admitting"}
    other = folded(event(discharge(ADMITTING, "dps-974705788-2026-999999")), state=state)
    assert other.relations(ADMITTING) == {"admitting"}
    closed = folded(event(discharge(ADMITTING, admitted["event_id"])), state=state)
    assert closed.relations(ADMITTING) == frozenset()


def test_a_dps_stays_admitting_while_another_of_its_admissions_is_open() -> None:
    """Discharging one of two admissions leaves the DPS admitting."""
    first, second = admission(ADMITTING), admission(ADMITTING)
    state = folded(event(first), event(second), event(discharge(ADMITTING, first["event_id"])))
    assert state.relations(ADMITTING) == {"admitting"}


def test_another_dps_cannot_discharge_an_admission() -> None:
    """A discharge from another DPS naming the admission leaves the admitting DPS admitting."""
    admitted = admission(ADMITTING)
    state = folded(event(admitted), event(discharge(DPS_MEMBER, admitted["event_id"])))
    assert state.relations(ADMITTING) == {"admitting"}


def test_relations_accumulate() -> None:
    """One organisation may hold several relations at once."""
    state = folded(
        register("home_municipality", HOME), register("gp", GP), team(GP, recorded_by=HOME)
    )
    assert state.relations(HOME) == {"home_municipality"}
    assert state.relations(GP) == {"gp", "care_team"}
    assert folded(team(ADMITTING), event(admission(ADMITTING))).relations(ADMITTING) == {
        "care_team",
        "admitting",
    }


# --- reported, not yet fixed -------------------------------------------------------------------


def objection_record(org_id: str, status: str, recorded_at: datetime) -> tuple[str, Any]:
    return CONSENT_CHANGE, {
        "change_id": str(uuid.uuid4()),
        "subject_key": SUBJECT_KEY,
        "recipient": organisation(org_id),
        "categories": ["logistics"],
        "status": status,
        "valid_from": NOW - timedelta(days=10),
        "valid_to": None,
        "recorded_by": "test",
        "recorded_by_org": org_id,
        "recorded_at": recorded_at,
    }


def test_an_organisation_cannot_lift_an_objection_against_itself() -> None:
    """After the patient objects to the GP, the GP's own `withdrawn` (judged, then folded if
    accepted) does not bring presumed deliveries back: that would widen its own access."""
    state = folded(register("home_municipality", HOME), register("gp", GP))
    state = folded(objection_record(GP, "objection", NOW - timedelta(hours=2)), state=state)
    verdict = AUTHORITY.consent_verdict(state, actor(GP), "fastlege", GP, "withdrawn")
    if verdict.refusal is None and verdict.effect == "effective":
        state = folded(objection_record(GP, "withdrawn", NOW - timedelta(hours=1)), state=state)
    record = plan(HOME, HOME, (GP,))
    routing = route(record, apply(state, *event(record)), ROUTING, NOW)
    assert GP not in {d["recipient"]["org_id"] for d in routing.deliveries}


def test_a_closed_plans_coordinator_no_longer_restricts_others() -> None:
    """NAV, named coordinator by a plan that has since closed (and still a registry member),
    may not record an objection against the admitting DPS."""
    state = folded(
        register("home_municipality", HOME),
        team(NAV),
        event(plan(HOME, NAV, ())),
        event(plan(HOME, None, (), status="closed")),
    )
    verdict = AUTHORITY.consent_verdict(state, actor(NAV), "dps", ADMITTING, "objection")
    assert verdict.refusal is not None
    assert verdict.refusal.rule_id == "objection.recorder"


# --- organisations an event names -------------------------------------------------------------


def test_a_scheduled_follow_up_names_a_health_service_as_the_one_who_holds_it() -> None:
    """`with_org` must be registered as a DPS, a municipality or a GP; NAV or an unknown number
    is refused naming the field."""
    claims = event_claims({"related_event_id": "d-1", "with_org": "940493021"}, None)
    assert claims == [
        Claim("payload.with_org", "dps", "940493021", alternatives=("municipality", "fastlege"))
    ]
    for agency in ("dps", "municipality", "fastlege"):
        assert claim_problems(claims, {"940493021": agency}) == []
    problem = "is not a registered dps, municipality or fastlege organisation"
    assert claim_problems(claims, {"940493021": "nav"}) == [Problem("payload.with_org", problem)]
    assert claim_problems(claims, {}) == [Problem("payload.with_org", problem)]
    assert event_claims({"related_event_id": "d-1"}, None) == []


def test_the_crisis_plan_owner_is_checked_against_the_directory() -> None:
    """The owner a plan or discharge names must be registered as the agency it is said to be."""
    owner = {"agency": "municipality", "org_id": "940493021"}
    claims = event_claims({"plan_id": "IP-1", "crisis_plan_owner": owner}, None)
    assert claims == [Claim("payload.crisis_plan_owner.org_id", "municipality", "940493021")]
    assert claim_problems(claims, {"940493021": "municipality"}) == []
    assert claim_problems(claims, {"940493021": "dps"}) == [
        Problem("payload.crisis_plan_owner.org_id", "is not a registered municipality organisation")
    ]


def test_a_claim_of_one_agency_is_named_alone() -> None:
    """The GP an epikrise goes to must be registered as a GP, and the problem says so."""
    claims = event_claims({"recipient_org": "912345675"}, None)
    assert claim_problems(claims, {"912345675": "dps"}) == [
        Problem("payload.recipient_org", "is not a registered fastlege organisation")
    ]


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        (HOME, None),
        (MUNICIPAL_MEMBER, None),
        (STRANGER["municipality"], ("relation.required", "subject")),
    ],
    ids=["home_municipality", "care_team_member", "stranger"],
)
def test_a_brukerplan_assessment_needs_a_relation(
    sender: str, expected: tuple[str, str] | None
) -> None:
    """The home municipality or a municipality in the care team may post the person's scores;
    a municipality with no relation may not (its red score would shorten another's deadline)."""
    payload = event_record("brukerplan_assessment", sender)["payload"]
    assert rule_of(judge_event(STATE, sender, "brukerplan_assessment", payload)) == expected


@pytest.mark.parametrize(
    ("recorder", "role", "expected"),
    [
        (HOME, "coordinator", None),  # the care team's coordinator
        (MUNICIPAL_MEMBER, "coordinator", ("contact.own_staff", "role")),  # a participant
        (NAV, "coordinator", ("contact.own_staff", "role")),
        (NAV, "contact", None),
        (MUNICIPAL_MEMBER, "pathway_coordinator", ("contact.own_staff", "role")),
        (GP, "gp", None),  # the GP on the GP list
        (MUNICIPAL_MEMBER, "gp", ("contact.own_staff", "role")),
    ],
)
def test_a_coordinators_contact_is_named_only_by_the_coordinator(
    recorder: str, role: str, expected: tuple[str, str] | None
) -> None:
    """Review finding: a participant (a municipality, NAV, the police) naming its own staff
    with the role coordinator would show "coordinator: <name>" to every health member under an
    organisation that is not the coordinator. A role's contact needs the role."""
    refusal = AUTHORITY.contact_refusal(CONTACT_STATE, actor(recorder), recorder, role)
    assert rule_of(refusal) == expected
