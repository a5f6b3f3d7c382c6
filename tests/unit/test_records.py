"""Every typed record of carebus.domain.records matches its Avro schema, field by field, so the
shapes mypy checks are the shapes on the wire."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

from carebus.domain import records
from carebus.wire.codec import SchemaCatalogue

CATALOGUE = SchemaCatalogue.load()
PRIMITIVE = {"string": str, "boolean": bool, "int": int, "double": float, "bytes": bytes}


def problems(hint: Any, avro: Any, where: str, named: dict[str, Any]) -> list[str]:
    """How `hint` (a Python annotation) differs from `avro` (an Avro type), with field paths."""
    if isinstance(avro, str) and avro in named:
        avro = named[avro]
    if isinstance(avro, list):  # a union: only ["null", X] is used by carebus
        others = [branch for branch in avro if branch != "null"]
        assert len(others) == 1, f"{where}: unexpected union {avro}"
        if not _optional(hint):
            return [f"{where}: the schema allows null, the record type does not"]
        return problems(_without_none(hint), others[0], where, named)
    if _optional(hint):
        return [f"{where}: the record type allows None, the schema does not"]
    if isinstance(avro, str):
        return [] if hint is PRIMITIVE.get(avro, object) else [f"{where}: {hint} is not {avro}"]
    kind = avro["type"]
    if avro.get("logicalType") == "timestamp-micros":
        return [] if hint is datetime else [f"{where}: {hint} is not a timestamp"]
    if kind == "enum":
        return [] if hint is str else [f"{where}: an enum is a str, not {hint}"]
    if kind == "array":
        if get_origin(hint) is not list:
            return [f"{where}: {hint} is not a list"]
        return problems(get_args(hint)[0], avro["items"], f"{where}[]", named)
    if kind == "map":
        return [] if get_origin(hint) is dict else [f"{where}: {hint} is not a dict"]
    if kind == "record":
        return record_problems(hint, avro, where, named)
    if kind in PRIMITIVE or kind == "long":
        return problems(hint, kind if kind != "long" else "int", where, named)
    return [f"{where}: unknown Avro type {kind}"]


def record_problems(
    hint: Any, avro: dict[str, Any], where: str, named: dict[str, Any] | None = None
) -> list[str]:
    named = _named_types(avro) if named is None else named
    if not typing.is_typeddict(hint):
        return [f"{where}: {hint} is not a typed record for {avro['name']}"]
    hints = get_type_hints(hint)
    fields = {field["name"]: field["type"] for field in avro["fields"]}
    found = [f"{where}.{name}: not in the schema" for name in hints.keys() - fields.keys()]
    found += [f"{where}.{name}: missing" for name in fields.keys() - hints.keys()]
    for name in hints.keys() & fields.keys():
        if name == "payload" and hints[name] == dict[str, Any]:
            continue  # each event type's payload record; checked by the event validator
        found += problems(hints[name], fields[name], f"{where}.{name}", named)
    return found


def _named_types(avro: Any, namespace: str = "no.carebus.v1") -> dict[str, Any]:
    """Every named type defined anywhere in `avro`, by short and full name (a later field may
    refer to a type an earlier one defined)."""
    found: dict[str, Any] = {}
    if isinstance(avro, list):
        for branch in avro:
            found.update(_named_types(branch, namespace))
    elif isinstance(avro, dict):
        if avro.get("type") in ("record", "enum", "fixed") and "name" in avro:
            name = avro["name"]
            full = name if "." in name else f"{avro.get('namespace', namespace)}.{name}"
            found[full] = found[full.rsplit(".", 1)[1]] = avro
        for field in avro.get("fields", []):
            found.update(_named_types(field["type"], namespace))
        if "items" in avro:
            found.update(_named_types(avro["items"], namespace))
    return found


def _optional(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)


def _without_none(hint: Any) -> Any:
    rest = [arg for arg in get_args(hint) if arg is not type(None)]
    return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007


@pytest.mark.parametrize("name", sorted(records.RECORD_TYPES))
def test_each_record_type_matches_its_schema(name: str) -> None:
    schema = CATALOGUE.get(name).schema
    assert record_problems(records.RECORD_TYPES[name], schema, name) == []


def test_the_event_record_matches_every_event_schema() -> None:
    for event_type in ("admission", "discharge", "ip_update", "police_callout"):
        schema = CATALOGUE.get(records.event_schema_name(event_type)).schema
        assert record_problems(records.EventRecord, schema, event_type) == []


def test_a_record_type_that_drifts_from_its_schema_is_found() -> None:
    class Drifted(typing.TypedDict):
        change_id: str
        subject_key: int  # the schema says string
        member: records.Organisation | None  # the schema says a member is always there
        role: str
        status: str
        recorded_at: datetime
        extra: str  # not in the schema
        # recorded_by_org missing

    found = record_problems(
        Drifted, CATALOGUE.get(records.CARE_TEAM_CHANGE).schema, "CareTeamChange"
    )
    assert sorted(found) == [
        "CareTeamChange.extra: not in the schema",
        "CareTeamChange.member: the record type allows None, the schema does not",
        "CareTeamChange.recorded_by_org: missing",
        "CareTeamChange.subject_key: <class 'int'> is not string",
    ]


@pytest.mark.parametrize(
    ("json_form", "record"),
    [(records.AlertJson, records.Alert), (records.DisclosureJson, records.Disclosure)],
)
def test_the_engines_json_forms_have_the_records_fields(json_form: Any, record: Any) -> None:
    """The SLA engine keeps alerts and their disclosures as JSON (times as text); the same
    fields as the Avro records they become, and nothing else but the alert's disclosure."""
    json_hints = get_type_hints(json_form)
    record_hints = get_type_hints(record)
    assert set(json_hints) - {"disclosure"} == set(record_hints)
    for field_name, hint in record_hints.items():
        if _base(hint) is datetime:
            assert _base(json_hints[field_name]) is str, field_name
            assert _optional(json_hints[field_name]) == _optional(hint), field_name
        else:
            assert json_hints[field_name] == hint, field_name


def _base(hint: Any) -> Any:
    return _without_none(hint) if _optional(hint) else hint
