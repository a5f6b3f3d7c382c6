"""SLA rules as data and the obligations they create: pure functions over one person's state.

`build_rules` checks the reviewed rule file (policy/sla.yaml) and an optional override of the
same format. `observe` feeds one event of a person's ordered stream into that person's
`SlaState`; `breach_due` breaches what is past its deadline at wall-clock time `now`. Both
return the new state and the `Alert` records to publish (raised or resolved), built by
`carebus.domain.alerts` so that each one says only what routing lets its recipient know.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from carebus.domain.events import EVENT_TYPES, rfc3339

__all__ = [
    "OSLO",
    "Duration",
    "Link",
    "Rule",
    "RuleSet",
    "SlaRulesError",
    "build_rules",
    "parse_duration",
]

OSLO: Final = ZoneInfo("Europe/Oslo")
KINDS: Final = ("deadline", "window", "immediate")
ROLES: Final = ("source", "coordinator", "home_municipality", "unassigned")
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
    """An event that relates to a trigger: its type, the field pair that links them, conditions."""

    event_type: str
    field: str  # on the linking event (`event_id`: its own id)
    trigger_field: str  # on the trigger
    when: Mapping[str, Any] = dataclass_field(default_factory=dict)
    differs: tuple[str, ...] = ()
    present: tuple[str, ...] = ()


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
    before: Link | None
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

    def condition_fields(self) -> tuple[str, ...]:
        """Payload fields the trigger condition reads (`admission.x` reads the admission's x)."""
        return tuple(self.when)


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: str
    rules: tuple[Rule, ...]

    def rule(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.rule_id == rule_id), None)


_RULE_KEYS: Final = frozenset(
    {
        "id",
        "title",
        "neutral_title",
        "kind",
        "trigger",
        "deadline",
        "fulfilled_by",
        "cancelled_by",
        "identity",
        "recipients",
        "audience",
        "contact",
        "escalation",
        "count",
        "window",
        "source",
    }
)

# A misspelt key inside a trigger or link would silently drop a condition (`wen:` for `when:`).
_TRIGGER_KEYS: Final = frozenset({"event_type", "event_types", "when", "emergency"})
_LINK_KEYS: Final = frozenset({"event_type", "link", "when", "differs", "present"})


@dataclass(frozen=True, slots=True)
class RuleFile:
    """A parsed rule file: where it came from, its document, and the bytes it was read from."""

    path: str
    document: object
    raw: bytes


def build_rules(base: RuleFile, override: RuleFile | None = None) -> RuleSet:
    """The checked rules of `base`, with the rules of `override` replacing same-id rules key
    by key (new ids are added). SlaRulesError names every problem found."""
    document = _document(base)
    digest = hashlib.sha256(base.raw).hexdigest()[:12]
    raw_rules = list(document.get("rules") or [])
    version = str(document.get("version", ""))
    if override is not None:
        extra = _document(override)
        extra_digest = hashlib.sha256(override.raw).hexdigest()[:12]
        by_id = {
            rule.get("id"): index for index, rule in enumerate(raw_rules) if isinstance(rule, dict)
        }
        for rule in extra.get("rules") or []:
            if isinstance(rule, dict) and rule.get("id") in by_id:
                index = by_id[rule["id"]]
                raw_rules[index] = {**raw_rules[index], **rule}
            else:
                raw_rules.append(rule)
        digest = hashlib.sha256((digest + extra_digest).encode()).hexdigest()[:12]
    problems: list[str] = []
    rules = [_rule(raw, index, problems) for index, raw in enumerate(raw_rules)]
    ids = [rule.rule_id for rule in rules if rule is not None]
    for rule_id in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"rule {rule_id}: id appears twice")
    if not version:
        problems.append("version: required")
    if problems:
        where = base.path if override is None else f"{base.path} + {override.path}"
        raise SlaRulesError(where, problems)
    return RuleSet(version=f"{version}+{digest}", rules=tuple(r for r in rules if r is not None))


def _document(file: RuleFile) -> dict[str, Any]:
    document = file.document
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise SlaRulesError(file.path, ["the file must be a mapping with a `rules` list"])
    return document


def _rule(raw: object, index: int, problems: list[str]) -> Rule | None:
    if not isinstance(raw, dict):
        problems.append(f"rules[{index}]: must be a mapping")
        return None
    rule_id = raw.get("id")
    name = f"rule {rule_id}" if isinstance(rule_id, str) and rule_id else f"rules[{index}]"
    before = len(problems)

    def problem(text: str) -> None:
        problems.append(f"{name}: {text}")

    for key in sorted(set(raw) - _RULE_KEYS):
        problem(f"unknown key {key!r}")
    if not isinstance(rule_id, str) or not re.fullmatch(r"[a-z0-9_.\-]+", rule_id):
        problem("id must be lower-case letters, digits, '.', '_' or '-'")
    title = raw.get("title")
    if not isinstance(title, str) or not title.strip():
        problem("title: required")
    kind = raw.get("kind")
    if kind not in KINDS:
        problem(f"kind must be one of {', '.join(KINDS)}")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip().startswith(
        ("sources.md:", "carebus-default:")
    ):
        problem("source must cite 'sources.md: …' or 'carebus-default: …'")

    trigger = raw.get("trigger")
    event_types: tuple[str, ...] = ()
    when: dict[str, Any] = {}
    emergency = False
    if not isinstance(trigger, dict):
        problem("trigger: required mapping")
    else:
        for key in sorted(set(trigger) - _TRIGGER_KEYS):
            problem(f"trigger: unknown key {key!r}")
        listed = trigger.get(
            "event_types", [trigger["event_type"]] if "event_type" in trigger else []
        )
        event_types = tuple(listed) if isinstance(listed, list) else ()
        emergency = trigger.get("emergency") is True
        when = dict(trigger.get("when") or {})
        for event_type in event_types:
            if event_type not in EVENT_TYPES:
                problem(f"trigger: unknown event type {event_type!r}")
        if not event_types and not emergency:
            problem("trigger: needs event_type, event_types or emergency: true")

    deadline: Duration | None = None
    deadline_kind = "none"
    deadline_field: str | None = None
    before_link: Link | None = None
    spec = raw.get("deadline")
    if kind == "deadline":
        if spec == "end_of_day":
            deadline_kind = "end_of_day"
        elif isinstance(spec, str):
            deadline = _duration(spec, "deadline", problem)
            deadline_kind = "duration"
        elif isinstance(spec, dict) and "field" in spec:
            deadline_kind, deadline_field = "field", str(spec["field"])
        elif isinstance(spec, dict) and "before" in spec:
            deadline_kind = "before"
            before_link = _link(spec["before"], "deadline.before", problem)
        else:
            problem("deadline: an ISO 8601 duration, end_of_day, {field: …} or {before: …}")
    fulfilled = tuple(
        link
        for position, item in enumerate(raw.get("fulfilled_by") or [])
        if (link := _link(item, f"fulfilled_by[{position}]", problem)) is not None
    )
    cancelled = tuple(
        link
        for position, item in enumerate(raw.get("cancelled_by") or [])
        if (link := _link(item, f"cancelled_by[{position}]", problem)) is not None
    )
    if kind == "deadline" and not fulfilled:
        problem("fulfilled_by: a deadline rule needs at least one fulfilling event")
    recipients_raw = raw.get("recipients")
    recipients: list[tuple[str, ...]] = []
    if not isinstance(recipients_raw, list) or not recipients_raw:
        problem("recipients: a list of fallback chains such as [[coordinator, unassigned]]")
    else:
        for chain in recipients_raw:
            chain_list = chain if isinstance(chain, list) else [chain]
            for role in chain_list:
                if role not in ROLES:
                    problem(f"recipients: unknown role {role!r} (one of {', '.join(ROLES)})")
            recipients.append(tuple(str(role) for role in chain_list))
    audience = raw.get("audience", "coordinator")
    if audience not in ("coordinator", "privacy_officer"):
        problem("audience must be coordinator or privacy_officer")
    contact = raw.get("contact", "source")
    if contact not in ("source", "home_municipality"):
        problem("contact must be source or home_municipality")
    escalation = _duration(raw.get("escalation", "PT24H"), "escalation", problem)
    count = raw.get("count", 0)
    window: Duration | None = None
    if kind == "window":
        if not isinstance(count, int) or count < 2:
            problem("count: a window rule needs a count of at least 2")
        window = _duration(raw.get("window"), "window", problem)
    identity = raw.get("identity", ["event_id"])
    if not isinstance(identity, list) or not identity:
        problem("identity: a list of trigger fields")
        identity = ["event_id"]
    if len(problems) > before:
        return None
    assert isinstance(rule_id, str)
    assert isinstance(title, str)
    assert isinstance(source, str)
    assert escalation is not None
    return Rule(
        rule_id=rule_id,
        title=title.strip(),
        neutral_title=str(raw.get("neutral_title") or title).strip(),
        kind=str(kind),
        event_types=event_types,
        when=when,
        emergency=emergency,
        deadline=deadline,
        deadline_kind=deadline_kind,
        deadline_field=deadline_field,
        before=before_link,
        fulfilled_by=fulfilled,
        cancelled_by=cancelled,
        identity=tuple(str(name) for name in identity),
        recipients=tuple(recipients),
        audience=str(audience),
        contact=str(contact),
        escalation=escalation,
        count=int(count) if isinstance(count, int) else 0,
        window=window,
        source=source.strip(),
    )


def _duration(value: object, name: str, problem: Any) -> Duration | None:
    try:
        return parse_duration(value)  # type: ignore[arg-type]
    except ValueError as exc:
        problem(f"{name}: {exc}")
        return None


def _link(raw: object, name: str, problem: Any) -> Link | None:
    if not isinstance(raw, dict) or raw.get("event_type") not in EVENT_TYPES:
        problem(f"{name}: needs a known event_type")
        return None
    for key in sorted(set(raw) - _LINK_KEYS):
        problem(f"{name}: unknown key {key!r}")
    link = raw.get("link")
    if not isinstance(link, dict) or len(link) != 1:
        problem(f"{name}: link must map one field of the event to one field of the trigger")
        return None
    ((own, theirs),) = link.items()
    return Link(
        event_type=str(raw["event_type"]),
        field=str(own),
        trigger_field=str(theirs),
        when=dict(raw.get("when") or {}),
        differs=tuple(raw.get("differs") or ()),
        present=tuple(raw.get("present") or ()),
    )


# --- evaluating events against rules (pure) -------------------------------------------------


def value_of(event: Mapping[str, Any], name: str) -> Any:
    """A trigger or fulfilment field: `event_id` or a payload field (JSON form)."""
    if name == "event_id":
        return event.get("event_id")
    return (event.get("payload") or {}).get(name)


def matches_when(
    when: Mapping[str, Any], event: Mapping[str, Any], admissions: Mapping[str, Any]
) -> bool:
    """Whether every condition holds; `admission.x` reads the linked admission's field x."""
    for name, wanted in when.items():
        if name.startswith("admission."):
            linked = admissions.get(str(value_of(event, "admission_event_id")))
            actual = None if linked is None else linked.get(name.split(".", 1)[1])
            if linked is None:
                return False
        else:
            actual = value_of(event, name)
        if actual != wanted:
            return False
    return True


def links_to(link: Link, event: Mapping[str, Any], trigger: Mapping[str, Any]) -> bool:
    """Whether `event` is `link`'s kind of event for `trigger`."""
    if event.get("event_type") != link.event_type:
        return False
    own = value_of(event, link.field)
    if own is None or own != value_of(trigger, link.trigger_field):
        return False
    if not matches_when(link.when, event, {}):
        return False
    if any(value_of(event, name) is None for name in link.present):
        return False
    return all(value_of(event, name) != value_of(trigger, name) for name in link.differs)


def deadline_of(rule: Rule, trigger: Mapping[str, Any]) -> datetime | None:
    """The trigger's deadline, or None while it waits for another event (`before`)."""
    occurred = parse_rfc3339(trigger["occurred_at"])
    if rule.deadline_kind == "duration" and rule.deadline is not None:
        return rule.deadline.after(occurred)
    if rule.deadline_kind == "end_of_day":
        return end_of_day(occurred)
    if rule.deadline_kind == "field" and rule.deadline_field:
        value = value_of(trigger, rule.deadline_field)
        return parse_rfc3339(value) if isinstance(value, str) else None
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
