"""The retention inventory and its rules (issue 15, item 5): the file names every store of
personal data, agrees with the migration's floors and the topic catalogue, and a bad entry or
override is refused naming its field."""

from __future__ import annotations

import importlib.util
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from carebus.domain.retention import (
    PURGE_ORDER,
    Inventory,
    RetentionConfigError,
    Store,
    check_store,
    plan,
)
from carebus.runtime.config import PROJECT_ROOT, Settings
from carebus.wire.retention_config import (
    INVENTORY_PATH,
    OVERRIDES_FIELD,
    build_inventory,
    inventory_for,
    load_inventory,
    topic_retentions,
)

MIGRATIONS = PROJECT_ROOT / "infra" / "postgres" / "migrations" / "versions"
# Tables without personal data: the directory of organisations, webhook registrations (an
# organisation's URL and sealed secret), the SLA engine's offsets, the retention rules.
# housing_places: place keys (pseudonyms of housing sites) and organisation numbers only.
NO_PERSONAL_DATA = {
    "organisations",
    "webhooks",
    "sla_offsets",
    "retention_rules",
    "housing_places",
}


def migration(name: str) -> ModuleType:
    path = next(MIGRATIONS.glob(f"*_{name}.py"))
    spec = importlib.util.spec_from_file_location(f"migration_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def document() -> dict[str, Any]:
    loaded = yaml.safe_load(INVENTORY_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


def refusal(doc: object) -> RetentionConfigError:
    with pytest.raises(RetentionConfigError) as caught:
        build_inventory(doc, topic_retentions())
    return caught.value


def test_every_table_created_by_a_migration_is_inventoried() -> None:
    """A table with personal data that the inventory does not name would never be purged nor
    found by erasure: every table is in the inventory or declared free of personal data."""
    created = set()
    for path in MIGRATIONS.glob("*.py"):
        created |= set(re.findall(r"CREATE TABLE (\w+)", path.read_text()))
    inventory = load_inventory()
    tables = {store.name for store in inventory.stores if store.kind == "table"}
    assert created - NO_PERSONAL_DATA == tables


def test_every_catalogued_topic_is_inventoried_with_the_catalogues_retention() -> None:
    """The topics' retention is the broker's: the inventory reads it from topics.yaml."""
    topics = topic_retentions()
    inventory = load_inventory()
    assert {store.name for store in inventory.stores if store.kind == "topic"} == set(topics)
    assert inventory.store("care.events.v1").retention == timedelta(days=90)
    assert inventory.store("care.persons.v1").retention is None


def test_the_files_minimums_are_the_migrations_floors() -> None:
    """The database refuses cut-offs younger than its floors; the file must say the same, so a
    setting that passes the loader is never refused half-way through a run."""
    rules = {
        **migration("retention").RULES,
        **migration("retraction_marks").RULE_CHANGES,
        **migration("care_team_contacts").RULE_CHANGES,
        **migration("places").RULES,
    }
    inventory = load_inventory()
    purged = {store.name: store for store in inventory.purged()}
    assert set(purged) == set(rules) == set(PURGE_ORDER)
    for name, (table, minimum, _) in rules.items():
        amount, unit = minimum.split()
        floor = timedelta(**{unit if unit.endswith("s") else f"{unit}s": int(amount)})
        assert purged[name].minimum == floor, name
        assert table == name


def test_every_entry_says_who_decided_and_why() -> None:
    """Each store says what it holds and the basis of its period; where no rule fixes the
    number, it says carebus chose it."""
    for store in load_inventory().stores:
        assert store.holds, store.name
        assert store.basis, store.name
        assert store.clock, store.name
        assert store.decided_by in ("law", "carebus-default")
    assert "not confirmed" in load_inventory().store("disclosures").basis


def test_the_audit_trail_outlives_what_it_records() -> None:
    """The disclosure log and the records of the legal basis are kept at least as long as any
    copy of the data they account for."""
    inventory = load_inventory()
    longest_copy = max(
        inventory.store(name).retention or timedelta(0)
        for name in ("events", "deliveries", "alerts", "webhook_queue")
    )
    for name in ("disclosures", "disclosure_lookups", "consents", "care_team_changes"):
        retention = inventory.store(name).retention
        assert retention is not None
        assert retention >= longest_copy


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["stores"]["events"].update(retention="P10D"), "stores.events.retention"),
        (lambda d: d["stores"]["events"].update(retention="soon"), "stores.events.retention"),
        (lambda d: d["stores"]["events"].update(kind="file"), "stores.events.kind"),
        (lambda d: d["stores"]["events"].pop("holds"), "stores.events.holds"),
        (lambda d: d["stores"]["events"].pop("minimum"), "stores.events.minimum"),
        (lambda d: d["stores"]["events"].pop("clock"), "stores.events.clock"),
        (lambda d: d["stores"]["events"].update(colour="red"), "stores.events.colour"),
        (lambda d: d["stores"]["events"].update(decided_by="me"), "stores.events.decided_by"),
        (
            lambda d: d["stores"]["care.events.v1"].update(retention="P1D"),
            "stores.care.events.v1.retention",
        ),
        (lambda d: d["stores"].pop("care.alerts.v1"), "stores.care.alerts.v1"),
        (
            lambda d: d["stores"].update(unknown_table={**d["stores"]["events"]}),
            "stores.unknown_table.retention",
        ),
        (
            lambda d: d["stores"]["person_facts"].update(minimum="P1D"),
            "stores.person_facts.minimum",
        ),
    ],
)
def test_a_bad_entry_is_refused_naming_its_field(change: Any, field: str) -> None:
    """Every malformed entry is refused with the path of the offending field."""
    doc = document()
    change(doc)
    assert refusal(doc).field == field


def test_overrides_apply_and_are_refused_below_the_minimum_or_for_unknown_stores() -> None:
    """A deployment may lengthen or shorten a table's period, never below its minimum, and
    only for tables the job purges."""
    inventory = load_inventory()
    longer = inventory.with_overrides({"events": timedelta(days=400)}, field=OVERRIDES_FIELD)
    assert longer.store("events").retention == timedelta(days=400)
    cases = {
        "disclosures": (timedelta(days=30), "minimum"),
        "nothing_here": (timedelta(days=30), "no such store"),
        "care.events.v1": (timedelta(days=30), "not a table"),
        "person_facts": (timedelta(days=30), "not a table"),
    }
    for name, (retention, problem) in cases.items():
        with pytest.raises(RetentionConfigError, match=problem) as caught:
            inventory.with_overrides({name: retention}, field=OVERRIDES_FIELD)
        assert caught.value.field == f"{OVERRIDES_FIELD}.{name}"


def test_settings_read_overrides_as_iso_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAREBUS_RETENTION_OVERRIDES is JSON of store -> ISO 8601 duration."""
    monkeypatch.setenv("CAREBUS_RETENTION_OVERRIDES", '{"alerts": "P400D"}')
    inventory = inventory_for(Settings())
    assert inventory.store("alerts").retention == timedelta(days=400)


def test_a_plan_has_one_cutoff_per_purged_table_in_order() -> None:
    """A run visits the purged tables in PURGE_ORDER, each cut at now - its retention."""
    now = datetime(2026, 12, 6, tzinfo=UTC)
    inventory = load_inventory()
    purges = plan(inventory.stores, now)
    assert [p.store for p in purges] == list(PURGE_ORDER)
    by_store = {p.store: p.cutoff for p in purges}
    assert by_store["disclosures"] == now - timedelta(days=3650)
    assert by_store["person_sign_ins"] == now - timedelta(days=1)


def test_a_store_is_checked_on_its_own() -> None:
    """The domain's check: a positive period, not under the minimum, and a rule to enforce it."""
    base = Store(
        "events", "table", "x", timedelta(days=10), timedelta(days=5), "c", "carebus-default", "b"
    )
    assert check_store(base) is base
    with pytest.raises(RetentionConfigError, match="positive"):
        check_store(Store(**{**_fields(base), "retention": timedelta(0)}))
    with pytest.raises(RetentionConfigError, match="no rule"):
        check_store(Store(**{**_fields(base), "name": "organisations"}))
    with pytest.raises(RetentionConfigError, match="named twice"):
        Inventory((base, base))


def _fields(store: Store) -> dict[str, Any]:
    return {name: getattr(store, name) for name in Store.__slots__}


def test_the_inventory_file_is_where_settings_point() -> None:
    """The default setting names the file in the repository."""
    assert Settings().retention_inventory == INVENTORY_PATH
    assert Path(INVENTORY_PATH).is_file()


def test_the_documented_inventory_names_every_store_with_its_period() -> None:
    """docs/retention.md's table has a row per store, with the inventory's default."""
    text = (PROJECT_ROOT / "docs" / "retention.md").read_text()
    for store in load_inventory().stores:
        row = next(
            (line for line in text.splitlines() if line.startswith(f"| `{store.name}` |")), ""
        )
        assert row, store.name
        if store.kind == "table" and store.retention is not None and store.retention.days:
            assert f"| {store.retention.days} days |" in row, store.name
