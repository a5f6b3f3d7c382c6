"""The person view's cuts without any I/O: who may ask, what of the care team and the open
obligations the caller's organisation may see, and the timeline's items.

`GET /v1/persons/{subject_key}/timeline` (docs/design.md, "The person view") answers only an
organisation with a relation to the person (`PersonState.relations`); everything it shows is
what that organisation holds already or may learn by routing's rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import asyncpg

from carebus.domain.alerts import may_read_condition
from carebus.domain.obligations import SlaState
from carebus.domain.routing import PersonState
from carebus.domain.sla import RuleSet, latest_brukerplan, parse_rfc3339
from services.inbox.alerts import CONTACT_ROLES, ContactPerson

# A stored row as asyncpg returns it, or any mapping with the same keys (tests).
Row = asyncpg.Record | Mapping[str, Any]
# A subject key is the hex HMAC-SHA256 of a nin (docs/design.md, "Identity").
SUBJECT_KEY: Final = re.compile(r"[0-9a-f]{64}")
# Who may ask: a coordinator works the person's alerts, a privacy officer reviews what its
# organisation holds. A system's token reads deliveries elsewhere; the operator has no relation.
VIEW_ROLES: Final = ("coordinator", "privacy_officer")
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
# Health organisations see the whole care team; anyone else only its own entry: the list
# reveals specialist mental-health or addiction care (policy/routing.yaml narrows an individual
# plan's `participants` to health recipients for the same reason).
HEALTH_AGENCIES: Final = frozenset({"dps", "municipality", "fastlege"})
# Obligations still owed: open, or breached and not yet fulfilled.
OWED: Final = ("open", "breached")
_ROLE_ORDER: Final = {"coordinator": 0, "pathway_coordinator": 1, "gp": 2, "participant": 3}
# The keys of a delivery the timeline repeats, exactly as delivered (never `subject`: the
# view names the person once, at the top).
_DELIVERY_KEYS: Final = (
    "delivery_id",
    "event_id",
    "event_type",
    "occurred_at",
    "basis",
    "categories",
    "payload",
    "emergency",
)


def well_formed(subject_key: str) -> bool:
    """Whether `subject_key` could be a subject key at all (64 lower-case hex digits)."""
    return SUBJECT_KEY.fullmatch(subject_key) is not None


def relations(routing: PersonState, org_id: str) -> list[str]:
    """How `org_id` is related to the person, sorted; empty: not at all (the answer is 404)."""
    return sorted(routing.relations(org_id))


def care_team(
    routing: PersonState,
    agency: str,
    org_id: str,
    contacts: Mapping[str, Sequence[ContactPerson]] | None = None,
) -> list[dict[str, Any]]:
    """The care team as the caller may see it: every member for a health organisation, only
    its own entry for anyone else; coordinators first. Each entry lists the contact persons its
    organisation named for the person (issue 17, item 4), accountable before deputy."""
    members = sorted(
        routing.team.items(),
        key=lambda pair: (_ROLE_ORDER.get(pair[1].role, 9), pair[1].agency, pair[0]),
    )
    return [
        {
            "agency": member.agency,
            "org_id": member_org,
            "role": member.role,
            "contacts": [
                {"position": person.position, **person.json()}
                for person in sorted(
                    (contacts or {}).get(member_org, ()),
                    key=lambda c: (CONTACT_ROLES.index(c.role), c.position != "accountable"),
                )
            ],
        }
        for member_org, member in members
        if agency in HEALTH_AGENCIES or member_org == org_id
    ]


def seen_events(rows: Iterable[Row]) -> dict[tuple[str, str], frozenset[str]]:
    """(source org, event id) -> the payload fields routing delivered to the caller, from its
    delivered disclosures (rows with `source_org`, `event_id`, `fields`)."""
    seen: dict[tuple[str, str], frozenset[str]] = {}
    for row in rows:
        key = (row["source_org"], row["event_id"])
        seen[key] = seen.get(key, frozenset()) | frozenset(row["fields"])
    return seen


def obligations(
    state: SlaState,
    rules: RuleSet,
    org_id: str,
    seen: Mapping[tuple[str, str], frozenset[str]],
) -> list[dict[str, Any]]:
    """The person's owed obligations whose trigger the caller's organisation sent or was
    delivered, earliest deadline first (none yet: last). The title is the rule's specific one
    only where the caller may read what the rule's condition reads (the alerts' own cut);
    otherwise its neutral title. Emergency disclosures are reviews, not obligations: left out,
    as are obligations of a rule no longer in the rule file."""
    owed = []
    for obligation in state.obligations.values():
        if obligation["status"] not in OWED:
            continue
        rule = rules.rule(obligation["rule_id"])
        if rule is None or rule.emergency:
            continue
        trigger = obligation["trigger"]
        source = trigger["source"]["org_id"]
        if source != org_id and (source, trigger["event_id"]) not in seen:
            continue
        specific = may_read_condition(
            rule,
            trigger,
            org_id,
            lambda event: seen.get((event["source"]["org_id"], event["event_id"])),
            state.person,
        )
        owed.append(
            {
                "rule_id": rule.rule_id,
                "title": rule.title if specific else rule.neutral_title,
                "deadline": obligation["deadline"],
                "status": obligation["status"],
            }
        )
    return sorted(owed, key=_by_deadline)


def _by_deadline(obligation: Mapping[str, Any]) -> tuple[bool, Any, str]:
    deadline = obligation["deadline"]
    return (deadline is None, parse_rfc3339(deadline) if deadline else None, obligation["rule_id"])


def brukerplan(
    state: SlaState, org_id: str, seen: Mapping[tuple[str, str], frozenset[str]]
) -> dict[str, Any] | None:
    """The person's latest Brukerplan scores (issue 17, item 8), the domains the caller's
    organisation was given of that assessment (all if it made it); None when it was told of
    none. Its health domains reach health services in the care team only (routing.yaml)."""
    latest = latest_brukerplan(state.person)
    if latest is None:
        return None
    key = (latest["source_org"], latest["event_id"])
    if latest["source_org"] != org_id and key not in seen:
        return None
    shown = set(latest["scores"]) if latest["source_org"] == org_id else set(seen[key])
    scores = {
        domain: score
        for domain, score in latest["scores"].items()
        if domain in shown and score is not None
    }
    return {"event_id": latest["event_id"], "assessed_at": latest["occurred_at"], "scores": scores}


# What the view shows of the latest individual plan the caller holds, as it was given it.
_PLAN_FIELDS: Final = ("plan_id", "status", "coordinator", "next_review_at")
_CRISIS_PLAN_FIELDS: Final = {
    "crisis_plan": "exists",
    "crisis_plan_id": "id",
    "crisis_plan_owner": "owner",
    "crisis_plan_reviewed_at": "reviewed_at",
}


def plan(item: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The latest individual plan the caller was delivered or sent (a timeline item of type
    ip_update), with its crisis plan as a shared reference (id, owner, last reviewed): only the
    fields that item holds, so nothing routing kept from the caller."""
    if item is None:
        return None
    payload = item.get("payload") or {}
    shown: dict[str, Any] = {name: payload[name] for name in _PLAN_FIELDS if name in payload}
    crisis = {key: payload[name] for name, key in _CRISIS_PLAN_FIELDS.items() if name in payload}
    if crisis:
        shown["crisis_plan"] = crisis
    shown["event_id"] = item.get("event_id")
    shown["occurred_at"] = item.get("occurred_at")
    return shown


def received_item(delivery: Mapping[str, Any]) -> dict[str, Any]:
    """A delivery to the caller as a timeline item: its fields as delivered, `subject` aside."""
    item: dict[str, Any] = {"direction": "received"}
    item.update({key: delivery[key] for key in _DELIVERY_KEYS if key in delivery})
    return item


def sent_item(
    event_id: str, event_type: str, occurred_at: str, payload: Mapping[str, Any]
) -> dict[str, Any]:
    """An event the caller's organisation sent itself, as a timeline item."""
    return {
        "direction": "sent",
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": occurred_at,
        "payload": dict(payload),
    }


def first_sealed_nin(
    state: SlaState, org_id: str, seen: Mapping[tuple[str, str], frozenset[str]]
) -> str | None:
    """A sealed nin of the person from the trigger of an obligation, for a caller that holds no
    delivery naming them (it sent the events itself): only from a trigger the caller sent or
    was delivered, never from one routing kept from it (a care-team member without consent
    is not told who the person is)."""
    for obligation in state.obligations.values():
        trigger = obligation["trigger"]
        source = trigger["source"]["org_id"]
        if source != org_id and (source, trigger["event_id"]) not in seen:
            continue
        nin = (trigger.get("subject") or {}).get("nin")
        if isinstance(nin, str):
            return nin
    return None


def view(
    *,
    subject: Mapping[str, Any] | None,
    routing: PersonState,
    state: SlaState,
    rules: RuleSet,
    agency: str,
    org_id: str,
    seen: Mapping[tuple[str, str], frozenset[str]],
    items: Sequence[Mapping[str, Any]],
    next_cursor: str | None,
    contacts: Mapping[str, Sequence[ContactPerson]] | None = None,
    latest_plan: Mapping[str, Any] | None = None,
    alerted: bool = False,
) -> dict[str, Any]:
    """The timeline's JSON for a caller with a relation to the person, or (`alerted`) one with
    none left that holds an unresolved alert naming the person: relation `alert`."""
    return {
        "subject": dict(subject) if subject is not None else None,
        "relations": relations(routing, org_id) + (["alert"] if alerted else []),
        "care_team": care_team(routing, agency, org_id, contacts),
        "plan": plan(latest_plan),
        "obligations": obligations(state, rules, org_id, seen),
        "brukerplan": brukerplan(state, org_id, seen),
        "events": {"items": [dict(item) for item in items], "next": next_cursor},
    }
