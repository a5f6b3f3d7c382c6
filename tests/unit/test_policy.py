"""Tests for carebus.domain.policy: the field ceiling, the shipped policy, and every refusal."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from carebus.domain.events import EVENT_TYPES, PAYLOAD_FIELDS, POLICY_EVENT_TYPES
from carebus.domain.policy import (
    BASES,
    CATEGORIES,
    EVENT_CATEGORY,
    FIELD_CATEGORY,
    HOME_MUNICIPALITY,
    Policy,
    PolicyError,
)
from carebus.runtime.config import PROJECT_ROOT, Settings
from carebus.wire.policy_files import load_policy
from carebus.wire.topics import AGENCIES

SHIPPED = PROJECT_ROOT / "policy" / "routing.yaml"

# DESIGN "Data categories", read independently of carebus.domain.policy: category -> "type.field".
DESIGN_FIELD_MAP: dict[str, set[str]] = {
    "logistics": {
        "admission.ward",
        "admission.expected_discharge_at",
        "admission.needs_municipal_services",
        "admission.home_municipality_org",
        "discharge_ready.needs_municipal_services",
        "discharge_ready.admission_event_id",
        "discharge.destination",
        "discharge.followup_at",
        "discharge.admission_event_id",
        "discharge.dps_contact",
        "discharge_ready_withdrawn.discharge_ready_event_id",
        "health_info_sent.admission_event_id",
        "housing_work_started.admission_event_id",
        "epikrise_sent.admission_event_id",
        "municipal_reply.discharge_ready_event_id",
        "municipal_reply.can_receive",
        "municipal_reply.expected_ready_at",
        "ip_update.plan_id",
        "ip_update.status",
        "ip_update.coordinator",
        "ip_update.participants",
        "ip_update.next_review_at",
        "application_received.application_id",
        "application_received.service",
        "application_received.service_kind",
        "application_preliminary_reply.application_id",
        "application_preliminary_reply.expected_decision_at",
        "application_decided.application_id",
        "application_decided.outcome",
        "followup_contact.related_event_id",
        "followup_scheduled.related_event_id",
        "followup_scheduled.followup_at",
        "followup_scheduled.with_org",
        "housing_work_started.related_event_id",
        "brukerplan_assessment.assessment_year",
        "somatic_referral.related_event_id",
    },
    "health": {
        "admission.reason",
        "admission.admission_kind",
        "discharge.crisis_plan",
        "discharge.kind",
        "discharge.crisis_plan_id",
        "discharge.crisis_plan_reviewed_at",
        "ip_update.crisis_plan",
        "ip_update.crisis_plan_id",
        "ip_update.crisis_plan_reviewed_at",
        "ip_update.crisis_plan_owner",
        "discharge.crisis_plan_owner",
        "followup_contact.kind",
        "epikrise_sent.recipient_org",
        "treatment_interrupted.treatment_id",
        "treatment_interrupted.kind",
        "treatment_interrupted.last_contact_at",
        "brukerplan_assessment.physical_health",
        "brukerplan_assessment.mental_health",
        "brukerplan_assessment.substance_use",
        "somatic_check_done.kind",
        "somatic_check_done.referral_needed",
        "somatic_referral.referral_id",
        "somatic_referral.to",
    },
    "social": {
        "admission.housing_status",
        "discharge_ready.housing_status",
        "prison_release.housing_status",
        "housing_incident.kind",
        "housing_incident.severity",
        "housing_incident.housing_unit_id",
        "housing_waitlisted.application_id",
        "housing_waitlisted.housing_kind",
        "housing_waitlisted.position",
        "temporary_housing_started.stay_id",
        "temporary_housing_started.housing_kind",
        "temporary_housing_started.housing_unit_id",
        "temporary_housing_ended.stay_id",
        "temporary_housing_ended.outcome",
        "tenancy_at_risk.cause",
        "tenancy_at_risk.eviction_at",
        "tenancy_at_risk.housing_unit_id",
        "brukerplan_assessment.housing",
        "brukerplan_assessment.meaningful_activity",
        "brukerplan_assessment.finances",
        "brukerplan_assessment.social_functioning",
        "brukerplan_assessment.network",
        "housing_incident.housing_site_id",
    },
    "police": {
        "police_callout.kind",
        "police_callout.injuries",
        "police_callout.location_type",
        "police_callout.housing_unit_id",
        "police_callout.housing_site_id",
    },
    "justice": {
        "prison_release.release_at",
        "prison_release.home_municipality_org",
        "prison_release.needs_municipal_services",
    },
}

OUTSIDE_HEALTH_CARE = ("nav", "police", "housing")
HEALTH_CARE = ("dps", "municipality", "fastlege")


@pytest.fixture(scope="module")
def shipped() -> Policy:
    return load_policy(SHIPPED)


@pytest.fixture(scope="module")
def shipped_document() -> dict[str, Any]:
    document = yaml.load(SHIPPED.read_text(), Loader=yaml.CSafeLoader)
    assert isinstance(document, dict)
    return document


# --- the ceiling ----------------------------------------------------------------------------


def test_the_field_ceiling_is_designs_table() -> None:
    """FIELD_CATEGORY puts each payload field under exactly the category DESIGN gives it."""
    expected = {
        tuple(name.split(".")): category
        for category, names in DESIGN_FIELD_MAP.items()
        for name in names
    }
    assert dict(FIELD_CATEGORY) == expected


def test_every_payload_field_has_a_category() -> None:
    """No payload field of the contract is outside the ceiling (it could never be delivered); a
    retraction's fields go only to those who got the retracted event (carebus.domain.retraction)."""
    for event_type in POLICY_EVENT_TYPES:
        for name in PAYLOAD_FIELDS[event_type]:
            assert (event_type, name) in FIELD_CATEGORY, f"{event_type}.{name}"


HOUSING_PATHWAY = (
    "housing_incident",
    "housing_work_started",
    "housing_waitlisted",
    "temporary_housing_started",
    "temporary_housing_ended",
    "tenancy_at_risk",
)


def test_the_event_category_of_every_type() -> None:
    """Police callouts are police, the housing pathway's events social, a treatment
    interruption, a Brukerplan assessment (being mapped says the person receives such
    services) and somatic checks and referrals health, a prison release justice, the rest
    logistics."""
    assert EVENT_CATEGORY["police_callout"] == "police"
    assert {EVENT_CATEGORY[event_type] for event_type in HOUSING_PATHWAY} == {"social"}
    assert EVENT_CATEGORY["treatment_interrupted"] == "health"
    assert EVENT_CATEGORY["brukerplan_assessment"] == "health"
    assert EVENT_CATEGORY["somatic_check_done"] == EVENT_CATEGORY["somatic_referral"] == "health"
    assert EVENT_CATEGORY["prison_release"] == "justice"
    special = {
        "police_callout",
        "treatment_interrupted",
        "brukerplan_assessment",
        "somatic_check_done",
        "somatic_referral",
        "prison_release",
        *HOUSING_PATHWAY,
    }
    others = set(EVENT_TYPES) - special
    assert {EVENT_CATEGORY[event_type] for event_type in others} == {"logistics"}


# --- the shipped policy ---------------------------------------------------------------------


def test_the_shipped_policy_loads(shipped: Policy) -> None:
    """policy/routing.yaml passes every check and is the file the settings point at."""
    assert Settings().routing_policy == SHIPPED
    assert shipped.rules
    assert set(shipped.emergency) == set(POLICY_EVENT_TYPES)
    version, _, digest = shipped.version.partition("+")
    assert version
    assert len(digest) == 12
    assert int(digest, 16) >= 0


def test_the_version_changes_with_the_file(tmp_path: Path) -> None:
    """Any change to the file changes the policy version, even with the same `version` string."""
    text = SHIPPED.read_text()
    changed = tmp_path / "routing.yaml"
    changed.write_text(
        text.replace('source: "sources.md: Legal basis', 'source: "sources.md:  Legal basis', 1)
    )
    assert load_policy(changed).version != load_policy(SHIPPED).version
    same = tmp_path / "same.yaml"
    same.write_text(text)
    assert load_policy(same).version == load_policy(SHIPPED).version


def test_statutory_rules_are_the_logistics_messages(shipped: Policy) -> None:
    """The home municipality gets a statutory notice for admission, discharge-ready, its
    withdrawal, discharge and the follow-up time set after a discharge, with logistics fields
    only, and the housing status on the admission and discharge-ready notices (the regulation's
    "uten egnet bolig")."""
    statutory = {
        rule.event_type: rule for rule in shipped.rules.values() if rule.basis == "statutory"
    }
    assert set(statutory) == {
        "admission",
        "discharge_ready",
        "discharge_ready_withdrawn",
        "discharge",
        "followup_scheduled",
    }
    for rule in statutory.values():
        assert rule.recipient == HOME_MUNICIPALITY
        beyond = {name for category, names in rule.categories.items() if category != "logistics"
                  for name in names}  # fmt: skip
        assert beyond == ({"housing_status"} if rule.event_type in ("admission", "discharge_ready")
                          else set())  # fmt: skip


def test_outside_health_care_only_with_consent_and_never_health(shipped: Policy) -> None:
    """NAV, police and housing have consent rules only, and no rule ever grants them health."""
    for rule in shipped.rules.values():
        if rule.recipient in OUTSIDE_HEALTH_CARE:
            assert rule.basis == "consent", rule.rule_id
            assert "health" not in rule.categories, rule.rule_id


def test_police_learn_of_care_only_by_emergency(shipped: Policy) -> None:
    """Police have no rule for admissions, discharges or any health event; only the plan they
    take part in (under consent)."""
    police = {rule.event_type for rule in shipped.rules.values() if rule.recipient == "police"}
    assert police == {"ip_update"}


# Events whose senders include the housing office or NAV, not health personnel.
HOUSING_REPORTS = (
    "housing_incident",
    "housing_waitlisted",
    "temporary_housing_started",
    "temporary_housing_ended",
    "tenancy_at_risk",
)


def test_health_recipients_are_presumed_or_consent(shipped: Policy) -> None:
    """Health-care members act on `presumed`, except for police, housing and prison
    information, which the source may not share with them without consent."""
    for rule in shipped.rules.values():
        if rule.recipient in HEALTH_CARE:
            consent_only = ("police_callout", "prison_release", *HOUSING_REPORTS)
            expected = "consent" if rule.event_type in consent_only else "presumed"
            assert rule.basis == expected, rule.rule_id


def test_nav_never_learns_why_someone_was_admitted(shipped: Policy) -> None:
    """No rule for NAV lets `reason` (or any health field) through."""
    for rule in shipped.rules.values():
        if rule.recipient == "nav":
            fields = {name for names in rule.categories.values() for name in names}
            assert "reason" not in fields
            assert not any(FIELD_CATEGORY[(rule.event_type, f)] == "health" for f in fields)


def test_every_rule_cites_a_source_and_grants_its_event_category(shipped: Policy) -> None:
    """Each rule and grant has a source citation and includes the category of its event."""
    for rule in (*shipped.rules.values(), *shipped.emergency.values()):
        assert rule.source.startswith(("sources.md: ", "carebus-default: ")), rule.rule_id
        assert EVENT_CATEGORY[rule.event_type] in rule.categories, rule.rule_id


# --- refusals -------------------------------------------------------------------------------


def rule_in(document: dict[str, Any], rule_id: str) -> dict[str, Any]:
    for section in ("rules", "emergency"):
        for rule in document[section]:
            if rule["id"] == rule_id:
                return rule  # type: ignore[no-any-return]
    raise KeyError(rule_id)


def refused(tmp_path: Path, document: object) -> PolicyError:
    path = tmp_path / "routing.yaml"
    path.write_text(
        yaml.dump(document, Dumper=yaml.CSafeDumper, allow_unicode=True, sort_keys=False)
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return caught.value


Mutation = Callable[[dict[str, Any]], None]


def _set(rule_id: str, key: str, value: object) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        rule_in(document, rule_id)[key] = value

    return mutate


def _drop(rule_id: str, key: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        del rule_in(document, rule_id)[key]

    return mutate


def _duplicate(rule_id: str, new_id: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        copied = copy.deepcopy(rule_in(document, rule_id))
        copied["id"] = new_id
        document["rules"].append(copied)

    return mutate


def _drop_grant(event_type: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        document["emergency"] = [g for g in document["emergency"] if g["event_type"] != event_type]

    return mutate


REFUSALS: list[tuple[str, Mutation, list[str]]] = [
    (
        "unknown field",
        _set("admission.nav", "categories", {"logistics": ["ward", "diagnosis"]}),
        ["rule admission.nav", "unknown field 'diagnosis'", "admission payload"],
    ),
    (
        "field of another event type",
        _set("discharge.nav", "categories", {"logistics": ["ward"]}),
        ["rule discharge.nav", "unknown field 'ward'"],
    ),
    (
        "widened category: a health field listed as logistics",
        _set("admission.nav", "categories", {"logistics": ["reason"], "social": []}),
        ["rule admission.nav", "field reason widens its category", "health", "not logistics"],
    ),
    (
        "widened category in an emergency grant",
        _set("epikrise_sent.emergency", "categories", {"logistics": ["recipient_org"]}),
        ["emergency grant epikrise_sent.emergency", "field recipient_org widens"],
    ),
    (
        "missing source",
        _drop("admission.nav", "source"),
        ["rule admission.nav", "source is missing"],
    ),
    (
        "empty source",
        _set("admission.nav", "source", "  "),
        ["rule admission.nav", "source is missing or empty"],
    ),
    (
        "a source that cites nothing",
        _set("admission.nav", "source", "because we need it"),
        ["rule admission.nav", "cite a sources.md row", "carebus-default: <one-line rationale>"],
    ),
    (
        "carebus-default without a rationale",
        _set("admission.nav", "source", "carebus-default:"),
        ["rule admission.nav", "source is missing or empty"],
    ),
    (
        "statutory rule with a health field",
        _set(
            "admission.home_municipality",
            "categories",
            {"logistics": ["ward"], "health": ["reason"]},
        ),
        [
            "rule admission.home_municipality",
            "statutory may deliver logistics fields only",
            "health",
        ],
    ),
    (
        "statutory rule for a type that is not logistics",
        lambda document: document["rules"].append(
            {
                "id": "police_callout.home_municipality",
                "event_type": "police_callout",
                "recipient": HOME_MUNICIPALITY,
                "basis": "statutory",
                "categories": {"police": ["kind"]},
                "source": "carebus-default: test",
            }
        ),
        ["rule police_callout.home_municipality", "a police_callout is police information"],
    ),
    (
        "a statutory notice of a prison release",
        lambda document: document["rules"].append(
            {
                "id": "prison_release.home_municipality",
                "event_type": "prison_release",
                "recipient": HOME_MUNICIPALITY,
                "basis": "statutory",
                "categories": {"justice": ["release_at"]},
                "source": "carebus-default: test",
            }
        ),
        ["rule prison_release.home_municipality", "a prison_release is justice information"],
    ),
    (
        "a prison release's fields as logistics",
        _set("prison_release.nav", "categories", {"logistics": ["release_at"], "justice": []}),
        ["rule prison_release.nav", "field release_at widens its category", "justice"],
    ),
    (
        "statutory basis for an agency",
        _set("admission.nav", "basis", "statutory"),
        ["rule admission.nav", "statutory is only for recipient home_municipality"],
    ),
    (
        "home municipality on another basis",
        _set("admission.home_municipality", "basis", "presumed"),
        ["rule admission.home_municipality", "takes basis statutory only"],
    ),
    (
        "a social field on the statutory discharge notice",
        _set(
            "discharge.home_municipality",
            "categories",
            {"logistics": ["destination"], "social": []},
        ),
        ["rule discharge.home_municipality", "statutory may deliver logistics fields only"],
    ),
    (
        "duplicate event type and recipient",
        _duplicate("admission.nav", "admission.nav.again"),
        ["rule admission.nav.again", "duplicate of rule admission.nav", "admission to nav"],
    ),
    (
        "duplicate rule id",
        _set("discharge.nav", "id", "admission.nav"),
        ["rule id 'admission.nav' is used more than once"],
    ),
    (
        "duplicate emergency grant",
        lambda document: document["emergency"].append(
            {
                **copy.deepcopy(rule_in(document, "admission.emergency")),
                "id": "admission.emergency2",
            }
        ),
        ["emergency grant admission.emergency2", "duplicate of admission.emergency"],
    ),
    (
        "unknown agency",
        _set("admission.nav", "recipient", "tax_office"),
        ["rule admission.nav", "unknown recipient 'tax_office'"],
    ),
    (
        "unknown basis",
        _set("admission.nav", "basis", "legitimate_interest"),
        ["rule admission.nav", "unknown basis 'legitimate_interest'"],
    ),
    (
        "emergency as a rule basis",
        _set("admission.nav", "basis", "emergency"),
        ["rule admission.nav", "unknown basis 'emergency'", "emergency section"],
    ),
    (
        "unknown event type",
        _set("admission.nav", "event_type", "arrest"),
        ["rule admission.nav", "unknown event type 'arrest'"],
    ),
    (
        "unknown category",
        _set("admission.nav", "categories", {"logistics": [], "financial": []}),
        ["rule admission.nav", "unknown category 'financial'"],
    ),
    (
        "the event's own category is not granted",
        _set("police_callout.housing", "categories", {"logistics": []}),
        ["rule police_callout.housing", "must grant 'police'"],
    ),
    (
        "a field listed twice",
        _set("admission.nav", "categories", {"logistics": ["ward", "ward"]}),
        ["rule admission.nav", "field ward is listed twice"],
    ),
    (
        "a misspelt key",
        lambda document: rule_in(document, "admission.nav").update(categorys={}),
        ["rule admission.nav", "unknown key 'categorys'"],
    ),
    (
        "a rule without id",
        _drop("admission.nav", "id"),
        ["id is required"],
    ),
    (
        "an event type without an emergency grant",
        _drop_grant("police_callout"),
        ["emergency: no grant for event type police_callout"],
    ),
    (
        "a version that is not a string",
        lambda document: document.update(version=3),
        ["version must be a non-empty quoted string"],
    ),
    (
        "an unknown top-level key",
        lambda document: document.update(defaults={}),
        ["unknown top-level key 'defaults'"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(mutate, expected, id=name) for name, mutate, expected in REFUSALS],
)
def test_a_broken_policy_is_refused_naming_rule_and_problem(
    tmp_path: Path, shipped_document: dict[str, Any], mutate: Mutation, expected: list[str]
) -> None:
    """Each violation makes load_policy raise PolicyError whose message names it."""
    document = copy.deepcopy(shipped_document)
    mutate(document)
    error = refused(tmp_path, document)
    for text in expected:
        assert text in str(error)


def test_every_problem_is_reported_at_once(
    tmp_path: Path, shipped_document: dict[str, Any]
) -> None:
    """A reviewer sees all problems of a file in one error, one entry per problem."""
    document = copy.deepcopy(shipped_document)
    _set("admission.nav", "source", "")(document)
    _set("discharge.nav", "basis", "maybe")(document)
    error = refused(tmp_path, document)
    assert len(error.problems) == 2
    assert "2 problems" in str(error)


def test_a_repeated_yaml_key_is_refused(tmp_path: Path) -> None:
    """A key written twice in one mapping (which YAML would silently collapse) is refused."""
    text = SHIPPED.read_text().replace(
        "      logistics: [expected_discharge_at]\n      social: [housing_status]\n",
        "      logistics: [expected_discharge_at]\n      logistics: [ward]\n"
        "      social: [housing_status]\n",
        1,
    )
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match="appears twice"):
        load_policy(path)


def test_unreadable_and_malformed_files_are_refused(tmp_path: Path) -> None:
    """A missing file, invalid YAML and a non-mapping document each raise PolicyError."""
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(PolicyError, match="must be a mapping"):
        load_policy(listed)


def test_recipients_and_bases_are_closed_sets() -> None:
    """Recipients are the agencies plus home_municipality; rule bases exclude emergency."""
    assert set(BASES) == {"statutory", "presumed", "consent"}
    assert set(CATEGORIES) == set(DESIGN_FIELD_MAP)
    assert set(AGENCIES) == {
        "dps",
        "municipality",
        "fastlege",
        "nav",
        "police",
        "housing",
        "corrections",
    }


def test_a_prison_release_goes_only_where_the_person_consented(shipped: Policy) -> None:
    """Corrections is not health personnel and a release reveals a conviction: every rule for
    a release is `consent`, none is for the home municipality, the police or corrections."""
    rules = [rule for rule in shipped.rules.values() if rule.event_type == "prison_release"]
    assert {rule.recipient for rule in rules} == {
        "municipality",
        "fastlege",
        "dps",
        "nav",
        "housing",
    }
    for rule in rules:
        assert rule.basis == "consent"
        assert dict(rule.categories) == {
            "social": ("housing_status",),
            "justice": ("release_at", "home_municipality_org", "needs_municipal_services"),
        }
        assert rule.source.startswith("carebus-default:")
    assert dict(shipped.emergency["prison_release"].categories) == {"justice": ()}


def test_no_rule_sends_anything_to_corrections(shipped: Policy) -> None:
    """Corrections sends releases and receives nothing."""
    assert [
        rule.rule_id for rule in shipped.rules.values() if rule.recipient == "corrections"
    ] == []
