"""The compiled Avro writer writes exactly fastavro's bytes and refuses what the check refused."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carebus.domain.events import EVENT_TYPES, event_to_record, parse_event
from carebus.wire.avro_writer import MismatchError, compile_writer, write_long
from carebus.wire.codec import SchemaCatalogue
from carebus_dev.testing import EventFactory

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


# --- the generated fast paths and their boundaries -------------------------------------------

BOUNDARIES: dict[str, Any] = {
    "type": "record",
    "name": "t.Edges",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "o", "type": ["null", "string"]},
        {"name": "n", "type": "long"},
        {"name": "k", "type": "int"},
        {
            "name": "e",
            "type": {"type": "enum", "name": "t.Wide", "symbols": [f"s{i}" for i in range(100)]},
        },
        {"name": "when", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "list", "type": {"type": "array", "items": "t.Wide"}},
        {
            "name": "inner",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "t.Inner",
                    "fields": [{"name": "text", "type": "string"}],
                },
            },
        },
    ],
}


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.integers(0, 9000).map(lambda size: "x" * size),
    ),
    optional=st.one_of(st.none(), st.text(max_size=80)),
    number=st.integers(-(2**63), 2**63 - 1),
    small=st.integers(-(2**31), 2**31 - 1),
    symbols=st.lists(st.integers(0, 99), max_size=5),
    micros=st.integers(-(10**15), 10**16),
)
def test_generated_fast_paths_write_fastavros_bytes(
    text: str, optional: str | None, number: int, small: int, symbols: list[int], micros: int
) -> None:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    record = {
        "s": text,
        "o": optional,
        "n": number,
        "k": small,
        "e": f"s{symbols[0] if symbols else 99}",
        "when": when,
        "list": [f"s{symbol}" for symbol in symbols],
        "inner": [{"text": text}, {"text": optional or ""}],
    }
    try:
        expected = fastavro_bytes(BOUNDARIES, record)
    except UnicodeEncodeError:  # a lone surrogate: fastavro fails, the writer names the field
        with pytest.raises(MismatchError, match="expected a string of valid Unicode"):
            compiled(BOUNDARIES)(record)
        return
    write = compiled(BOUNDARIES)
    assert write(record) == expected
    assert write(record) == expected  # the same datetime again: written from its kept bytes
    later = {**record, "when": when + timedelta(microseconds=1)}
    assert write(later) == fastavro_bytes(BOUNDARIES, later)


EDGES: dict[str, Any] = {
    "s": "a",
    "o": None,
    "n": 1,
    "k": 1,
    "e": "s1",
    "when": datetime(2026, 1, 1, tzinfo=UTC),
    "list": [],
    "inner": [],
}


def test_a_timestamp_that_is_none_is_refused_not_written_from_the_kept_bytes() -> None:
    write = compiled(BOUNDARIES)  # fresh: nothing kept yet, the case a None sentinel got wrong
    with pytest.raises(MismatchError, match=r"^when: expected a timezone-aware datetime$"):
        write({**EDGES, "when": None})
    assert write(EDGES) == fastavro_bytes(BOUNDARIES, EDGES)
    with pytest.raises(MismatchError, match=r"^when: expected a timezone-aware datetime$"):
        write({**EDGES, "when": None})


def test_a_mismatch_inside_an_array_of_records_names_the_item_and_field() -> None:
    with pytest.raises(MismatchError, match=r"^list\[1\]: expected a symbol of t\.Wide$"):
        compiled(BOUNDARIES)({**EDGES, "list": ["s1", "nope"]})
    with pytest.raises(MismatchError, match=r"^inner\[1\]\.text: expected string$"):
        compiled(BOUNDARIES)({**EDGES, "inner": [{"text": "ok"}, {"text": 7}]})
