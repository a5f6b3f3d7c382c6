"""Alerts as their recipients may see them: recipients with fallbacks, routing's cut, audit.

An alert is a disclosure too. For each recipient organisation the trigger event is routed
as if it were delivered to it (`carebus.domain.routing.route`): when routing lets the organisation
learn of the event (or it is the event's own source), the alert names the person and the
event; otherwise it says only which deadline was missed and whom to contact. Every alert to
an organisation comes with a Disclosure record for the audit trail.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from carebus.domain.agencies import AGENCIES
from carebus.domain.events import PAYLOAD_FIELDS
from carebus.domain.policy import CATEGORIES, EMERGENCY, Policy
from carebus.domain.records import AlertJson, DisclosureJson, Organisation
from carebus.domain.routing import PersonState, Routing, route
from carebus.domain.sla import (
    BRUKERPLAN,
    OSLO,
    ROLES,
    Rule,
    latest_brukerplan,
    parse_rfc3339,
    stamp,
)

__all__ = [
    "AlertContext",
    "build_alerts",
    "may_read_condition",
    "operator_action_alert",
    "resolved",
]

# The payload fields an organisation was given of an event, by the event (source org and
# event_id matter; for an admission a rule reads, only those and event_type are set); None: it
# was told nothing of it.
FieldsSeen = Callable[[Mapping[str, Any]], frozenset[str] | None]

KIND: Final = {"deadline": "deadline_missed", "window": "care_team_meeting"}
# The roles an alert's `recipient_role` may hold: a rule's chain roles that name an
# organisation, and the organisations an emergency was delivered to.
RECIPIENT_ROLES: Final = frozenset(ROLES) - {"unassigned"} | {"emergency_recipient"}


def kind_of(rule: Rule) -> str:
    """The alert kind a rule raises: an immediate rule on an emergency is an emergency
    disclosure for review; any other immediate rule is a notice, something to act on now."""
    if rule.kind == "immediate":
        return "emergency_disclosure" if rule.emergency else "notice"
    return KIND[rule.kind]


@dataclass(frozen=True, slots=True)
class AlertContext:
    """What building an alert needs besides the rule and the events."""

    now: datetime
    routing: PersonState
    policy: Policy
    rules_version: str
    # The person's admissions as the SLA engine keeps them (event id -> the fields conditions
    # read, occurred_at, source_org): what `admission.<field>` conditions read.
    admissions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The person facts the SLA engine keeps (`SlaState.person`): what `person.<fact>.<name>`
    # conditions read (the latest Brukerplan scores).
    person: Mapping[str, Any] = field(default_factory=dict)


def alert_id(rule_id: str, trigger: Mapping[str, Any], recipient_org: str | None) -> str:
    text = "\x1f".join(
        (rule_id, trigger["source"]["org_id"], trigger["event_id"], recipient_org or "unassigned")
    )
    return "alert-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def recipients(
    rule: Rule, trigger: Mapping[str, Any], routing: PersonState, routed: Routing
) -> list[tuple[Organisation | None, str]]:
    """One organisation per fallback chain (None: the unassigned queue), each at most once,
    with the chain role it was chosen by (the first chain's when two chains find it): the
    inbox names that role's accountable person at the organisation (issue 17, item 4).

    An emergency rule also alerts every organisation routing delivered the emergency to
    (`routed`: the trigger routed against `routing`): the care team and the home municipality
    as well as the organisations the emergency names. Each one received the person's data
    without consent (helsepersonelloven §23 no. 4), so each one's privacy officer reviews the
    disclosure, not only the source's (issue 12, item 9).
    """
    chosen: list[tuple[Organisation | None, str]] = []

    def choose(found: Organisation | None, role: str) -> None:
        org_ids = [None if c is None else c["org_id"] for c, _ in chosen]
        if (None if found is None else found["org_id"]) not in org_ids:
            chosen.append((found, role))

    for chain in rule.recipients:
        resolved = [
            (found, role)
            for role in chain
            if (found := _resolve(role, trigger, routing)) is not False
        ]
        # The first role that may know the person, else the first that resolves: an alert
        # should go to an organisation that can act on it by name (issue 17, item 7); one
        # routing keeps from the trigger gets it only when no role of the chain may know.
        knowing = [
            (found, role)
            for found, role in resolved
            if found is not None and _disclosure_for(trigger, found["org_id"], routed) is not None
        ]
        if resolved:
            choose(*(knowing or resolved)[0])
    if rule.emergency:
        for recipient in emergency_recipients(routed):
            choose(recipient, "emergency_recipient")
    return chosen


def emergency_recipients(routed: Routing) -> list[Organisation]:
    """The organisations routing delivered an event to on the emergency basis, by org_id."""
    return [
        {"agency": d["recipient"]["agency"], "org_id": d["recipient"]["org_id"]}
        for d in routed.deliveries
        if d["basis"] == EMERGENCY
    ]


def _resolve(role: str, trigger: Mapping[str, Any], routing: PersonState) -> Any:
    """The organisation `role` names for the trigger's person; False: none; None: the
    unassigned queue. No role is ever settled by the lower organisation number."""
    if role == "source":
        return {"agency": trigger["source"]["agency"], "org_id": trigger["source"]["org_id"]}
    if role in _COORDINATORS:
        for wanted in _COORDINATORS[role]:
            found = _coordinator(wanted, trigger, routing)
            if found is not None:
                return found
        return False
    if role == "home_municipality":
        home = routing.home_municipality
        return {"agency": "municipality", "org_id": home} if home else False
    if role == "gp":
        # The care team's GP: the GP list's (its GP-list membership), else the first named.
        gps = [org_id for org_id, member in routing.team.items() if member.role == "gp"]
        listed = [org_id for org_id in gps if org_id == routing.gp]
        if not gps:
            return False
        org_id = (listed or gps)[0]
        return {"agency": routing.team[org_id].agency, "org_id": org_id}
    return None  # unassigned


# The defined rule for the two coordinator roles (issue 17, item 4; docs/design.md "Who gets
# which alert"): the municipal coordinator holds the individual plan and the coordination duty
# (sources.md, "Koordinator"), so obligations the municipality owes go to it; the DPS's pathway
# coordinator (forløpskoordinator) gets a copy of what the DPS owes. `coordinator`, kept for
# override files, is the municipal coordinator, else the pathway coordinator. Each role tries
# these kinds of member in order.
_COORDINATORS: Final[Mapping[str, tuple[str, ...]]] = {
    "municipal_coordinator": ("municipal", "any_coordinator"),
    "pathway_coordinator": ("pathway",),
    "coordinator": ("municipal", "any_coordinator", "pathway"),
}


def _coordinator(
    wanted: str, trigger: Mapping[str, Any], routing: PersonState
) -> Organisation | None:
    """The member of the kind `wanted`: `municipal` (role coordinator, a municipality),
    `any_coordinator` (role coordinator), `pathway` (role pathway_coordinator, a DPS). Where
    two qualify, the home municipality (for a municipal one) or the trigger's own DPS (for a
    pathway one) first, then the one the team has held longest (its order on the stream)."""
    role = "pathway_coordinator" if wanted == "pathway" else "coordinator"
    agency = {"municipal": "municipality", "pathway": "dps"}.get(wanted)
    found = [
        (org_id, member)
        for org_id, member in routing.team.items()
        if member.role == role and (agency is None or member.agency == agency)
    ]
    if not found:
        return None
    first = routing.home_municipality if wanted != "pathway" else trigger["source"]["org_id"]
    org_id, member = min(found, key=lambda pair: pair[0] != first)  # stable: team order
    return {"agency": member.agency, "org_id": org_id}


def build_alerts(
    rule: Rule,
    trigger: Mapping[str, Any],
    event_ids: Sequence[str],
    deadline: str | None,
    context: AlertContext,
) -> list[AlertJson]:
    """The Alert records (JSON form) a breach of `rule` raises, one per recipient."""
    built = []
    now = stamp(context.now)
    # `context.routing` includes the trigger (the engine applies each record before observing
    # it), so this is routing's answer for the trigger now: whom it reaches, on which basis.
    # For an emergency that is whom the router delivered it to (consent plays no part).
    routed = route(trigger, context.routing, context.policy, context.now)
    for recipient, recipient_role in recipients(rule, trigger, context.routing, routed):
        org_id = None if recipient is None else recipient["org_id"]
        contact = _contact(rule, trigger, context.routing, org_id)
        disclosure = _disclosure_for(trigger, org_id, routed)
        knows = disclosure is not None
        specific = knows and may_read_condition(
            rule,
            trigger,
            org_id,
            lambda event, org_id=org_id: _seen(event, org_id, routed, context),  # type: ignore[misc]
            context.person,
        )
        title = rule.title if specific else rule.neutral_title
        told = _told(org_id, trigger, routed)
        summary = (
            _summary(
                rule,
                title,
                trigger,
                event_ids,
                deadline,
                contact,
                told,
                specific=specific,
                shown=_shown(trigger, org_id, disclosure),
            )
            if knows
            else _neutral_summary(title, contact, trigger)
        )
        identity = alert_id(rule.rule_id, trigger, org_id)
        alert: AlertJson = {
            "alert_id": identity,
            "rule_id": rule.rule_id,
            "title": title,
            "kind": kind_of(rule),
            "status": "open",
            "resolution": None,
            "subject_key": trigger["subject_key"],
            "subject": {"nin": trigger["subject"]["nin"]} if knows else None,
            "recipient": recipient,
            "recipient_role": recipient_role if recipient is not None else None,
            "audience": rule.audience,
            "contact": contact,
            "deadline": deadline,
            "breached_at": now,
            "escalate_at": stamp(rule.escalation.after(context.now)),
            "summary": summary,
            "event_ids": list(event_ids),
            "rules_version": context.rules_version,
            "changed_at": now,
        }
        if disclosure is not None and disclosure.get("basis") is not None:
            # A disclosure to another organisation is audited on routing's basis. An alert to
            # the event's own source tells it nothing it does not hold, and one that names no
            # person discloses no personal data: neither is a disclosure to record.
            alert["disclosure"] = _audit(alert, trigger, disclosure, context)
        built.append(alert)
    return built


def resolved(alert: AlertJson, resolution: str, event_id: str, now: datetime) -> AlertJson:
    """The alert re-published as resolved by the engine (fulfilment or cancellation)."""
    again = alert.copy()
    again.pop("disclosure", None)  # audited when raised; resolving it discloses nothing new
    again["status"] = "resolved"
    again["resolution"] = resolution
    again["event_ids"] = [*alert["event_ids"], event_id]
    again["changed_at"] = stamp(now)
    return again


def _contact(
    rule: Rule, trigger: Mapping[str, Any], routing: PersonState, recipient_org: str | None
) -> Organisation | None:
    """Whom `recipient_org` should contact: the rule's contact (the home municipality or the
    trigger's source), else the source; never the recipient itself (issue 17: an alert that
    says "contact" its own organisation helps nobody act). None: the recipient is the source
    and the rule's contact, so the missing step is its own and the summary says so."""
    source: Organisation = {
        "agency": trigger["source"]["agency"],
        "org_id": trigger["source"]["org_id"],
    }
    chain: list[Organisation] = []
    if rule.contact == "home_municipality" and routing.home_municipality:
        chain.append({"agency": "municipality", "org_id": routing.home_municipality})
    chain.append(source)
    return next((org for org in chain if org["org_id"] != recipient_org), None)


def may_read_condition(
    rule: Rule,
    trigger: Mapping[str, Any],
    org_id: str | None,
    fields_seen: FieldsSeen,
    person: Mapping[str, Any] | None = None,
) -> bool:
    """Whether `org_id` may read every field the rule's condition reads, and so its specific
    title and why: always for its own event; otherwise a trigger field must be among the
    fields it was given of the trigger, and `admission.<field>` among those it was given of
    the admission the trigger names. Fields, not categories: a discharge that shows a crisis
    plan (health) says nothing of why the person was admitted. `person.brukerplan.<domain>`
    must be among the fields it may see of the latest assessment in `person` (the engine's
    person facts; without them, or with no assessment kept, it may not). The alerts ask
    routing now (`_seen`); the inbox's person view asks the disclosures it was delivered."""
    if org_id is None:
        return False
    if not _may_read_person_facts(rule, trigger, fields_seen, person or {}):
        return False
    if org_id == trigger["source"]["org_id"]:
        return True
    own = {
        name
        for name in rule.condition_fields()
        if not name.startswith("admission.") and not name.startswith("person.")
    }
    of_admission = {
        name.split(".", 1)[1] for name in rule.condition_fields() if name.startswith("admission.")
    }
    seen = fields_seen(trigger)
    if seen is None or not own <= seen:
        return False
    if not of_admission:
        return True
    admission_id = (trigger.get("payload") or {}).get("admission_event_id")
    if admission_id is None:
        return False
    admission = {
        "event_type": "admission",
        "event_id": str(admission_id),
        "source": trigger["source"],  # a DPS discharges its own admissions
        "subject": trigger.get("subject"),
        "subject_key": trigger.get("subject_key"),
    }
    seen_of_admission = fields_seen(admission)
    return seen_of_admission is not None and of_admission <= seen_of_admission


def _may_read_person_facts(
    rule: Rule, trigger: Mapping[str, Any], fields_seen: FieldsSeen, person: Mapping[str, Any]
) -> bool:
    """Whether the recipient may see, of the latest Brukerplan assessment, every domain the
    rule's condition reads (True when it reads none). Asked also of the trigger's own source: a
    DPS that discharges does not thereby know the municipality's scores."""
    domains = {
        name.removeprefix(BRUKERPLAN)
        for name in rule.condition_fields()
        if name.startswith(BRUKERPLAN)
    }
    if not domains:
        return True
    latest = latest_brukerplan(person)
    if latest is None:
        return False
    assessment = {
        "event_type": "brukerplan_assessment",
        "event_id": latest["event_id"],
        "source": {"agency": "municipality", "org_id": latest["source_org"], "system": None},
        "subject": trigger.get("subject"),
        "subject_key": trigger.get("subject_key"),
    }
    seen = fields_seen(assessment)
    return seen is not None and domains <= seen


def _seen(
    event: Mapping[str, Any], org_id: str | None, routed: Routing, context: AlertContext
) -> frozenset[str] | None:
    """What routing, asked now, lets `org_id` see of `event`: the trigger as already routed,
    or the admission a trigger names, rebuilt from what the engine keeps of it."""
    if org_id is None:
        return None
    if "payload" in event or event["event_type"] not in ("admission", "brukerplan_assessment"):
        return _granted(event, org_id, routed, context.policy)
    if event["event_type"] == "brukerplan_assessment":
        assessment = _assessment_of(event, context)
        return _granted(
            assessment, org_id, route(assessment, context.routing, context.policy, context.now),
            context.policy,
        )  # fmt: skip
    admission = _admission_of(event, context)
    if admission is None:
        return None
    return _granted(
        admission, org_id, route(admission, context.routing, context.policy, context.now),
        context.policy,
    )  # fmt: skip


def _granted(
    event: Mapping[str, Any], org_id: str, routed: Routing, policy: Policy
) -> frozenset[str] | None:
    """The payload fields routing's rule lets `org_id` see of `event` (all: its own event;
    None: routing tells it nothing of the event)."""
    if org_id == event["source"]["org_id"]:
        return frozenset(event.get("payload") or {}) | frozenset(
            PAYLOAD_FIELDS[event["event_type"]]
        )
    decision = _disclosure_for(event, org_id, routed)
    if decision is None:
        return None
    rule = policy.by_id(decision.get("rule_id"))
    if rule is None:
        return frozenset()
    categories = set(decision.get("categories") or ())
    return frozenset(
        name
        for category, names in rule.categories.items()
        if category in categories
        for name in names
    )


def _assessment_of(named: Mapping[str, Any], context: AlertContext) -> dict[str, Any]:
    """The latest Brukerplan assessment (`named` is built from it), rebuilt as an event to ask
    routing what a recipient may see of it: routing decides by sender and recipient."""
    latest = latest_brukerplan(context.person) or {"scores": {}, "occurred_at": stamp(context.now)}
    return {
        "event_id": named["event_id"],
        "event_type": "brukerplan_assessment",
        "occurred_at": latest["occurred_at"],
        "source": named["source"],
        "subject": named["subject"],
        "subject_key": named["subject_key"],
        "payload": dict(latest["scores"]),
        "emergency": None,
    }


def _admission_of(named: Mapping[str, Any], context: AlertContext) -> dict[str, Any] | None:
    """The admission `named` (its event_id and source), rebuilt as an event from what the
    engine keeps of it; None when the engine keeps no such admission of that DPS."""
    admission_id = named["event_id"]
    kept = context.admissions.get(admission_id)
    if kept is None or kept.get("source_org") != named["source"]["org_id"]:
        return None
    payload = {name: kept.get(name) for name in PAYLOAD_FIELDS["admission"] if name in kept}
    return {
        "event_id": admission_id,
        "event_type": "admission",
        "occurred_at": kept["occurred_at"],
        "source": {"agency": "dps", "org_id": kept["source_org"], "system": None},
        "subject": named["subject"],
        "subject_key": named["subject_key"],
        "payload": payload,
        "emergency": None,
    }


def _disclosure_for(
    trigger: Mapping[str, Any], org_id: str | None, routed: Routing
) -> dict[str, Any] | None:
    """What routing lets `org_id` know of the trigger (None: nothing); its own event: all."""
    if org_id is None:
        return None
    if org_id == trigger["source"]["org_id"]:
        return {
            "basis": None,
            "categories": list(CATEGORIES),
            "fields": [],
        }
    for decision in routed.disclosures:
        recipient = decision["recipient"]
        delivered = decision["decision"] == "delivered"
        if delivered and recipient is not None and recipient["org_id"] == org_id:
            return dict(decision)
    return None


def _shown(
    trigger: Mapping[str, Any], org_id: str | None, disclosure: Mapping[str, Any] | None
) -> Mapping[str, Any]:
    """The trigger's payload fields `org_id` may see: all of its own event's, else those
    routing delivered to it."""
    payload: Mapping[str, Any] = trigger.get("payload") or {}
    if org_id == trigger["source"]["org_id"]:
        return payload
    fields = (disclosure or {}).get("fields") or ()
    return {name: payload[name] for name in fields if name in payload}


# What a notice adds from the trigger's fields the recipient may see: the agreed time. Never
# `dps_contact`: free text is sealed under the person's key (carebus.wire.sealing) and an
# alert's summary is stored in clear, so erasure could not reach it; the delivery carries it.
_NOTICE_FIELDS: Final = (("followup_at", "Follow-up agreed for {}."),)


def _told(org_id: str | None, trigger: Mapping[str, Any], routed: Routing) -> str:
    """Whom an emergency alert to `org_id` says the event was disclosed to. The source's privacy
    officer reviews every recipient; a recipient learns only of its own organisation, since the
    list would tell it who else cares for the person (mental-health or addiction care)."""
    if org_id != trigger["source"]["org_id"]:
        return "your organisation"
    told = ", ".join(f"{r['agency']} {r['org_id']}" for r in emergency_recipients(routed))
    return told or "no organisation (routing withheld it from every recipient)"


def _neutral_summary(
    title: str, contact: Mapping[str, Any] | None, trigger: Mapping[str, Any]
) -> str:
    """For a recipient routing does not let know the person: what it can do. The contact knows
    the person (the source always does); the event id, which the source chose and which never
    holds a nin (carebus.domain.text), lets the contact find the case without naming it here."""
    whom = _whom(contact, trigger)
    return (
        f"{title}. Who the person is and the details are not disclosed to your organisation. "
        f"Contact {whom} and quote event {trigger['event_id']}: they can act, or ask the "
        "person for consent to share with you."
    )


def _whom(contact: Mapping[str, Any] | None, trigger: Mapping[str, Any]) -> str:
    chosen = contact or trigger["source"]
    return f"{chosen['agency']} {chosen['org_id']}"


def _summary(
    rule: Rule,
    title: str,
    trigger: Mapping[str, Any],
    event_ids: Sequence[str],
    deadline: str | None,
    contact: Mapping[str, Any] | None,
    told: str,
    *,
    specific: bool,
    shown: Mapping[str, Any],
) -> str:
    """The summary for an organisation routing lets know of the trigger; `told`: whom an
    emergency disclosure reached, as this organisation may read it. The rule's `why` only
    where it may see what the rule's condition reads (`specific`): the why tells the reason."""
    act = f"Contact {_whom(contact, trigger)}." if contact else "The next step is yours."
    when = _oslo(trigger["occurred_at"])
    source = f"{trigger['source']['agency']} {trigger['source']['org_id']}"
    if rule.kind == "window":
        return (
            f"{title}: {len(event_ids)} events within {rule.window.text if rule.window else ''}, "
            f"the latest a {trigger['event_type']} at {when} from {source}."
        )
    why = f" {rule.why}" if rule.why and specific else ""
    if rule.kind == "immediate" and not rule.emergency:
        event = f"{trigger['event_type']} {trigger['event_id']}"
        facts = "".join(
            " " + text.format(_oslo(value) if name.endswith("_at") else value)
            for name, text in _NOTICE_FIELDS
            if isinstance(value := shown.get(name), str) and value
        )
        return f"{title}: {event} at {when} from {source}.{why}{facts} {act}"
    if rule.kind == "immediate":
        emergency = trigger.get("emergency") or {}
        return (
            f"{title}: {trigger['event_type']} at {when} disclosed in an emergency to {told}. "
            f"Justification: {emergency.get('justification', '')}. "
            f"Accountable: {emergency.get('accountable', '')}."
        )
    due = f"; the deadline was {_oslo(deadline)}" if deadline else ""
    event = f"{trigger['event_type']} {trigger['event_id']}"
    return f"{title}: {event} at {when} from {source}{due}.{why} {act}"


def _oslo(moment: str) -> str:
    return _oslo_time(parse_rfc3339(moment))


def _oslo_time(moment: datetime) -> str:
    return moment.astimezone(OSLO).strftime("%Y-%m-%d %H:%M (Oslo)")


def _audit(
    alert: AlertJson,
    trigger: Mapping[str, Any],
    disclosure: Mapping[str, Any],
    context: AlertContext,
) -> DisclosureJson:
    recipient = alert["recipient"]
    assert recipient is not None  # an alert to nobody in particular discloses to nobody
    return {
        "audit_id": alert["alert_id"],
        "event_id": trigger["event_id"],
        "event_type": "alert",
        "source_org": trigger["source"]["org_id"],
        "subject_key": trigger["subject_key"],
        "recipient": {"agency": recipient["agency"], "org_id": recipient["org_id"]},
        "decision": "delivered",
        "reason": None,
        "basis": disclosure["basis"],
        "categories": ["logistics"],
        "fields": ["subject.nin", "event_type", "occurred_at"],
        "rule_id": f"sla:{alert['rule_id']}",
        "policy_version": alert["rules_version"],
        "decided_at": alert["changed_at"],
        "delivery_id": None,
        "emergency": alert["kind"] == "emergency_disclosure",
    }


# --- operator actions -----------------------------------------------------------------------

OPERATOR_ACTION: Final = "operator_action"
OPERATOR_ACTION_TITLE: Final = "The carebus operator acted on your organisation - review it"
# Not raised by an SLA rule; the version says which wording of these alerts a record carries.
OPERATOR_ACTION_VERSION: Final = "operator_action.1"
# A review, not a deadline: flagged escalated when nobody has looked at it within a working day.
OPERATOR_ACTION_ESCALATION: Final = timedelta(hours=24)
_ACTION_NAME: Final = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_ORG_ID: Final = re.compile(r"[0-9]{9}")
# What the target organisation's privacy officer reads, by the action names the registry
# records (services/registry: `operator.touched` and REGISTER_ACTIONS; a unit test keeps the two
# in step), in plain words and without personal data. An action without words here is still
# alerted, by its name.
OPERATOR_ACTIONS: Final[dict[str, str]] = {
    "organisation_registered": (
        "registered your organisation in the carebus directory, or changed its name or HER-id there"
    ),
    "token_issued": "issued an API token for your organisation",
    "token_revoked": "revoked an API token of your organisation",
    "webhook_registered": "set the address carebus delivers your organisation's data to",
    "webhook_deleted": "removed the address carebus delivers your organisation's data to",
    "home_municipality_set": (
        "recorded your organisation as a person's home municipality in the population register"
    ),
    "home_municipality_cleared": (
        "removed your organisation as a person's home municipality from the population register"
    ),
    "gp_set": "put a person on your organisation's GP list",
    "gp_cleared": "took a person off your organisation's GP list",
    "housing_place_recorded": (
        "recorded a housing place your organisation owns or lies in (or did before this "
        "change), which decides who gets the alerts about patterns at that place"
    ),
}


def operator_alert_id(action_id: str, target_org: str) -> str:
    """The id of the alert about the operator's action `action_id` to `target_org`. The alert
    store recomputes it, so the registry cannot give its alert another alert's id (and so keep
    that one from being stored)."""
    text = "\x1f".join((OPERATOR_ACTION, action_id, target_org))
    return "alert-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def operator_action_alert(
    action: str,
    operator_org: str,
    target_org: str,
    target_agency: str,
    at: datetime,
    action_id: str,
    *,
    subject_key: str | None = None,
) -> dict[str, Any]:
    """The Alert record (Avro form, times as datetimes) telling `target_org`'s privacy officer
    that the operator did `action` to it; publish it on care.alerts.operator.v1 keyed by its
    `subject_key`.

    The alert names no person. `subject_key` links an action about one person (a register
    entry) to that person's stream; without one the alert is keyed by the target organisation,
    so one organisation's operator alerts stay in order. The `alert_id` comes from `action_id`,
    so publishing the same action twice raises one alert. ValueError naming the argument for
    anything that could not be stored or shown.
    """
    if not _ACTION_NAME.fullmatch(action):
        raise ValueError("action: must be a lower-case name such as token_issued")
    for name, org_id in (("operator_org", operator_org), ("target_org", target_org)):
        if not _ORG_ID.fullmatch(org_id):
            raise ValueError(f"{name}: must be a 9-digit organisation number")
    if target_agency not in AGENCIES:
        raise ValueError(f"target_agency: must be one of {', '.join(AGENCIES)}")
    if target_org == operator_org:
        raise ValueError("target_org: the operator's own organisation is not alerted")
    if not action_id:
        raise ValueError("action_id: must not be empty")
    if at.tzinfo is None:
        raise ValueError("at: must be timezone-aware")
    done = OPERATOR_ACTIONS.get(action, f"took the action {action} concerning your organisation")
    return {
        "alert_id": operator_alert_id(action_id, target_org),
        "rule_id": OPERATOR_ACTION,
        "title": OPERATOR_ACTION_TITLE,
        "kind": OPERATOR_ACTION,
        "status": "open",
        "resolution": None,
        "subject_key": subject_key or f"organisation:{target_org}",
        "subject": None,
        "recipient": {"agency": target_agency, "org_id": target_org},
        "audience": "privacy_officer",
        # The operator is not an agency (no Organisation record can name it): the summary does.
        "contact": None,
        "deadline": None,
        "breached_at": at,
        "escalate_at": at + OPERATOR_ACTION_ESCALATION,
        "summary": (
            f"The carebus operator (organisation {operator_org}) {done} at {_oslo_time(at)}. "
            "If your organisation did not ask for this, contact the carebus operator."
        ),
        "event_ids": [action_id],
        "rules_version": OPERATOR_ACTION_VERSION,
        "changed_at": at,
    }
