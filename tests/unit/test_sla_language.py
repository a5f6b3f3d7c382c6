"""The SLA rule language beyond single conditions (issue 17): `present`, `{field, plus}` and
`fallback` deadlines, groups, `link: subject`, a list of `before` events, notices (immediate
rules that are not emergencies) that resolve when what they ask for is done, and admissions
kept until their discharge. Each is tried on a small rule file of its own, so that the
reviewed file's rules can change without these tests losing their meaning."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carebus.domain.events import rfc3339
from carebus.domain.obligations import MEMORY, OPEN_ADMISSION_MEMORY
from carebus.domain.routing import Consent
from carebus.domain.sla import (
    OSLO,
    SUBJECT,
    Link,
    RuleSet,
    SlaRulesError,
    links_to,
    parse_duration,
)
from carebus.wire.policy_files import load_rules
from tests.unit.test_sla_rules import (
    COORDINATOR,
    DAY,
    DPS,
    HOME,
    HOUR,
    MINUTE,
    MUNI,
    T0,
    Person,
    event,
    of,
    orgs,
    routing_with,
)

HEAD = 'version: "test"\nrules:\n'
SOURCE = '    source: "carebus-default: a test rule"\n'


def rules(tmp_path: Path, text: str) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(HEAD + text, encoding="utf-8")
    return load_rules(path)


FOLLOWUP = (
    """\
  - id: agreed
    title: No follow-up at the agreed time
    kind: deadline
    group: after_discharge
    trigger: {event_type: discharge, present: [followup_at]}
    deadline: {field: followup_at, plus: PT24H}
    fulfilled_by: [{event_type: followup_contact, link: {related_event_id: event_id}}]
    recipients: [[home_municipality, unassigned]]
"""
    + SOURCE
    + """\
  - id: risk
    title: No follow-up within 48 hours of a risk discharge
    why: Risk is high in the first days after leaving an institution.
    kind: deadline
    group: after_discharge
    trigger: {event_type: discharge, when: {admission.reason: [overdose, suicide_attempt]}}
    deadline: PT48H
    fulfilled_by: [{event_type: followup_contact, link: {related_event_id: event_id}}]
    recipients: [[home_municipality, unassigned]]
"""
    + SOURCE
    + """\
  - id: notice
    title: Discharged after an overdose - follow up
    kind: immediate
    trigger: {event_type: discharge, when: {admission.reason: [overdose, suicide_attempt]}}
    fulfilled_by: [{event_type: followup_contact, link: {related_event_id: event_id}}]
    recipients: [[home_municipality, unassigned]]
"""
    + SOURCE
)


def admission(reason: str, at: datetime = T0, event_id: str = "adm-1") -> dict[str, object]:
    return event("admission", event_id, at, reason=reason)


def discharge(
    at: datetime, *, followup_at: datetime | None, event_id: str = "dis-1"
) -> dict[str, object]:
    return event(
        "discharge",
        event_id,
        at,
        admission_event_id="adm-1",
        followup_at=None if followup_at is None else rfc3339(followup_at),
    )


def followup(at: datetime, related: str = "dis-1") -> dict[str, object]:
    return event("followup_contact", "fu-1", at, source=MUNI, related_event_id=related)


def open_rules(person: Person) -> list[str]:
    return sorted(
        ob["rule_id"]
        for ob in person.state.obligations.values()
        if ob["deadline"] and ob["status"] == "open"
    )


# --- present, {field, plus} and group ---------------------------------------------------------


def test_present_keeps_a_rule_from_a_trigger_without_the_field(tmp_path: Path) -> None:
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, FOLLOWUP))
    person.see(admission("psychosis"))
    person.see(discharge(T0 + DAY, followup_at=None))
    assert open_rules(person) == []


def test_a_field_deadline_adds_its_grace_to_the_agreed_time(tmp_path: Path) -> None:
    """An agreed time 5 days out, psychosis: only `agreed`, due a day after the agreed time."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, FOLLOWUP))
    person.see(admission("psychosis"))
    person.see(discharge(T0 + DAY, followup_at=T0 + 6 * DAY))
    assert open_rules(person) == ["agreed"]
    assert person.deadlines("agreed") == [T0 + 7 * DAY]


def test_the_grace_is_exact_hours_across_the_dst_change(tmp_path: Path) -> None:
    """PT24H after 2027-03-27 12:00 Oslo (CET) is 2027-03-28 13:00 Oslo (CEST)."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, FOLLOWUP))
    agreed = datetime(2027, 3, 27, 12, 0, tzinfo=OSLO)
    person.see(admission("psychosis", agreed - 9 * DAY))
    person.see(discharge(agreed - 2 * DAY, followup_at=agreed))
    (deadline,) = person.deadlines("agreed")
    assert deadline.astimezone(OSLO).replace(tzinfo=None) == datetime(2027, 3, 28, 13, 0)


@pytest.mark.parametrize(
    ("agreed_in", "opened"),
    [(5 * DAY, "risk"), (12 * HOUR, "agreed"), (None, "risk")],
)
def test_a_group_opens_only_the_earliest_deadline(
    tmp_path: Path, agreed_in: object, opened: str
) -> None:
    """Overdose discharge: 48 h unless the agreed time (plus a day) comes sooner; one
    obligation either way, and a replayed discharge opens nothing more."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, FOLLOWUP))
    person.see(admission("overdose"))
    at = T0 + DAY
    agreed = None if agreed_in is None else at + agreed_in  # type: ignore[operator]
    person.see(discharge(at, followup_at=agreed))
    assert open_rules(person) == [opened]
    person.see(discharge(at, followup_at=agreed), at + HOUR)
    assert open_rules(person) == [opened]


def test_the_home_municipality_outside_the_team_never_learns_why(tmp_path: Path) -> None:
    """Its statutory notice shows logistics only, not the admission's reason: the alert names
    the person and the neutral title, never the rule's why (the condition reads the reason)."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, FOLLOWUP))
    person.see(admission("overdose"))
    person.see(discharge(T0 + DAY, followup_at=None))
    (alert,) = of("risk", person.scan(T0 + 4 * DAY))
    assert orgs([alert]) == [HOME]
    assert alert["subject"] is not None
    assert "Risk is high" not in alert["summary"]


def test_after_an_objection_the_alert_does_not_say_why(tmp_path: Path) -> None:
    """The person objected to the home municipality: the statutory notice still reaches it
    (the alert names the person), but neither the reason nor the rule's why."""
    objection = Consent(
        agency="municipality",
        org_id=HOME,
        status="objection",
        categories=frozenset(),
        valid_from=T0 - DAY,
        valid_to=None,
        recorded_at=T0 - DAY,
    )
    routing = replace(routing_with(coordinator=None, home=HOME), consents=(objection,))
    person = Person(routing, rules(tmp_path, FOLLOWUP))
    person.see(admission("overdose"))
    person.see(discharge(T0 + DAY, followup_at=None))
    (alert,) = of("risk", person.scan(T0 + 4 * DAY))
    assert orgs([alert]) == [HOME]
    assert alert["subject"] is not None
    assert "Risk is high" not in alert["summary"]
    assert "overdose" not in alert["summary"].lower()


def test_a_breach_says_why_to_the_coordinator_in_the_team(tmp_path: Path) -> None:
    text = FOLLOWUP.replace("[[home_municipality, unassigned]]", "[[coordinator, unassigned]]")
    person = Person(routing_with(coordinator=COORDINATOR, home=HOME), rules(tmp_path, text))
    person.see(admission("overdose"))
    person.see(discharge(T0 + DAY, followup_at=None))
    (alert,) = of("risk", person.scan(T0 + 4 * DAY))
    assert alert["recipient"] == {"agency": "municipality", "org_id": COORDINATOR}
    assert alert["title"] == "No follow-up within 48 hours of a risk discharge"
    assert "Risk is high in the first days after leaving an institution." in alert["summary"]


# --- notices ------------------------------------------------------------------------------------


def test_a_notice_is_raised_at_once_and_resolved_when_its_step_is_done(tmp_path: Path) -> None:
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, FOLLOWUP))
    person.see(admission("overdose"))
    raised = of("notice", person.see(discharge(T0 + DAY, followup_at=None)))
    assert [(a["kind"], a["status"], a["deadline"]) for a in raised] == [("notice", "open", None)]
    assert orgs(raised) == [HOME]
    done = of("notice", person.see(followup(T0 + 2 * DAY)))
    assert [(a["alert_id"], a["status"], a["resolution"]) for a in done] == [
        (raised[0]["alert_id"], "resolved", "fulfilled")
    ]
    # And the follow-up fulfilled the deadline too, on time: nothing is breached later.
    assert of("risk", person.scan(T0 + 10 * DAY)) == []
    assert of("notice", person.see(followup(T0 + 2 * DAY), T0 + 3 * DAY)) == []


def test_a_notice_is_not_raised_for_other_discharges(tmp_path: Path) -> None:
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, FOLLOWUP))
    person.see(admission("psychosis"))
    assert of("notice", person.see(discharge(T0 + DAY, followup_at=None))) == []


def test_an_emergency_rule_is_still_an_emergency_disclosure() -> None:
    person = Person()
    emergency = {
        "declared_by": "dps",
        "justification": "imminent danger",
        "accountable": "on-call psychiatrist",
        "recipients": [],
    }
    raised = person.see(event("discharge", "dis-9", T0, emergency=emergency))
    assert {a["kind"] for a in of("emergency_disclosure", raised)} == {"emergency_disclosure"}


# --- before: the first of several events --------------------------------------------------------

BEFORE = (
    """\
  - id: housing
    title: Housing work not started before the patient left or was ready
    kind: deadline
    trigger: {event_type: admission, when: {housing_status: homeless}}
    deadline:
      before:
        - {event_type: discharge_ready, link: {admission_event_id: event_id}}
        - {event_type: discharge, link: {admission_event_id: event_id}}
    fulfilled_by: [{event_type: housing_work_started, link: {admission_event_id: event_id}}]
    recipients: [[source]]
"""
    + SOURCE
)


def test_the_first_before_event_to_arrive_sets_the_deadline(tmp_path: Path) -> None:
    """A discharge without a discharge-ready notice still sets the deadline."""
    person = Person(rules=rules(tmp_path, BEFORE))
    person.see(event("admission", "adm-1", T0, housing_status="homeless"))
    assert person.deadlines("housing") == []
    raised = of("housing", person.see(discharge(T0 + 3 * DAY, followup_at=None)))
    assert [a["deadline"] for a in raised] == [rfc3339(T0 + 3 * DAY)]
    # A later discharge-ready does not move it.
    person.see(event("discharge_ready", "dr-1", T0 + 4 * DAY, admission_event_id="adm-1"))
    assert of("housing", person.scan(T0 + 5 * DAY)) == []


def test_before_events_seen_ahead_of_the_trigger_use_the_earliest(tmp_path: Path) -> None:
    person = Person(rules=rules(tmp_path, BEFORE))
    person.see(event("discharge_ready", "dr-1", T0 + 2 * DAY, admission_event_id="adm-1"))
    person.see(discharge(T0 + 3 * DAY, followup_at=None))
    raised = person.see(
        event("admission", "adm-1", T0, housing_status="homeless"), T0 + 3 * DAY + HOUR
    )
    assert [a["deadline"] for a in of("housing", raised)] == [rfc3339(T0 + 2 * DAY)]


# --- fallback, and admissions kept until their discharge ---------------------------------------

FALLBACK = (
    """\
  - id: fallback
    title: Not followed up
    kind: deadline
    trigger: {event_type: discharge, when: {admission.reason: overdose}}
    deadline: {field: followup_at, plus: PT24H, fallback: P7D}
    fulfilled_by: [{event_type: followup_contact, link: {related_event_id: event_id}}]
    recipients: [[source]]
"""
    + SOURCE
)


def test_a_missing_field_falls_back_to_a_duration_from_the_trigger(tmp_path: Path) -> None:
    person = Person(rules=rules(tmp_path, FALLBACK))
    person.see(admission("overdose"))
    person.see(discharge(T0 + DAY, followup_at=None))
    assert person.deadlines("fallback") == [T0 + 8 * DAY]


def test_a_long_stay_still_matches_its_admission_reason(tmp_path: Path) -> None:
    """A discharge 200 days after an overdose admission (past MEMORY) still triggers."""
    assert MEMORY.days < 200 < OPEN_ADMISSION_MEMORY.days
    person = Person(rules=rules(tmp_path, FALLBACK))
    person.see(admission("overdose"))
    person.see(event("police_callout", "p-1", T0 + 150 * DAY, source=("police", "974760673")))
    person.see(discharge(T0 + 200 * DAY, followup_at=None))
    assert person.deadlines("fallback") == [T0 + 207 * DAY]


def test_a_discharged_admission_is_forgotten_after_memory(tmp_path: Path) -> None:
    person = Person(rules=rules(tmp_path, FALLBACK))
    person.see(admission("overdose"))
    person.see(discharge(T0 + DAY, followup_at=None))
    assert person.state.admissions["adm-1"]["discharged_by"] == [DPS[1], "dis-1"]
    person.see(event("police_callout", "p-1", T0 + MEMORY + 2 * DAY, source=("police", "1" * 9)))
    assert person.state.admissions == {}


def test_an_admission_never_discharged_is_forgotten_at_last(tmp_path: Path) -> None:
    person = Person(rules=rules(tmp_path, FALLBACK))
    person.see(admission("overdose"))
    late = T0 + OPEN_ADMISSION_MEMORY + DAY
    person.see(event("police_callout", "p-1", late, source=("police", "974760673")))
    assert person.state.admissions == {}


def test_a_retracted_discharge_reopens_its_admission(tmp_path: Path) -> None:
    person = Person(rules=rules(tmp_path, FALLBACK))
    person.see(admission("overdose"))
    person.see(discharge(T0 + DAY, followup_at=None))
    person.see(event("retraction", "r-1", T0 + 2 * DAY, retracted_event_id="dis-1"))
    assert "discharged_at" not in person.state.admissions["adm-1"]


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("group: g", "group: only deadline rules form groups"),
        ("trigger: {event_type: discharge, present: [nope]}", "present: nope is not a payload"),
        ("deadline: {field: followup_at, plus: 24h}", "deadline.plus"),
        ("deadline: {field: followup_at, fallback: soon}", "deadline.fallback"),
        ("deadline: {before: []}", "deadline.before"),
    ],
)
def test_a_wrong_use_of_the_language_is_refused_naming_the_key(
    tmp_path: Path, change: str, words: str
) -> None:
    kind = "window" if change.startswith("group") else "deadline"
    text = (
        "  - id: bad\n    title: Bad\n"
        f"    kind: {kind}\n    count: 2\n    window: P1D\n"
        "    trigger: {event_type: discharge}\n"
        "    deadline: P1D\n"
        "    fulfilled_by: [{event_type: followup_contact, link: {related_event_id: event_id}}]\n"
        "    recipients: [[source]]\n" + SOURCE
    )
    key = change.split(":", 1)[0]
    text = "\n".join(
        f"    {change}" if line.startswith(f"    {key}:") else line for line in text.split("\n")
    )
    if f"    {key}:" not in text:
        text += f"    {change}\n"
    with pytest.raises(SlaRulesError) as refused:
        rules(tmp_path, text)
    assert any(p.startswith("rule bad:") and words in p for p in refused.value.problems), (
        refused.value.problems
    )


def test_the_engine_keeps_working_on_utc(tmp_path: Path) -> None:
    """Deadlines come back as UTC instants whatever the rule's calendar arithmetic did."""
    person = Person(rules=rules(tmp_path, FALLBACK))
    person.see(admission("overdose"))
    person.see(discharge(T0 + DAY, followup_at=T0 + 2 * DAY))
    (deadline,) = person.deadlines("fallback")
    assert deadline.tzinfo is not None
    assert deadline.astimezone(UTC) == T0 + 3 * DAY


# --- what an alert may say: the fields a recipient may see, not their categories ----------------

NAV = "889640790"


def test_a_recipient_that_sees_health_but_not_the_reason_gets_the_neutral_title(
    tmp_path: Path,
) -> None:
    """A NAV coordinator with consent for every category gets the discharge (logistics) but
    never an admission's reason (its rules grant no health field): the alert cannot say the
    discharge followed an overdose, whatever categories it was granted."""
    text = FOLLOWUP.replace("[[home_municipality, unassigned]]", "[[coordinator, unassigned]]")
    consent = Consent(
        agency="nav",
        org_id=NAV,
        status="given",
        categories=frozenset({"logistics", "health", "social", "police"}),
        valid_from=T0 - DAY,
        valid_to=None,
        recorded_at=T0 - DAY,
    )
    routing = replace(routing_with(coordinator=NAV, home=None, agency="nav"), consents=(consent,))
    person = Person(routing, rules(tmp_path, text))
    person.see(admission("overdose"))
    person.see(discharge(T0 + DAY, followup_at=None))
    (alert,) = of("risk", person.scan(T0 + 4 * DAY))
    assert alert["recipient"] == {"agency": "nav", "org_id": NAV}
    assert alert["subject"] is not None  # it may know of the discharge
    assert "Risk is high" not in alert["summary"]


def test_retracting_the_admission_withdraws_what_its_reason_opened(tmp_path: Path) -> None:
    """The admission was about someone else, or wrong: the follow-up obligations and the notice
    its reason opened at the discharge are withdrawn; the discharge's own obligations stay."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, FOLLOWUP))
    person.see(admission("overdose"))
    raised = of("notice", person.see(discharge(T0 + DAY, followup_at=None)))
    assert raised
    retraction = event("retraction", "r-1", T0 + 2 * DAY, retracted_event_id="adm-1")
    withdrawn = person.see(retraction)
    assert [(a["alert_id"], a["resolution"]) for a in of("notice", withdrawn)] == [
        (raised[0]["alert_id"], "retracted")
    ]
    assert open_rules(person) == []
    assert of("risk", person.scan(T0 + 10 * DAY)) == []


# --- `link: subject`: any other event of the same person ---------------------------------------

CONTACTED = (
    """\
  - id: contacted
    title: No contact of any kind within a week of a discharge
    kind: deadline
    trigger: {event_type: discharge}
    deadline: P7D
    fulfilled_by: [{event_type: followup_contact, link: subject}]
    recipients: [[home_municipality, unassigned]]
"""
    + SOURCE
    + """\
  - id: again
    title: No contact within a week of the last one
    kind: deadline
    trigger: {event_type: followup_contact}
    deadline: P7D
    fulfilled_by: [{event_type: followup_contact, link: subject}]
    recipients: [[home_municipality, unassigned]]
"""
    + SOURCE
)


def contact(at: datetime, event_id: str, related: str = "elsewhere") -> dict[str, object]:
    # The home municipality: a sender with a relation to the person may settle by `subject`.
    return event(
        "followup_contact", event_id, at, source=("municipality", HOME), related_event_id=related
    )


def test_a_subject_link_is_fulfilled_by_any_event_of_the_person(tmp_path: Path) -> None:
    """A contact about anything at all (its related event is not the discharge) fulfils."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, CONTACTED))
    person.see(discharge(T0, followup_at=None))
    assert person.deadlines("contacted") == [T0 + 7 * DAY]
    person.see(contact(T0 + DAY, "c-1"))
    assert person.deadlines("contacted") == []
    assert of("contacted", person.scan(T0 + 30 * DAY)) == []


def test_a_subject_link_needs_the_same_person_and_another_event() -> None:
    """`links_to` on its own (the engine's state is per person, the link says so itself): an
    event of another person, or the trigger itself, is not linked."""
    link = Link("followup_contact", SUBJECT, SUBJECT)
    first = contact(T0, "c-1")
    assert links_to(link, contact(T0 + DAY, "c-2"), first)
    assert not links_to(link, {**contact(T0 + DAY, "c-2"), "subject_key": "8" * 64}, first)
    assert not links_to(link, first, first)
    # The same id from another sender is another event.
    assert links_to(link, {**first, "source": {"agency": "dps", "org_id": DPS[1]}}, first)
    assert not links_to(link, discharge(T0 + DAY, followup_at=None), first)


def test_an_event_of_the_person_before_the_trigger_does_not_fulfil(tmp_path: Path) -> None:
    """A contact a day before the discharge answers an earlier question, not this one."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, CONTACTED))
    person.see(contact(T0 - DAY, "c-0"))
    person.see(discharge(T0, followup_at=None))
    assert person.deadlines("contacted") == [T0 + 7 * DAY]
    assert orgs(of("contacted", person.scan(T0 + 8 * DAY))) == [HOME]


def test_the_next_event_closes_the_last_ones_obligation_and_opens_its_own(
    tmp_path: Path,
) -> None:
    """A recurring obligation: each contact is due a week after the last; the one that opens an
    obligation does not fulfil it, the next one does, and a replay changes nothing."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, CONTACTED))
    person.see(contact(T0, "c-1"))
    assert person.deadlines("again") == [T0 + 7 * DAY]
    person.see(contact(T0 + 5 * DAY, "c-2"))
    assert person.deadlines("again") == [T0 + 12 * DAY]
    assert person.see(contact(T0 + 5 * DAY, "c-2"), T0 + 6 * DAY) == []
    assert person.deadlines("again") == [T0 + 12 * DAY]
    assert orgs(of("again", person.scan(T0 + 13 * DAY))) == [HOME]


@pytest.mark.parametrize("link", ["person", "[subject]", "{a: b, c: d}"])
def test_a_link_that_is_neither_a_pair_nor_subject_is_refused(tmp_path: Path, link: str) -> None:
    """A link is one field pair or the word `subject`; anything else is refused by its path."""
    text = CONTACTED.replace(
        "link: subject}]\n    recipients", f"link: {link}}}]\n    recipients", 1
    )
    with pytest.raises(SlaRulesError) as refused:
        rules(tmp_path, text)
    assert any(
        p.startswith("rule contacted: fulfilled_by[0].link:") and "or be 'subject'" in p
        for p in refused.value.problems
    ), refused.value.problems


def test_a_replayed_event_that_closed_nothing_is_kept_once(tmp_path: Path) -> None:
    """The first contact opens an obligation and closes none: kept as an early event (it may
    still close one whose trigger arrives late), once however often it is replayed."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, CONTACTED))
    for at in (T0 + MINUTE, T0 + HOUR, T0 + DAY):
        person.see(contact(T0, "c-1"), at)
    assert [e["event_id"] for e in person.state.early] == ["c-1"]


# --- `once`: one obligation per identity, ever -------------------------------------------------

ONCE = (
    """\
  - id: first
    title: No contact within a week of the plan
    kind: deadline
    trigger: {event_type: ip_update, when: {status: active}}
    deadline: P7D
    fulfilled_by: [{event_type: followup_contact, link: subject}]
    identity: [plan_id]
    once: true
    recipients: [[home_municipality, unassigned]]
"""
    + SOURCE
)


def plan_update(at: datetime, event_id: str, plan_id: str = "IP-1") -> dict[str, object]:
    return event("ip_update", event_id, at, source=MUNI, plan_id=plan_id, status="active")


def test_a_once_rule_opens_nothing_for_an_identity_it_settled(tmp_path: Path) -> None:
    """Fulfilled for plan IP-1: the plan's next updates, even long after MEMORY, owe nothing;
    another plan owes its own."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, ONCE))
    person.see(plan_update(T0, "ip-1"))
    person.see(contact(T0 + DAY, "c-1"))
    for days in (10, 200, 700):
        person.see(plan_update(T0 + days * DAY, f"ip-{days}"))
        assert person.deadlines("first") == []
    person.see(plan_update(T0 + 701 * DAY, "ip-2a", plan_id="IP-2"))
    assert person.deadlines("first") == [parse_duration("P7D").after(T0 + 701 * DAY)]


def test_a_once_rule_opens_nothing_for_an_identity_it_alerted(tmp_path: Path) -> None:
    """Breached for IP-1 (alerted): a later update of the plan does not owe it a second time."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, ONCE))
    person.see(plan_update(T0, "ip-1"))
    assert orgs(of("first", person.scan(T0 + 8 * DAY))) == [HOME]
    person.see(plan_update(T0 + 9 * DAY, "ip-9"))
    assert person.deadlines("first") == []
    assert of("first", person.scan(T0 + 30 * DAY)) == []


def test_without_once_a_settled_identity_is_owed_again(tmp_path: Path) -> None:
    """The default: a trigger after the fulfilment opens the next obligation of its identity."""
    person = Person(
        routing_with(coordinator=None, home=HOME), rules(tmp_path, ONCE.replace("once: true", ""))
    )
    person.see(plan_update(T0, "ip-1"))
    person.see(contact(T0 + DAY, "c-1"))
    person.see(plan_update(T0 + 10 * DAY, "ip-10"))
    assert person.deadlines("first") == [T0 + 17 * DAY]


def test_a_retracted_trigger_does_not_use_up_a_once_rule(tmp_path: Path) -> None:
    """The plan update was about someone else: the next real one is owed."""
    person = Person(routing_with(coordinator=None, home=HOME), rules(tmp_path, ONCE))
    person.see(plan_update(T0, "ip-1"))
    person.see(event("retraction", "r-1", T0 + HOUR, source=MUNI, retracted_event_id="ip-1"))
    person.see(plan_update(T0 + DAY, "ip-2"))
    assert person.deadlines("first") == [T0 + 8 * DAY]


def test_once_on_a_rule_that_is_not_a_deadline_is_refused(tmp_path: Path) -> None:
    """`once` counts obligations, which only deadline rules open."""
    text = ONCE.replace("kind: deadline", "kind: window\n    count: 2\n    window: P1D")
    with pytest.raises(SlaRulesError) as refused:
        rules(tmp_path, text)
    assert any(
        p.startswith("rule first: once:") and "only a deadline rule" in p
        for p in refused.value.problems
    ), refused.value.problems
