"""The routing policy: DESIGN's field ceiling, and a loader that refuses any policy exceeding it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from carebus.domain.agencies import AGENCIES
from carebus.domain.events import EVENT_TYPES, PAYLOAD_FIELDS

__all__ = [
    "BASES",
    "CATEGORIES",
    "EMERGENCY",
    "EVENT_CATEGORY",
    "FIELD_CATEGORY",
    "HOME_MUNICIPALITY",
    "RECIPIENTS",
    "Policy",
    "PolicyError",
    "Rule",
    "build_policy",
]

CATEGORIES: Final = ("logistics", "health", "social", "police")
# The bases a rule may name; `emergency` is granted in its own section, never per recipient.
BASES: Final = ("statutory", "presumed", "consent")
EMERGENCY: Final = "emergency"
HOME_MUNICIPALITY: Final = "home_municipality"
RECIPIENTS: Final = (*AGENCIES, HOME_MUNICIPALITY)

# DESIGN "Data categories", by category: the most a policy may let through under each. A field
# absent here cannot be delivered at all, so a new payload field stays private until reviewed.
_CEILING: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "logistics": {
        "admission": (
            "needs_municipal_services",
            "home_municipality_org",
            "ward",
            "expected_discharge_at",
        ),
        "discharge_ready": ("admission_event_id", "needs_municipal_services"),
        "discharge_ready_withdrawn": ("discharge_ready_event_id",),
        "discharge": ("admission_event_id", "destination", "followup_at"),
        "ip_update": ("plan_id", "status", "coordinator", "participants", "next_review_at"),
        "health_info_sent": ("admission_event_id",),
        "municipal_reply": ("discharge_ready_event_id", "can_receive", "expected_ready_at"),
        "housing_work_started": ("admission_event_id",),
        "epikrise_sent": ("admission_event_id",),
        # An id link to the discharge or incident followed up, not what happened there.
        "followup_contact": ("related_event_id",),
        "application_received": ("application_id", "service"),
        "application_preliminary_reply": ("application_id", "expected_decision_at"),
        "application_decided": ("application_id", "outcome"),
    },
    "health": {
        "admission": ("reason", "admission_kind"),
        "discharge": ("crisis_plan",),
        "ip_update": ("crisis_plan",),
        "epikrise_sent": ("recipient_org",),
        "followup_contact": ("kind",),
    },
    "social": {
        "admission": ("housing_status",),
        "discharge_ready": ("housing_status",),
        "housing_incident": ("kind", "severity", "housing_unit_id"),
    },
    "police": {
        "police_callout": ("kind", "injuries", "location_type", "housing_unit_id"),
    },
}

FIELD_CATEGORY: Final[Mapping[tuple[str, str], str]] = MappingProxyType(
    {
        (event_type, name): category
        for category, by_type in _CEILING.items()
        for event_type, names in by_type.items()
        for name in names
    }
)

# That an event happened is itself information: a police callout is police information even
# when no field is delivered. A consent must cover this category before anything is delivered.
EVENT_CATEGORY: Final[Mapping[str, str]] = MappingProxyType(
    {
        event_type: {
            "police_callout": "police",
            "housing_incident": "social",
            "housing_work_started": "social",
        }.get(event_type, "logistics")
        for event_type in EVENT_TYPES
    }
)

_SOURCE_PREFIXES: Final = ("sources.md:", "carebus-default:")
_RULE_KEYS: Final = frozenset({"id", "event_type", "recipient", "basis", "categories", "source"})
_GRANT_KEYS: Final = frozenset({"id", "event_type", "categories", "source"})
_TOP_KEYS: Final = frozenset({"version", "rules", "emergency"})


class PolicyError(Exception):
    """The policy file is unreadable or breaks a rule of the ceiling; `problems` lists each."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        count = f"{len(problems)} problem" + ("" if len(problems) == 1 else "s")
        super().__init__(f"routing policy {path} refused, {count}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """What one recipient may learn of one event type, on which basis, and why.

    `categories` maps each category the rule grants to the payload fields it lets through
    (possibly none: the event's own category can be granted without a field). Emergency
    grants are rules too, with basis `emergency` and recipient `emergency`.
    """

    rule_id: str
    event_type: str
    recipient: str
    basis: str
    categories: Mapping[str, tuple[str, ...]]
    source: str


@dataclass(frozen=True, slots=True, eq=False)
class Policy:
    """A loaded, checked policy; `version` is the file's version plus a hash of its bytes."""

    version: str
    rules: Mapping[tuple[str, str], Rule]
    emergency: Mapping[str, Rule]

    def rule(self, event_type: str, recipient: str) -> Rule | None:
        """The rule for `recipient` (an agency or `home_municipality`), or None: not permitted."""
        return self.rules.get((event_type, recipient))


def build_policy(document: object, raw: bytes, path: Path | str) -> Policy:
    """The checked policy of a parsed file (`raw` its bytes, for the version's hash);
    PolicyError naming every rule and problem found."""
    problems: list[str] = []
    policy = _build(document, hashlib.sha256(raw).hexdigest()[:12], problems)
    if problems or policy is None:
        raise PolicyError(path, problems or ["empty policy"])
    return policy


def _build(document: object, digest: str, problems: list[str]) -> Policy | None:
    if not isinstance(document, dict):
        problems.append("the file must be a mapping with version, rules and emergency")
        return None
    for key in document:
        if key not in _TOP_KEYS:
            problems.append(f"unknown top-level key {key!r} (expected version, rules, emergency)")
    version = document.get("version")
    if not isinstance(version, str) or not version.strip():
        problems.append("version must be a non-empty quoted string")
        version = ""
    rules = _rules(document.get("rules"), problems)
    emergency = _emergency(document.get("emergency"), problems)
    ids = [rule.rule_id for rule in (*rules, *emergency)]
    for rule_id in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"rule id {rule_id!r} is used more than once")
    by_recipient: dict[tuple[str, str], Rule] = {}
    for rule in rules:
        key = (rule.event_type, rule.recipient)
        if key in by_recipient:
            problems.append(
                f"rule {rule.rule_id}: duplicate of rule {by_recipient[key].rule_id} "
                f"(both for {rule.event_type} to {rule.recipient})"
            )
        else:
            by_recipient[key] = rule
    by_type: dict[str, Rule] = {}
    for grant in emergency:
        if grant.event_type in by_type:
            problems.append(
                f"emergency grant {grant.rule_id}: duplicate of {by_type[grant.event_type].rule_id}"
                f" (both for {grant.event_type})"
            )
        else:
            by_type[grant.event_type] = grant
    for event_type in EVENT_TYPES:
        if event_type not in by_type and isinstance(document.get("emergency"), list):
            problems.append(f"emergency: no grant for event type {event_type}")
    return Policy(
        version=f"{version}+{digest}",
        rules=MappingProxyType(by_recipient),
        emergency=MappingProxyType(by_type),
    )


def _rules(value: object, problems: list[str]) -> list[Rule]:
    if not isinstance(value, list):
        problems.append("rules must be a list of rules")
        return []
    rules = []
    for index, raw in enumerate(value):
        rule = _entry(raw, f"rules[{index}]", _RULE_KEYS, problems)
        if rule is not None:
            rules.append(rule)
    return rules


def _emergency(value: object, problems: list[str]) -> list[Rule]:
    if not isinstance(value, list):
        problems.append("emergency must be a list of grants, one per event type")
        return []
    grants = []
    for index, raw in enumerate(value):
        grant = _entry(raw, f"emergency[{index}]", _GRANT_KEYS, problems)
        if grant is not None:
            grants.append(grant)
    return grants


def _entry(raw: object, position: str, keys: frozenset[str], problems: list[str]) -> Rule | None:
    """One rule (or emergency grant, when `keys` has no recipient) checked against the ceiling."""
    if not isinstance(raw, dict):
        problems.append(f"{position}: must be a mapping")
        return None
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        problems.append(f"{position}: id is required (a non-empty string)")
        return None
    is_grant = "recipient" not in keys
    name = f"{'emergency grant' if is_grant else 'rule'} {rule_id}"
    before = len(problems)
    for key in raw:
        if key not in keys:
            problems.append(f"{name}: unknown key {key!r} (expected {', '.join(sorted(keys))})")

    event_type: str | None = raw.get("event_type")
    if event_type not in EVENT_TYPES:
        problems.append(
            f"{name}: unknown event type {event_type!r} (expected one of {', '.join(EVENT_TYPES)})"
        )
        event_type = None
    recipient: object
    basis: object
    if is_grant:
        recipient, basis = EMERGENCY, EMERGENCY
    else:
        recipient = raw.get("recipient")
        if recipient not in RECIPIENTS:
            problems.append(
                f"{name}: unknown recipient {recipient!r} "
                f"(expected an agency or {HOME_MUNICIPALITY}: {', '.join(RECIPIENTS)})"
            )
        basis = raw.get("basis")
        if basis not in BASES:
            problems.append(
                f"{name}: unknown basis {basis!r} (expected one of {', '.join(BASES)}; "
                "emergency grants belong in the emergency section)"
            )
    source = raw.get("source")
    if not isinstance(source, str) or not _cites(source):
        problems.append(
            f"{name}: source is missing or empty; cite a sources.md row ('sources.md: <row>') "
            "or give 'carebus-default: <one-line rationale>'"
        )
    categories = _categories(raw.get("categories"), name, event_type, problems)

    if event_type is not None and categories is not None:
        event_category = EVENT_CATEGORY[event_type]
        if event_category not in categories:
            problems.append(
                f"{name}: must grant {event_category!r}, the category of the fact that a "
                f"{event_type} happened (add `{event_category}: []` if no field is needed)"
            )
        if basis == "statutory":
            if event_category != "logistics":
                problems.append(
                    f"{name}: basis statutory is for logistics notices; a {event_type} is "
                    f"{event_category} information"
                )
            wider = [category for category in categories if category != "logistics"]
            if wider:
                problems.append(
                    f"{name}: basis statutory may deliver logistics fields only, "
                    f"not {', '.join(wider)}"
                )
    # The statutory basis is the home municipality's logistics notice and nothing else.
    if basis == "statutory" and recipient in AGENCIES:
        problems.append(f"{name}: basis statutory is only for recipient {HOME_MUNICIPALITY}")
    if recipient == HOME_MUNICIPALITY and basis in BASES and basis != "statutory":
        problems.append(f"{name}: recipient {HOME_MUNICIPALITY} takes basis statutory only")

    if len(problems) > before:
        return None
    assert isinstance(event_type, str)
    assert isinstance(recipient, str)
    assert isinstance(basis, str)
    assert isinstance(source, str)
    assert categories is not None
    return Rule(
        rule_id=rule_id,
        event_type=event_type,
        recipient=recipient,
        basis=basis,
        categories=MappingProxyType(categories),
        source=source.strip(),
    )


def _cites(source: str) -> bool:
    text = source.strip()
    return any(
        text.startswith(prefix) and text[len(prefix) :].strip() for prefix in _SOURCE_PREFIXES
    )


def _categories(
    value: object, name: str, event_type: str | None, problems: list[str]
) -> dict[str, tuple[str, ...]] | None:
    if not isinstance(value, dict) or not value:
        problems.append(f"{name}: categories must map each granted category to a list of fields")
        return None
    granted: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for category, fields in value.items():
        if category not in CATEGORIES:
            problems.append(
                f"{name}: unknown category {category!r} (expected one of {', '.join(CATEGORIES)})"
            )
            continue
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            problems.append(f"{name}: {category} must be a list of field names (or [])")
            continue
        for field_name in fields:
            if field_name in seen:
                problems.append(f"{name}: field {field_name} is listed twice")
            seen.add(field_name)
            if event_type is None:
                continue  # the unknown event type is reported; its fields cannot be checked
            if field_name not in PAYLOAD_FIELDS[event_type]:
                problems.append(
                    f"{name}: unknown field {field_name!r}: not in the {event_type} payload"
                )
                continue
            ceiling = FIELD_CATEGORY.get((event_type, field_name))
            if ceiling != category:
                problems.append(
                    f"{name}: field {field_name} widens its category: DESIGN's field map puts it "
                    f"under {ceiling or 'no category (it may not be delivered)'}, not {category}"
                )
        # Kept in the payload's order, so deliveries list fields the same way whatever the file.
        order = list(PAYLOAD_FIELDS[event_type]) if event_type is not None else []
        granted[category] = tuple(sorted(fields, key=lambda f: order.index(f) if f in order else 0))
    if len(granted) != len(value):
        return None
    return {category: granted[category] for category in CATEGORIES if category in granted}
