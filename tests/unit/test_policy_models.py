"""Tests for carebus.wire.policy_models: the formats of policy/routing.yaml and policy/sla.yaml.

What the shipped files mean and every refusal reviewers rely on: tests/unit/test_policy.py and
tests/unit/test_sla_rules.py. Here: what the models add, and that the domain builders take the
typed rules they make.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from carebus.domain.policy import EMERGENCY, PolicyError, Rule, build_policy
from carebus.domain.sla import SlaRulesError, build_rules
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.policy_models import RoutingRule, SlaRule, routing_policy, sla_rules

ROUTING = yaml.load((PROJECT_ROOT / "policy" / "routing.yaml").read_bytes(), yaml.CSafeLoader)
SLA = yaml.load((PROJECT_ROOT / "policy" / "sla.yaml").read_bytes(), yaml.CSafeLoader)


def refusal_of_routing(document: object) -> list[str]:
    with pytest.raises(PolicyError) as refused:
        routing_policy(document, digest="0" * 12, path="routing.yaml")
    return refused.value.problems


def refusal_of_sla(*documents: object) -> list[str]:
    files = [(f"file{index}.yaml", document) for index, document in enumerate(documents)]
    with pytest.raises(SlaRulesError) as refused:
        sla_rules(files, digest="0" * 12)
    return refused.value.problems


def routing_with(rule_id: str, **changes: object) -> dict[str, Any]:
    document = copy.deepcopy(ROUTING)
    for entry in (*document["rules"], *document["emergency"]):
        if entry["id"] == rule_id:
            entry.update(changes)
    return document  # type: ignore[no-any-return]


def sla_rule(**changes: object) -> dict[str, Any]:
    """A valid deadline rule; the value `...` removes a key."""
    rule: dict[str, Any] = {
        "id": "test.rule",
        "title": "Test",
        "kind": "deadline",
        "trigger": {"event_type": "discharge"},
        "deadline": "P7D",
        "fulfilled_by": [{"event_type": "epikrise_sent", "link": {"admission_event_id": "x"}}],
        "recipients": [["source"]],
        "source": "carebus-default: test",
    }
    for key, value in changes.items():
        if value is ...:
            rule.pop(key)
        else:
            rule[key] = value
    return rule


# --- the routing policy ----------------------------------------------------------------------


def test_the_shipped_routing_policy_is_a_valid_document() -> None:
    """policy/routing.yaml passes the model, and the domain builds the same policy from it."""
    policy = routing_policy(ROUTING, digest="abc", path="routing.yaml")
    assert policy.version == f"{ROUTING['version']}+abc"
    assert len(policy.rules) == len(ROUTING["rules"])
    assert len(policy.emergency) == len(ROUTING["emergency"])


def test_problems_of_shape_and_of_meaning_come_in_one_refusal() -> None:
    """A rule the model refuses does not hide another rule's breach of the field ceiling."""
    document = routing_with("admission.nav", basis="maybe")
    for entry in document["rules"]:
        if entry["id"] == "discharge.nav":
            entry["categories"] = {"logistics": ["ward"]}
    problems = refusal_of_routing(document)
    assert len(problems) == 2
    assert problems[0].startswith("rule admission.nav: unknown basis 'maybe'")
    assert problems[1] == "rule discharge.nav: unknown field 'ward': not in the discharge payload"


def test_a_rule_without_id_is_named_by_position_with_all_its_problems() -> None:
    """Without an id the rule is `rules[i]`, and its other problems are reported too."""
    document = copy.deepcopy(ROUTING)
    del document["rules"][0]["id"]
    document["rules"][0]["recipient"] = "bank"
    problems = refusal_of_routing(document)
    assert problems[0] == "rules[0]: id is required (a non-empty string)"
    assert problems[1].startswith("rules[0]: unknown recipient 'bank'")


@pytest.mark.parametrize(
    ("categories", "expected"),
    [
        ({"logistics": "ward"}, "logistics must be a list of field names (or [])"),
        ({"logistics": ["ward", 7]}, "logistics must be a list of field names (or [])"),
        ({}, "categories must map each granted category to a list of fields"),
        (["logistics"], "categories must map each granted category to a list of fields"),
        (
            {1: []},
            "unknown category 1 (expected one of logistics, health, social, police, justice)",
        ),
    ],
)
def test_categories_of_the_wrong_shape_are_named(categories: object, expected: str) -> None:
    """Each way categories can be malformed is one problem naming the rule."""
    assert refusal_of_routing(routing_with("admission.nav", categories=categories)) == [
        f"rule admission.nav: {expected}"
    ]


def test_the_routing_model_takes_yamls_types_only() -> None:
    """A basis YAML read as a number is not a basis (no "1" for 1, nor 1 for "1")."""
    assert refusal_of_routing(routing_with("admission.nav", basis=1)) == [
        "rule admission.nav: unknown basis 1 (expected one of statutory, presumed, consent; "
        "emergency grants belong in the emergency section)"
    ]
    with pytest.raises(ValueError, match="Input should be a valid string"):
        RoutingRule.model_validate({**ROUTING["rules"][0], "id": 1})


def test_the_domain_builds_a_policy_from_typed_rules() -> None:
    """domain.policy.build_policy takes Rule records, not a document, and still judges them
    against the field ceiling."""
    grants = [
        Rule(f"{event_type}.emergency", event_type, EMERGENCY, EMERGENCY, {}, "carebus-default: x")
        for event_type in {entry["event_type"] for entry in ROUTING["emergency"]}
    ]
    widened = Rule("admission.nav", "admission", "nav", "consent", {"logistics": ("reason",)}, "s")
    with pytest.raises(PolicyError) as refused:
        build_policy("1", [widened], grants, digest="d", path="p")
    assert any("field reason widens its category" in p for p in refused.value.problems)
    assert any(
        "emergency grant admission.emergency: must grant" in p for p in refused.value.problems
    )


# --- SLA rules -------------------------------------------------------------------------------


def test_the_shipped_sla_rules_are_valid_rules() -> None:
    """Every rule of policy/sla.yaml passes the model."""
    for rule in SLA["rules"]:
        assert SlaRule.model_validate(rule).rule().rule_id == rule["id"]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            {"version": "1", "rules": [], "defaults": {}},
            "unknown key 'defaults' (expected version, rules)",
        ),
        ({"version": 2026.1, "rules": []}, "version: must be a string"),
        ({"version": " ", "rules": []}, "version: must be a non-empty quoted string"),
        ({"version": "1"}, "the file must be a mapping with a `rules` list"),
        (["rules"], "the file must be a mapping with a `rules` list"),
    ],
)
def test_a_rule_file_of_the_wrong_shape_is_refused(document: object, expected: str) -> None:
    """An unknown top-level key, a version that YAML read as a number (2026.10 would become
    2026.1) and a file without a rules list are refused."""
    assert refusal_of_sla(document) == [expected]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            sla_rule(trigger={"event_type": "discharge", "event_types": ["admission"]}),
            "trigger: give event_type or event_types, not both",
        ),
        (sla_rule(trigger={"emergency": "yes"}), "trigger.emergency: must be true or false"),
        (
            sla_rule(trigger={"event_type": "discharge", "when": "reason"}),
            "trigger.when: must be a mapping",
        ),
        (sla_rule(deadline={"field": "x", "fied": "y"}), "deadline: unknown key 'fied'"),
        (
            sla_rule(deadline=...),
            "deadline: an ISO 8601 duration, end_of_day, {field: …} or {before: …}",
        ),
        (
            sla_rule(fulfilled_by=...),
            "fulfilled_by: a deadline rule needs at least one fulfilling event",
        ),
        (sla_rule(fulfilled_by={"event_type": "epikrise_sent"}), "fulfilled_by: must be a list"),
        (sla_rule(kind="window", window="P1D"), "count: a window rule needs a count of at least 2"),
        (
            sla_rule(kind="window", count=3),
            "window: a window rule needs an ISO 8601 duration such as P30D",
        ),
        (sla_rule(kind="window", count="3", window="P1D"), "count: must be an integer"),
        (
            sla_rule(recipients=["source", ["coordinator", "nurse"]]),
            "recipients[1][1]: unknown role 'nurse' "
            "(one of source, coordinator, municipal_coordinator, pathway_coordinator, "
            "home_municipality, gp, unassigned, housing_owner, place_municipality)",
        ),
        (
            sla_rule(scope="place"),
            "scope: only window rules count per place",
        ),
        (
            sla_rule(kind="window", count=3, window="P30D", scope="place"),
            "recipients: a place rule alerts housing_owner, place_municipality, unassigned",
        ),
        (
            sla_rule(recipients=[["housing_owner"]]),
            "recipients: housing_owner, place_municipality are roles of place rules",
        ),
        (sla_rule(scope="street"), "scope: must be one of person, place"),
        (
            sla_rule(recipients=...),
            "recipients: required (a list of fallback chains such as [[coordinator, unassigned]])",
        ),
        (sla_rule(audience="everyone"), "audience: must be one of coordinator, privacy_officer"),
        (
            sla_rule(trigger={"event_type": "discharge", "when": {1: True}}),
            "trigger.when[1]: must be a string",
        ),
        (
            sla_rule(trigger={"event_type": "discharge", "when": {"admission.reason": []}}),
            "trigger: when.admission.reason: an empty list matches nothing",
        ),
        (
            sla_rule(trigger={"event_type": "discharge", "when": {"destination": [["home"]]}}),
            "trigger: when.destination: a value must be a scalar or a list of scalars",
        ),
        (
            sla_rule(
                trigger={
                    "event_type": "discharge",
                    "when": {"admission.reason": ["overdose", "suicide_atempt"]},
                }
            ),
            "trigger: when.admission.reason: suicide_atempt is not a symbol of admission.reason "
            "(overdose, suicide_attempt, psychosis, withdrawal, other, unknown, "
            "possible_suicide_attempt)",
        ),
        (
            sla_rule(trigger={"event_type": "discharge", "when": {"destination": "homless"}}),
            "trigger: when.destination: homless is not a symbol of discharge.destination "
            "(home, municipal_housing, institution, homeless, temporary_housing, unknown)",
        ),
        (
            sla_rule(
                fulfilled_by=[
                    {
                        "event_type": "discharge",
                        "link": {"admission_event_id": "x"},
                        "when": {"destination": ["home", "hospital"]},
                    }
                ]
            ),
            "fulfilled_by[0]: when.destination: hospital is not a symbol of discharge.destination "
            "(home, municipal_housing, institution, homeless, temporary_housing, unknown)",
        ),
        (
            sla_rule(trigger={"event_type": "discharge", "when": {"persn.brukerplan": "red"}}),
            "trigger: when.persn.brukerplan: unknown prefix 'persn' "
            "(admission.<field> or person.brukerplan.<domain>)",
        ),
        (
            sla_rule(
                trigger={"event_type": "discharge", "when": {"person.brukerplan.home": "red"}}
            ),
            "trigger: when.person.brukerplan.home: home is not a Brukerplan domain (housing, "
            "meaningful_activity, finances, physical_health, mental_health, substance_use, "
            "social_functioning, network)",
        ),
        (
            sla_rule(
                trigger={"event_type": "discharge", "when": {"person.brukerplan.housing": "rød"}}
            ),
            "trigger: when.person.brukerplan.housing: rød is not a symbol of "
            "brukerplan_assessment.housing (green, yellow, red)",
        ),
    ],
)
def test_a_rule_is_refused_naming_its_field_path(rule: dict[str, Any], expected: str) -> None:
    """Each problem is `rule <id>: <field path>: <problem>`."""
    assert refusal_of_sla({"version": "1", "rules": [rule]}) == [f"rule test.rule: {expected}"]


def test_an_override_is_checked_once_merged_and_a_bad_rule_does_not_hide_others() -> None:
    """An override's partial rule is checked with the keys it replaced; every broken rule is
    named, and the duplicate-id check still runs over the others."""
    base = {"version": "1", "rules": [sla_rule(), sla_rule(id="x"), sla_rule(id="x")]}
    override = {"rules": [{"id": "test.rule", "deadline": "soon"}]}
    assert refusal_of_sla(base, override) == [
        "rule test.rule: deadline: 'soon' is not an ISO 8601 duration such as PT4H or P7D",
        "rule x: id appears twice",
    ]


def test_the_domain_builds_rules_from_typed_rules() -> None:
    """domain.sla.build_rules takes Rule records and refuses an id used twice."""
    rule = SlaRule.model_validate(sla_rule()).rule()
    assert build_rules("1", [rule], digest="d", path="p").version == "1+d"
    with pytest.raises(SlaRulesError, match=r"rule test\.rule: id appears twice"):
        build_rules("1", [rule, rule], digest="d", path="p")
    with pytest.raises(SlaRulesError, match="version: required"):
        build_rules("", [rule], digest="d", path="p")
