"""Routing decisions: who may learn of an event, which fields, on which basis (pure, no I/O).

The router feeds every record of `care.events.v1` for a person, in stream order, to `apply`,
and routes each event with `route` against the state that includes that event. Consent and
care-team changes arrive on the same ordered stream, so a decision never races a change the
registry has already confirmed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

import orjson

from carebus.domain.deliveries import delivery_id, no_candidate_audit_id
from carebus.domain.events import PAYLOAD_FIELDS, given, record_to_json, rfc3339
from carebus.domain.policy import CATEGORIES, EVENT_CATEGORY, HOME_MUNICIPALITY, Policy, Rule
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

__all__ = [
    "CARE_TEAM_CHANGE",
    "CONSENT_CHANGE",
    "DELIVERY",
    "DISCLOSURE",
    "REGISTER_CHANGE",
    "STATE_SENDERS",
    "Consent",
    "Member",
    "PersonState",
    "Routing",
    "apply",
    "plan_source",
    "route",
]


# Who put a member in the care team: `registry:<recording org>` or `plan:<owner org>:<plan_id>`.
# Each source is removed only by whoever added it (or by the member itself stepping out).
_REGISTRY: Final = "registry:"
_PLAN: Final = "plan:"
# The GP on the GP list is a care-team member by default (issue 17: the GP otherwise hears
# nothing unless someone adds the GP); the operator's GP-list entry puts it there and a new
# entry moves it.
_GP_LIST: Final = "register:gp"
# The events that change a person's state, and the only agencies whose events may change it.
# policy/authority.yaml's `senders` decides who may send them at all; the fold repeats the
# check so a record that reached the stream some other way changes nothing (a unit test keeps
# the two equal).
STATE_SENDERS: Final[Mapping[str, frozenset[str]]] = {
    "admission": frozenset({"dps"}),
    "discharge": frozenset({"dps"}),
    "ip_update": frozenset({"municipality", "dps"}),
}
_ROLE_STRENGTH: Final = ("coordinator", "pathway_coordinator", "gp", "participant")
HOME_FROM_REGISTER: Final = "register"
HOME_FROM_ADMISSION: Final = "admission"


@dataclass(frozen=True, slots=True)
class Consent:
    """The latest consent, withdrawal or objection for one recipient (org_id None: the agency)."""

    agency: str
    org_id: str | None
    status: str
    categories: frozenset[str]
    valid_from: datetime
    valid_to: datetime | None
    # When the registry recorded it: orders records, so a late re-publication of an older
    # change (the outbox may publish twice) never overrides a newer one.
    recorded_at: datetime

    def covers(self, agency: str, org_id: str) -> bool:
        return self.agency == agency and self.org_id in (None, org_id)


@dataclass(frozen=True, slots=True)
class Member:
    """A care-team organisation; `sources` maps who put it there (`registry:<org>`,
    `plan:<owner>:<plan_id>`) to the role that source gave it. Its role is the strongest role a
    current source gives, so a role ends with the statement that gave it (a closed plan's
    coordinator is no longer coordinator)."""

    agency: str
    sources: Mapping[str, str]

    @property
    def role(self) -> str:
        roles = set(self.sources.values())
        return next((r for r in _ROLE_STRENGTH if r in roles), "participant")

    def without(self, *sources: str) -> Member | None:
        """The member without `sources`; None when nothing keeps it in the team."""
        kept = {source: role for source, role in self.sources.items() if source not in sources}
        return Member(self.agency, kept) if kept else None

    def plus(self, source: str, role: str) -> Member:
        return Member(self.agency, {**self.sources, source: role})


@dataclass(frozen=True, slots=True)
class PersonState:
    """What routing needs to know about one person, built from their ordered stream.

    `consents` keeps only the latest record per (agency, org_id), in the order those records
    arrived: the latest record covering a recipient is then the last one that covers it, the
    same answer the full history gives, in a fraction of the memory. The full history stays in
    the registry. `team` maps org_id to member; treat it as read-only (`apply` copies it).
    """

    consents: tuple[Consent, ...] = ()
    team: Mapping[str, Member] = field(default_factory=dict)
    home_municipality: str | None = None
    # Where the home municipality came from: the population register (the operator's entry)
    # outranks a DPS admission's statement.
    home_source: str | None = None
    # The GP on the GP list (the operator's entry): a relation, and a care-team member with the
    # role gp (its source in `team` is `register:gp`).
    gp: str | None = None
    # DPS org_id -> ids of its admissions of the person not yet followed by a discharge.
    admissions: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def relations(self, org_id: str) -> frozenset[str]:
        """How `org_id` is related to the person: care_team, home_municipality, gp, admitting."""
        found: set[str] = set()
        if org_id in self.team:
            found.add("care_team")
        if org_id == self.home_municipality:
            found.add("home_municipality")
        if org_id == self.gp:
            found.add("gp")
        if self.admissions.get(org_id):
            found.add("admitting")
        return frozenset(found)

    def latest_consent(self, agency: str, org_id: str) -> Consent | None:
        """The latest record covering `org_id` of `agency` (its own or one for the agency)."""
        for consent in reversed(self.consents):
            if consent.covers(agency, org_id):
                return consent
        return None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data (times RFC 3339 UTC); `from_json` reads it back."""
        return {
            "consents": [
                [
                    c.agency,
                    c.org_id,
                    c.status,
                    sorted(c.categories),
                    rfc3339(c.valid_from),
                    None if c.valid_to is None else rfc3339(c.valid_to),
                    rfc3339(c.recorded_at),
                ]
                for c in self.consents
            ],
            "team": {
                org_id: [m.agency, dict(sorted(m.sources.items()))]
                for org_id, m in self.team.items()
            },
            "home": self.home_municipality,
            "home_source": self.home_source,
            "gp": self.gp,
            "admissions": {org_id: sorted(ids) for org_id, ids in self.admissions.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PersonState:
        """The state `to_json` wrote."""
        return cls(
            consents=tuple(
                Consent(
                    agency=agency,
                    org_id=org_id,
                    status=status,
                    categories=frozenset(categories),
                    valid_from=datetime.fromisoformat(valid_from),
                    valid_to=None if valid_to is None else datetime.fromisoformat(valid_to),
                    recorded_at=datetime.fromisoformat(recorded_at),
                )
                for (
                    agency,
                    org_id,
                    status,
                    categories,
                    valid_from,
                    valid_to,
                    recorded_at,
                ) in data.get("consents", ())
            ),
            team={org_id: _member_of(entry) for org_id, entry in data.get("team", {}).items()},
            home_municipality=data.get("home"),
            home_source=data.get("home_source"),
            gp=data.get("gp"),
            admissions={
                org_id: frozenset(ids) for org_id, ids in (data.get("admissions") or {}).items()
            },
        )


@dataclass(frozen=True, slots=True)
class Routing:
    """The outcome of routing one event: Delivery records and one Disclosure per candidate."""

    deliveries: list[Delivery]
    disclosures: list[Disclosure]


# --- state ----------------------------------------------------------------------------------


def apply(state: PersonState, schema_name: str, record: Mapping[str, Any]) -> PersonState:
    """`state` after one record of the person's stream (records that change nothing: `state`
    itself, so the router writes its table and changelog only for a real change)."""
    changed = _changed(state, schema_name, record)
    return state if changed is state or changed == state else changed


def _changed(state: PersonState, schema_name: str, record: Mapping[str, Any]) -> PersonState:
    if schema_name == CONSENT_CHANGE:
        return _consent_changed(state, record)
    if schema_name == CARE_TEAM_CHANGE:
        return _care_team_changed(state, record)
    if schema_name == REGISTER_CHANGE:
        return _register_changed(state, record)
    event_type = record.get("event_type")
    if not isinstance(event_type, str) or schema_name != event_schema_name(event_type):
        return state
    source = record["source"]
    if source["agency"] not in STATE_SENDERS.get(event_type, ()):
        return state
    payload = record.get("payload") or {}
    if event_type == "admission":
        return _admitted(state, source["org_id"], record["event_id"], payload)
    if event_type == "discharge":
        return _discharged(state, source["org_id"], payload)
    return _plan_updated(state, source["org_id"], payload)


def _admitted(
    state: PersonState, dps: str, event_id: str, payload: Mapping[str, Any]
) -> PersonState:
    admissions = dict(state.admissions)
    admissions[dps] = admissions.get(dps, frozenset()) | {event_id}
    home, home_source = state.home_municipality, state.home_source
    if payload.get("home_municipality_org") and home_source != HOME_FROM_REGISTER:
        home, home_source = payload["home_municipality_org"], HOME_FROM_ADMISSION
    return replace(state, admissions=admissions, home_municipality=home, home_source=home_source)


def _discharged(state: PersonState, dps: str, payload: Mapping[str, Any]) -> PersonState:
    open_ids = state.admissions.get(dps, frozenset()) - {payload.get("admission_event_id")}
    admissions = {org_id: ids for org_id, ids in state.admissions.items() if org_id != dps}
    if open_ids:
        admissions[dps] = open_ids
    return replace(state, admissions=admissions)


def _register_changed(state: PersonState, record: Mapping[str, Any]) -> PersonState:
    organisation = record.get("organisation")
    org_id = organisation["org_id"] if organisation else None
    if record["register"] == "gp":
        team = dict(state.team)
        for member_id, member in state.team.items():
            if _GP_LIST in member.sources:
                kept = member.without(_GP_LIST)
                if kept is None:
                    del team[member_id]
                else:
                    team[member_id] = kept
        if org_id is not None:
            held = team.get(org_id)
            agency = organisation["agency"] if organisation else "fastlege"
            team[org_id] = (held or Member(agency, {})).plus(_GP_LIST, "gp")
        return replace(state, gp=org_id, team=team)
    if record["register"] == "home_municipality":
        # Clearing the register entry leaves no home: an admission names it again.
        return replace(
            state, home_municipality=org_id, home_source=HOME_FROM_REGISTER if org_id else None
        )
    return state


def _consent_changed(state: PersonState, record: Mapping[str, Any]) -> PersonState:
    recipient = record["recipient"]
    consent = Consent(
        agency=recipient["agency"],
        org_id=recipient.get("org_id"),
        status=record["status"],
        categories=frozenset(record["categories"]),
        valid_from=record["valid_from"],
        valid_to=record.get("valid_to"),
        recorded_at=record["recorded_at"],
    )
    scope = (consent.agency, consent.org_id)
    if any(
        (c.agency, c.org_id) == scope and c.recorded_at > consent.recorded_at
        for c in state.consents
    ):
        return state  # a re-published or stale change: the newer record stands
    kept = [c for c in state.consents if (c.agency, c.org_id) != scope]
    ordered = sorted([*kept, consent], key=lambda c: c.recorded_at)
    return replace(state, consents=tuple(ordered))


def _member_of(entry: Sequence[Any]) -> Member:
    """A member as `to_json` wrote it; [agency, role, [sources]] is the earlier form."""
    if len(entry) == 3:
        agency, role, sources = entry
        return Member(agency, dict.fromkeys(sources, role))
    agency, sources = entry
    return Member(agency, dict(sources))


def _care_team_changed(state: PersonState, record: Mapping[str, Any]) -> PersonState:
    member = record["member"]
    org_id = member["org_id"]
    recorder = record["recorded_by_org"]
    team = dict(state.team)
    if record["status"] == "member":
        current = team.get(org_id, Member(member["agency"], {}))
        team[org_id] = current.plus(_REGISTRY + recorder, record["role"])
    elif record["status"] == "removed":
        if org_id not in team:
            return state
        # An organisation may always step out (every source); anyone else takes back only the
        # membership it recorded itself, so no one can cut another's member out of the team.
        kept = None if recorder == org_id else team[org_id].without(_REGISTRY + recorder)
        if kept is None:
            del team[org_id]
        else:
            team[org_id] = kept
    else:
        return state  # a status this reader does not know: change nothing rather than guess
    return replace(state, team=team)


def _plan_members(payload: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """org_id -> (agency, role) of the organisations an ip_update payload names."""
    named: dict[str, tuple[str, str]] = {}
    for participant in payload.get("participants") or ():
        role = "gp" if participant["agency"] == "fastlege" else "participant"
        named[participant["org_id"]] = (participant["agency"], role)
    coordinator = payload.get("coordinator")
    if coordinator:
        named[coordinator["org_id"]] = (coordinator["agency"], "coordinator")
    return named


def plan_source(owner: str, plan_id: str) -> str:
    """How a plan is named among a member's sources: by its owner and its id."""
    return f"{_PLAN}{owner}:{plan_id}"


def _plan_updated(state: PersonState, owner: str, payload: Mapping[str, Any]) -> PersonState:
    status = payload.get("status")
    if status not in ("active", "closed"):
        return state
    # A plan is identified by its owner and its id: another organisation's plan of the same id
    # is another plan, so only the owner changes or closes it.
    source = plan_source(owner, payload["plan_id"])
    named = _plan_members(payload) if status == "active" else {}
    team: dict[str, Member] = {}
    # The plan's own membership is replaced wholesale: whom the plan no longer names, it no
    # longer keeps in the team (a registry membership of the same organisation stays).
    for org_id, member in state.team.items():
        kept = member.without(source)
        if kept is not None:
            team[org_id] = kept
    for org_id, (agency, role) in named.items():
        team[org_id] = team.get(org_id, Member(agency, {})).plus(source, role)
    return replace(state, team=team)


# --- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    org_id: str
    agency: str
    in_team: bool
    home: bool


@dataclass(frozen=True, slots=True)
class _Decision:
    rule: Rule | None
    basis: str | None = None
    categories: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def delivered(self) -> bool:
        return self.reason is None


def _candidates(event_record: Mapping[str, Any], state: PersonState) -> list[_Candidate]:
    """The organisations that could receive the event, by org_id; never its source.

    The care team, the home municipality, the named emergency recipients, and for an
    ip_update from an organisation that may send plans, the organisations the plan names: a
    plan being closed has already left the state, yet its members must learn that it closed.
    """
    team: dict[str, str] = {org_id: member.agency for org_id, member in state.team.items()}
    source = event_record["source"]
    if event_record["event_type"] == "ip_update" and source["agency"] in STATE_SENDERS["ip_update"]:
        for org_id, (agency, _) in _plan_members(event_record["payload"]).items():
            team.setdefault(org_id, agency)
    found: dict[str, _Candidate] = {
        org_id: _Candidate(org_id, agency, in_team=True, home=False)
        for org_id, agency in team.items()
    }
    home = state.home_municipality
    if home is not None:
        agency = team.get(home, "municipality")
        found[home] = _Candidate(home, agency, in_team=home in team, home=True)
    emergency = event_record.get("emergency")
    for recipient in emergency["recipients"] if emergency else ():
        found.setdefault(
            recipient["org_id"],
            _Candidate(recipient["org_id"], recipient["agency"], in_team=False, home=False),
        )
    found.pop(source["org_id"], None)
    return [found[org_id] for org_id in sorted(found)]


def route(
    event_record: Mapping[str, Any], state: PersonState, policy: Policy, now: datetime
) -> Routing:
    """Every routing decision for one event (Avro wire record) against `state` at time `now`.

    `state` must already include the event (`apply` first). Returns Delivery records for the
    deliveries made and one Disclosure record per candidate, or a single `no_candidate`.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    source_org = event_record["source"]["org_id"]
    event_id = event_record["event_id"]
    found = _candidates(event_record, state)
    if not found:
        return Routing(deliveries=[], disclosures=[_no_candidate(event_record, policy, now)])
    deliveries: list[Delivery] = []
    disclosures: list[Disclosure] = []
    for candidate in found:
        decision = _decide(event_record, candidate, state, policy, now)
        identity = delivery_id(source_org, event_id, candidate.org_id)
        if decision.delivered:
            deliveries.append(_delivery(event_record, candidate, decision, identity, policy, now))
        disclosures.append(_disclosure(event_record, candidate, decision, identity, policy, now))
    return Routing(deliveries=deliveries, disclosures=disclosures)


def _decide(
    event_record: Mapping[str, Any],
    candidate: _Candidate,
    state: PersonState,
    policy: Policy,
    now: datetime,
) -> _Decision:
    event_type = event_record["event_type"]
    payload = event_record["payload"]
    if event_record.get("emergency"):
        grant = policy.emergency.get(event_type)
        if grant is None:
            return _Decision(rule=None, reason="not_permitted")
        return _grant(grant, grant.categories, payload)
    decision: _Decision | None = None
    if candidate.in_team:
        rule = policy.rule(event_type, candidate.agency)
        decision = (
            _judge(rule, candidate, state, payload, now)
            if rule is not None
            else _Decision(rule=None, reason="not_permitted")
        )
    if candidate.home and (decision is None or not decision.delivered):
        # The home municipality's logistics notice is owed whatever its care-team rule says.
        statutory = policy.rule(event_type, HOME_MUNICIPALITY)
        if statutory is not None:
            decision = _grant(statutory, statutory.categories, payload)
    return decision or _Decision(rule=None, reason="not_permitted")


def _said(event_type: str, name: str, payload: Mapping[str, Any]) -> bool:
    """Whether the payload says anything in `name`: not null, and not the record's symbol for a
    field left out (`events.given`)."""
    return given(PAYLOAD_FIELDS[event_type][name], payload.get(name))


def _judge(
    rule: Rule,
    candidate: _Candidate,
    state: PersonState,
    payload: Mapping[str, Any],
    now: datetime,
) -> _Decision:
    if rule.basis == "statutory":
        return _grant(rule, rule.categories, payload)
    latest = state.latest_consent(candidate.agency, candidate.org_id)
    if rule.basis == "presumed":
        if latest is not None and latest.status == "objection":
            return _Decision(rule=rule, reason="objection")
        return _grant(rule, rule.categories, payload)
    # consent: only a valid, current consent covering the event's own category lets anything out
    reason = _consent_problem(latest, EVENT_CATEGORY.get(rule.event_type), now)
    if reason is not None:
        return _Decision(rule=rule, reason=reason)
    assert latest is not None
    return _grant(rule, latest.categories, payload)


def _consent_problem(
    latest: Consent | None, event_category: str | None, now: datetime
) -> str | None:
    if latest is None:
        return "no_consent"
    if latest.status == "withdrawn":
        return "consent_withdrawn"
    if latest.status == "objection":
        return "objection"
    if latest.status != "given":
        return "no_consent"
    if latest.valid_to is not None and now >= latest.valid_to:
        return "consent_expired"
    if now < latest.valid_from:
        return "no_consent"
    if event_category not in latest.categories:
        return "category_not_consented"
    return None


def _grant(rule: Rule, allowed: Iterable[str], payload: Mapping[str, Any]) -> _Decision:
    """Deliver the rule's fields of the `allowed` categories that the payload actually has."""
    allowed = set(allowed)
    permitted = {
        name: category
        for category, names in rule.categories.items()
        if category in allowed
        for name in names
    }
    fields = tuple(
        name
        for name in PAYLOAD_FIELDS[rule.event_type]
        if name in permitted and _said(rule.event_type, name, payload)
    )
    delivered = {permitted[name] for name in fields}
    delivered.add(EVENT_CATEGORY[rule.event_type])
    return _Decision(
        rule=rule,
        basis=rule.basis,
        categories=tuple(category for category in CATEGORIES if category in delivered),
        fields=fields,
    )


# --- records --------------------------------------------------------------------------------


def _delivery(
    event_record: Mapping[str, Any],
    candidate: _Candidate,
    decision: _Decision,
    identity: str,
    policy: Policy,
    now: datetime,
) -> Delivery:
    assert decision.rule is not None
    assert decision.basis is not None
    payload = {name: event_record["payload"][name] for name in decision.fields}
    emergency = event_record.get("emergency")
    return {
        "delivery_id": identity,
        "event_id": event_record["event_id"],
        "event_type": event_record["event_type"],
        "occurred_at": event_record["occurred_at"],
        "decided_at": now,
        "source": {
            "agency": event_record["source"]["agency"],
            "org_id": event_record["source"]["org_id"],
            "system": event_record["source"].get("system"),
        },
        "recipient": {"agency": candidate.agency, "org_id": candidate.org_id},
        "subject": {"nin": event_record["subject"]["nin"]},
        "subject_key": event_record["subject_key"],
        "basis": decision.basis,
        "categories": list(decision.categories),
        "fields": list(decision.fields),
        "payload_json": orjson.dumps(record_to_json(payload)).decode(),
        "emergency": (
            {"justification": emergency["justification"], "accountable": emergency["accountable"]}
            if emergency
            else None
        ),
        "rule_id": decision.rule.rule_id,
        "policy_version": policy.version,
    }


def _disclosure(
    event_record: Mapping[str, Any],
    candidate: _Candidate,
    decision: _Decision,
    identity: str,
    policy: Policy,
    now: datetime,
) -> Disclosure:
    return {
        "audit_id": identity,
        "event_id": event_record["event_id"],
        "event_type": event_record["event_type"],
        "source_org": event_record["source"]["org_id"],
        "subject_key": event_record["subject_key"],
        "recipient": {"agency": candidate.agency, "org_id": candidate.org_id},
        "decision": "delivered" if decision.delivered else "withheld",
        "reason": decision.reason,
        "basis": decision.basis,
        "categories": list(decision.categories),
        "fields": list(decision.fields),
        "rule_id": None if decision.rule is None else decision.rule.rule_id,
        "policy_version": policy.version,
        "decided_at": now,
        "delivery_id": identity if decision.delivered else None,
        "emergency": decision.basis == "emergency",
    }


def _no_candidate(event_record: Mapping[str, Any], policy: Policy, now: datetime) -> Disclosure:
    source_org = event_record["source"]["org_id"]
    return {
        "audit_id": no_candidate_audit_id(source_org, event_record["event_id"]),
        "event_id": event_record["event_id"],
        "event_type": event_record["event_type"],
        "source_org": source_org,
        "subject_key": event_record["subject_key"],
        "recipient": None,
        "decision": "no_candidate",
        "reason": None,
        "basis": None,
        "categories": [],
        "fields": [],
        "rule_id": None,
        "policy_version": policy.version,
        "decided_at": now,
        "delivery_id": None,
        "emergency": False,
    }
