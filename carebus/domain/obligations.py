"""Obligations between agencies for one person: opened, fulfilled, cancelled, breached (pure).

The SLA engine keeps one `SlaState` per person. `observe` applies one event of the person's
ordered stream; `breach_due` breaches obligations whose deadline has passed at `now`. Both
return the new state and the Alert records to publish: raised at a breach (one per recipient
organisation, deterministic `alert_id`) and re-published as resolved when a late fulfilment or
a cancellation arrives. Alerts are built by `carebus.domain.alerts`, which cuts them to what routing
lets each recipient know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from carebus.domain import windows
from carebus.domain.alerts import AlertContext, build_alerts, resolved
from carebus.domain.events import BRUKERPLAN_DOMAINS, RETRACTION
from carebus.domain.records import AlertJson, Obligation, Window
from carebus.domain.sla import (
    SUBJECT,
    Link,
    Rule,
    RuleSet,
    deadline_of,
    links_to,
    matches_when,
    parse_rfc3339,
    stamp,
    value_of,
)

# How long facts that may still matter are kept: early fulfilments, discharged admissions,
# breached obligations awaiting a late fulfilment. Longer than any default deadline (P3M).
MEMORY: Final = timedelta(days=120)
# How long an admission whose discharge has not been seen is kept: a stay may outlast MEMORY,
# and its discharge must still match the admission's reason (a risk discharge after a long
# stay is no less a risk discharge). Longer than nearly every inpatient stay; bounded so that a
# discharge that never reached carebus does not keep the admission for ever.
OPEN_ADMISSION_MEMORY: Final = timedelta(days=730)
# How long a settled obligation of a `once` rule is kept, so that its identity opens no second
# one: a plan's first somatic check, fulfilled, is not owed again at the plan's next update.
ONCE_MEMORY: Final = timedelta(days=730)
# The status of an obligation whose trigger was retracted, and the resolution of its alerts.
RETRACTED: Final = "retracted"
ADMISSION_FIELDS: Final = ("reason", "housing_status", "needs_municipal_services")
# Brukerplan assessments kept per person (the survey is yearly): the latest is what conditions
# read; the ones before it stand in when the latest is retracted.
BRUKERPLAN_KEPT: Final = 3


@dataclass
class SlaState:
    """One person's SLA state, JSON-ready (`to_json` / `from_json`).

    obligations  obligation_id -> {rule_id, identity, trigger (event JSON), deadline,
                 status open|breached|closed|rule_removed, breached_at, closed_at,
                 alerts (raised Alert JSON)}. A closed obligation is kept (for MEMORY) so that
                 a replayed trigger or fulfilment changes nothing; an immediate rule's alert is
                 kept as breached.
    early        fulfilling or cancelling events seen before their trigger (event JSON)
    admissions   admission event_id -> the fields trigger conditions read, occurred_at,
                 source_org, and once its discharge is seen discharged_at and discharged_by
                 ([sender, discharge event_id])
    windows      rule_id -> {"events": [[occurred_at, event_id], ...], "episode_at": time|None}
    person       facts about the person that conditions read (`person.<fact>.<name>`):
                 "brukerplan" -> the latest BRUKERPLAN_KEPT assessments, each {event_id,
                 source_org, occurred_at, scores: domain -> green|yellow|red}
    """

    obligations: dict[str, Obligation] = field(default_factory=dict)
    early: list[dict[str, Any]] = field(default_factory=list)
    admissions: dict[str, dict[str, Any]] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)
    person: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "obligations": self.obligations,
            "early": self.early,
            "admissions": self.admissions,
            "windows": self.windows,
            "person": self.person,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> SlaState:
        data = data or {}
        return cls(
            obligations=dict(data.get("obligations") or {}),
            early=list(data.get("early") or []),
            admissions=dict(data.get("admissions") or {}),
            windows=dict(data.get("windows") or {}),
            person=dict(data.get("person") or {}),
        )

    def deadlines(self) -> dict[str, datetime]:
        """Open obligations with a known deadline: what the due scan's index holds."""
        return {
            obligation_id: parse_rfc3339(obligation["deadline"])
            for obligation_id, obligation in self.obligations.items()
            if obligation["status"] == "open" and obligation.get("deadline")
        }


def obligation_id(rule_id: str, trigger_event_id: str, source_org: str) -> str:
    digest = hashlib.sha256(f"{rule_id}\x1f{source_org}\x1f{trigger_event_id}".encode())
    return f"{rule_id}:{digest.hexdigest()[:24]}"


def observe(
    state: SlaState, event: Mapping[str, Any], rules: RuleSet, context: AlertContext
) -> list[AlertJson]:
    """Apply one event (JSON form) to `state`, in place, and return the Alert records it causes.

    In place, not a new state: a person's state is ~6 KB of JSON-shaped dicts, and copying it
    per record was a third of the engine's cost on a replay. The engine loads a state, applies
    a batch of records to it and writes it back in one transaction; a record that fails midway
    makes the engine drop the half-changed state unwritten (services/sla/app.py, `_apply`).
    """
    alerts: list[AlertJson] = []
    now = context.now
    _forget_old(state, now, rules)
    context = replace(context, admissions=state.admissions, person=state.person)
    if event.get("event_type") == RETRACTION:
        return withdraw(state, event, context, rules) + breach_due(state, rules, context)
    if event.get("event_type") == "admission":
        payload = event.get("payload") or {}
        state.admissions[event["event_id"]] = {
            **{name: payload.get(name) for name in ADMISSION_FIELDS},
            "occurred_at": event["occurred_at"],
            # Event ids are unique per sender only: a retraction withdraws its sender's own.
            "source_org": event["source"]["org_id"],
        }
    if event.get("event_type") == "discharge":
        _discharged(state, event)
    if event.get("event_type") == "brukerplan_assessment":
        _assessed(state, event, now)
    consumed = False
    event_type = event.get("event_type")
    for rule in rules.rules:
        # Only a rule with a link for this type of event can close anything with it: the
        # others are skipped before their obligations are looked at (most rules, most events).
        closing = rule.kind == "deadline" or (rule.kind == "immediate" and rule.fulfilled_by)
        if closing and any(
            link.event_type == event_type for link in (*rule.fulfilled_by, *rule.cancelled_by)
        ):
            consumed |= _close_by(state, rule, event, alerts, context)
        if rule.kind == "deadline":
            _set_before_deadline(state, rule, event)
    if not consumed and _could_close(event, rules) and not _kept(state.early, event):
        state.early.append(dict(event))
    triggered = [rule for rule in rules.rules if _triggers(rule, event, state)]
    for rule in _first_of_each_group(triggered, event):
        if rule.kind == "deadline":
            _open(state, rule, event, alerts, context)
        elif rule.kind == "window":
            _count(state, rule, event, alerts, context)
        elif rule.kind == "immediate":
            _raise_immediate(state, rule, event, alerts, context)
    return alerts + breach_due(state, rules, context)


def breach_due(state: SlaState, rules: RuleSet, context: AlertContext) -> list[AlertJson]:
    """Breach, in `state`, every open obligation whose deadline is at or before `context.now`;
    the Alert records that raises."""
    alerts: list[AlertJson] = []
    context = replace(context, admissions=state.admissions, person=state.person)
    for obligation in state.obligations.values():
        deadline = obligation.get("deadline")
        if obligation["status"] != "open" or not deadline:
            continue
        if parse_rfc3339(deadline) > context.now:
            continue
        rule = rules.rule(obligation["rule_id"])
        if rule is None:
            # The rule was removed from the reviewed file: nobody asked for this alert any more.
            # Closing it (not leaving it open) keeps it out of the deadline index, which would
            # otherwise offer it to every scan for ever.
            obligation["status"] = "rule_removed"
            obligation["closed_at"] = stamp(context.now)
            continue
        raised = _raise(rule, obligation["trigger"], [obligation["trigger"]], deadline, context)
        _breach(obligation, raised, context.now)
        alerts.extend(raised)
    return alerts


def withdraw(
    state: SlaState,
    retraction: Mapping[str, Any],
    context: AlertContext,
    rules: RuleSet | None = None,
) -> list[AlertJson]:
    """Withdraw, in `state`, what the event a retraction (JSON form) names had opened: its
    open or breached obligations get status `retracted`, their raised alerts are re-published
    resolved as `retracted`; it no longer counts in a window, waits as an early fulfilment or
    stands as an admission. A retraction of an event that opened nothing changes nothing, and a
    replayed one finds everything withdrawn already."""
    source_org = retraction["source"]["org_id"]
    target = retraction["payload"]["retracted_event_id"]
    alerts: list[AlertJson] = []
    for obligation in state.obligations.values():
        trigger = obligation["trigger"]
        if (trigger["source"]["org_id"], trigger["event_id"]) != (source_org, target) and not (
            _read_the_admission(obligation, source_org, target, rules)
        ):
            continue
        if obligation["status"] not in ("open", "breached"):
            continue  # settled before the retraction: its history stands
        alerts.extend(
            resolved(alert, RETRACTED, retraction["event_id"], context.now)
            for alert in obligation["alerts"]
        )
        obligation["status"] = RETRACTED
        obligation["closed_at"] = stamp(context.now)
    state.early = [
        e for e in state.early if (e["source"]["org_id"], e["event_id"]) != (source_org, target)
    ]
    # Event ids are unique per sender only: another organisation's event under the same id
    # stands (an entry kept before senders were recorded has none and is not withdrawn).
    admission = state.admissions.get(target)
    if admission is not None and admission.get("source_org") == source_org:
        del state.admissions[target]
    for admission in state.admissions.values():
        if admission.get("discharged_by") == [source_org, target]:
            # The discharge is withdrawn: the admission is open again.
            admission.pop("discharged_at", None)
            admission.pop("discharged_by", None)
    for window in state.windows.values():
        window["events"] = [
            entry for entry in window["events"] if windows.entry_of(entry) != (target, source_org)
        ]
    if "brukerplan" in state.person:
        # Its scores go; an obligation a red score opened stands (like a later green score, a
        # retraction does not reopen what was decided), the assessment before it counts again.
        state.person["brukerplan"] = [
            kept
            for kept in state.person["brukerplan"]
            if (kept["source_org"], kept["event_id"]) != (source_org, target)
        ]
    return alerts


def _read_the_admission(
    obligation: Obligation, source_org: str, admission_id: str, rules: RuleSet | None
) -> bool:
    """Whether the obligation exists because its trigger's admission, `admission_id` of
    `source_org`, said so (its rule's condition reads `admission.<field>`): withdrawn with it."""
    trigger = obligation["trigger"]
    if trigger["source"]["org_id"] != source_org:
        return False
    if (trigger.get("payload") or {}).get("admission_event_id") != admission_id:
        return False
    rule = None if rules is None else rules.rule(obligation["rule_id"])
    return rule is not None and any(name.startswith("admission.") for name in rule.when)


# --- steps ----------------------------------------------------------------------------------


def _triggers(rule: Rule, event: Mapping[str, Any], state: SlaState) -> bool:
    if rule.scope != "person":
        return False  # counted per place (carebus.domain.places), not per person
    if rule.emergency:
        return bool(event.get("emergency"))
    if event.get("event_type") not in rule.event_types:
        return False
    if any(value_of(event, name) is None for name in rule.present):
        return False
    return matches_when(rule.when, event, state.admissions, state.person)


def _first_of_each_group(triggered: Sequence[Rule], event: Mapping[str, Any]) -> list[Rule]:
    """The triggered rules, of each group only the deadline rule with the earliest deadline
    for `event` (no deadline yet counts as latest; ties go to file order): one event opens one
    obligation of a group, so a person is not chased twice for one follow-up. Deterministic,
    so a replayed trigger chooses the same rule and opens nothing new."""
    latest = datetime.max.replace(tzinfo=UTC)
    chosen: dict[str, Rule] = {}
    for rule in triggered:
        if rule.group is None or rule.kind != "deadline":
            continue
        deadline = deadline_of(rule, event) or latest
        held = chosen.get(rule.group)
        if held is None or deadline < (deadline_of(held, event) or latest):
            chosen[rule.group] = rule
    return [
        rule
        for rule in triggered
        if rule.group is None or rule.kind != "deadline" or chosen[rule.group] is rule
    ]


def _discharged(state: SlaState, discharge: Mapping[str, Any]) -> None:
    """Mark the admission a discharge names as discharged: from now on it is kept for MEMORY,
    not OPEN_ADMISSION_MEMORY. The first discharge seen counts; a replay changes nothing."""
    admission = state.admissions.get(str(value_of(discharge, "admission_event_id")))
    if admission is None or admission.get("discharged_at"):
        return
    admission["discharged_at"] = discharge["occurred_at"]
    admission["discharged_by"] = [discharge["source"]["org_id"], discharge["event_id"]]


def _assessed(state: SlaState, assessment: Mapping[str, Any], now: datetime) -> None:
    """Keep a Brukerplan assessment's scores, the latest BRUKERPLAN_KEPT by occurred_at (an
    older one arriving late does not displace a newer one); a replay changes nothing."""
    payload = assessment.get("payload") or {}
    sent = (assessment["source"]["org_id"], assessment["event_id"])
    kept = list(state.person.get("brukerplan") or [])
    if any((entry["source_org"], entry["event_id"]) == sent for entry in kept):
        return  # a replay (its time was fixed when it first arrived)
    kept.append(
        {
            "event_id": assessment["event_id"],
            "source_org": assessment["source"]["org_id"],
            # Never later than its arrival: an assessment dated ahead (2099) would otherwise
            # stay the latest for good and decide the housing deadline (review finding).
            "occurred_at": stamp(min(parse_rfc3339(assessment["occurred_at"]), now)),
            "scores": {domain: payload.get(domain) for domain in BRUKERPLAN_DOMAINS},
        }
    )
    kept.sort(key=lambda entry: parse_rfc3339(entry["occurred_at"]))
    state.person["brukerplan"] = kept[-BRUKERPLAN_KEPT:]


def _kept(early: Sequence[Mapping[str, Any]], event: Mapping[str, Any]) -> bool:
    """Whether `event` waits among the early events already: a replay of an event that closed
    nothing (a yearly check that opened its own obligation) is not kept twice."""
    sent = (event.get("event_id"), event["source"]["org_id"])
    return any((e.get("event_id"), e["source"]["org_id"]) == sent for e in early)


def _could_close(event: Mapping[str, Any], rules: RuleSet) -> bool:
    event_type = event.get("event_type")
    return any(
        link.event_type == event_type
        for rule in rules.rules
        for link in (*rule.fulfilled_by, *rule.cancelled_by)
    )


def _identity(rule: Rule, event: Mapping[str, Any]) -> str:
    return "\x1f".join(str(value_of(event, name)) for name in rule.identity)


def _open(
    state: SlaState,
    rule: Rule,
    trigger: Mapping[str, Any],
    alerts: list[AlertJson],
    context: AlertContext,
) -> None:
    identity = _identity(rule, trigger)
    for existing in state.obligations.values():
        if (existing["rule_id"], existing["identity"]) != (rule.rule_id, identity):
            continue
        if existing["status"] == "open":
            return  # the same obligation, already tracked
        if rule.once and existing["status"] in ("breached", "closed"):
            return  # owed once: settled or alerted already
    oid = obligation_id(rule.rule_id, trigger["event_id"], trigger["source"]["org_id"])
    if oid in state.obligations:
        return  # a replayed trigger
    deadline = deadline_of(rule, trigger)
    obligation: Obligation = {
        "rule_id": rule.rule_id,
        "identity": identity,
        "trigger": dict(trigger),
        "deadline": None if deadline is None else stamp(deadline),
        "status": "open",
        "breached_at": None,
        "alerts": [],
    }
    state.obligations[oid] = obligation
    # A deadline set by another event that came first (the earliest of them), then
    # fulfilments kept from earlier.
    setting = [
        early["occurred_at"]
        for early in state.early
        if any(links_to(link, early, trigger) for link in rule.before)
    ]
    if setting:
        obligation["deadline"] = min(setting, key=parse_rfc3339)
    # An early event stays kept after it settles one (until MEMORY): it may settle another
    # rule's obligation too (a plan update that reviews both the plan and its crisis plan).
    for early in state.early:
        if _settle(state, oid, rule, early, alerts, context):
            break


def _close_by(
    state: SlaState,
    rule: Rule,
    event: Mapping[str, Any],
    alerts: list[AlertJson],
    context: AlertContext,
) -> bool:
    closed = False
    for oid in [o for o, ob in state.obligations.items() if ob["rule_id"] == rule.rule_id]:
        closed |= _settle(state, oid, rule, event, alerts, context)
    return closed


def _answers(
    link: Link, event: Mapping[str, Any], trigger: Mapping[str, Any], context: AlertContext
) -> bool:
    """Whether `event` settles the trigger's obligation by `link`. A `link: subject` names no
    event of the obligation, so only a sender with a relation to the person (care team, home
    municipality, GP, admitting DPS; or the trigger's own source) may settle one by it: a
    stranger's check or stay must not silence what another organisation owes."""
    if not links_to(link, event, trigger):
        return False
    if link.field != SUBJECT:
        return True
    sender = (event.get("source") or {}).get("org_id")
    if sender == trigger["source"]["org_id"]:
        return True
    return isinstance(sender, str) and bool(context.routing.relations(sender))


def _settle(
    state: SlaState,
    oid: str,
    rule: Rule,
    event: Mapping[str, Any],
    alerts: list[AlertJson],
    context: AlertContext,
) -> bool:
    """Close obligation `oid` if `event` fulfils or cancels it; True if it did."""
    obligation = state.obligations[oid]
    trigger = obligation["trigger"]
    fulfils = any(_answers(link, event, trigger, context) for link in rule.fulfilled_by)
    cancels = any(_answers(link, event, trigger, context) for link in rule.cancelled_by)
    if not (fulfils or cancels):
        return False
    if parse_rfc3339(event["occurred_at"]) < parse_rfc3339(trigger["occurred_at"]):
        return False  # happened before the trigger: it answers an earlier one, not this one
    if obligation["status"] == "closed":
        return True  # a replay, or a second fulfilment: the obligation is settled already
    if obligation["status"] == "open" and obligation.get("deadline") and fulfils:
        occurred = parse_rfc3339(event["occurred_at"])
        if occurred > parse_rfc3339(obligation["deadline"]):
            # Reported on time for an obligation whose deadline passed before the fulfilment
            # occurred: the breach is real even though no scan saw it (a backdated trigger).
            alerts.extend(_breach_now(obligation, rule, context))
    if obligation["status"] == "breached":
        if cancels:
            resolution = "cancelled"
        elif not obligation.get("deadline"):
            resolution = "fulfilled"  # a notice, raised at once: what it asked for was done
        elif parse_rfc3339(event["occurred_at"]) <= parse_rfc3339(obligation["deadline"]):
            resolution = "fulfilled_late_report"
        else:
            resolution = "fulfilled_late"
        alerts.extend(
            resolved(alert, resolution, event["event_id"], context.now)
            for alert in obligation["alerts"]
        )
    obligation["status"] = "closed"
    obligation["closed_at"] = stamp(context.now)
    return True


def _breach_now(obligation: Obligation, rule: Rule, context: AlertContext) -> list[AlertJson]:
    trigger = obligation["trigger"]
    raised = _raise(rule, trigger, [trigger], obligation["deadline"], context)
    _breach(obligation, raised, context.now)
    return raised


def _set_before_deadline(state: SlaState, rule: Rule, event: Mapping[str, Any]) -> None:
    """The first event of the rule's `before` list that arrives sets the deadline."""
    if not rule.before:
        return
    for obligation in state.obligations.values():
        if obligation["rule_id"] != rule.rule_id or obligation["status"] != "open":
            continue
        if obligation.get("deadline") is None and any(
            links_to(link, event, obligation["trigger"]) for link in rule.before
        ):
            obligation["deadline"] = event["occurred_at"]
    # Kept too: a trigger that arrives after it still gets its deadline.
    if any(link.event_type == event.get("event_type") for link in rule.before) and not any(
        early.get("event_id") == event.get("event_id") for early in state.early
    ):
        state.early.append(dict(event))


def _count(
    state: SlaState,
    rule: Rule,
    event: Mapping[str, Any],
    alerts: list[AlertJson],
    context: AlertContext,
) -> None:
    assert rule.window is not None
    window = state.windows.setdefault(rule.rule_id, {"events": [], "episode_at": None})
    entry = [event["occurred_at"], event["event_id"], event["source"]["org_id"]]
    entries = windows.add(window["events"], entry, rule.window)
    if entries is None:
        return  # a replay
    window["events"] = entries
    occurred = parse_rfc3339(event["occurred_at"])
    counted = windows.inside(entries, rule.window, occurred)
    if not windows.episode(counted, rule.count, rule.window, occurred, window.get("episode_at")):
        return  # too few, or within the last episode: one alert per episode
    window["episode_at"] = event["occurred_at"]
    involved = [{"event_id": entry[1]} for entry in counted]
    alerts.extend(_raise(rule, event, involved, None, context))


def _raise_immediate(
    state: SlaState,
    rule: Rule,
    event: Mapping[str, Any],
    alerts: list[AlertJson],
    context: AlertContext,
) -> None:
    oid = obligation_id(rule.rule_id, event["event_id"], event["source"]["org_id"])
    if oid in state.obligations:
        return  # a replayed event: its alert is raised already
    raised = _raise(rule, event, [event], None, context)
    state.obligations[oid] = {
        "rule_id": rule.rule_id,
        "identity": _identity(rule, event),
        "trigger": dict(event),
        "deadline": None,
        "status": "breached",
        "breached_at": stamp(context.now),
        "alerts": raised,
    }
    alerts.extend(raised)


def _raise(
    rule: Rule,
    trigger: Mapping[str, Any],
    involved: Sequence[Mapping[str, Any]],
    deadline: str | None,
    context: AlertContext,
) -> list[AlertJson]:
    event_ids = [str(event["event_id"]) for event in involved]
    return build_alerts(rule, trigger, event_ids, deadline, context)


def _forget_old(state: SlaState, now: datetime, rules: RuleSet) -> None:
    horizon = now - MEMORY
    state.early = [e for e in state.early if parse_rfc3339(e["occurred_at"]) > horizon]
    open_horizon = now - OPEN_ADMISSION_MEMORY
    state.admissions = {
        event_id: admission
        for event_id, admission in state.admissions.items()
        if (
            parse_rfc3339(admission["discharged_at"]) > horizon
            if admission.get("discharged_at")
            else parse_rfc3339(admission["occurred_at"]) > open_horizon
        )
    }
    once = {rule.rule_id for rule in rules.rules if rule.once}
    once_horizon = now - ONCE_MEMORY
    state.obligations = {
        oid: obligation
        for oid, obligation in state.obligations.items()
        if _remembered(obligation, once_horizon if obligation["rule_id"] in once else horizon)
    }


def _breach(obligation: Obligation, raised: list[AlertJson], now: datetime) -> None:
    obligation["status"] = "breached"
    obligation["breached_at"] = stamp(now)
    obligation["alerts"] = raised


def _remembered(obligation: Obligation, horizon: datetime) -> bool:
    """Whether to keep an obligation: open ones with a deadline always; an open one still
    waiting for the event that sets its deadline (a discharge-ready that never came) and a
    closed or breached one until `horizon` (MEMORY ago; ONCE_MEMORY for a `once` rule's)."""
    if obligation["status"] == "open":
        if obligation.get("deadline"):
            return True
        return parse_rfc3339(obligation["trigger"]["occurred_at"]) > horizon
    return parse_rfc3339(obligation.get("closed_at") or obligation["breached_at"]) > horizon
