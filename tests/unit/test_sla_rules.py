"""Tests for the SLA engine, rule by rule: domain.sla, domain.obligations, domain.alerts."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest

from carebus.domain.alerts import AlertContext, may_read_condition
from carebus.domain.events import EXAMPLE_PAYLOADS, rfc3339
from carebus.domain.obligations import MEMORY, SlaState, breach_due, observe
from carebus.domain.policy import Policy
from carebus.domain.records import AlertJson, event_schema_name
from carebus.domain.routing import Consent, Member, PersonState, apply
from carebus.domain.sla import OSLO, Rule, RuleSet, SlaRulesError, parse_duration
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.policy_files import load_policy, load_rules
from services.inbox.person import obligations as person_view_obligations

RULES_FILE = PROJECT_ROOT / "policy" / "sla.yaml"
RULES: RuleSet = load_rules(RULES_FILE)
POLICY: Policy = load_policy(PROJECT_ROOT / "policy" / "routing.yaml")
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
NIN = "12345678901"
SUBJECT_KEY = "7" * 64

DPS = ("dps", "974705788")  # the source of hospital events
MUNI = ("municipality", "940493039")  # the source of applications
HOUSING_OFFICE = ("housing", "987654321")  # the source of tenancy and incident reports
HOME = "940493021"  # the person's home municipality
COORDINATOR = "940493047"  # a municipality organisation that coordinates the care team
NAV = "889640790"
CORRECTIONS = ("corrections", "971278374")
GP = ("fastlege", "912345683")  # a GP office that does somatic checks


# --- building events and driving the engine --------------------------------------------------


def event(
    event_type: str,
    event_id: str,
    occurred: datetime,
    *,
    source: tuple[str, str] = DPS,
    emergency: dict[str, Any] | None = None,
    **payload: Any,
) -> dict[str, Any]:
    """An event in JSON form (what the SLA service feeds `observe`): example payload + changes."""
    return {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": rfc3339(occurred),
        "source": {"agency": source[0], "org_id": source[1], "system": "test"},
        "subject": {"nin": NIN},
        "subject_key": SUBJECT_KEY,
        "payload": {**EXAMPLE_PAYLOADS[event_type], **payload},
        "emergency": emergency,
    }


def routing_with(
    *, coordinator: str | None, home: str | None, agency: str = "municipality"
) -> PersonState:
    """A person's routing state with an optional care-team coordinator and home municipality."""
    team = {}
    if coordinator is not None:
        team[coordinator] = Member(agency, {"registry:test": "coordinator"})
    return PersonState(team=team, home_municipality=home)


SETUPS: dict[str, PersonState] = {
    "coordinator_and_home": routing_with(coordinator=COORDINATOR, home=HOME),
    "coordinator_only": routing_with(coordinator=COORDINATOR, home=None),
    "home_only": routing_with(coordinator=None, home=HOME),
    "nobody": routing_with(coordinator=None, home=None),
}


class Person:
    """One person's SLA and routing state, fed events and scans like the SLA service does."""

    def __init__(self, routing: PersonState | None = None, rules: RuleSet = RULES) -> None:
        self.state = SlaState()
        self.routing = routing or SETUPS["coordinator_and_home"]
        self.rules = rules

    def context(self, now: datetime) -> AlertContext:
        return AlertContext(now, self.routing, POLICY, self.rules.version)

    def see(self, record: dict[str, Any], at: datetime | None = None) -> list[AlertJson]:
        """Observe `record` arriving at `at` (default: a minute after it occurred)."""
        now = at or _time(record["occurred_at"]) + MINUTE
        self.routing = apply(self.routing, event_schema_name(record["event_type"]), record)
        # A JSON round trip: the state is stored as JSON between events.
        self.state = SlaState.from_json(json.loads(json.dumps(self.state.to_json())))
        return observe(self.state, record, self.rules, self.context(now))

    def scan(self, now: datetime) -> list[AlertJson]:
        """The due scan at wall-clock time `now`."""
        return breach_due(self.state, self.rules, self.context(now))

    def deadlines(self, rule_id: str) -> list[datetime]:
        return sorted(
            deadline
            for oid, deadline in self.state.deadlines().items()
            if self.state.obligations[oid]["rule_id"] == rule_id
        )


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def of(rule_id: str, alerts: Sequence[AlertJson]) -> list[AlertJson]:
    return [alert for alert in alerts if alert["rule_id"] == rule_id]


def orgs(alerts: Sequence[AlertJson]) -> list[str | None]:
    return [None if a["recipient"] is None else a["recipient"]["org_id"] for a in alerts]


# --- the deadline rules as a table ------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """How to trigger, fulfil and cancel one deadline rule, and whom its breach alerts."""

    rule_id: str
    prior: Callable[[], list[dict[str, Any]]]  # events the trigger condition needs
    trigger: Callable[[datetime], dict[str, Any]]
    deadline: Callable[[datetime], datetime]  # from the trigger's occurred_at
    fulfil: Callable[[datetime], dict[str, Any]]
    cancel: Callable[[datetime], dict[str, Any]] | None
    recipients: Recipients  # per SETUPS key

    def __str__(self) -> str:
        return self.rule_id


def _none() -> list[dict[str, Any]]:
    return []


def _admission_for(
    reason: str, *, needs_municipal_services: bool = False
) -> Callable[[], list[dict[str, Any]]]:
    def prior() -> list[dict[str, Any]]:
        return [
            event(
                "admission",
                "adm-1",
                T0 - 3 * DAY,
                reason=reason,
                housing_status="stable",
                needs_municipal_services=needs_municipal_services,
                home_municipality_org=None,
            )
        ]

    return prior


def brukerplan(event_id: str, at: datetime, **scores: Any) -> dict[str, Any]:
    """The municipality's Brukerplan assessment: the example's scores with `scores` changed."""
    return event("brukerplan_assessment", event_id, at, source=MUNI, **scores)


def _plan(at: datetime, event_id: str, **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "plan_id": "IP-1",
        "status": "active",
        "coordinator": None,
        "participants": [{"agency": "dps", "org_id": DPS[1]}],
        "next_review_at": rfc3339(T0 + 30 * DAY),
        **changes,
    }
    return event("ip_update", event_id, at, **payload)


Recipients = dict[str, list[str | None]]
EVERYWHERE_SOURCE: Recipients = {setup: [DPS[1]] for setup in SETUPS}
CHAIN_COORDINATOR_HOME: Recipients = {
    "coordinator_and_home": [COORDINATOR],
    "coordinator_only": [COORDINATOR],
    "home_only": [HOME],
    "nobody": [None],
}

CASES: list[Case] = [
    Case(
        rule_id="health_info.after_admission",
        prior=_none,
        trigger=lambda at: event(
            "admission",
            "adm-1",
            at,
            needs_municipal_services=True,
            housing_status="stable",
            home_municipality_org=None,
        ),
        deadline=lambda at: at + 24 * HOUR,
        fulfil=lambda at: event("health_info_sent", "hi-1", at, admission_event_id="adm-1"),
        cancel=None,
        recipients={
            "coordinator_and_home": [DPS[1], HOME],
            "coordinator_only": [DPS[1]],
            "home_only": [DPS[1], HOME],
            "nobody": [DPS[1]],
        },
    ),
    Case(
        rule_id="municipal_reply.discharge_ready",
        prior=_none,
        trigger=lambda at: event("discharge_ready", "dr-1", at, admission_event_id="adm-0"),
        deadline=lambda at: at + 4 * HOUR,
        fulfil=lambda at: event(
            "municipal_reply", "mr-1", at, source=MUNI, discharge_ready_event_id="dr-1"
        ),
        cancel=lambda at: event(
            "discharge_ready_withdrawn", "drw-1", at, discharge_ready_event_id="dr-1"
        ),
        recipients={
            "coordinator_and_home": [HOME, DPS[1]],
            "coordinator_only": [COORDINATOR, DPS[1]],
            "home_only": [HOME, DPS[1]],
            "nobody": [None, DPS[1]],
        },
    ),
    Case(
        rule_id="epikrise.after_discharge",
        prior=_none,
        trigger=lambda at: event("discharge", "dis-1", at, admission_event_id="adm-1"),
        deadline=lambda at: at + 7 * DAY,
        fulfil=lambda at: event("epikrise_sent", "epi-1", at, admission_event_id="adm-1"),
        cancel=None,
        recipients=EVERYWHERE_SOURCE,
    ),
    Case(
        rule_id="followup.discharge_7d",
        prior=_admission_for("suicide_attempt"),
        trigger=lambda at: event("discharge", "dis-1", at, admission_event_id="adm-1"),
        deadline=lambda at: at + 7 * DAY,
        fulfil=lambda at: event(
            "followup_contact", "fu-1", at, source=MUNI, related_event_id="dis-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="followup.discharge_48h",
        prior=_admission_for("overdose"),
        trigger=lambda at: event("discharge", "dis-1", at, admission_event_id="adm-1"),
        deadline=lambda at: at + 48 * HOUR,
        fulfil=lambda at: event(
            "followup_contact", "fu-1", at, source=MUNI, related_event_id="dis-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="followup.at_agreed_time",
        prior=_admission_for("overdose"),
        # Agreed for 12 hours after discharge: due a day later, before the 48 hours.
        trigger=lambda at: event(
            "discharge",
            "dis-1",
            at,
            admission_event_id="adm-1",
            followup_at=rfc3339(at + 12 * HOUR),
        ),
        deadline=lambda at: at + 36 * HOUR,
        fulfil=lambda at: event(
            "followup_contact", "fu-1", at, source=MUNI, related_event_id="dis-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="housing_work.discharge_homeless",
        prior=_admission_for("psychosis"),
        trigger=lambda at: event(
            "discharge", "dis-1", at, admission_event_id="adm-1", destination="homeless"
        ),
        deadline=lambda at: at + 3 * DAY,
        fulfil=lambda at: event(
            "housing_work_started", "hw-1", at, source=MUNI, admission_event_id="adm-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="housing_work.discharge_temporary",
        prior=_admission_for("psychosis"),
        trigger=lambda at: event(
            "discharge", "dis-1", at, admission_event_id="adm-1", destination="temporary_housing"
        ),
        deadline=lambda at: at + 7 * DAY,
        fulfil=lambda at: event(
            "housing_work_started", "hw-1", at, source=MUNI, admission_event_id="adm-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="followup.discharge_48h_gp",
        prior=_admission_for("psychosis"),
        trigger=lambda at: event(
            "discharge", "dis-1", at, admission_event_id="adm-1", kind="self_discharge"
        ),
        deadline=lambda at: at + 48 * HOUR,
        fulfil=lambda at: event(
            "followup_contact", "fu-1", at, source=MUNI, related_event_id="dis-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="followup.reported_48h",
        prior=_none,
        trigger=lambda at: event("treatment_interrupted", "ti-1", at),
        deadline=lambda at: at + 48 * HOUR,
        fulfil=lambda at: event(
            "followup_contact", "fu-1", at, source=MUNI, related_event_id="ti-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="followup.prison_release",
        prior=_none,
        trigger=lambda at: event(
            "prison_release",
            "rel-1",
            at,
            source=CORRECTIONS,
            release_at=rfc3339(at + DAY),
        ),
        deadline=lambda at: at + 3 * DAY,  # the release, a day later, plus 48 hours
        fulfil=lambda at: event(
            "followup_contact", "fu-1", at, source=MUNI, related_event_id="rel-1"
        ),
        cancel=None,
        # Without a `justice` consent no municipality was told: the correctional service.
        recipients={setup: [CORRECTIONS[1]] for setup in SETUPS},
    ),
    Case(
        rule_id="followup.discharge_any",
        prior=_admission_for("psychosis", needs_municipal_services=True),
        trigger=lambda at: event("discharge", "dis-1", at, admission_event_id="adm-1"),
        deadline=lambda at: at + 7 * DAY,
        fulfil=lambda at: event(
            "followup_contact", "fu-1", at, source=MUNI, related_event_id="dis-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="followup.time_in_hand",
        prior=_admission_for("overdose"),
        trigger=lambda at: event(
            "discharge", "dis-1", at, admission_event_id="adm-1", followup_at=None
        ),
        deadline=lambda at: datetime(2026, 11, 23, 23, 0, tzinfo=UTC),  # the Oslo midnight
        fulfil=lambda at: event(
            "followup_scheduled",
            "fs-1",
            at,
            related_event_id="dis-1",
            followup_at=rfc3339(at + DAY),
        ),
        cancel=None,
        recipients=EVERYWHERE_SOURCE,
    ),
    Case(
        rule_id="housing_work.discharge_1d",
        prior=lambda: [
            *_admission_for("psychosis")(),
            brukerplan("bp-1", T0 - 2 * DAY, housing="red"),
        ],
        trigger=lambda at: event(
            "discharge", "dis-1", at, admission_event_id="adm-1", destination="homeless"
        ),
        deadline=lambda at: at + DAY,
        fulfil=lambda at: event(
            "housing_work_started", "hw-1", at, source=MUNI, admission_event_id="adm-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="housing.temporary_over_3_months",
        prior=_none,
        trigger=lambda at: event(
            "temporary_housing_started", "ths-1", at, source=MUNI, stay_id="TB-1"
        ),
        deadline=lambda at: datetime(2027, 2, 23, 8, 0, tzinfo=UTC),  # P3M on the Oslo calendar
        fulfil=lambda at: event(
            "temporary_housing_ended", "the-1", at, source=MUNI, stay_id="TB-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="housing.tenancy_at_risk",
        prior=_none,
        trigger=lambda at: event("tenancy_at_risk", "tr-1", at, source=HOUSING_OFFICE),
        deadline=lambda at: at + 7 * DAY,
        fulfil=lambda at: event(
            "followup_contact", "fu-1", at, source=MUNI, related_event_id="tr-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="housing.incident_followup_7d",
        prior=_none,
        trigger=lambda at: event(
            "housing_incident", "hi-1", at, source=HOUSING_OFFICE, kind="eviction_warning"
        ),
        deadline=lambda at: at + 7 * DAY,
        fulfil=lambda at: event(
            "followup_contact", "fu-1", at, source=MUNI, related_event_id="hi-1"
        ),
        cancel=None,
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="application.preliminary_reply",
        prior=_none,
        trigger=lambda at: event(
            "application_received", "app-1", at, source=MUNI, application_id="APP-1"
        ),
        deadline=lambda at: datetime(2026, 12, 23, 8, 0, tzinfo=UTC),  # P1M on the Oslo calendar
        fulfil=lambda at: event(
            "application_preliminary_reply", "pre-1", at, source=MUNI, application_id="APP-1"
        ),
        cancel=None,
        recipients={setup: [MUNI[1]] for setup in SETUPS},
    ),
    Case(
        rule_id="ip.review_due",
        prior=_none,
        trigger=lambda at: _plan(at, "ip-1"),
        deadline=lambda at: T0 + 30 * DAY,
        fulfil=lambda at: _plan(at, "ip-2", next_review_at=rfc3339(T0 + 100 * DAY)),
        cancel=lambda at: _plan(at, "ip-3", status="closed"),
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="ip.coordinator_missing",
        prior=_none,
        trigger=lambda at: _plan(at, "ip-1"),
        deadline=lambda at: at + 14 * DAY,
        fulfil=lambda at: _plan(
            at, "ip-2", coordinator={"agency": "municipality", "org_id": COORDINATOR}
        ),
        cancel=lambda at: _plan(at, "ip-3", status="closed"),
        recipients={
            "coordinator_and_home": [HOME],
            "coordinator_only": [None],
            "home_only": [HOME],
            "nobody": [None],
        },
    ),
]
CASES += [
    Case(
        rule_id="somatic.first_check",
        prior=_none,
        trigger=lambda at: _plan(at, "ip-1"),
        deadline=lambda at: datetime(2027, 11, 23, 8, 0, tzinfo=UTC),  # P1Y, Oslo calendar
        # The municipality's health service, in the care team: a check of the person by a
        # sender with a relation to them (a stranger's settles nothing: tests below).
        fulfil=lambda at: event(
            "somatic_check_done", "sc-1", at, source=("municipality", COORDINATOR)
        ),
        cancel=lambda at: _plan(at, "ip-3", status="closed"),
        recipients=CHAIN_COORDINATOR_HOME,
    ),
    Case(
        rule_id="somatic.referral_followed",
        prior=_none,
        trigger=lambda at: event("somatic_check_done", "sc-1", at, source=GP),
        deadline=lambda at: datetime(2026, 12, 23, 8, 0, tzinfo=UTC),  # P1M, Oslo calendar
        fulfil=lambda at: event(
            "somatic_referral", "ref-1", at, source=GP, related_event_id="sc-1"
        ),
        cancel=None,
        recipients={setup: [GP[1]] for setup in SETUPS},
    ),
    Case(
        rule_id="ip.part_review_due",
        prior=_none,
        trigger=lambda at: _plan(at, "ip-1", crisis_plan_id="KP-1", crisis_plan_reviewed_at=None),
        deadline=lambda at: T0 + 30 * DAY,
        fulfil=lambda at: _plan(
            at,
            "ip-2",
            crisis_plan_id="KP-1",
            crisis_plan_reviewed_at=rfc3339(at),
            next_review_at=rfc3339(T0 + 100 * DAY),
        ),
        cancel=lambda at: _plan(at, "ip-3", status="closed"),
        recipients=CHAIN_COORDINATOR_HOME,
    ),
]
CASE = {case.rule_id: case for case in CASES}
CANCELLABLE = [case for case in CASES if case.cancel is not None]
BY_RULE = pytest.mark.parametrize("case", CASES, ids=str)


def triggered(case: Case, person: Person | None = None) -> tuple[Person, datetime]:
    """A person with the case's trigger seen (occurred T0) and the rule's deadline."""
    person = person or Person()
    for record in case.prior():
        person.see(record)
    assert of(case.rule_id, person.see(case.trigger(T0))) == []
    return person, case.deadline(T0)


def breached(case: Case, person: Person | None = None) -> tuple[Person, datetime, list[Any]]:
    """A person whose obligation of `case` was breached by a scan a minute after the deadline."""
    person, deadline = triggered(case, person)
    alerts = of(case.rule_id, person.scan(deadline + MINUTE))
    assert alerts
    return person, deadline, alerts


def test_every_rule_of_the_file_is_covered() -> None:
    """Each rule of policy/sla.yaml has a table case or a dedicated suite below."""
    dedicated = {
        "housing_work.homeless_admission",
        "care_team_meeting.repeated_incidents",
        "emergency_disclosure",
        "followup_notice.discharge",
        "somatic.yearly_check",
        "place.repeated_incidents",  # tests/unit/test_places.py
        "followup.continued_month",  # settles only from day 28: the table's early fulfilments
    }
    assert {rule.rule_id for rule in RULES.rules} == {c.rule_id for c in CASES} | dedicated


@BY_RULE
def test_obligation_of_a_removed_rule_closes_without_alert(case: Case) -> None:
    """A rule removed from the file: its open obligations leave the deadline index silently."""
    person, deadline = triggered(case)
    person.rules = RuleSet(
        RULES.version, tuple(rule for rule in RULES.rules if rule.rule_id != case.rule_id)
    )
    assert of(case.rule_id, person.scan(deadline + MINUTE)) == []
    assert person.deadlines(case.rule_id) == []
    person.rules = RULES  # put back: the closed obligation stays closed
    assert of(case.rule_id, person.scan(deadline + 2 * MINUTE)) == []


@BY_RULE
def test_trigger_opens_an_obligation_without_an_alert(case: Case) -> None:
    """The trigger opens one obligation with the rule's deadline and alerts nobody before it."""
    person, deadline = triggered(case)
    assert person.deadlines(case.rule_id) == [deadline]
    assert of(case.rule_id, person.scan(deadline - timedelta(seconds=1))) == []


@BY_RULE
def test_fulfilled_in_time_never_alerts(case: Case) -> None:
    """A fulfilment on time closes the obligation: no alert, not even long after the deadline."""
    person, deadline = triggered(case)
    assert of(case.rule_id, person.see(case.fulfil(deadline - HOUR))) == []
    assert person.deadlines(case.rule_id) == (
        [T0 + 100 * DAY] if case.rule_id in ("ip.review_due", "ip.part_review_due") else []
    )
    assert of(case.rule_id, person.scan(deadline + 10 * DAY)) == []


@BY_RULE
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_breach_alerts_each_recipient_organisation_once(case: Case, setup: str) -> None:
    """A scan after the deadline raises one open alert per recipient, fallbacks included."""
    person, _, alerts = breached(case, Person(SETUPS[setup]))
    assert orgs(alerts) == case.recipients[setup]
    deadline = case.deadline(T0)
    for alert in alerts:
        assert alert["status"] == "open"
        assert alert["resolution"] is None
        assert alert["deadline"] == rfc3339(deadline)
        assert alert["event_ids"] == [case.trigger(T0)["event_id"]]
        assert alert["kind"] == "deadline_missed"
    assert len({alert["alert_id"] for alert in alerts}) == len(alerts)
    assert person.scan(deadline + DAY) == []


@BY_RULE
def test_fulfilled_late_resolves_the_alert(case: Case) -> None:
    """A fulfilment that occurred after the deadline re-publishes the alerts as fulfilled_late."""
    person, deadline, raised = breached(case)
    fulfilment = case.fulfil(deadline + HOUR)
    resolved = of(case.rule_id, person.see(fulfilment, deadline + 2 * HOUR))
    assert [a["alert_id"] for a in resolved] == [a["alert_id"] for a in raised]
    for alert in resolved:
        assert (alert["status"], alert["resolution"]) == ("resolved", "fulfilled_late")
        assert alert["event_ids"] == [case.trigger(T0)["event_id"], fulfilment["event_id"]]
    assert of(case.rule_id, person.scan(deadline + 20 * DAY)) == []


@BY_RULE
def test_reported_late_resolves_as_late_report(case: Case) -> None:
    """A fulfilment on time that arrives after the breach resolves as fulfilled_late_report."""
    person, deadline, raised = breached(case)
    resolved = of(case.rule_id, person.see(case.fulfil(deadline - HOUR), deadline + HOUR))
    assert [a["alert_id"] for a in resolved] == [a["alert_id"] for a in raised]
    assert {(a["status"], a["resolution"]) for a in resolved} == {
        ("resolved", "fulfilled_late_report")
    }


@BY_RULE
def test_fulfilment_arriving_before_its_trigger_closes_it(case: Case) -> None:
    """A fulfilment that arrives first but occurred after the trigger is kept and closes it."""
    person = Person()
    for record in case.prior():
        person.see(record)
    person.see(case.fulfil(T0 + HOUR), T0 + HOUR)
    assert of(case.rule_id, person.see(case.trigger(T0), T0 + 2 * HOUR)) == []
    deadline = case.deadline(T0)
    assert deadline not in person.deadlines(case.rule_id)
    assert of(case.rule_id, person.scan(deadline + 10 * DAY)) == []


@BY_RULE
def test_backdated_trigger_alerts_at_once(case: Case) -> None:
    """A trigger arriving after its deadline has passed is breached by `observe` itself."""
    person = Person()
    for record in case.prior():
        person.see(record)
    deadline = case.deadline(T0)
    alerts = of(case.rule_id, person.see(case.trigger(T0), deadline + HOUR))
    assert orgs(alerts) == case.recipients["coordinator_and_home"]
    assert {a["status"] for a in alerts} == {"open"}
    assert person.scan(deadline + 2 * HOUR) == []


@BY_RULE
def test_backdated_fulfilment_before_a_scan_still_counts_the_breach(case: Case) -> None:
    """A late fulfilment that arrives before any scan raises the breach and resolves it."""
    person, deadline = triggered(case)
    alerts = of(case.rule_id, person.see(case.fulfil(deadline + HOUR), deadline + 2 * HOUR))
    assert [a["status"] for a in alerts] == ["open"] * (len(alerts) // 2) + ["resolved"] * (
        len(alerts) // 2
    )
    assert alerts
    assert {a["resolution"] for a in alerts if a["status"] == "resolved"} == {"fulfilled_late"}


@BY_RULE
def test_replays_change_nothing(case: Case) -> None:
    """Every event seen a second time, at any point, raises or resolves nothing new."""
    person, deadline = triggered(case)
    assert of(case.rule_id, person.see(case.trigger(T0), T0 + HOUR)) == []
    assert person.deadlines(case.rule_id)[:1] == [deadline]
    raised = of(case.rule_id, person.scan(deadline + MINUTE))
    assert raised
    assert of(case.rule_id, person.see(case.trigger(T0), deadline + HOUR)) == []
    fulfilment = case.fulfil(deadline + HOUR)
    assert len(of(case.rule_id, person.see(fulfilment, deadline + 2 * HOUR))) == len(raised)
    for record in [*case.prior(), case.trigger(T0), fulfilment]:
        assert of(case.rule_id, person.see(record, deadline + 3 * HOUR)) == []
    assert of(case.rule_id, person.scan(deadline + 20 * DAY)) == []


@BY_RULE
def test_trigger_replayed_after_fulfilment_opens_nothing(case: Case) -> None:
    """A trigger published twice, the copy after the fulfilment, never alerts."""
    person, deadline = triggered(case)
    person.see(case.fulfil(T0 + HOUR))
    assert of(case.rule_id, person.see(case.trigger(T0), T0 + 2 * HOUR)) == []
    assert of(case.rule_id, person.scan(deadline + 20 * DAY)) == []


@BY_RULE
def test_alert_ids_are_deterministic(case: Case) -> None:
    """The same history gives the same alert ids; each recipient has its own."""
    first = breached(case)[2]
    second = breached(case)[2]
    assert [a["alert_id"] for a in first] == [a["alert_id"] for a in second]
    assert all(a["alert_id"].startswith("alert-") for a in first)


@pytest.mark.parametrize("case", CANCELLABLE, ids=str)
def test_cancelled_obligation_never_alerts(case: Case) -> None:
    """A cancellation before the deadline closes the obligation without an alert."""
    assert case.cancel is not None
    person, deadline = triggered(case)
    assert of(case.rule_id, person.see(case.cancel(T0 + HOUR))) == []
    assert person.deadlines(case.rule_id) == []
    assert of(case.rule_id, person.scan(deadline + 10 * DAY)) == []


@pytest.mark.parametrize("case", CANCELLABLE, ids=str)
def test_cancellation_after_breach_resolves_as_cancelled(case: Case) -> None:
    """A cancellation after the breach re-publishes each alert resolved as cancelled."""
    assert case.cancel is not None
    person, deadline, raised = breached(case)
    cancel = case.cancel(deadline + HOUR)
    resolved = of(case.rule_id, person.see(cancel))
    assert [a["alert_id"] for a in resolved] == [a["alert_id"] for a in raised]
    assert {(a["status"], a["resolution"]) for a in resolved} == {("resolved", "cancelled")}
    assert all(a["event_ids"][-1] == cancel["event_id"] for a in resolved)


@pytest.mark.parametrize(
    ("case", "fulfilment"),
    [
        (
            CASE["followup.discharge_7d"],
            event("followup_contact", "fu-9", T0 + DAY, source=MUNI, related_event_id="adm-1"),
        ),
        (
            CASE["followup.discharge_48h"],
            event("followup_contact", "fu-9", T0 + DAY, source=MUNI, related_event_id="adm-1"),
        ),
        (
            CASE["application.preliminary_reply"],
            event("application_decided", "dec-1", T0 + DAY, source=MUNI, application_id="APP-1"),
        ),
        (
            CASE["housing_work.discharge_homeless"],
            event(
                "housing_work_started",
                "hw-9",
                T0 + DAY,
                source=MUNI,
                admission_event_id="adm-other",
                related_event_id="dis-1",
            ),
        ),
        (
            CASE["housing.tenancy_at_risk"],
            event(
                "housing_work_started",
                "hw-9",
                T0 + DAY,
                source=HOUSING_OFFICE,
                admission_event_id="adm-other",
                related_event_id="tr-1",
            ),
        ),
        (
            CASE["housing.incident_followup_7d"],
            event(
                "housing_work_started",
                "hw-9",
                T0 + DAY,
                source=HOUSING_OFFICE,
                admission_event_id="adm-other",
                related_event_id="hi-1",
            ),
        ),
    ],
    ids=str,
)
def test_second_fulfilling_link_fulfils_too(case: Case, fulfilment: dict[str, Any]) -> None:
    """Each `fulfilled_by` entry of a rule closes its obligation on its own."""
    person, deadline = triggered(case)
    person.see(fulfilment)
    assert person.deadlines(case.rule_id) == []
    assert of(case.rule_id, person.scan(deadline + DAY)) == []


def test_followup_before_the_discharge_does_not_count() -> None:
    """A follow-up contact that occurred before the discharge does not fulfil the follow-up."""
    case = CASE["followup.discharge_48h"]
    person, deadline = triggered(case)
    early = event("followup_contact", "fu-0", T0 - DAY, source=MUNI, related_event_id="adm-1")
    person.see(early, T0 + HOUR)
    assert person.deadlines(case.rule_id) == [deadline]
    assert orgs(of(case.rule_id, person.scan(deadline + MINUTE))) == [COORDINATOR]


def test_a_possible_suicide_attempt_is_followed_up_like_an_attempt() -> None:
    """The proposal names overdose, suicide attempt and possible suicide attempt: a discharge
    after an admission for a possible attempt opens the suicide row's 7-day follow-up."""
    person = Person()
    person.see(_admission_for("possible_suicide_attempt")()[0])
    person.see(CASE["followup.discharge_7d"].trigger(T0))
    assert person.deadlines("followup.discharge_7d") == [T0 + 7 * DAY]
    assert person.deadlines("followup.discharge_48h") == []


def test_follow_up_rules_need_the_admission_reason() -> None:
    """A discharge after an admission for another reason opens no follow-up obligation."""
    person = Person()
    person.see(_admission_for("psychosis")()[0])
    person.see(CASE["followup.discharge_7d"].trigger(T0))
    assert person.deadlines("followup.discharge_7d") == []
    assert person.deadlines("followup.discharge_48h") == []
    assert len(person.deadlines("epikrise.after_discharge")) == 1


# --- followup.continued_month ------------------------------------------------------------------

MONTH_RULE = "followup.continued_month"


def _contact(event_id: str, at: datetime, related: str = "dis-1") -> dict[str, Any]:
    return event("followup_contact", event_id, at, source=MUNI, related_event_id=related)


def _discharged_after(reason: str) -> Person:
    person = Person()
    person.see(_admission_for(reason)()[0])
    person.see(event("discharge", "dis-1", T0, admission_event_id="adm-1"))
    return person


@pytest.mark.parametrize("reason", ["suicide_attempt", "possible_suicide_attempt"])
def test_follow_up_after_suicidal_behaviour_is_owed_for_a_month(reason: str) -> None:
    """The guideline's "at least 30 days": a discharge after (possible) suicidal behaviour owes,
    beside the first contact within 7 days, a contact in the fifth week, due on day 35."""
    person = _discharged_after(reason)
    assert person.deadlines(MONTH_RULE) == [T0 + 35 * DAY]
    assert person.deadlines("followup.discharge_7d") == [T0 + 7 * DAY]


def test_early_contacts_do_not_show_the_follow_up_ran_a_month() -> None:
    """Contacts in the first four weeks settle the 7-day obligation, not the month's: with none
    later, the scan after day 35 alerts the coordinator, naming why to one that may know."""
    person = _discharged_after("suicide_attempt")
    for day, event_id in ((2, "fu-1"), (14, "fu-2"), (27, "fu-3")):
        assert of(MONTH_RULE, person.see(_contact(event_id, T0 + day * DAY))) == []
    assert person.deadlines("followup.discharge_7d") == []
    assert person.deadlines(MONTH_RULE) == [T0 + 35 * DAY]
    alerts = of(MONTH_RULE, person.scan(T0 + 35 * DAY + MINUTE))
    assert orgs(alerts) == [COORDINATOR]
    assert alerts[0]["deadline"] == rfc3339(T0 + 35 * DAY)
    assert "at least 30 days" in alerts[0]["summary"]


@pytest.mark.parametrize("related", ["dis-1", "adm-1"])
def test_a_contact_in_the_fifth_week_settles_the_month(related: str) -> None:
    """A contact on day 28 or later (linked to the discharge or the admission) settles it: no
    alert, not even long after; the same contact arriving before the discharge counts too."""
    person = _discharged_after("suicide_attempt")
    assert of(MONTH_RULE, person.see(_contact("fu-9", T0 + 29 * DAY, related))) == []
    assert person.deadlines(MONTH_RULE) == []
    assert of(MONTH_RULE, person.scan(T0 + 60 * DAY)) == []

    early = Person()
    early.see(_admission_for("suicide_attempt")()[0])
    early.see(_contact("fu-9", T0 + 28 * DAY, related), T0 + HOUR)
    early.see(event("discharge", "dis-1", T0, admission_event_id="adm-1"), T0 + 2 * HOUR)
    assert early.deadlines(MONTH_RULE) == []


def test_a_late_fifth_week_contact_resolves_the_month_alert() -> None:
    """A contact after day 35 resolves the breach as fulfilled late."""
    person = _discharged_after("suicide_attempt")
    raised = of(MONTH_RULE, person.scan(T0 + 35 * DAY + MINUTE))
    assert raised
    resolved = of(MONTH_RULE, person.see(_contact("fu-9", T0 + 36 * DAY)))
    assert [a["alert_id"] for a in resolved] == [a["alert_id"] for a in raised]
    assert {(a["status"], a["resolution"]) for a in resolved} == {("resolved", "fulfilled_late")}


def test_other_discharges_owe_no_month() -> None:
    """An overdose discharge and a discharge after a psychosis owe no month's follow-up."""
    for reason in ("overdose", "psychosis"):
        assert _discharged_after(reason).deadlines(MONTH_RULE) == []


def test_not_before_must_be_a_positive_duration(tmp_path: Path) -> None:
    """`not_before` is a wait after the trigger: zero or not a duration is refused by name."""
    for wait in ("P0D", "soon"):
        path = write(
            tmp_path,
            "version: t\nrules:\n  - id: a.b\n    title: T\n    kind: deadline\n"
            "    trigger: {event_type: discharge}\n    deadline: P7D\n"
            "    fulfilled_by: [{event_type: followup_contact, link: {related_event_id: event_id},"
            f" not_before: {wait}}}]\n    recipients: [[source]]\n"
            "    source: carebus-default: test\n",
        )
        with pytest.raises(SlaRulesError, match="not_before"):
            load_rules(path)


# --- ip.review_due ------------------------------------------------------------------------------


def test_review_deadline_is_the_plans_review_date() -> None:
    """The deadline is next_review_at, not a duration after the update."""
    person = Person()
    person.see(_plan(T0, "ip-1", next_review_at="2027-02-01T09:00:00+01:00"))
    assert person.deadlines("ip.review_due") == [datetime(2027, 2, 1, 8, 0, tzinfo=UTC)]


def test_new_review_date_fulfils_and_opens_the_next() -> None:
    """An update with a new review date closes the old obligation and tracks the new date."""
    person = Person()
    person.see(_plan(T0, "ip-1"))
    person.see(_plan(T0 + DAY, "ip-2", next_review_at=rfc3339(T0 + 60 * DAY)))
    assert person.deadlines("ip.review_due") == [T0 + 60 * DAY]
    assert of("ip.review_due", person.scan(T0 + 31 * DAY)) == []
    assert len(of("ip.review_due", person.scan(T0 + 61 * DAY))) == 1


def test_same_review_date_again_opens_nothing_new() -> None:
    """Another update with the same review date neither fulfils nor opens an obligation."""
    person = Person()
    person.see(_plan(T0, "ip-1"))
    person.see(_plan(T0 + DAY, "ip-2", participants=[]))
    assert person.deadlines("ip.review_due") == [T0 + 30 * DAY]
    alerts = of("ip.review_due", person.scan(T0 + 31 * DAY))
    assert [a["event_ids"] for a in alerts] == [["ip-1"]]


def test_older_plan_update_arriving_late_does_not_close_the_newer_date() -> None:
    """An update that occurred before the current one, arriving after it, leaves it tracked."""
    person = Person()
    person.see(_plan(T0 + DAY, "ip-2", next_review_at=rfc3339(T0 + 60 * DAY)), T0 + DAY)
    person.see(_plan(T0, "ip-1"), T0 + 2 * DAY)
    assert person.deadlines("ip.review_due") == [T0 + 60 * DAY]
    assert of("ip.review_due", person.scan(T0 + 31 * DAY)) == []


# --- housing_work.homeless_admission ------------------------------------------------------------

HOUSING = "housing_work.homeless_admission"


def homeless_admission(at: datetime = T0) -> dict[str, Any]:
    return event(
        "admission",
        "adm-1",
        at,
        housing_status="homeless",
        needs_municipal_services=False,
        home_municipality_org=None,
    )


def discharge_ready(at: datetime) -> dict[str, Any]:
    return event("discharge_ready", "dr-1", at, admission_event_id="adm-1")


def housing_work(at: datetime) -> dict[str, Any]:
    return event("housing_work_started", "hw-1", at, source=MUNI, admission_event_id="adm-1")


def test_housing_obligation_has_no_deadline_until_discharge_ready() -> None:
    """A homeless admission opens an obligation that no scan breaches before discharge-ready."""
    person = Person()
    assert of(HOUSING, person.see(homeless_admission())) == []
    assert person.deadlines(HOUSING) == []
    assert HOUSING in {ob["rule_id"] for ob in person.state.obligations.values()}
    assert of(HOUSING, person.scan(T0 + 60 * DAY)) == []


def test_housing_obligation_without_discharge_ready_is_forgotten_after_the_memory() -> None:
    """An obligation still waiting for its discharge-ready is dropped once MEMORY has passed."""
    person = Person()
    person.see(homeless_admission())
    later = event(
        "police_callout", "police-late", T0 + MEMORY + DAY, source=("police", "974760673")
    )
    person.see(later)
    assert HOUSING not in {ob["rule_id"] for ob in person.state.obligations.values()}


def test_housing_only_for_homeless_admissions() -> None:
    """An admission of a person with stable housing opens no housing-work obligation."""
    person = Person()
    person.see(event("admission", "adm-1", T0, housing_status="stable"))
    assert HOUSING not in {ob["rule_id"] for ob in person.state.obligations.values()}


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_discharge_ready_without_housing_work_alerts_at_once(setup: str) -> None:
    """Discharge-ready with no housing work started breaches at once, deadline = its time."""
    person = Person(SETUPS[setup])
    person.see(homeless_admission())
    alerts = of(HOUSING, person.see(discharge_ready(T0 + 5 * DAY)))
    assert orgs(alerts) == CHAIN_COORDINATOR_HOME[setup]
    assert [a["deadline"] for a in alerts] == [rfc3339(T0 + 5 * DAY)]
    assert [a["event_ids"] for a in alerts] == [["adm-1"]]
    assert of(HOUSING, person.scan(T0 + 6 * DAY)) == []


def test_housing_work_before_discharge_ready_fulfils() -> None:
    """Housing work started before discharge-ready means no alert."""
    person = Person()
    person.see(homeless_admission())
    assert of(HOUSING, person.see(housing_work(T0 + DAY))) == []
    assert of(HOUSING, person.see(discharge_ready(T0 + 5 * DAY))) == []
    assert of(HOUSING, person.scan(T0 + 60 * DAY)) == []


def test_housing_work_after_discharge_ready_resolves_late() -> None:
    """Housing work started after discharge-ready resolves the alert as fulfilled_late."""
    person = Person()
    person.see(homeless_admission())
    raised = of(HOUSING, person.see(discharge_ready(T0 + 5 * DAY)))
    resolved = of(HOUSING, person.see(housing_work(T0 + 6 * DAY)))
    assert [a["alert_id"] for a in resolved] == [a["alert_id"] for a in raised]
    assert {(a["status"], a["resolution"]) for a in resolved} == {("resolved", "fulfilled_late")}


def test_housing_work_reported_after_discharge_ready_resolves_as_late_report() -> None:
    """Housing work that started before discharge-ready but is reported after it: late report."""
    person = Person()
    person.see(homeless_admission())
    assert of(HOUSING, person.see(discharge_ready(T0 + 5 * DAY)))
    resolved = of(HOUSING, person.see(housing_work(T0 + 4 * DAY), T0 + 6 * DAY))
    assert {(a["status"], a["resolution"]) for a in resolved} == {
        ("resolved", "fulfilled_late_report")
    }


def test_discharge_ready_arriving_before_the_admission_sets_the_deadline() -> None:
    """A discharge-ready seen before its admission still gives the obligation its deadline."""
    person = Person()
    person.see(discharge_ready(T0 + 5 * DAY), T0 + 5 * DAY)
    alerts = of(HOUSING, person.see(homeless_admission(), T0 + 5 * DAY + HOUR))
    assert [a["deadline"] for a in alerts] == [rfc3339(T0 + 5 * DAY)]


def test_a_discharge_without_discharge_ready_sets_the_housing_deadline() -> None:
    """No discharge-ready notice, then the discharge: the housing obligation is due at the
    discharge, and breaches at once if no housing work has started."""
    person = Person()
    person.see(homeless_admission())
    discharge = event("discharge", "dis-1", T0 + 9 * DAY, admission_event_id="adm-1")
    alerts = of(HOUSING, person.see(discharge))
    assert [a["deadline"] for a in alerts] == [rfc3339(T0 + 9 * DAY)]


def test_housing_replays_change_nothing() -> None:
    """Admission, discharge-ready and housing work seen twice raise nothing new."""
    person = Person()
    person.see(homeless_admission())
    assert len(of(HOUSING, person.see(discharge_ready(T0 + 5 * DAY)))) == 1
    assert of(HOUSING, person.see(discharge_ready(T0 + 5 * DAY))) == []
    assert of(HOUSING, person.see(homeless_admission(), T0 + 5 * DAY + HOUR)) == []
    assert len(of(HOUSING, person.see(housing_work(T0 + 6 * DAY)))) == 1
    for record in (homeless_admission(), discharge_ready(T0 + 5 * DAY), housing_work(T0 + 6 * DAY)):
        assert of(HOUSING, person.see(record, T0 + 7 * DAY)) == []
    assert of(HOUSING, person.scan(T0 + 60 * DAY)) == []


# --- care_team_meeting.repeated_incidents (window) ----------------------------------------------

WINDOW = "care_team_meeting.repeated_incidents"


def callout(number: int, at: datetime) -> dict[str, Any]:
    return event("police_callout", f"pol-{number}", at, source=("police", "974760673"))


def incident(number: int, at: datetime) -> dict[str, Any]:
    return event("housing_incident", f"inc-{number}", at, source=("housing", "987654321"))


def feed(person: Person, records: Sequence[dict[str, Any]]) -> list[list[AlertJson]]:
    return [of(WINDOW, person.see(record)) for record in records]


def test_three_incidents_within_the_window_raise_one_alert() -> None:
    """A third callout or incident within P30D raises one care-team-meeting alert."""
    person = Person()
    seen = feed(person, [callout(1, T0), incident(2, T0 + 10 * DAY), callout(3, T0 + 20 * DAY)])
    assert [len(alerts) for alerts in seen] == [0, 0, 1]
    (alert,) = seen[2]
    assert alert["kind"] == "care_team_meeting"
    assert alert["recipient"] == {"agency": "municipality", "org_id": COORDINATOR}
    assert alert["event_ids"] == ["pol-1", "inc-2", "pol-3"]


def test_three_incidents_spread_over_more_than_the_window_raise_nothing() -> None:
    """Three events that never fall within one P30D window raise nothing."""
    person = Person()
    seen = feed(person, [callout(1, T0), callout(2, T0 + 20 * DAY), callout(3, T0 + 31 * DAY)])
    assert seen == [[], [], []]


def test_five_incidents_in_one_episode_raise_one_alert() -> None:
    """The fourth and fifth events of the same episode raise no further alert."""
    person = Person()
    seen = feed(person, [callout(n, T0 + n * DAY) for n in range(1, 6)])
    assert [len(alerts) for alerts in seen] == [0, 0, 1, 0, 0]


def test_new_episode_after_a_full_window_since_the_alert() -> None:
    """After a full window since the alert, the threshold reached again raises a new alert."""
    person = Person()
    first = feed(person, [callout(n, T0 + n * DAY) for n in range(1, 4)])  # alert at day 3
    assert [len(alerts) for alerts in first] == [0, 0, 1]
    inside = feed(person, [callout(4, T0 + 25 * DAY), callout(5, T0 + 30 * DAY)])
    assert inside == [[], []]  # threshold reached, but within the episode
    (again,) = feed(person, [callout(6, T0 + 34 * DAY)])
    assert len(again) == 1
    assert again[0]["alert_id"] != first[2][0]["alert_id"]
    assert again[0]["event_ids"] == ["pol-4", "pol-5", "pol-6"]


def test_window_replay_is_not_counted_twice() -> None:
    """The same callout seen twice counts once."""
    person = Person()
    seen = feed(person, [callout(1, T0), callout(2, T0 + DAY), callout(2, T0 + DAY)])
    assert seen == [[], [], []]


# --- emergency_disclosure (immediate) -----------------------------------------------------------

EMERGENCY = {
    "justification": "Risk to life",
    "accountable": "Overlege",
    "recipients": [{"agency": "police", "org_id": "974760673"}],
}


def test_emergency_event_alerts_the_source_privacy_officer_at_once() -> None:
    """An event disclosed in an emergency raises a privacy-officer alert to its source at once
    (and one to every organisation routing delivered it to: test_alerts_authority.py)."""
    person = Person()
    record = event("discharge", "dis-9", T0, emergency=EMERGENCY)
    raised = of("emergency_disclosure", person.see(record))
    (alert,) = [a for a in raised if a["recipient"] and a["recipient"]["org_id"] == DPS[1]]
    assert alert["audience"] == "privacy_officer"
    assert alert["kind"] == "emergency_disclosure"
    assert alert["recipient"] == {"agency": DPS[0], "org_id": DPS[1]}
    assert alert["event_ids"] == ["dis-9"]
    assert alert["subject"] == {"nin": NIN}
    assert "Risk to life" in alert["summary"]


def test_event_without_emergency_raises_no_emergency_alert() -> None:
    """An ordinary event raises no emergency alert."""
    assert of("emergency_disclosure", Person().see(event("discharge", "dis-9", T0))) == []


def test_emergency_replay_raises_nothing_new() -> None:
    """The same emergency event seen twice raises its alerts (source, named recipient, care
    team, home municipality) once."""
    person = Person()
    record = event("discharge", "dis-9", T0, emergency=EMERGENCY)
    assert orgs(of("emergency_disclosure", person.see(record))) == [
        DPS[1],
        HOME,
        COORDINATOR,
        "974760673",
    ]
    assert of("emergency_disclosure", person.see(record, T0 + HOUR)) == []


# --- routing's cut ------------------------------------------------------------------------------


def suicide_followup_breach(routing: PersonState) -> list[dict[str, Any]]:
    return breached(CASE["followup.discharge_7d"], Person(routing))[2]


def test_alert_goes_to_the_chains_first_organisation_that_may_know_the_person() -> None:
    """A coordinator routing lets see nothing (NAV, no consent) is passed over for the home
    municipality, which the statutory notice told (issue 17, item 7)."""
    (alert,) = suicide_followup_breach(routing_with(coordinator=NAV, home=HOME, agency="nav"))
    assert alert["recipient"] == {"agency": "municipality", "org_id": HOME}
    assert alert["subject"] == {"nin": NIN}


def test_alert_to_a_recipient_routing_withholds_from_is_cut() -> None:
    """When no one in the chain may know (NAV without consent, no home municipality), the
    coordinator gets no nin and a neutral title."""
    (alert,) = suicide_followup_breach(routing_with(coordinator=NAV, home=None, agency="nav"))
    rule = RULES.rule("followup.discharge_7d")
    assert rule is not None
    assert alert["recipient"] == {"agency": "nav", "org_id": NAV}
    assert alert["subject"] is None
    assert alert["title"] == rule.neutral_title != rule.title
    assert NIN not in json.dumps(alert)
    assert "suicid" not in (alert["title"] + alert["summary"]).lower()
    assert "not disclosed" in alert["summary"]


def test_alert_to_a_presumed_basis_member_carries_the_nin() -> None:
    """A care-team coordinator on a presumed basis learns whom the alert is about."""
    (alert,) = suicide_followup_breach(routing_with(coordinator=COORDINATOR, home=HOME))
    assert alert["recipient"] == {"agency": "municipality", "org_id": COORDINATOR}
    assert alert["subject"] == {"nin": NIN}
    assert alert["disclosure"]["basis"] == "presumed"


def test_alert_to_the_unassigned_queue_carries_no_nin() -> None:
    """The unassigned queue gets the neutral title and no nin."""
    (alert,) = suicide_followup_breach(routing_with(coordinator=None, home=None))
    assert alert["recipient"] is None
    assert alert["subject"] is None
    assert alert["title"] == "No follow-up contact after discharge"
    assert "disclosure" not in alert


def test_alert_to_the_source_carries_the_nin_and_specific_title() -> None:
    """The trigger's own organisation sees everything about its own event."""
    alerts = breached(CASE["health_info.after_admission"])[2]
    source = next(a for a in alerts if a["recipient"]["org_id"] == DPS[1])
    assert source["subject"] == {"nin": NIN}
    assert source["title"] == "Health information to the municipality after admission not sent"


def test_home_municipality_outside_the_team_gets_the_housing_title() -> None:
    """The statutory notice tells the home municipality the housing status (the regulation:
    a patient without suitable housing), so the housing alert may say what it is about."""
    person = Person(routing_with(coordinator=None, home=HOME))
    person.see(homeless_admission())
    (alert,) = of(HOUSING, person.see(discharge_ready(T0 + 5 * DAY)))
    assert alert["subject"] == {"nin": NIN}
    rule = RULES.rule(HOUSING)
    assert rule is not None
    assert alert["title"] == rule.title != rule.neutral_title


# --- the housing pathway and Brukerplan (issue 17 items 2 and 8) -----------------------------

STAY = "housing.temporary_over_3_months"
AFTER_DISCHARGE = "housing_work.discharge_homeless"
RED = "housing_work.discharge_1d"


def temporary_stay(at: datetime, housing_kind: str = "emergency_shelter") -> dict[str, Any]:
    return event(
        "temporary_housing_started",
        "ths-1",
        at,
        source=("municipality", HOME),
        stay_id="TB-1",
        housing_kind=housing_kind,
    )


def homeless_discharge(at: datetime) -> dict[str, Any]:
    return event("discharge", "dis-1", at, admission_event_id="adm-1", destination="homeless")


@pytest.mark.parametrize(
    ("fulfilment", "settles"),
    [
        (lambda at: temporary_stay(at), True),
        (
            lambda at: event(
                "application_received",
                "app-1",
                at,
                source=("municipality", HOME),
                application_id="A-1",
                service_kind="housing",
            ),
            True,
        ),
        (
            lambda at: event(
                "application_received",
                "app-1",
                at,
                source=("municipality", HOME),
                application_id="A-1",
                service_kind="home_services",
            ),
            False,
        ),
    ],
)
def test_housing_work_after_a_homeless_discharge_is_a_stay_or_a_housing_application(
    fulfilment: Callable[[datetime], dict[str, Any]], settles: bool
) -> None:
    """A temporary stay or a housing application for the person after the discharge is the
    housing work begun (link: subject); an application for another service is not; one from
    before the discharge answers an earlier question and settles nothing."""
    person = Person()
    person.see(event("admission", "adm-1", T0 - DAY, reason="psychosis"))
    person.see(fulfilment(T0 - HOUR))  # before the discharge: not an answer to it
    person.see(homeless_discharge(T0))
    assert person.deadlines(AFTER_DISCHARGE) == [T0 + 3 * DAY]
    person.see({**fulfilment(T0 + DAY), "event_id": "later-1"})
    assert person.deadlines(AFTER_DISCHARGE) == ([] if settles else [T0 + 3 * DAY])


def test_a_stay_reported_by_an_organisation_with_no_relation_settles_no_housing_work() -> None:
    """A NAV office outside the care team reporting a stay (review finding: any sender could
    silence the municipality's housing deadline) settles nothing; the home municipality's
    report of the same stay does."""
    person = Person()
    person.see(event("admission", "adm-1", T0 - DAY, reason="psychosis"))
    person.see(homeless_discharge(T0))
    person.see({**temporary_stay(T0 + HOUR), "source": {"agency": "nav", "org_id": NAV}})
    assert person.deadlines(AFTER_DISCHARGE) == [T0 + 3 * DAY]
    person.see({**temporary_stay(T0 + 2 * HOUR), "event_id": "ths-2"})
    assert person.deadlines(AFTER_DISCHARGE) == []


def test_a_discharge_to_temporary_housing_is_not_settled_by_the_stay_itself() -> None:
    """The person already has the temporary place; what is owed is the work for a lasting home:
    a temporary stay reported after the discharge settles nothing, a housing application does."""
    person = Person()
    person.see(event("admission", "adm-1", T0 - DAY, reason="psychosis"))
    person.see(
        event("discharge", "dis-1", T0, admission_event_id="adm-1", destination="temporary_housing")
    )
    person.see(temporary_stay(T0 + HOUR))
    assert person.deadlines("housing_work.discharge_temporary") == [T0 + 7 * DAY]
    person.see(
        event(
            "application_received",
            "app-1",
            T0 + DAY,
            source=("municipality", HOME),
            application_id="A-1",
            service_kind="housing",
        )
    )
    assert person.deadlines("housing_work.discharge_temporary") == []


def test_day_91_of_a_temporary_stay_breaches_and_its_end_on_day_95_resolves_late() -> None:
    """Three months (P3M, the Oslo calendar: 92 days from 23 November) in an emergency shelter
    alert the municipality; the stay's end four days later resolves the alert fulfilled_late."""
    person = Person()
    person.see(temporary_stay(T0))
    assert of(STAY, person.scan(T0 + 91 * DAY)) == []
    (alert,) = of(STAY, person.scan(T0 + 92 * DAY + MINUTE))
    # The coordinator was not told of the stay (housing information: consent only); the home
    # municipality, which reported it, knows the person: the alert goes there (item 7).
    assert alert["recipient"] == {"agency": "municipality", "org_id": HOME}
    ended = event("temporary_housing_ended", "the-1", T0 + 95 * DAY, source=MUNI, stay_id="TB-1")
    (again,) = of(STAY, person.see(ended))
    assert (again["status"], again["resolution"]) == ("resolved", "fulfilled_late")


def test_a_training_flat_opens_nothing() -> None:
    """A training flat is a planned stay of 1½-2 years (seed 003): no three-month obligation."""
    person = Person()
    person.see(temporary_stay(T0, housing_kind="training_flat"))
    assert person.deadlines(STAY) == []
    assert of(STAY, person.scan(T0 + 200 * DAY)) == []


def test_the_same_stay_reported_twice_is_one_obligation() -> None:
    """The stay id names the obligation: the housing office and NAV reporting one stay, or a
    resend under a new event id, open one obligation."""
    person = Person()
    person.see(temporary_stay(T0))
    person.see({**temporary_stay(T0 + HOUR), "event_id": "ths-2"})
    assert len(person.deadlines(STAY)) == 1


def test_a_red_housing_score_shortens_the_homeless_discharge_deadline() -> None:
    """With Brukerplan housing red the discharge opens the one-day rule and not the three-day
    one (one group: one obligation per discharge); without an assessment, three days."""
    red = Person()
    for record in _admission_for("psychosis")():
        red.see(record)
    red.see(brukerplan("bp-1", T0 - 2 * DAY, housing="red"))
    red.see(homeless_discharge(T0))
    assert (red.deadlines(RED), red.deadlines(AFTER_DISCHARGE)) == ([T0 + DAY], [])
    plain = Person()
    for record in _admission_for("psychosis")():
        plain.see(record)
    plain.see(brukerplan("bp-1", T0 - 2 * DAY, housing="yellow"))
    plain.see(homeless_discharge(T0))
    assert (plain.deadlines(RED), plain.deadlines(AFTER_DISCHARGE)) == ([], [T0 + 3 * DAY])


def test_a_later_green_score_does_not_change_an_open_obligation() -> None:
    """The deadline was set when the discharge arrived; a green assessment after it changes
    neither the deadline nor which rule is open."""
    person = Person()
    for record in _admission_for("psychosis")():
        person.see(record)
    person.see(brukerplan("bp-1", T0 - 2 * DAY, housing="red"))
    person.see(homeless_discharge(T0))
    person.see(brukerplan("bp-2", T0 + HOUR, housing="green"))
    assert (person.deadlines(RED), person.deadlines(AFTER_DISCHARGE)) == ([T0 + DAY], [])
    assert of(RED, person.scan(T0 + DAY + MINUTE))


def test_an_older_assessment_arriving_late_does_not_replace_the_latest() -> None:
    """The latest scores by occurred_at count, not the last to arrive."""
    person = Person()
    for record in _admission_for("psychosis")():
        person.see(record)
    person.see(brukerplan("bp-2", T0 - DAY, housing="red"))
    person.see(brukerplan("bp-1", T0 - 300 * DAY, housing="green"))
    person.see(homeless_discharge(T0))
    assert person.deadlines(RED) == [T0 + DAY]


def test_retracting_the_assessment_removes_its_scores() -> None:
    """A retracted red assessment no longer shortens anything; the one before it counts again."""
    person = Person()
    for record in _admission_for("psychosis")():
        person.see(record)
    person.see(brukerplan("bp-1", T0 - 300 * DAY, housing="yellow"))
    person.see(brukerplan("bp-2", T0 - 2 * DAY, housing="red"))
    person.see(event("retraction", "r-1", T0 - DAY, source=MUNI, retracted_event_id="bp-2"))
    assert [kept["event_id"] for kept in person.state.person["brukerplan"]] == ["bp-1"]
    person.see(homeless_discharge(T0))
    assert (person.deadlines(RED), person.deadlines(AFTER_DISCHARGE)) == ([], [T0 + 3 * DAY])


def test_another_organisations_retraction_leaves_the_scores() -> None:
    """Event ids are unique per sender: a DPS retracting its own event of the same id does not
    remove the municipality's assessment."""
    person = Person()
    person.see(brukerplan("bp-1", T0 - 2 * DAY, housing="red"))
    person.see(event("retraction", "r-1", T0 - DAY, retracted_event_id="bp-1"))
    assert [kept["event_id"] for kept in person.state.person["brukerplan"]] == ["bp-1"]


@pytest.mark.parametrize(
    ("setup", "specific"), [("coordinator_and_home", True), ("home_only", False)]
)
def test_the_red_title_only_for_a_recipient_who_may_read_the_score(
    setup: str, specific: bool
) -> None:
    """The coordinator in the care team is given the assessment's housing score (presumed) and
    reads why; a home municipality outside the team knows of the discharge (statutory) but not
    the score, so it gets the neutral title and no why."""
    person = Person(SETUPS[setup])
    for record in _admission_for("psychosis")():
        person.see(record)
    person.see(brukerplan("bp-1", T0 - 2 * DAY, housing="red"))
    person.see(homeless_discharge(T0))
    (alert,) = of(RED, person.scan(T0 + DAY + MINUTE))
    rule = RULES.rule(RED)
    assert rule is not None
    assert alert["subject"] == {"nin": NIN}
    assert alert["title"] == (rule.title if specific else rule.neutral_title)
    assert ("Brukerplan" in alert["summary"]) is specific


def test_without_the_persons_facts_a_brukerplan_condition_is_not_readable() -> None:
    """A caller that passes no person facts (the inbox's person view) or a person with no
    assessment kept gets the neutral title, even for a recipient that saw every field."""
    rule = RULES.rule(RED)
    assert rule is not None
    trigger = homeless_discharge(T0)
    everything = frozenset({"destination", *EXAMPLE_PAYLOADS["brukerplan_assessment"]})
    assert not may_read_condition(rule, trigger, COORDINATOR, lambda _: everything)
    assert not may_read_condition(rule, trigger, COORDINATOR, lambda _: everything, {})
    person = {
        "brukerplan": [
            {
                "event_id": "bp-1",
                "source_org": MUNI[1],
                "occurred_at": rfc3339(T0),
                "scores": {"housing": "red"},
            }
        ]
    }
    assert may_read_condition(rule, trigger, COORDINATOR, lambda _: everything, person)
    only_health = frozenset({"destination", "mental_health"})
    assert not may_read_condition(rule, trigger, COORDINATOR, lambda _: only_health, person)


def test_an_eviction_warning_opens_a_tenancy_obligation_and_other_incidents_do_not() -> None:
    """Of the housing incidents only the eviction warning asks for a follow-up."""
    person = Person()
    person.see(event("housing_incident", "hi-1", T0, source=HOUSING_OFFICE, kind="noise"))
    assert person.deadlines("housing.incident_followup_7d") == []
    person.see(
        event("housing_incident", "hi-2", T0, source=HOUSING_OFFICE, kind="eviction_warning")
    )
    assert person.deadlines("housing.incident_followup_7d") == [T0 + 7 * DAY]


# --- load_rules ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_rule_file_loads_every_rule() -> None:
    """The reviewed file loads with a version that names its content."""
    assert RULES.version.startswith("2026.1+")
    assert len(RULES.rules) == 30


def test_override_changes_only_the_keys_it_names(tmp_path: Path) -> None:
    """An override with only id and deadline changes that rule's deadline and nothing else."""
    override = write(
        tmp_path, "rules:\n  - {id: municipal_reply.discharge_ready, deadline: PT2S}\n"
    )
    merged = load_rules(RULES_FILE, override)
    before = RULES.rule("municipal_reply.discharge_ready")
    after = merged.rule("municipal_reply.discharge_ready")
    assert before is not None
    assert after is not None
    assert after.deadline is not None
    assert after.deadline.after(T0) == T0 + timedelta(seconds=2)
    assert after.cancelled_by == before.cancelled_by
    assert after.recipients == before.recipients
    assert after.title == before.title
    unchanged = [r for r in merged.rules if r.rule_id != "municipal_reply.discharge_ready"]
    assert unchanged == [r for r in RULES.rules if r.rule_id != after.rule_id]
    assert merged.version != RULES.version


@pytest.mark.parametrize(
    ("change", "rule_id", "words"),
    [
        ("{id: epikrise.after_discharge, deadlin: P7D}", "epikrise.after_discharge", "deadlin"),
        (
            "{id: epikrise.after_discharge, deadline: 7 days}",
            "epikrise.after_discharge",
            "deadline",
        ),
        (
            "{id: epikrise.after_discharge, trigger: {event_type: discharged}}",
            "epikrise.after_discharge",
            "discharged",
        ),
        (
            "{id: epikrise.after_discharge, recipients: [[nurse]]}",
            "epikrise.after_discharge",
            "'nurse'",
        ),
        (
            "{id: ip.review_due, fulfilled_by: [{event_type: ip_updated, link: {a: a}}]}",
            "ip.review_due",
            "fulfilled_by[0]",
        ),
        (
            "{id: followup.discharge_48h, trigger: {event_type: discharge, wen: {x: 1}}}",
            "followup.discharge_48h",
            "wen",
        ),
        (
            "{id: epikrise.after_discharge, escalation: PT}",
            "epikrise.after_discharge",
            "escalation",
        ),
    ],
)
def test_bad_rule_is_refused_naming_rule_and_field(
    tmp_path: Path, change: str, rule_id: str, words: str
) -> None:
    """A wrong key, duration, event type or role is refused with the rule and field named."""
    override = write(tmp_path, f"rules:\n  - {change}\n")
    with pytest.raises(SlaRulesError) as refused:
        load_rules(RULES_FILE, override)
    problems = refused.value.problems
    assert any(p.startswith(f"rule {rule_id}:") and words in p for p in problems), problems
    assert all(p.startswith(f"rule {rule_id}:") for p in problems)


def test_bad_file_reports_every_problem(tmp_path: Path) -> None:
    """Several broken rules are all named in one refusal."""
    path = write(
        tmp_path,
        'version: "x"\nrules:\n'
        "  - {id: a, title: A, kind: deadline, trigger: {event_type: nope}, deadline: P1X,\n"
        "     fulfilled_by: [{event_type: discharge, link: {a: b}}], recipients: [[source]],\n"
        '     source: "carebus-default: test"}\n'
        "  - {id: b, title: B, kind: sometimes, source: nowhere}\n",
    )
    with pytest.raises(SlaRulesError) as refused:
        load_rules(path)
    text = str(refused.value)
    for expected in ("rule a: trigger", "rule a: deadline", "rule b: kind", "rule b: source"):
        assert expected in text


def test_unreadable_or_malformed_files_are_refused(tmp_path: Path) -> None:
    """A missing file, invalid YAML or a file without rules raises SlaRulesError."""
    for path in (
        tmp_path / "missing.yaml",
        write(tmp_path, "rules: [\n", "broken.yaml"),
        write(tmp_path, "version: x\n", "empty.yaml"),
    ):
        with pytest.raises(SlaRulesError):
            load_rules(path)


# --- durations ----------------------------------------------------------------------------------


def oslo(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=OSLO)


def test_one_day_keeps_the_oslo_wall_clock_across_dst() -> None:
    """P1D from noon before the spring change is noon the next day (23 hours later)."""
    start = oslo(2026, 3, 28, 12, 0)
    after = parse_duration("P1D").after(start)
    assert after.astimezone(OSLO).replace(tzinfo=None) == datetime(2026, 3, 29, 12, 0)
    assert after - start == timedelta(hours=23)
    autumn = oslo(2026, 10, 24, 12, 0)
    assert parse_duration("P1D").after(autumn) - autumn == timedelta(hours=25)


def test_twenty_four_hours_is_exact_across_dst() -> None:
    """PT24H is 24 hours of elapsed time even when the clocks change."""
    start = oslo(2026, 3, 28, 12, 0)
    after = parse_duration("PT24H").after(start)
    assert after - start == timedelta(hours=24)
    assert after.astimezone(OSLO).hour == 13


def test_one_month_clamps_to_the_end_of_february() -> None:
    """P1M from January 31 is February 28 (2027 is no leap year) at the same wall time."""
    after = parse_duration("P1M").after(oslo(2027, 1, 31, 10, 0))
    assert after.astimezone(OSLO).replace(tzinfo=None) == datetime(2027, 2, 28, 10, 0)


def test_one_month_from_late_oslo_evening_uses_the_oslo_date() -> None:
    """P1M counts from the Oslo calendar date, not the UTC one."""
    start = datetime(2027, 1, 31, 23, 30, tzinfo=UTC)  # 1 Feb 00:30 in Oslo
    after = parse_duration("P1M").after(start)
    assert after.astimezone(OSLO).replace(tzinfo=None) == datetime(2027, 3, 1, 0, 30)


@pytest.mark.parametrize("text", ["", "P", "PT", "P1DT", "4H", "P-1D", "PT1.5H", "P1X"])
def test_bad_durations_are_refused(text: str) -> None:
    """Anything but an ISO 8601 duration is a ValueError naming the text."""
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "months", "days", "seconds"),
    [("P1Y2M", 14, 0, 0.0), ("P2W3D", 0, 17, 0.0), ("PT1H30M2.5S", 0, 0, 5402.5)],
)
def test_duration_parts(text: str, months: int, days: int, seconds: float) -> None:
    """Years and months are calendar months, weeks days, the time part seconds."""
    duration = parse_duration(text)
    assert (duration.months, duration.days, duration.seconds) == (months, days, seconds)


# --- followup_notice.discharge (immediate notice) --------------------------------------------

FOLLOWUP_NOTICE = "followup_notice.discharge"


def risk_discharge(person: Person, reason: str, **payload: Any) -> list[AlertJson]:
    person.see(_admission_for(reason)()[0])
    return person.see(event("discharge", "dis-1", T0, admission_event_id="adm-1", **payload))


@pytest.mark.parametrize("reason", ["overdose", "suicide_attempt", "possible_suicide_attempt"])
def test_a_risk_discharge_notifies_the_home_municipality_at_once(reason: str) -> None:
    """At once, not at a breach: the home municipality (outside the team) and the coordinator
    learn that follow-up is needed, by when and whom to contact; only the coordinator, whom
    routing let see the admission's reason, reads what the discharge was about and why."""
    person = Person(SETUPS["coordinator_and_home"])
    alerts = of(FOLLOWUP_NOTICE, risk_discharge(person, reason))
    raised = dict(zip(orgs(alerts), alerts, strict=True))
    assert set(raised) == {HOME, COORDINATOR}
    rule = RULES.rule(FOLLOWUP_NOTICE)
    assert rule is not None
    for alert in raised.values():
        assert (alert["kind"], alert["status"], alert["deadline"]) == ("notice", "open", None)
        assert alert["subject"] == {"nin": NIN}
        assert "Follow-up agreed for 2026-12-03 10:00 (Oslo)." in alert["summary"]
        assert f"Contact dps {DPS[1]}." in alert["summary"]
        # The DPS contact is sealed free text; an alert's summary is stored in clear.
        assert "Kari Nordmann" not in alert["summary"]
    assert raised[COORDINATOR]["title"] == rule.title
    assert "high-risk period" in raised[COORDINATOR]["summary"]
    assert raised[HOME]["title"] == rule.neutral_title
    assert "high-risk period" not in raised[HOME]["summary"]
    assert "overdose" not in raised[HOME]["summary"] + raised[HOME]["title"]


def test_without_a_home_municipality_the_dps_gets_the_notice() -> None:
    """Nobody in the municipality to tell: the discharging DPS, whose step it then is."""
    person = Person(SETUPS["nobody"])
    (alert,) = of(FOLLOWUP_NOTICE, risk_discharge(person, "overdose"))
    assert alert["recipient"] == {"agency": "dps", "org_id": DPS[1]}
    assert alert["contact"] is None
    assert "The next step is yours." in alert["summary"]


def test_no_notice_for_other_discharges() -> None:
    assert of(FOLLOWUP_NOTICE, risk_discharge(Person(), "psychosis")) == []


def test_the_notice_resolves_when_the_follow_up_is_reported() -> None:
    person = Person(SETUPS["home_only"])
    (raised,) = of(FOLLOWUP_NOTICE, risk_discharge(person, "overdose"))
    contact = event("followup_contact", "fu-1", T0 + DAY, source=MUNI, related_event_id="dis-1")
    (done,) = of(FOLLOWUP_NOTICE, person.see(contact))
    assert (done["alert_id"], done["status"], done["resolution"]) == (
        raised["alert_id"],
        "resolved",
        "fulfilled",
    )
    # And the 48-hour obligation of the same group was met in time.
    assert of("followup.discharge_48h", person.scan(T0 + 5 * DAY)) == []


def test_one_follow_up_obligation_per_risk_discharge() -> None:
    """The group: an agreed time sooner than the default opens only `at_agreed_time`; none,
    only the default."""
    early = Person(SETUPS["home_only"])
    risk_discharge(early, "suicide_attempt", followup_at=rfc3339(T0 + DAY))
    assert sorted(o["rule_id"] for o in early.state.obligations.values() if o["deadline"]) == [
        "epikrise.after_discharge",
        "followup.at_agreed_time",
        "followup.continued_month",  # not of the group: the month after the first contact
    ]
    late = Person(SETUPS["home_only"])
    risk_discharge(late, "suicide_attempt", followup_at=None)
    assert sorted(o["rule_id"] for o in late.state.obligations.values() if o["deadline"]) == [
        "epikrise.after_discharge",
        "followup.continued_month",
        "followup.discharge_7d",
        "followup.time_in_hand",  # the DPS owes the agreed time, by the end of the day
    ]


# --- continuity: the kind of discharge -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason", "needs", "opened"),
    [
        ("self_discharge", "overdose", False, "followup.discharge_48h"),  # tie: file order
        ("against_advice", "psychosis", False, "followup.discharge_48h_gp"),
        ("planned", "psychosis", True, "followup.discharge_any"),
        (None, "psychosis", True, "followup.discharge_any"),  # kind left out
        ("planned", "suicide_attempt", True, "followup.discharge_7d"),  # tie: file order
        ("transfer", "psychosis", True, None),  # still in inpatient care
        ("planned", "psychosis", False, None),  # no municipal services needed
    ],
)
def test_one_follow_up_obligation_per_discharge_whatever_its_kind(
    kind: str | None, reason: str, needs: bool, opened: str | None
) -> None:
    person = Person(SETUPS["coordinator_and_home"])
    for record in _admission_for(reason, needs_municipal_services=needs)():
        person.see(record)
    person.see(event("discharge", "dis-1", T0, admission_event_id="adm-1", kind=kind))
    followups = [
        ob["rule_id"]
        for ob in person.state.obligations.values()
        # The month's follow-up after suicidal behaviour is owed beside the first contact.
        if ob["rule_id"].startswith("followup.") and ob["rule_id"] != MONTH_RULE and ob["deadline"]
    ]
    assert followups == ([] if opened is None else [opened])


def test_a_self_discharge_also_tells_the_gp_on_the_gp_list() -> None:
    person = Person(
        replace(
            SETUPS["coordinator_and_home"],
            team={
                **SETUPS["coordinator_and_home"].team,
                "912345683": Member("fastlege", {"register:gp": "gp"}),
            },
        )
    )
    for record in _admission_for("psychosis")():
        person.see(record)
    person.see(event("discharge", "dis-1", T0, admission_event_id="adm-1", kind="against_advice"))
    alerts = of("followup.discharge_48h_gp", person.scan(T0 + 3 * DAY))
    assert set(orgs(alerts)) == {COORDINATOR, "912345683"}
    assert len(alerts) == 2


# --- followup.reported_48h ---------------------------------------------------------

TREATMENT = "followup.reported_48h"


def with_listed_gp(routing: PersonState) -> PersonState:
    """`routing` with the GP from the GP list in the care team."""
    team = {**routing.team, GP[1]: Member("fastlege", {"register:gp": "gp"})}
    return replace(routing, team=team)


def test_a_treatment_interruption_tells_the_coordinator_and_the_gp_what_happened() -> None:
    """The coordinator and the GP on the GP list, both health personnel in the team, get the
    person and the specific title and why."""
    person = Person(with_listed_gp(SETUPS["coordinator_and_home"]))
    person.see(event("treatment_interrupted", "ti-1", T0, kind="dropout"))
    alerts = of(TREATMENT, person.scan(T0 + 49 * HOUR))
    rule = RULES.rule(TREATMENT)
    assert rule is not None
    assert sorted(orgs(alerts)) == sorted([COORDINATOR, GP[1]])  # type: ignore[type-var]
    for alert in alerts:
        assert alert["subject"] == {"nin": NIN}
        assert alert["title"] == rule.title
        assert rule.why is not None
        assert rule.why in alert["summary"]
        assert alert["contact"] == {"agency": "dps", "org_id": DPS[1]}
        assert alert["disclosure"]["basis"] == "presumed"


def test_a_home_municipality_outside_the_team_gets_a_neutral_actionable_alert() -> None:
    """No rule routes a treatment interruption to a home municipality outside the team: its
    alert names neither the person nor what happened, and says whom to contact (the DPS)."""
    person = Person(SETUPS["home_only"])
    person.see(event("treatment_interrupted", "ti-1", T0))
    (alert,) = of(TREATMENT, person.scan(T0 + 49 * HOUR))
    assert alert["recipient"] == {"agency": "municipality", "org_id": HOME}
    assert alert["subject"] is None
    assert alert["title"] == "No follow-up contact by the deadline"
    assert "treatment" not in alert["summary"].lower()
    assert f"Contact dps {DPS[1]} and quote event ti-1" in alert["summary"]
    assert "disclosure" not in alert


def test_a_follow_up_of_another_event_does_not_fulfil_the_interruption() -> None:
    """Only a follow-up contact naming the interruption closes it."""
    person = Person()
    person.see(event("treatment_interrupted", "ti-1", T0))
    person.see(event("followup_contact", "fu-1", T0 + HOUR, source=MUNI, related_event_id="x"))
    assert len(of(TREATMENT, person.scan(T0 + 49 * HOUR))) == 1


# --- followup.prison_release ----------------------------------------------------------------

RELEASE = "followup.prison_release"


def consented(routing: PersonState, org_id: str, *categories: str) -> PersonState:
    """`routing` with the person's consent for `org_id` (a municipality) to learn `categories`."""
    consent = Consent(
        agency="municipality",
        org_id=org_id,
        status="given",
        categories=frozenset(categories),
        valid_from=T0 - 10 * DAY,
        valid_to=None,
        recorded_at=T0 - 10 * DAY,
    )
    return replace(routing, consents=(*routing.consents, consent))


def release_breach(routing: PersonState) -> list[AlertJson]:
    return breached(CASE[RELEASE], Person(routing))[2]


def test_a_coordinator_the_person_told_of_the_release_gets_the_specific_alert() -> None:
    """With a `justice` consent the coordinator learns whom and why, from corrections."""
    routing = consented(SETUPS["coordinator_only"], COORDINATOR, "justice")
    (alert,) = release_breach(routing)
    rule = RULES.rule(RELEASE)
    assert rule is not None
    assert alert["recipient"] == {"agency": "municipality", "org_id": COORDINATOR}
    assert alert["subject"] == {"nin": NIN}
    assert alert["title"] == rule.title
    assert rule.why is not None
    assert rule.why in alert["summary"]
    assert alert["contact"] == {"agency": CORRECTIONS[0], "org_id": CORRECTIONS[1]}
    assert alert["disclosure"]["basis"] == "consent"


@pytest.mark.parametrize(
    ("setup", "categories"),
    [
        ("coordinator_only", ()),
        # Consented to everything there was before `justice`: covers no release.
        ("coordinator_only", ("logistics", "health", "social", "police")),
        ("home_only", ()),
        ("coordinator_and_home", ("logistics", "health", "social", "police")),
    ],
)
def test_no_one_the_person_did_not_tell_of_the_release_is_alerted_of_it(
    setup: str, categories: tuple[str, ...]
) -> None:
    """A coordinator or home municipality routing does not tell of the release gets no alert
    at all (even a neutral one would say that someone unknown was released from prison): the
    correctional service gets it, naming the person, and is told whom in the municipality to
    contact where it knows the home municipality (issue 17, item 7: an alert goes to an
    organisation that may know the person)."""
    routing = SETUPS[setup]
    for org_id in (COORDINATOR, HOME):
        if categories:
            routing = consented(routing, org_id, *categories)
    (alert,) = release_breach(routing)
    rule = RULES.rule(RELEASE)
    assert rule is not None
    assert alert["recipient"] == {"agency": CORRECTIONS[0], "org_id": CORRECTIONS[1]}
    assert alert["subject"] == {"nin": NIN}
    assert alert["title"] == rule.title
    home = routing.home_municipality
    expected = {"agency": "municipality", "org_id": home} if home else None
    assert alert["contact"] == expected


def test_the_release_deadline_follows_the_release_date() -> None:
    """A release announced ahead: 48 hours after the release, not after the announcement."""
    person = Person()
    person.see(
        event("prison_release", "rel-1", T0, source=CORRECTIONS, release_at=rfc3339(T0 + 10 * DAY))
    )
    assert person.deadlines(RELEASE) == [T0 + 12 * DAY]


# --- physical health (issue 17 item 5) ----------------------------------------------------------

YEAR = parse_duration("P1Y")
YEAR_AFTER_T0 = datetime(2027, 11, 23, 8, 0, tzinfo=UTC)


def check(at: datetime, event_id: str, *, referral_needed: bool = False) -> dict[str, Any]:
    return event(
        "somatic_check_done",
        event_id,
        at,
        source=GP,
        kind="annual",
        referral_needed=referral_needed,
    )


def with_gp() -> PersonState:
    """The coordinator and home setup, with the GP from the GP list in the care team."""
    base = SETUPS["coordinator_and_home"]
    return replace(base, team={**base.team, GP[1]: Member("fastlege", {"register:gp": "gp"})})


def test_the_gp_is_alerted_for_a_missed_somatic_check_before_the_coordinator() -> None:
    """With a GP on the GP list, the first check's and the yearly check's alerts go to the GP;
    the coordinator is the fallback (the table cases above) and sees the obligation anyway."""
    person = Person(with_gp())
    person.see(_plan(T0, "ip-1"))
    assert orgs(of("somatic.first_check", person.scan(YEAR_AFTER_T0 + MINUTE))) == [GP[1]]
    person.see(check(YEAR_AFTER_T0 + DAY, "sc-1"))
    assert person.deadlines("somatic.yearly_check") == [YEAR.after(YEAR_AFTER_T0 + DAY)]
    alerts = person.scan(YEAR.after(YEAR_AFTER_T0 + 2 * DAY))
    assert orgs(of("somatic.yearly_check", alerts)) == [GP[1]]


def test_a_check_before_the_plan_does_not_fulfil_the_first_check() -> None:
    """The check a month before the plan became active answers an earlier question."""
    person = Person()
    person.see(check(T0 - 30 * DAY, "sc-0"))
    person.see(_plan(T0, "ip-1"))
    assert person.deadlines("somatic.first_check") == [YEAR_AFTER_T0]
    assert orgs(of("somatic.first_check", person.scan(YEAR_AFTER_T0 + MINUTE))) == [COORDINATOR]


def test_a_check_by_anyone_in_health_care_fulfils_the_first_check() -> None:
    """The municipality's health service or the DPS may do the check: any check of the person
    after the plan fulfils, whoever sent the plan."""
    base = SETUPS["coordinator_and_home"]
    team = {
        **base.team,
        MUNI[1]: Member("municipality", {"registry:t": "participant"}),
        DPS[1]: Member("dps", {"registry:t": "participant"}),
        GP[1]: Member("fastlege", {"register:gp": "gp"}),
    }
    for source in (MUNI, DPS, GP):
        person = Person(replace(base, team=team))
        person.see(_plan(T0, "ip-1"))
        person.see(event("somatic_check_done", "sc-1", T0 + 40 * DAY, source=source))
        assert person.deadlines("somatic.first_check") == []


def test_a_check_by_an_organisation_with_no_relation_to_the_person_settles_nothing() -> None:
    """A DPS outside the care team, with no admission of the person, cannot close the first
    check the plan owes by sending one (review finding: it would silence the GP's deadline for
    good, since the first check is owed once); the same check from the GP on the list does."""
    person = Person()
    person.see(_plan(T0, "ip-1"))
    stranger = ("dps", "974700009")  # not the plan's DPS, in no care team, no admission
    person.see(event("somatic_check_done", "sc-1", T0 + 40 * DAY, source=stranger))
    assert person.deadlines("somatic.first_check") == [datetime(2027, 11, 23, 8, 0, tzinfo=UTC)]
    person.routing = with_gp()
    person.see(check(T0 + 41 * DAY, "sc-2"))
    assert person.deadlines("somatic.first_check") == []


def test_a_new_check_closes_the_old_obligation_and_opens_the_next() -> None:
    """Each check is due a year after the last: one open yearly obligation per person."""
    person = Person()
    first = check(T0, "sc-1")
    assert person.see(first) == []
    assert person.deadlines("somatic.yearly_check") == [YEAR_AFTER_T0]
    person.see(check(T0 + 200 * DAY, "sc-2"))
    assert person.deadlines("somatic.yearly_check") == [YEAR.after(T0 + 200 * DAY)]
    statuses = sorted(
        obligation["status"]
        for obligation in person.state.obligations.values()
        if obligation["rule_id"] == "somatic.yearly_check"
    )
    assert statuses == ["closed", "open"]
    assert of("somatic.yearly_check", person.scan(YEAR_AFTER_T0 + DAY)) == []


def test_a_missed_yearly_check_alerts_and_the_late_check_resolves_it() -> None:
    """No check for a year: an alert; the late check resolves it and opens the next year's."""
    person = Person()
    person.see(check(T0, "sc-1"))
    (raised,) = of("somatic.yearly_check", person.scan(YEAR_AFTER_T0 + MINUTE))
    assert orgs([raised]) == [COORDINATOR]
    late = check(YEAR_AFTER_T0 + 10 * DAY, "sc-2")
    (resolved,) = of("somatic.yearly_check", person.see(late))
    assert (resolved["alert_id"], resolved["resolution"]) == (raised["alert_id"], "fulfilled_late")
    assert person.deadlines("somatic.yearly_check") == [YEAR.after(YEAR_AFTER_T0 + 10 * DAY)]


def test_a_replayed_check_changes_nothing() -> None:
    """The same check seen again neither closes its own obligation nor opens another."""
    person = Person()
    person.see(check(T0, "sc-1"))
    for at in (T0 + HOUR, T0 + 100 * DAY):
        assert person.see(check(T0, "sc-1"), at) == []
    assert person.deadlines("somatic.yearly_check") == [YEAR_AFTER_T0]


def test_a_late_arriving_older_check_does_not_close_the_newer_one() -> None:
    """Checks out of order: the older one, arriving second, is closed by the newer one at once;
    the newer one's obligation stays open with its own deadline."""
    person = Person()
    newer = check(T0 + 30 * DAY, "sc-2")
    person.see(newer)
    person.see(check(T0, "sc-1"), T0 + 31 * DAY)
    assert person.deadlines("somatic.yearly_check") == [YEAR.after(T0 + 30 * DAY)]


def test_no_referral_obligation_when_no_referral_is_needed() -> None:
    """A check that found no referral needed owes none."""
    person = Person()
    person.see(check(T0, "sc-1", referral_needed=False))
    assert person.deadlines("somatic.referral_followed") == []


def test_a_referral_for_another_check_does_not_fulfil() -> None:
    """The referral must name the check that found it needed (related_event_id)."""
    person = Person()
    person.see(check(T0, "sc-1", referral_needed=True))
    person.see(event("somatic_referral", "ref-1", T0 + DAY, source=GP, related_event_id="sc-0"))
    person.see(event("somatic_referral", "ref-2", T0 + DAY, source=GP, related_event_id=None))
    assert person.deadlines("somatic.referral_followed") == [
        datetime(2026, 12, 23, 8, 0, tzinfo=UTC)
    ]


def test_the_coordinator_sees_the_somatic_obligations_in_the_person_view() -> None:
    """The GP is alerted, but the coordinator sees what is owed: the person view lists the
    open somatic obligations whose trigger the coordinator was delivered (routing gives a
    care-team municipality the plan and the check on the presumed basis), with their titles."""
    person = Person(with_gp())
    person.see(_plan(T0, "ip-1"))
    person.see(check(T0 + 30 * DAY, "sc-1", referral_needed=True))
    person.see(_plan(T0 + 40 * DAY, "ip-2", status="closed"))
    seen = {
        (DPS[1], "ip-1"): frozenset({"plan_id", "status", "next_review_at"}),
        (GP[1], "sc-1"): frozenset({"kind", "referral_needed"}),
    }
    owed = person_view_obligations(person.state, RULES, COORDINATOR, seen)
    assert [(o["rule_id"], o["title"], o["deadline"]) for o in owed] == [
        (
            "somatic.referral_followed",
            "No referral sent within a month of a somatic check that found one needed",
            rfc3339(parse_duration("P1M").after(T0 + 30 * DAY)),
        ),
        (
            "somatic.yearly_check",
            "No somatic health check within a year of the last one",
            rfc3339(YEAR.after(T0 + 30 * DAY)),
        ),
    ]
    # Without the check delivered (an objection, say), the check's obligations are not shown.
    assert person_view_obligations(person.state, RULES, COORDINATOR, {}) == []


# --- the crisis plan's review (issue 17 item 4) -------------------------------------------------


def crisis_plan_update(at: datetime, event_id: str, **changes: Any) -> dict[str, Any]:
    return _plan(
        at,
        event_id,
        **{"crisis_plan_id": "KP-1", "crisis_plan_reviewed_at": rfc3339(T0 - DAY), **changes},
    )


def test_a_plan_review_that_leaves_the_crisis_plan_as_it_was_does_not_fulfil() -> None:
    """The individual plan is reviewed (a new review date), the crisis plan is not: its review
    is still owed by the old date, and the coordinator is alerted then."""
    person = Person()
    person.see(crisis_plan_update(T0, "ip-1"))
    person.see(crisis_plan_update(T0 + 20 * DAY, "ip-2", next_review_at=rfc3339(T0 + 200 * DAY)))
    assert person.deadlines("ip.part_review_due") == [T0 + 30 * DAY]
    assert orgs(of("ip.part_review_due", person.scan(T0 + 31 * DAY))) == [COORDINATOR]


def test_a_plan_without_a_crisis_plan_owes_no_crisis_plan_review() -> None:
    """No crisis_plan_id, no obligation."""
    person = Person()
    person.see(_plan(T0, "ip-1", crisis_plan=False, crisis_plan_id=None))
    assert person.deadlines("ip.part_review_due") == []


def test_a_crisis_plan_review_time_taken_out_does_not_count_as_a_review() -> None:
    """An update that drops the review time has not reviewed the crisis plan."""
    person = Person()
    person.see(crisis_plan_update(T0, "ip-1"))
    person.see(crisis_plan_update(T0 + DAY, "ip-2", crisis_plan_reviewed_at=None))
    assert person.deadlines("ip.part_review_due")[:1] == [T0 + 30 * DAY]


def test_the_crisis_plan_title_is_neutral_for_whoever_may_not_see_the_crisis_plan() -> None:
    """NAV as coordinator with consent for logistics only gets the plan but not crisis_plan_id:
    its alert does not say that a crisis plan exists."""
    person = Person(routing_with(coordinator=NAV, home=None, agency="nav"))
    person.see(crisis_plan_update(T0, "ip-1"))
    (alert,) = of("ip.part_review_due", person.scan(T0 + 31 * DAY))
    assert alert["recipient"] == {"agency": "nav", "org_id": NAV}
    assert alert["title"] == "Part of the individual plan not reviewed by its review date"
    assert "risis" not in alert["summary"]


def test_the_plans_later_updates_owe_no_second_first_check() -> None:
    """After the first check, the yearly rule takes over: a review of the plan (a new review
    date) does not ask for a first check again, and a missed year alerts once."""
    person = Person(with_gp())
    person.see(_plan(T0, "ip-1"))
    person.see(check(T0 + 30 * DAY, "sc-1"))
    person.see(_plan(T0 + 60 * DAY, "ip-2", next_review_at=rfc3339(T0 + 200 * DAY)))
    person.see(_plan(T0 + 300 * DAY, "ip-3", next_review_at=rfc3339(T0 + 400 * DAY)))
    assert person.deadlines("somatic.first_check") == []
    alerts = person.scan(T0 + 800 * DAY)
    assert [a["rule_id"] for a in alerts if a["rule_id"].startswith("somatic.")] == [
        "somatic.yearly_check"
    ]


# Words an alert's rule id must not carry: a recipient that may not know why (the neutral
# title) sees the id too (policy/sla.yaml's header). A rule whose every chain ends at the
# trigger's source never alerts anyone who was not told, so its id may name the event.
_HEALTH_WORDS: Final = frozenset(
    {
        "overdose",
        "suicide",
        "self",
        "advice",
        "treatment",
        "interrupted",
        "red",
        "crisis",
        "eviction",
        "substance",
        "brukerplan",
        "prison",
        "psychosis",
    }
)


_MAY_ALERT_THE_UNTOLD: Final = [
    rule for rule in RULES.rules if not all(chain[-1] == "source" for chain in rule.recipients)
]


def test_only_rules_ending_at_the_source_name_their_event() -> None:
    """The exemption below is narrow: the prison release's follow-up alone."""
    exempt = {rule.rule_id for rule in RULES.rules} - {r.rule_id for r in _MAY_ALERT_THE_UNTOLD}
    named = {rid for rid in exempt if set(re.split(r"[._]", rid)) & _HEALTH_WORDS}
    assert named == {"followup.prison_release"}


@pytest.mark.parametrize("rule", _MAY_ALERT_THE_UNTOLD, ids=lambda rule: rule.rule_id)
def test_no_rule_id_names_what_its_neutral_title_keeps_back(rule: Rule) -> None:
    words = set(re.split(r"[._]", rule.rule_id))
    assert not words & _HEALTH_WORDS, f"{rule.rule_id} names {sorted(words & _HEALTH_WORDS)}"


def test_a_brukerplan_assessment_dated_ahead_counts_from_its_arrival() -> None:
    """An assessment dated 2099 (review finding: it would stay the latest for good and decide
    the housing deadline) is ranked by when it arrived: a later real one replaces it."""
    person = Person()
    ahead = {**brukerplan("bp-1", T0, housing="green"), "occurred_at": "2099-01-01T00:00:00Z"}
    person.see(ahead, at=T0 + MINUTE)
    person.see(brukerplan("bp-2", T0 + DAY, housing="red"))
    latest = max(person.state.person["brukerplan"], key=lambda e: e["occurred_at"])
    assert latest["event_id"] == "bp-2"
    person.see(ahead, at=T0 + 2 * DAY)  # a replay changes nothing
    assert [e["event_id"] for e in person.state.person["brukerplan"]][-1] == "bp-2"
