"""The routing policy: DESIGN's field ceiling, and the builder that refuses a policy beyond it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Final

from carebus.domain.agencies import AGENCIES
from carebus.domain.events import (
    BRUKERPLAN_DOMAINS,
    BRUKERPLAN_HEALTH_DOMAINS,
    EVENT_TYPES,
    PAYLOAD_FIELDS,
    POLICY_EVENT_TYPES,
)

__all__ = [
    "BASES",
    "CATEGORIES",
    "EMERGENCY",
    "EVENT_CATEGORY",
    "FIELD_CATEGORY",
    "HOME_MUNICIPALITY",
    "RECIPIENTS",
    "SOURCE_PREFIXES",
    "Policy",
    "PolicyError",
    "Rule",
    "build_policy",
    "cites",
]

# `justice`: that a person was in prison and when released (GDPR art. 10); its own category,
# added last, so that no consent given before it existed covers it.
CATEGORIES: Final = ("logistics", "health", "social", "police", "justice")
# The bases a rule may name; `emergency` is granted in its own section, never per recipient.
BASES: Final = ("statutory", "presumed", "consent")
EMERGENCY: Final = "emergency"
HOME_MUNICIPALITY: Final = "home_municipality"
RECIPIENTS: Final = (*AGENCIES, HOME_MUNICIPALITY)

# The statutory notice is logistics, with these exceptions the regulation names: the
# municipality is to be told when a patient will have no suitable housing (FOR-2011-11-18-1115,
# as cited in Dokument 8:130 S's answer; sources.md "Legal basis by recipient").
STATUTORY_SOCIAL: Final = frozenset(
    {("admission", "housing_status"), ("discharge_ready", "housing_status")}
)

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
        # dps_contact: whom to contact at the DPS, the practical part of a notice.
        "discharge": ("admission_event_id", "destination", "followup_at", "dps_contact"),
        "ip_update": ("plan_id", "status", "coordinator", "participants", "next_review_at"),
        "health_info_sent": ("admission_event_id",),
        "municipal_reply": ("discharge_ready_event_id", "can_receive", "expected_ready_at"),
        "housing_work_started": ("admission_event_id", "related_event_id"),
        "epikrise_sent": ("admission_event_id",),
        # An id link to the discharge or incident followed up, not what happened there.
        "followup_contact": ("related_event_id",),
        "application_received": ("application_id", "service", "service_kind"),
        "application_preliminary_reply": ("application_id", "expected_decision_at"),
        "application_decided": ("application_id", "outcome"),
        "followup_scheduled": ("related_event_id", "followup_at", "with_org"),
        # When the survey was taken, not what it found.
        "brukerplan_assessment": ("assessment_year",),
        # An id link to the check that found the referral needed, not what it found.
        "somatic_referral": ("related_event_id",),
    },
    "health": {
        "admission": ("reason", "admission_kind"),
        # A self-discharge or one against advice is clinical information; so is a crisis plan
        # and, with it, which plan and when it was last reviewed.
        "discharge": (
            "crisis_plan",
            "kind",
            "crisis_plan_id",
            "crisis_plan_reviewed_at",
            "crisis_plan_owner",
        ),
        "ip_update": (
            "crisis_plan",
            "crisis_plan_id",
            "crisis_plan_reviewed_at",
            "crisis_plan_owner",
        ),
        "epikrise_sent": ("recipient_org",),
        "followup_contact": ("kind",),
        # Which treatment was broken off, how and when the patient was last seen: clinical.
        "treatment_interrupted": ("treatment_id", "kind", "last_contact_at"),
        "brukerplan_assessment": BRUKERPLAN_HEALTH_DOMAINS,
        # Physical health: what was checked, whether a referral is needed, where it went.
        "somatic_check_done": ("kind", "referral_needed"),
        "somatic_referral": ("referral_id", "to"),
    },
    "social": {
        "admission": ("housing_status",),
        "discharge_ready": ("housing_status",),
        "prison_release": ("housing_status",),
        # The housing pathway: where a person lives, waits or is about to lose a home.
        "housing_waitlisted": ("application_id", "housing_kind", "position"),
        "temporary_housing_started": ("stay_id", "housing_kind", "housing_unit_id"),
        "temporary_housing_ended": ("stay_id", "outcome"),
        "tenancy_at_risk": ("cause", "eviction_at", "housing_unit_id"),
        # The five life domains outside health (housing, activity, finances, social, network).
        "brukerplan_assessment": tuple(
            d for d in BRUKERPLAN_DOMAINS if d not in BRUKERPLAN_HEALTH_DOMAINS
        ),
        "housing_incident": ("kind", "severity", "housing_unit_id", "housing_site_id"),
    },
    "police": {
        "police_callout": (
            "kind",
            "injuries",
            "location_type",
            "housing_unit_id",
            "housing_site_id",
        ),
    },
    # Every field of a release says the person was in prison.
    "justice": {
        "prison_release": ("release_at", "home_municipality_org", "needs_municipal_services"),
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
            # That a treatment was broken off says the person was in treatment.
            "treatment_interrupted": "health",
            "prison_release": "justice",
            "housing_waitlisted": "social",
            "temporary_housing_started": "social",
            "temporary_housing_ended": "social",
            "tenancy_at_risk": "social",
            # Being mapped at all says the person receives mental-health or substance services.
            "brukerplan_assessment": "health",
            # That a somatic check or referral happened is itself health information.
            "somatic_check_done": "health",
            "somatic_referral": "health",
        }.get(event_type, "logistics")
        for event_type in EVENT_TYPES
    }
)

# A rule's source cites a row of sources.md or gives carebus's own one-line rationale.
SOURCE_PREFIXES: Final = ("sources.md:", "carebus-default:")


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

    def by_id(self, rule_id: object) -> Rule | None:
        """The rule or emergency grant with id `rule_id` (what an audit record names)."""
        return next(
            (r for r in (*self.rules.values(), *self.emergency.values()) if r.rule_id == rule_id),
            None,
        )


def cites(source: str) -> bool:
    """Whether `source` cites a sources.md row or gives a carebus-default rationale."""
    text = source.strip()
    return any(
        text.startswith(prefix) and text[len(prefix) :].strip() for prefix in SOURCE_PREFIXES
    )


def build_policy(
    version: str,
    rules: Sequence[Rule],
    emergency: Sequence[Rule] | None,
    *,
    digest: str,
    path: Path | str,
    refused: Sequence[str] = (),
) -> Policy:
    """The checked policy of a file's rules and emergency grants, read by `carebus.wire`.

    The wire has checked each entry's shape: known keys, a known event type, recipient, basis
    and categories, a cited source. This checks what they mean: each against DESIGN's field
    ceiling, no two for one event type and recipient, a grant for every event type (unless
    `emergency` is None, a section the file got wrong). PolicyError names every problem, those
    `refused` by the wire first; a rule with a problem is left out of the checks across rules.
    """
    problems = list(refused)
    checked = [rule for rule in (_checked(r, problems) for r in rules) if rule is not None]
    grants = [
        grant for grant in (_checked(g, problems) for g in emergency or ()) if grant is not None
    ]
    ids = [rule.rule_id for rule in (*checked, *grants)]
    for rule_id in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"rule id {rule_id!r} is used more than once")
    by_recipient: dict[tuple[str, str], Rule] = {}
    for rule in checked:
        key = (rule.event_type, rule.recipient)
        if key in by_recipient:
            problems.append(
                f"rule {rule.rule_id}: duplicate of rule {by_recipient[key].rule_id} "
                f"(both for {rule.event_type} to {rule.recipient})"
            )
        else:
            by_recipient[key] = rule
    by_type: dict[str, Rule] = {}
    for grant in grants:
        if grant.event_type in by_type:
            problems.append(
                f"emergency grant {grant.rule_id}: duplicate of {by_type[grant.event_type].rule_id}"
                f" (both for {grant.event_type})"
            )
        else:
            by_type[grant.event_type] = grant
    # A retraction is never an emergency: it reaches only those who got the retracted event.
    for event_type in POLICY_EVENT_TYPES:
        if event_type not in by_type and emergency is not None:
            problems.append(f"emergency: no grant for event type {event_type}")
    if problems:
        raise PolicyError(path, problems)
    return Policy(
        version=f"{version}+{digest}",
        rules=MappingProxyType(by_recipient),
        emergency=MappingProxyType(by_type),
    )


def _checked(rule: Rule, problems: list[str]) -> Rule | None:
    """`rule` (or emergency grant) checked against the ceiling, its fields in payload order."""
    name = f"{'emergency grant' if rule.basis == EMERGENCY else 'rule'} {rule.rule_id}"
    before = len(problems)
    fields = PAYLOAD_FIELDS[rule.event_type]
    seen: set[str] = set()
    for category, names in rule.categories.items():
        for field_name in names:
            if field_name in seen:
                problems.append(f"{name}: field {field_name} is listed twice")
            seen.add(field_name)
            if field_name not in fields:
                problems.append(
                    f"{name}: unknown field {field_name!r}: not in the {rule.event_type} payload"
                )
                continue
            ceiling = FIELD_CATEGORY.get((rule.event_type, field_name))
            if ceiling != category:
                problems.append(
                    f"{name}: field {field_name} widens its category: DESIGN's field map puts it "
                    f"under {ceiling or 'no category (it may not be delivered)'}, not {category}"
                )
    event_category = EVENT_CATEGORY[rule.event_type]
    if event_category not in rule.categories:
        problems.append(
            f"{name}: must grant {event_category!r}, the category of the fact that a "
            f"{rule.event_type} happened (add `{event_category}: []` if no field is needed)"
        )
    if rule.basis == "statutory":
        if event_category != "logistics":
            problems.append(
                f"{name}: basis statutory is for logistics notices; a {rule.event_type} is "
                f"{event_category} information"
            )
        wider = sorted(
            {
                category
                for category, names in rule.categories.items()
                if category != "logistics"
                and (not names or any((rule.event_type, n) not in STATUTORY_SOCIAL for n in names))
            }
        )
        if wider:
            problems.append(
                f"{name}: basis statutory may deliver logistics fields only (and a patient's "
                f"housing status on admission and discharge-ready), not {', '.join(wider)}"
            )
        # The statutory basis is the home municipality's logistics notice and nothing else.
        if rule.recipient != HOME_MUNICIPALITY:
            problems.append(f"{name}: basis statutory is only for recipient {HOME_MUNICIPALITY}")
    elif rule.recipient == HOME_MUNICIPALITY:
        problems.append(f"{name}: recipient {HOME_MUNICIPALITY} takes basis statutory only")
    if len(problems) > before:
        return None
    # Kept in the payload's order, so deliveries list fields the same way whatever the file.
    order = list(fields)
    return replace(
        rule,
        categories=MappingProxyType(
            {
                category: tuple(sorted(rule.categories[category], key=order.index))
                for category in CATEGORIES
                if category in rule.categories
            }
        ),
    )
