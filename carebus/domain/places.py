"""Patterns at a place: police callouts and housing incidents at one housing site, whoever they
concerned, raise one alert per episode to the site's owner and municipality (pure).

The SLA engine keeps one `PlaceState` per place key beside the persons' states and applies a
person's `police_callout` or `housing_incident` to its place in the same transaction as to the
person (services/sla/app.py), so a record counts once however often it is delivered. A place is
the event's `housing_site_id` (a building or project of several units), else its
`housing_unit_id`; its key is an HMAC of that under the subject-key secret, so a client id that
is an address never appears in an alert, a log or a metric.

The alert names no person (`subject` null, `subject_key` `place:<key>`) and names the place
only by its key. Privacy rule (issue 17 item 6, for the privacy officer to confirm): a recipient
counts the events it was not told of (neither its own nor delivered to it) only when those
events, on their own, concern at least two persons (a count over two or more persons singles
out none); otherwise only the events it reported itself or that routing delivered to it. The
persons of its own reports do not count towards the two: a reporter could make them up.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from carebus.domain import windows
from carebus.domain.alerts import alert_id, kind_of
from carebus.domain.records import AlertJson, Organisation
from carebus.domain.sla import OSLO, Rule, RuleSet, parse_rfc3339, stamp, value_of

__all__ = [
    "PLACE_EVENT_TYPES",
    "Counted",
    "PlaceOwners",
    "PlaceState",
    "PlaceStep",
    "Withdrawn",
    "countable",
    "entry",
    "observe_place",
    "place_key",
    "place_of",
    "withdraw",
]

PLACE_EVENT_TYPES: Final = ("police_callout", "housing_incident")
# Events a recipient was not told of count for it only when they concern at least this many
# distinct persons on their own (k-anonymity of the count; the brief's k >= 2).
DISTINCT_PERSONS: Final = 2
_WORDS: Final = {"police_callout": "police callouts", "housing_incident": "housing incidents"}
_AT: Final = {"site": "housing site", "unit": "housing unit"}
# The summary names a place by this many leading hex characters of its key (the owner maps it
# by the `place_key` POST /v1/housing-places returns); never by its id, which may be an address.
KEY_SHOWN: Final = 12

# A place entry: [occurred_at, event_id, sender, event_type, subject_key, sender's agency,
# *organisations routing delivered the event to]; the first three as every window's.
_TYPE, _SUBJECT, _AGENCY, _TOLD = 3, 4, 5, 6


@dataclass(frozen=True, slots=True)
class PlaceOwners:
    """Whom the registry records for a place (table housing_places): the housing organisation
    that owns or runs it and the municipality it lies in."""

    owner_org: str
    municipality_org: str


@dataclass(frozen=True, slots=True)
class Counted:
    """An event to count at place `key` (named `place`, `site:KH-1`): its entry."""

    key: str
    place: str
    entry: list[str]


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """A retracted event (its sender's `event_id`), to be taken out of every place's count."""

    sender: str
    event_id: str


PlaceStep = Counted | Withdrawn


@dataclass
class PlaceState:
    """One place's counts, JSON-ready: `windows` rule_id -> {"events": [entry, ...],
    "episodes": {recipient: episode start}}. The place's id is not kept (it may be an address;
    the row's key names the place)."""

    windows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"windows": self.windows}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PlaceState:
        """Read a stored state; the clear `place` that rows stored before 2026-12 hold is
        ignored (and dropped when the row is next written)."""
        data = data or {}
        return cls(windows=dict(data.get("windows") or {}))


def place_of(event: Mapping[str, Any]) -> str | None:
    """The place an event (JSON form) happened at: `site:<housing_site_id>`, else
    `unit:<housing_unit_id>`; None for another type of event or one that names neither."""
    if event.get("event_type") not in PLACE_EVENT_TYPES:
        return None
    site, unit = value_of(event, "housing_site_id"), value_of(event, "housing_unit_id")
    if isinstance(site, str) and site:
        return f"site:{site}"
    return f"unit:{unit}" if isinstance(unit, str) and unit else None


def place_key(place: str, secret: bytes) -> str:
    """The place's pseudonym: HMAC-SHA256 under the subject-key secret, hex. The `place` prefix
    keeps it apart from subject keys (a site id that happened to be a nin gets another key)."""
    return hmac.new(secret, b"place\x1f" + place.encode(), hashlib.sha256).hexdigest()


def entry(event: Mapping[str, Any], told: Sequence[str]) -> list[str]:
    """What a place keeps of an event (JSON form): `told`, the organisations routing delivered
    it to."""
    source = event["source"]
    return [
        event["occurred_at"],
        event["event_id"],
        source["org_id"],
        event["event_type"],
        event["subject_key"],
        source["agency"],
        *sorted(set(told)),
    ]


def countable(entries: Sequence[list[str]], org_id: str | None) -> list[list[str]]:
    """The entries `org_id` may be counted: those it reported or was delivered, and the others
    too when the others alone concern at least DISTINCT_PERSONS persons (the unassigned queue,
    None, is told of none). The others must reach two persons without the known ones: else an
    organisation could report two made-up persons there and learn of one real person's
    callout."""
    known = [kept for kept in entries if org_id is not None and org_id in _knowers(kept)]
    unknown = [kept for kept in entries if org_id is None or org_id not in _knowers(kept)]
    if len({kept[_SUBJECT] for kept in unknown}) >= DISTINCT_PERSONS:
        return list(entries)
    return known


def observe_place(
    state: PlaceState,
    event: list[str],
    place: str,
    key: str,
    owners: PlaceOwners | None,
    rules: RuleSet,
    now: datetime,
) -> list[AlertJson]:
    """Count place entry `event` in `state` (in place) for every place rule of its type; the
    alerts that opens, one per recipient whose count opens an episode. A replayed event
    changes nothing and raises nothing. `place` (`site:KH-1`) only says whether it is a site
    or a unit; its id is neither kept nor shown."""
    alerts: list[AlertJson] = []
    for rule in rules.rules:
        if rule.scope != "place" or event[_TYPE] not in rule.event_types or rule.window is None:
            continue
        window = state.windows.setdefault(rule.rule_id, {"events": [], "episodes": {}})
        entries = windows.add(window["events"], event, rule.window)
        if entries is None:
            continue  # a replay
        window["events"] = entries
        episodes: dict[str, str] = window["episodes"]
        for moment in windows.ends_holding(entries, event, rule.window):
            inside = windows.inside(entries, rule.window, moment)
            for recipient in _recipients(rule, owners):
                org_id = None if recipient is None else recipient["org_id"]
                counted = countable(inside, org_id)
                started = episodes.get(org_id or "unassigned")
                if not windows.episode(counted, rule.count, rule.window, moment, started):
                    continue
                episodes[org_id or "unassigned"] = stamp(moment)
                contact = _contact(recipient, owners)
                text = summary(rule, place, key, counted, contact)
                alert = _alert(rule, key, event, counted, recipient, contact, now, text)
                alert["rules_version"] = rules.version
                alerts.append(alert)
    return alerts


def withdraw(state: PlaceState, withdrawn: Withdrawn) -> bool:
    """Take a retracted event out of the place's windows (in place); whether it was there. An
    alert it helped raise stays: it named no one, and the count it gave was true when raised."""
    found = False
    for window in state.windows.values():
        kept = [
            e
            for e in window["events"]
            if windows.entry_of(e) != (withdrawn.event_id, withdrawn.sender)
        ]
        found |= len(kept) != len(window["events"])
        window["events"] = kept
    return found


def _knowers(kept: list[str]) -> list[str]:
    return [kept[2], *kept[_TOLD:]]


def _recipients(rule: Rule, owners: PlaceOwners | None) -> list[Organisation | None]:
    """One recipient per fallback chain."""
    chosen: list[Organisation | None] = []
    for chain in rule.recipients:
        for role in chain:
            found = _resolve(role, owners)
            if found is not None:
                chosen.extend(org for org in found if org not in chosen)
                break
    return chosen


def _resolve(role: str, owners: PlaceOwners | None) -> list[Organisation | None] | None:
    """The organisations a role names at the place. The owner of an unregistered place is the
    operator's queue, never a housing organisation that reported there: anyone may report at
    any site id, and reporting must not make it a recipient."""
    if role == "housing_owner":
        if owners is None:
            return [None]  # the operator's queue, which asks for the place to be registered
        return [{"agency": "housing", "org_id": owners.owner_org}]
    if role == "place_municipality":
        if owners is None:
            return None
        return [{"agency": "municipality", "org_id": owners.municipality_org}]
    return [None]  # unassigned: the operator's queue


def _contact(recipient: Organisation | None, owners: PlaceOwners | None) -> Organisation | None:
    """The owner's partner for the site: the municipality for the owner, the owner for the
    municipality; None where the registry records neither (the summary says so)."""
    if owners is None or recipient is None:
        return None
    if recipient["org_id"] == owners.owner_org:
        return {"agency": "municipality", "org_id": owners.municipality_org}
    return {"agency": "housing", "org_id": owners.owner_org}


def _alert(
    rule: Rule,
    key: str,
    event: list[str],
    counted: Sequence[list[str]],
    recipient: Organisation | None,
    contact: Organisation | None,
    now: datetime,
    text: str,
) -> AlertJson:
    at = stamp(now)
    trigger = {"event_id": event[1], "source": {"org_id": event[2]}}
    return {
        "alert_id": alert_id(rule.rule_id, trigger, recipient and recipient["org_id"]),
        "rule_id": rule.rule_id,
        "title": rule.title,
        "kind": kind_of(rule),
        "status": "open",
        "resolution": None,
        "subject_key": f"place:{key}",
        "subject": None,
        "recipient": recipient,
        "audience": rule.audience,
        "contact": contact,
        "deadline": None,
        "breached_at": at,
        "escalate_at": stamp(rule.escalation.after(now)),
        "summary": text,
        "event_ids": [kept[1] for kept in counted],
        "rules_version": "",  # the caller's rule set's
        "changed_at": at,
    }


def summary(
    rule: Rule,
    place: str,
    key: str,
    counted: Sequence[list[str]],
    contact: Organisation | None,
) -> str:
    """What happened at the place and what the recipient can do, naming no person. The place
    is named by the first KEY_SHOWN hex characters of its key, never by its id (a site or
    unit id may be an address): the owner maps the key by the `place_key` its registration
    returned; the reporting services can name it from the event ids."""
    kind = place.partition(":")[0]
    types = sorted({kept[_TYPE] for kept in counted})
    by_type = ", ".join(
        f"{_WORDS.get(t, t)} {sum(kept[_TYPE] == t for kept in counted)}" for t in types
    )
    latest = max(parse_rfc3339(kept[0]) for kept in counted)
    window = rule.window.text if rule.window else ""
    where = f"{_AT.get(kind, 'place')} (place {key[:KEY_SHOWN]})"
    partner = (
        f"Agree on measures for the site with {contact['agency']} {contact['org_id']}"
        if contact
        else "The place is not in the carebus register of housing places: have the operator "
        "record its owner and municipality (POST /v1/housing-places) so both are told"
    )
    return (
        f"{len(counted)} events at {where} within {window} "
        f"({by_type}), the latest at {latest.astimezone(OSLO).strftime('%Y-%m-%d %H:%M')} (Oslo). "
        f"No person is named here. {partner}; a person's own services are told of each event "
        "as routing allows, and the reporting services can say more where the person consents."
    )
