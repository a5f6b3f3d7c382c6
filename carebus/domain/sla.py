"""SLA rules as data and the obligations they create: pure functions over one person's state.

`build_rules` makes the rule set of the reviewed rule file (policy/sla.yaml, read by
`carebus.wire.policy_files`). `observe` feeds one event of a person's ordered stream into that
person's `SlaState`; `breach_due` breaches what is past its deadline at wall-clock time `now`. Both
return the new state and the `Alert` records to publish (raised or resolved), built by
`carebus.domain.alerts` so that each one says only what routing lets its recipient know.
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from carebus.domain.events import PAYLOAD_FIELDS, rfc3339

__all__ = [
    "OSLO",
    "SUBJECT",
    "Duration",
    "Link",
    "Rule",
    "RuleSet",
    "SlaRulesError",
    "build_rules",
    "parse_duration",
]

OSLO: Final = ZoneInfo("Europe/Oslo")
# The symbols that stand for an optional enum left out in a wire record (`FieldSpec.absent`).
_ABSENT_SYMBOLS: Final = frozenset(
    spec.absent for fields in PAYLOAD_FIELDS.values() for spec in fields.values() if spec.absent
)
KINDS: Final = ("deadline", "window", "immediate")
ROLES: Final = (
    "source",
    "coordinator",
    "municipal_coordinator",
    "pathway_coordinator",
    "home_municipality",
    "gp",
    "unassigned",
)
# Whom a rule counted per place (`scope: place`) alerts: the place's owner (a housing
# organisation) and its municipality, as the registry's housing_places records them.
PLACE_ROLES: Final = ("housing_owner", "place_municipality", "unassigned")
SCOPES: Final = ("person", "place")
AUDIENCES: Final = ("coordinator", "privacy_officer")
CONTACTS: Final = ("source", "home_municipality")
# `link: subject`: the linked event is any other event of the same person (the trigger's
# subject_key), whatever its payload says; a `Link` whose field and trigger field are both this.
SUBJECT: Final = "subject"
_DURATION: Final = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class SlaRulesError(Exception):
    """The rule file is unreadable or wrong; `problems` names each rule and field."""

    def __init__(self, path: Path | str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"SLA rules {path} refused: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class Duration:
    """An ISO 8601 duration: calendar part (Oslo wall clock) and exact part (seconds)."""

    text: str
    months: int = 0
    days: int = 0
    seconds: float = 0.0

    def after(self, moment: datetime) -> datetime:
        """`moment` plus this duration: years, months, weeks and days on the Oslo calendar."""
        result = moment
        if self.months or self.days:
            local = moment.astimezone(OSLO)
            month_index = local.month - 1 + self.months
            year = local.year + month_index // 12
            month = month_index % 12 + 1
            day = min(local.day, calendar.monthrange(year, month)[1])
            wall = local.replace(tzinfo=None, year=year, month=month, day=day)
            wall += timedelta(days=self.days)
            result = wall.replace(tzinfo=OSLO)
        # Exact time is added in UTC: arithmetic on a zoned datetime moves its wall clock.
        return result.astimezone(UTC) + timedelta(seconds=self.seconds)


def parse_duration(text: str) -> Duration:
    """`PT4H`, `P7D`, `P1M`, `PT2.5S` …; ValueError naming the text otherwise."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if match is None or text.strip() in ("P", "PT") or text.strip().endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT4H or P7D")
    part = {name: float(value) if value else 0.0 for name, value in match.groupdict().items()}
    return Duration(
        text=text.strip(),
        months=int(part["years"]) * 12 + int(part["months"]),
        days=int(part["weeks"]) * 7 + int(part["days"]),
        seconds=part["hours"] * 3600 + part["minutes"] * 60 + part["seconds"],
    )


def end_of_day(moment: datetime) -> datetime:
    """The end of `moment`'s calendar day in Oslo (the next local midnight), in UTC."""
    local = moment.astimezone(OSLO)
    midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=OSLO)
    return midnight.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Link:
    """An event that relates to a trigger: its type, the field pair that links them, conditions.

    `subject`/`subject` (SUBJECT) links any other event of the trigger's person."""

    event_type: str
    field: str  # on the linking event (`event_id`: its own id; SUBJECT: see above)
    trigger_field: str  # on the trigger
    when: Mapping[str, Any] = dataclass_field(default_factory=dict)
    differs: tuple[str, ...] = ()
    present: tuple[str, ...] = ()
    # Only an event that occurred this long after the trigger or later links (a follow-up that
    # must still run a month on): None links any.
    not_before: Duration | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One SLA rule of the file (see policy/sla.yaml for what each key means)."""

    rule_id: str
    title: str
    neutral_title: str
    kind: str
    event_types: tuple[str, ...]
    when: Mapping[str, Any]
    emergency: bool
    deadline: Duration | None
    deadline_kind: str  # duration | end_of_day | field | before | none
    deadline_field: str | None
    before: tuple[Link, ...]  # the deadline is when the first of these events happened
    fulfilled_by: tuple[Link, ...]
    cancelled_by: tuple[Link, ...]
    identity: tuple[str, ...]
    recipients: tuple[tuple[str, ...], ...]
    audience: str
    contact: str
    escalation: Duration
    count: int
    window: Duration | None
    source: str
    # Trigger fields that must be present (not null) for the rule to apply.
    present: tuple[str, ...] = ()
    # A `field` deadline: added to the field's time; used from the trigger's time when the
    # trigger lacks the field (None: then there is no deadline).
    deadline_plus: Duration | None = None
    deadline_fallback: Duration | None = None
    # Deadline rules of one group that one event triggers open one obligation between them:
    # the one with the earliest deadline (ties: file order).
    group: str | None = None
    # Why the obligation exists, one sentence, shown to a recipient that may know the details.
    why: str | None = None
    # One obligation per identity, ever (as long as it is remembered): a later trigger with the
    # identity of a settled or breached one opens none (the first somatic check of a plan).
    once: bool = False
    # What a window rule counts over: one person's events, or the events at one place
    # (carebus.domain.places).
    scope: str = "person"

    def condition_fields(self) -> tuple[str, ...]:
        """Payload fields the trigger condition reads (`admission.x` reads the admission's x,
        `person.brukerplan.x` the person's latest Brukerplan assessment's x)."""
        return tuple(self.when) + self.present


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: str
    rules: tuple[Rule, ...]

    def rule(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.rule_id == rule_id), None)


def build_rules(
    version: str, rules: Sequence[Rule], *, digest: str, path: str, refused: Sequence[str] = ()
) -> RuleSet:
    """The rule set of a rule file's rules, read by `carebus.wire` (which has checked each
    rule's keys, durations, event types, links and roles, and merged an override's rules).

    SlaRulesError names every problem, those `refused` by the wire first: a version, and
    every id used once."""
    problems = list(refused)
    ids = [rule.rule_id for rule in rules]
    for rule_id in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"rule {rule_id}: id appears twice")
    if not version:
        problems.append("version: required")
    if problems:
        raise SlaRulesError(path, problems)
    return RuleSet(version=f"{version}+{digest}", rules=tuple(rules))


# --- evaluating events against rules (pure) -------------------------------------------------


def value_of(event: Mapping[str, Any], name: str) -> Any:
    """A trigger or fulfilment field: `event_id` or a payload field (JSON form); a field left
    out reads as null, also where the wire record holds its `absent` symbol (a discharge's
    `kind` left out is `unknown` in the record)."""
    if name == "event_id":
        return event.get("event_id")
    value = (event.get("payload") or {}).get(name)
    if isinstance(value, str) and value in _ABSENT_SYMBOLS:
        spec = PAYLOAD_FIELDS.get(str(event.get("event_type")), {}).get(name)
        if spec is not None and value == spec.absent:
            return None
    return value


# The person facts a condition may read (`person.<fact>.<name>`): the latest Brukerplan scores.
BRUKERPLAN: Final = "person.brukerplan."


def latest_brukerplan(person: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The person's latest Brukerplan assessment the engine keeps (by occurred_at; ties: the
    later kept): {event_id, source_org, occurred_at, scores}; None when it keeps none."""
    kept: list[Mapping[str, Any]] = person.get("brukerplan") or []
    if not kept:
        return None
    latest: Mapping[str, Any] = max(
        reversed(kept), key=lambda entry: parse_rfc3339(entry["occurred_at"])
    )
    return latest


def person_value(person: Mapping[str, Any], name: str) -> Any:
    """The person fact `name` reads (`person.brukerplan.housing`: the latest housing score);
    null when the engine keeps none."""
    if name.startswith(BRUKERPLAN):
        latest = latest_brukerplan(person)
        return None if latest is None else latest["scores"].get(name.removeprefix(BRUKERPLAN))
    return None


def matches_when(
    when: Mapping[str, Any],
    event: Mapping[str, Any],
    admissions: Mapping[str, Any],
    person: Mapping[str, Any] | None = None,
) -> bool:
    """Whether every condition holds; `admission.x` reads the linked admission's field x,
    `person.brukerplan.x` the person's latest Brukerplan score x. A condition's value is one
    value (null: the field is absent) or a list of them (any one)."""
    for name, wanted in when.items():
        if name.startswith("admission."):
            linked = admissions.get(str(value_of(event, "admission_event_id")))
            actual = None if linked is None else linked.get(name.split(".", 1)[1])
            if linked is None:
                return False
        elif name.startswith("person."):
            actual = person_value(person or {}, name)
        else:
            actual = value_of(event, name)
        if actual not in (wanted if isinstance(wanted, list | tuple) else (wanted,)):
            return False
    return True


def links_to(link: Link, event: Mapping[str, Any], trigger: Mapping[str, Any]) -> bool:
    """Whether `event` is `link`'s kind of event for `trigger`."""
    if event.get("event_type") != link.event_type:
        return False
    if link.field == SUBJECT:
        if not _same_person(event, trigger):
            return False
    else:
        own = value_of(event, link.field)
        if own is None or own != value_of(trigger, link.trigger_field):
            return False
    if not matches_when(link.when, event, {}):
        return False
    if any(value_of(event, name) is None for name in link.present):
        return False
    if link.not_before is not None and not _late_enough(link.not_before, event, trigger):
        return False
    return all(value_of(event, name) != value_of(trigger, name) for name in link.differs)


def _late_enough(wait: Duration, event: Mapping[str, Any], trigger: Mapping[str, Any]) -> bool:
    """Whether `event` occurred `wait` after the trigger or later (a time it lacks: no)."""
    occurred, started = event.get("occurred_at"), trigger.get("occurred_at")
    if not isinstance(occurred, str) or not isinstance(started, str):
        return False
    return parse_rfc3339(occurred) >= wait.after(parse_rfc3339(started))


def _same_person(event: Mapping[str, Any], trigger: Mapping[str, Any]) -> bool:
    """Whether `event` is another event of the trigger's person. Never the trigger itself: a
    check that opens the next yearly check's obligation does not also fulfil it."""
    person = event.get("subject_key")
    if person is None or person != trigger.get("subject_key"):
        return False
    return _sent(event) != _sent(trigger)


def _sent(event: Mapping[str, Any]) -> tuple[Any, Any]:
    # Event ids are unique per sender only.
    return event.get("event_id"), (event.get("source") or {}).get("org_id")


def deadline_of(rule: Rule, trigger: Mapping[str, Any]) -> datetime | None:
    """The trigger's deadline, or None while it waits for another event (`before`)."""
    occurred = parse_rfc3339(trigger["occurred_at"])
    if rule.deadline_kind == "duration" and rule.deadline is not None:
        return rule.deadline.after(occurred)
    if rule.deadline_kind == "end_of_day":
        return end_of_day(occurred)
    if rule.deadline_kind == "field" and rule.deadline_field:
        value = value_of(trigger, rule.deadline_field)
        if not isinstance(value, str):
            fallback = rule.deadline_fallback
            return None if fallback is None else fallback.after(occurred)
        moment = parse_rfc3339(value)
        return moment if rule.deadline_plus is None else rule.deadline_plus.after(moment)
    return None


@functools.lru_cache(maxsize=1 << 16)
def parse_rfc3339(text: str) -> datetime:
    # Cached: the SLA engine reads the same deadlines and event times of a person's state on
    # every event of that person (a third of a million calls per 10,000 events).
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return rfc3339(moment)


def replace_rule(rule: Rule, **changes: Any) -> Rule:
    """A copy of `rule` with some keys changed (tests shorten durations this way)."""
    return replace(rule, **changes)
