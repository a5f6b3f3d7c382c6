"""The compiled Avro writer writes exactly fastavro's bytes and refuses what the check refused."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastavro
import pytest

from carebus.avro_writer import MismatchError, compile_writer, write_long
from carebus.codec import SchemaCatalogue
from carebus.events import EVENT_TYPES, event_to_record, parse_event
from carebus.testing import EventFactory

CATALOGUE = SchemaCatalogue.load()


def fastavro_bytes(schema: Any, record: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def compiled(schema: Any) -> Any:
    write = compile_writer(schema)
    assert write is not None
    return write


def test_every_catalogued_schema_compiles() -> None:
    assert [entry.name for entry in CATALOGUE if entry.write is None] == []


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_event_records_are_written_exactly_as_fastavro_writes_them(event_type: str) -> None:
    factory = EventFactory(seed=11)
    received = datetime(2026, 11, 23, 8, 15, 0, 123456, tzinfo=UTC)
    for _ in range(20):
        event, problems = parse_event(factory.event(event_type))
        assert event is not None, problems
        record = event_to_record(event, "k" * 64, received)
        entry = CATALOGUE.event_schema(event_type)
        assert entry.write is not None
        assert entry.write(record) == fastavro_bytes(entry.schema, record)


@pytest.mark.parametrize(
    "value",
    [0, 1, -1, 63, 64, -64, -65, 127, 128, 300, -300, 2**31 - 1, -(2**31), 2**62, -(2**63)],
)
def test_longs_are_zigzag_varints(value: int) -> None:
    out = bytearray()
    write_long(value, out)
    assert bytes(out) == fastavro_bytes("long", value)


SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "t.All",
    "fields": [
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "raw", "type": "bytes"},
        {"name": "s", "type": "string"},
        {"name": "e", "type": {"type": "enum", "name": "t.E", "symbols": ["a", "b", "c"]}},
        {"name": "x", "type": {"type": "fixed", "name": "t.F", "size": 4}},
        {"name": "arr", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": ["null", "string"]}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "opt", "type": ["null", "t.E"], "default": None},
        {"name": "again", "type": "t.E", "default": "c"},
        {"name": "many", "type": {"type": "array", "items": "string"}, "default": []},
    ],
}

FULL: dict[str, Any] = {
    "b": True,
    "i": -(2**31),
    "f": 1.5,
    "d": -2.25e300,
    "raw": b"\x00\xff",
    "s": "Tromsø – 🙂" * 10,
    "e": "b",
    "x": b"abcd",
    "arr": [0, -1, 2**40],
    "m": {"k": "v", "ø": None},
    "ts": datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-3))),
    "ms": datetime(2026, 11, 23, 8, 15, 0, 123456, tzinfo=UTC),
    "opt": "a",
}


def test_every_kind_of_type_and_default_matches_fastavro() -> None:
    assert compiled(SCHEMA)(FULL) == fastavro_bytes(SCHEMA, FULL)
    empty = {**FULL, "arr": [], "m": {}, "opt": None, "ts": 1, "ms": 2, "many": ["x"]}
    assert compiled(SCHEMA)(empty) == fastavro_bytes(SCHEMA, empty)


@pytest.mark.parametrize(
    ("field", "value", "where", "problem"),
    [
        ("b", "true", "b", "expected boolean"),
        ("i", 2**31, "i", "expected int"),
        ("i", True, "i", "expected int"),
        ("f", "1.5", "f", "expected float"),
        ("raw", "text", "raw", "expected bytes"),
        ("s", b"bytes", "s", "expected string"),
        ("s", "\ud800", "s", "expected a string of valid Unicode"),
        ("e", "z", "e", "expected a symbol of t.E"),
        ("x", b"abc", "x", "expected 4 bytes"),
        ("arr", [1, "2"], "arr[1]", "expected long"),
        ("m", {"k": 3}, "m[*]", "expected string"),
        ("ts", datetime(2026, 1, 1), "ts", "expected a timezone-aware datetime"),
        ("opt", "z", "opt", "expected a symbol of t.E"),
        ("surplus", 1, "record", "surplus is not a field of t.All"),
    ],
)
def test_a_mismatch_names_the_field_and_never_the_value(
    field: str, value: Any, where: str, problem: str
) -> None:
    with pytest.raises(MismatchError) as raised:
        compiled(SCHEMA)({**FULL, field: value})
    assert str(raised.value) == f"{where}: {problem}"
    assert repr(value) not in str(raised.value)


def test_a_required_field_is_named_when_missing() -> None:
    record = {key: value for key, value in FULL.items() if key != "d"}
    with pytest.raises(MismatchError, match=r"^d: is required$"):
        compiled(SCHEMA)(record)


def test_a_recursive_record_is_written() -> None:
    tree = {
        "type": "record",
        "name": "t.Node",
        "fields": [
            {"name": "label", "type": "string"},
            {"name": "next", "type": ["null", "t.Node"], "default": None},
        ],
    }
    value = {"label": "a", "next": {"label": "b", "next": {"label": "c"}}}
    assert compiled(tree)(value) == fastavro_bytes(tree, value)
    with pytest.raises(MismatchError, match=r"^next\.next\.label: expected string$"):
        compiled(tree)({"label": "a", "next": {"label": "b", "next": {"label": 3}}})


@pytest.mark.parametrize(
    "schema",
    [
        ["string", "long"],
        ["null", "string", "long"],
        {"type": "int", "logicalType": "date"},
    ],
)
def test_what_it_does_not_write_is_left_to_fastavro(schema: Any) -> None:
    assert compile_writer(schema) is None


def test_no_catalogued_schema_has_a_float_or_double_field() -> None:
    """The stores write JSON with orjson, which writes NaN and infinity as null: with no
    floating-point field anywhere, no record can carry one (add a check before adding one)."""

    def kinds(schema: Any) -> set[str]:
        if isinstance(schema, str):
            return {schema}
        if isinstance(schema, list):
            return set().union(*(kinds(branch) for branch in schema))
        found = {schema["type"]} if isinstance(schema["type"], str) else kinds(schema["type"])
        for field in schema.get("fields", []):
            found |= kinds(field["type"])
        for key in ("items", "values"):
            if key in schema:
                found |= kinds(schema[key])
        return found

    used = set().union(*(kinds(entry.schema) for entry in CATALOGUE))
    assert "string" in used
    assert used.isdisjoint({"float", "double"})
