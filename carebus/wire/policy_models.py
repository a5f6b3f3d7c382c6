"""The reviewed policy files' formats as pydantic models: policy/routing.yaml and policy/sla.yaml.

A model declares which keys a file, a rule and each of its parts have and what each holds (a
known event type, recipient, basis, category or role; a cited source; an ISO 8601 duration), and
refuses any other key. What the typed rules then mean is the domain's to judge
(`domain.policy.build_policy`: DESIGN's field ceiling; `domain.sla.build_rules`: one rule per
id). Every problem of a file is reported at once, named as reviewers read them: `rule
admission.nav: unknown basis 'maybe' (...)` for the routing policy, `rule epikrise.after_discharge:
deadline: '7 days' is not an ISO 8601 duration ...` (the field path after the rule) for SLA
rules. A rule refused here is left out of the domain's checks across rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from carebus.domain import policy, sla
from carebus.domain.events import BRUKERPLAN_DOMAINS, EVENT_TYPES, PAYLOAD_FIELDS
from carebus.wire.requests import REFUSED, field_path, refused

__all__ = [
    "EmergencyGrant",
    "RoutingPolicyFile",
    "RoutingRule",
    "SlaRule",
    "SlaRuleFile",
    "routing_policy",
    "sla_rules",
]

M = TypeVar("M", bound=BaseModel)


class _FileModel(BaseModel):
    """Part of a reviewed file: YAML's own types only (no "3" for 3), and no key it does not
    know (a misspelt `wen:` for `when:` would silently drop a condition)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)


def _one_of(symbols: Sequence[str], problem: Callable[[object], str]) -> AfterValidator:
    def check(value: str) -> str:
        if value not in symbols:
            raise refused(problem(value))
        return value

    return AfterValidator(check)


def _unknown_event_type(value: object) -> str:
    return f"unknown event type {value!r} (expected one of {', '.join(EVENT_TYPES)})"


EventType = Annotated[str, _one_of(EVENT_TYPES, _unknown_event_type)]


# --- policy/routing.yaml ---------------------------------------------------------------------

_ROUTING_FILE: Final = "the file must be a mapping with version, rules and emergency"
_VERSION: Final = "version must be a non-empty quoted string"
_RULES: Final = "rules must be a list of rules"
_EMERGENCY: Final = "emergency must be a list of grants, one per event type"
_ID: Final = "id is required (a non-empty string)"
_SOURCE: Final = (
    "source is missing or empty; cite a sources.md row ('sources.md: <row>') "
    "or give 'carebus-default: <one-line rationale>'"
)
_CATEGORIES: Final = "categories must map each granted category to a list of fields"


def _unknown_recipient(value: object) -> str:
    return (
        f"unknown recipient {value!r} (expected an agency or {policy.HOME_MUNICIPALITY}: "
        f"{', '.join(policy.RECIPIENTS)})"
    )


def _unknown_basis(value: object) -> str:
    return (
        f"unknown basis {value!r} (expected one of {', '.join(policy.BASES)}; "
        "emergency grants belong in the emergency section)"
    )


def _unknown_category(value: object) -> str:
    return f"unknown category {value!r} (expected one of {', '.join(policy.CATEGORIES)})"


def _non_empty(problem: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value.strip():
            raise refused(problem)
        return value

    return AfterValidator(check)


def _cited(value: str) -> str:
    if not policy.cites(value):
        raise refused(_SOURCE)
    return value.strip()


# What a field's refusal says whatever pydantic found (absent, not a string, …), given the value.
_ROUTING_PROBLEMS: Final[Mapping[str, Callable[[object], str]]] = {
    "event_type": _unknown_event_type,
    "recipient": _unknown_recipient,
    "basis": _unknown_basis,
    "source": lambda _: _SOURCE,
    "categories": lambda _: _CATEGORIES,
}

Category = Annotated[str, _one_of(policy.CATEGORIES, _unknown_category)]
# Each granted category and the payload fields it lets through (possibly none).
Categories = Annotated[dict[Category, list[str]], Field(min_length=1)]


class EmergencyGrant(_FileModel):
    """What anyone may learn of one event type in an emergency, and why."""

    id: Annotated[str, _non_empty(_ID)]
    event_type: EventType
    categories: Categories
    source: Annotated[str, AfterValidator(_cited)]

    def rule(self) -> policy.Rule:
        return _rule(self, policy.EMERGENCY, policy.EMERGENCY)


class RoutingRule(_FileModel):
    """What one recipient may learn of one event type, on which basis, and why."""

    id: Annotated[str, _non_empty(_ID)]
    event_type: EventType
    recipient: Annotated[str, _one_of(policy.RECIPIENTS, _unknown_recipient)]
    basis: Annotated[str, _one_of(policy.BASES, _unknown_basis)]
    categories: Categories
    source: Annotated[str, AfterValidator(_cited)]

    def rule(self) -> policy.Rule:
        return _rule(self, self.recipient, self.basis)


def _rule(entry: EmergencyGrant | RoutingRule, recipient: str, basis: str) -> policy.Rule:
    return policy.Rule(
        rule_id=entry.id,
        event_type=entry.event_type,
        recipient=recipient,
        basis=basis,
        categories=MappingProxyType({name: tuple(f) for name, f in entry.categories.items()}),
        source=entry.source,
    )


class RoutingPolicyFile(_FileModel):
    """policy/routing.yaml: its version, the rules per recipient and the emergency grants."""

    version: Annotated[str, _non_empty(_VERSION)]
    rules: list[RoutingRule]
    emergency: list[EmergencyGrant]


def routing_policy(document: object, *, digest: str, path: str) -> policy.Policy:
    """The checked policy of a parsed policy/routing.yaml; PolicyError names every problem."""
    try:
        file = RoutingPolicyFile.model_validate(document)
    except ValidationError as error:
        return _refused_policy(document, error, digest=digest, path=path)
    return policy.build_policy(
        file.version,
        [rule.rule() for rule in file.rules],
        [grant.rule() for grant in file.emergency],
        digest=digest,
        path=path,
    )


def _refused_policy(
    document: object, error: ValidationError, *, digest: str, path: str
) -> policy.Policy:
    """PolicyError with the problems of `error`, and those the domain finds in the entries
    that are sound (as every problem of a file is reported at once)."""
    lines = error.errors()
    refused_at = {tuple(line["loc"][:2]) for line in lines}
    sections = document if isinstance(document, dict) else {}
    rules = _sound(RoutingRule, sections.get("rules"), "rules", refused_at)
    grants = sections.get("emergency")
    return policy.build_policy(
        "",
        [rule.rule() for rule in rules],
        # No grant is missing from a section that is not a list at all.
        [g.rule() for g in _sound(EmergencyGrant, grants, "emergency", refused_at)]
        if isinstance(grants, list)
        else None,
        digest=digest,
        path=path,
        refused=list(dict.fromkeys(_routing_problem(line, sections) for line in lines)),
    )


def _sound(model: type[M], entries: object, section: str, refused_at: set[Any]) -> list[M]:
    if not isinstance(entries, list):
        return []
    return [
        model.model_validate(entry)
        for index, entry in enumerate(entries)
        if (section, index) not in refused_at
    ]


def _routing_problem(line: Any, document: Mapping[str, Any]) -> str:
    loc, kind = line["loc"], line["type"]
    if not loc:
        return _ROUTING_FILE
    if len(loc) == 1:
        if kind == "extra_forbidden":
            return f"unknown top-level key {loc[0]!r} (expected version, rules, emergency)"
        return {"version": _VERSION, "rules": _RULES, "emergency": _EMERGENCY}[loc[0]]
    section, index, *inside = loc
    position = f"{section}[{index}]"
    if not inside:
        return f"{position}: must be a mapping"
    if inside[0] == "id":
        return f"{position}: {_ID}"
    rule_id = document[section][index].get("id")
    grant = section == "emergency"
    name = (
        f"{'emergency grant' if grant else 'rule'} {rule_id}"
        if isinstance(rule_id, str) and rule_id.strip()
        else position
    )
    if kind == "extra_forbidden":
        keys = sorted((EmergencyGrant if grant else RoutingRule).model_fields)
        return f"{name}: unknown key {inside[0]!r} (expected {', '.join(keys)})"
    if kind == REFUSED:
        return f"{name}: {line['msg']}"
    if inside[0] == "categories" and len(inside) > 1:
        if inside[-1] == "[key]":
            return f"{name}: {_unknown_category(inside[1])}"
        return f"{name}: {inside[1]} must be a list of field names (or [])"
    return f"{name}: {_ROUTING_PROBLEMS[inside[0]](None if kind == 'missing' else line['input'])}"


# --- policy/sla.yaml -------------------------------------------------------------------------

_SLA_FILE: Final = "the file must be a mapping with a `rules` list"
_DEADLINE: Final = "an ISO 8601 duration, end_of_day, {field: …} or {before: …}"
END_OF_DAY: Final = "end_of_day"
_RECIPIENTS: Final = "a list of fallback chains such as [[coordinator, unassigned]]"
# pydantic's refusals of YAML's types, in the words of the rest of the file's problems.
_SLA_WORDS: Final = {
    "missing": "required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
}


def _sla_one_of(symbols: Sequence[str]) -> AfterValidator:
    return _one_of(symbols, lambda _: f"must be one of {', '.join(symbols)}")


def _duration(value: object) -> sla.Duration:
    try:
        return sla.parse_duration(value)  # type: ignore[arg-type]  # a ValueError if not text
    except ValueError as error:
        raise refused(str(error)) from None


def _role(value: str) -> str:
    if value not in (*sla.ROLES, *sla.PLACE_ROLES):
        roles = dict.fromkeys((*sla.ROLES, *sla.PLACE_ROLES))
        raise refused(f"unknown role {value!r} (one of {', '.join(roles)})")
    return value


def _listed(problem: str) -> BeforeValidator:
    """A non-empty list, else `problem` (a rule's recipients or identity)."""

    def check(value: object) -> object:
        if not isinstance(value, list) or not value:
            raise refused(problem)
        return value

    return BeforeValidator(check)


def _rule_id(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9_.\-]+", value):
        raise refused("must be lower-case letters, digits, '.', '_' or '-'")
    return value


def _cites_sla(value: str) -> str:
    if not value.strip().startswith(policy.SOURCE_PREFIXES):
        raise refused("must cite 'sources.md: …' or 'carebus-default: …'")
    return value.strip()


Duration = Annotated[sla.Duration, PlainValidator(_duration, json_schema_input_type=str)]
# A fallback chain: the first role that resolves is alerted (a lone role is a chain of one).
Chain = Annotated[
    list[Annotated[str, AfterValidator(_role)]],
    BeforeValidator(lambda chain: chain if isinstance(chain, list) else [chain]),
]


def _checked_when(when: Mapping[str, Any], event_types: Sequence[str]) -> None:
    """A condition's value is a scalar (null: absent) or a non-empty list of scalars (any one);
    on a field of the contract with symbols, each value is one of them: a misspelt symbol would
    silently never match."""
    for name, wanted in when.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values:
            raise refused(f"when.{name}: an empty list matches nothing")
        if any(isinstance(value, dict | list) for value in values):
            raise refused(f"when.{name}: a value must be a scalar or a list of scalars")
        prefix, _, field = name.rpartition(".")
        if prefix not in ("", "admission", "person.brukerplan"):
            raise refused(
                f"when.{name}: unknown prefix {prefix!r} (admission.<field> or "
                "person.brukerplan.<domain>)"
            )
        if prefix == "person.brukerplan" and field not in BRUKERPLAN_DOMAINS:
            raise refused(
                f"when.{name}: {field} is not a Brukerplan domain ({', '.join(BRUKERPLAN_DOMAINS)})"
            )
        of = {"admission": ["admission"], "person.brukerplan": ["brukerplan_assessment"]}
        for event_type in of.get(prefix, event_types):
            spec = PAYLOAD_FIELDS.get(event_type, {}).get(field)
            symbols = spec.symbols if spec is not None else ()
            unknown = [v for v in values if symbols and v is not None and v not in symbols]
            if unknown:
                raise refused(
                    f"when.{name}: {', '.join(map(str, unknown))} is not a symbol of "
                    f"{event_type}.{field} ({', '.join(symbols)})"
                )


class SlaLink(_FileModel):
    """An event that relates to a trigger: its type, the field pair that links them, conditions."""

    event_type: EventType
    # One field of this event (`event_id`: its own id) -> one field of the trigger; or
    # `subject`: any other event of the trigger's person.
    link: dict[str, str] | Literal["subject"]
    when: dict[str, Any] = Field(default_factory=dict)
    differs: list[str] = Field(default_factory=list)
    present: list[str] = Field(default_factory=list)
    # Only an event that occurred this long after the trigger or later links.
    not_before: Duration | None = None

    @field_validator("not_before")
    @classmethod
    def _a_wait(cls, wait: sla.Duration | None) -> sla.Duration | None:
        if wait is not None and not (wait.months or wait.days or wait.seconds > 0):
            raise refused("must be a positive duration such as P28D")
        return wait

    @field_validator("link", mode="plain")
    @classmethod
    def _one_pair(cls, link: object) -> dict[str, str] | Literal["subject"]:
        if link == sla.SUBJECT:
            return sla.SUBJECT
        if (
            not isinstance(link, dict)
            or len(link) != 1
            or not all(isinstance(name, str) for pair in link.items() for name in pair)
        ):
            raise refused(
                "must map one field of the event to one field of the trigger, or be 'subject'"
            )
        return link

    @model_validator(mode="after")
    def _conditions(self) -> SlaLink:
        _checked_when(self.when, [self.event_type])
        return self

    def link_(self) -> sla.Link:
        ((own, theirs),) = (
            ((sla.SUBJECT, sla.SUBJECT),) if self.link == sla.SUBJECT else self.link.items()
        )
        return sla.Link(
            event_type=self.event_type,
            field=own,
            trigger_field=theirs,
            when=self.when,
            differs=tuple(self.differs),
            present=tuple(self.present),
            not_before=self.not_before,
        )


class FieldDeadline(_FileModel):
    """The deadline is a time the trigger carries: `{field: next_review_at}`, optionally
    `plus` a duration (a grace after an agreed time) and with a `fallback` duration from the
    trigger's time when the trigger lacks the field (without one: no deadline then)."""

    field: str
    plus: Duration | None = None
    fallback: Duration | None = None


class BeforeDeadline(_FileModel):
    """The deadline is when another event happened, once it arrives: `{before: {event_type,
    link}}`, or the first of several to arrive: `{before: [{…}, {…}]}`."""

    before: Annotated[
        list[SlaLink],
        # Before-validators run last to first: a lone link becomes a list, then is checked.
        _listed("a linked event, or a non-empty list of them"),
        BeforeValidator(lambda links: links if isinstance(links, list) else [links]),
    ]


Deadline = sla.Duration | Literal["end_of_day"] | FieldDeadline | BeforeDeadline


class Trigger(_FileModel):
    """What opens an obligation: an event of a type (or of types) whose payload matches `when`,
    or any event that declares an emergency."""

    event_type: EventType | None = None
    event_types: list[EventType] | None = None
    # Payload field -> value (null: absent) or a list of values (any one); `admission.<field>`
    # reads the linked admission.
    when: dict[str, Any] = Field(default_factory=dict)
    # Trigger fields that must be present (not null).
    present: list[str] = Field(default_factory=list)
    emergency: bool = False

    @model_validator(mode="after")
    def _names_its_events(self) -> Trigger:
        if self.event_type is not None and self.event_types is not None:
            raise refused("give event_type or event_types, not both")
        if self.event_type is None and not self.event_types and not self.emergency:
            raise refused("needs event_type, event_types or emergency: true")
        _checked_when(self.when, self.types())
        for name in self.present:
            if not any(name in PAYLOAD_FIELDS.get(t, {}) for t in self.types()):
                raise refused(f"present: {name} is not a payload field of the trigger's events")
        return self

    def types(self) -> tuple[str, ...]:
        if self.event_types is not None:
            return tuple(self.event_types)
        return () if self.event_type is None else (self.event_type,)


class SlaRule(_FileModel):
    """One rule of policy/sla.yaml (its comment says what each key means).

    `kind` comes before the keys it governs, whose validators read it: a deadline rule needs a
    deadline and a fulfilling event, a window rule a count and a window.
    """

    id: Annotated[str, AfterValidator(_rule_id)] = Field(
        description="lower-case letters, digits, '.', '_' or '-'"
    )
    title: Annotated[str, _non_empty("required")] = Field(
        description="what was missed, for the coordinator"
    )
    neutral_title: str | None = None
    kind: Annotated[str, _sla_one_of(sla.KINDS)] = Field(description=", ".join(sla.KINDS))
    source: Annotated[str, AfterValidator(_cites_sla)] = Field(
        description="'sources.md: …' or 'carebus-default: …'"
    )
    trigger: Trigger = Field(description="event_type, event_types or emergency: true")
    deadline: Deadline | None = Field(default=None, validate_default=True)
    fulfilled_by: list[SlaLink] = Field(default_factory=list, validate_default=True)
    cancelled_by: list[SlaLink] = Field(default_factory=list)
    identity: Annotated[list[str], _listed("a list of trigger fields")] = Field(
        default_factory=lambda: ["event_id"]
    )
    recipients: Annotated[list[Chain], _listed(_RECIPIENTS)] = Field(description=_RECIPIENTS)
    audience: Annotated[str, _sla_one_of(sla.AUDIENCES)] = "coordinator"
    contact: Annotated[str, _sla_one_of(sla.CONTACTS)] = "source"
    escalation: Duration = Field(default_factory=lambda: sla.parse_duration("PT24H"))
    count: int = Field(default=0, validate_default=True)
    window: Duration | None = Field(default=None, validate_default=True)
    group: str | None = Field(default=None, validate_default=True)
    why: str | None = None
    once: bool = Field(default=False, validate_default=True)

    @field_validator("once")
    @classmethod
    def _once(cls, once: bool, info: ValidationInfo) -> bool:
        if once and info.data.get("kind") != "deadline":
            raise refused("only a deadline rule opens its obligation once per identity")
        return once

    scope: Annotated[str, _sla_one_of(sla.SCOPES)] = "person"

    @model_validator(mode="after")
    def _scoped(self) -> SlaRule:
        roles = {role for chain in self.recipients for role in chain}
        if self.scope == "place":
            if self.kind != "window":
                raise refused("scope: only window rules count per place")
            if not roles <= set(sla.PLACE_ROLES):
                raise refused(f"recipients: a place rule alerts {', '.join(sla.PLACE_ROLES)}")
        elif not roles <= set(sla.ROLES):
            raise refused(f"recipients: {', '.join(sla.PLACE_ROLES[:2])} are roles of place rules")
        return self

    @field_validator("group")
    @classmethod
    def _grouped(cls, group: str | None, info: ValidationInfo) -> str | None:
        if group is not None and info.data.get("kind") != "deadline":
            raise refused("only deadline rules form groups (one obligation per group)")
        if group is not None:
            _rule_id(group)
        return group

    @field_validator("deadline", mode="plain")
    @classmethod
    def _deadline(cls, value: object, info: ValidationInfo) -> Deadline | None:
        if value is None:
            if info.data.get("kind") == "deadline":
                raise refused(_DEADLINE)
            return None
        if value == END_OF_DAY:
            return END_OF_DAY
        if isinstance(value, str):
            return _duration(value)
        if isinstance(value, dict) and "field" in value:
            return FieldDeadline.model_validate(value)
        if isinstance(value, dict) and "before" in value:
            return BeforeDeadline.model_validate(value)
        raise refused(_DEADLINE)

    @field_validator("fulfilled_by")
    @classmethod
    def _fulfilled(cls, links: list[SlaLink], info: ValidationInfo) -> list[SlaLink]:
        if not links and info.data.get("kind") == "deadline":
            raise refused("a deadline rule needs at least one fulfilling event")
        return links

    @field_validator("count")
    @classmethod
    def _counted(cls, count: int, info: ValidationInfo) -> int:
        if count < 2 and info.data.get("kind") == "window":
            raise refused("a window rule needs a count of at least 2")
        return count

    @field_validator("window")
    @classmethod
    def _windowed(cls, window: sla.Duration | None, info: ValidationInfo) -> sla.Duration | None:
        if window is None and info.data.get("kind") == "window":
            raise refused("a window rule needs an ISO 8601 duration such as P30D")
        return window

    def rule(self) -> sla.Rule:
        deadline = self.deadline if self.kind == "deadline" else None
        return sla.Rule(
            rule_id=self.id,
            title=self.title.strip(),
            neutral_title=(self.neutral_title or self.title).strip(),
            kind=self.kind,
            event_types=self.trigger.types(),
            when=self.trigger.when,
            emergency=self.trigger.emergency,
            deadline=deadline if isinstance(deadline, sla.Duration) else None,
            deadline_kind=_deadline_kind(deadline),
            deadline_field=deadline.field if isinstance(deadline, FieldDeadline) else None,
            deadline_plus=deadline.plus if isinstance(deadline, FieldDeadline) else None,
            deadline_fallback=deadline.fallback if isinstance(deadline, FieldDeadline) else None,
            before=(
                tuple(link.link_() for link in deadline.before)
                if isinstance(deadline, BeforeDeadline)
                else ()
            ),
            fulfilled_by=tuple(link.link_() for link in self.fulfilled_by),
            cancelled_by=tuple(link.link_() for link in self.cancelled_by),
            identity=tuple(self.identity),
            recipients=tuple(tuple(chain) for chain in self.recipients),
            audience=self.audience,
            contact=self.contact,
            escalation=self.escalation,
            count=self.count,
            window=self.window if self.kind == "window" else None,
            source=self.source,
            present=tuple(self.trigger.present),
            group=self.group,
            why=self.why.strip() if self.why else None,
            once=self.once,
            scope=self.scope,
        )


def _deadline_kind(deadline: Deadline | None) -> str:
    if deadline is None:
        return "none"
    if isinstance(deadline, sla.Duration):
        return "duration"
    if isinstance(deadline, FieldDeadline):
        return "field"
    if isinstance(deadline, BeforeDeadline):
        return "before"
    return deadline  # end_of_day


class SlaRuleFile(_FileModel):
    """A rule file: policy/sla.yaml, or an override of its format whose rules replace the
    same-id rules key by key (so its rules are checked once merged, as `SlaRule`s)."""

    version: Annotated[str, _non_empty("must be a non-empty quoted string")] | None = None
    rules: list[Any]


def sla_rules(files: Sequence[tuple[str, object]], *, digest: str) -> sla.RuleSet:
    """The rule set of parsed rule files, `(path, document)`: the first is the rule file, each
    further one an override whose rules replace same-id rules key by key (a new id is a new
    rule). SlaRulesError names every problem found."""
    base, *overrides = [_sla_file(document, path) for path, document in files]
    merged: list[Any] = list(base.rules)
    for override in overrides:
        by_id = {rule.get("id"): at for at, rule in enumerate(merged) if isinstance(rule, dict)}
        for rule in override.rules:
            if isinstance(rule, dict) and rule.get("id") in by_id:
                at = by_id[rule["id"]]
                merged[at] = {**merged[at], **rule}
            else:
                merged.append(rule)
    rules: list[sla.Rule] = []
    problems: list[str] = []
    for index, raw in enumerate(merged):
        try:
            rules.append(SlaRule.model_validate(raw).rule())
        except ValidationError as error:
            problems.extend(_sla_problem(line, raw, index) for line in error.errors())
    return sla.build_rules(
        base.version or "",
        rules,
        digest=digest,
        path=" + ".join(path for path, _ in files),
        refused=problems,
    )


def _sla_file(document: object, path: str) -> SlaRuleFile:
    try:
        return SlaRuleFile.model_validate(document)
    except ValidationError as error:
        raise sla.SlaRulesError(
            path, [_sla_file_problem(line) for line in error.errors()]
        ) from None


def _sla_file_problem(line: Any) -> str:
    loc = line["loc"]
    if line["type"] == "extra_forbidden":
        return f"unknown key {loc[0]!r} (expected version, rules)"
    if loc and loc[0] == "version":
        return f"version: {line['msg'] if line['type'] == REFUSED else 'must be a string'}"
    return _SLA_FILE


def _sla_problem(line: Any, raw: object, index: int) -> str:
    rule_id = raw.get("id") if isinstance(raw, dict) else None
    name = f"rule {rule_id}" if isinstance(rule_id, str) and rule_id else f"rules[{index}]"
    loc, kind = line["loc"], line["type"]
    if kind == "extra_forbidden":
        loc, text = loc[:-1], f"unknown key {loc[-1]!r}"
    elif kind == "missing" and len(loc) == 1:  # say what a rule's key holds
        description = SlaRule.model_fields[loc[0]].description
        text = f"required ({description})" if description else "required"
    else:
        text = line["msg"] if kind == REFUSED else _SLA_WORDS.get(kind, line["msg"])
    path = field_path([part for part in loc if part != "[key]"])
    return f"{name}: {path}: {text}" if path else f"{name}: {text}"
