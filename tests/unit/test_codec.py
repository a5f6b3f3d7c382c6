"""Tests for carebus.wire.codec: schema expansion, fingerprints, single-object encoding."""

from __future__ import annotations

import copy
import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form

from carebus.domain.events import (
    EVENT_TYPES,
    EXAMPLE_PAYLOADS,
    PAYLOAD_FIELDS,
    event_to_record,
    parse_event,
)
from carebus.domain.records import DEAD_LETTER, event_schema_name
from carebus.wire.codec import (
    HEADER_SIZE,
    MAGIC,
    SCHEMA_DIR,
    Codec,
    DecodeError,
    EncodeError,
    SchemaCatalogue,
    SchemaError,
    expand_schemas,
    fingerprint_of,
    format_schema,
    write_release,
)

NIN = "14038512324"
RECEIVED_AT = datetime(2026, 11, 23, 7, 15, 1, 250000, tzinfo=UTC)
SUBJECT_KEY = "5f" * 32

# --- the CRC-64-AVRO fingerprint, written out from the Avro specification ------------------

EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


FP_TABLE = _table()


def rabin(data: bytes) -> int:
    """The spec's Java `fingerprint64`, as an unsigned 64-bit integer."""
    fp = EMPTY
    for byte in data:
        fp = (fp >> 8) ^ FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def header_fingerprint(canonical_form: str) -> bytes:
    """The 8 bytes the spec puts after C3 01: the fingerprint, little-endian."""
    return rabin(canonical_form.encode()).to_bytes(8, "little")


# From Avro's share/test/data/schema-tests.txt: input, canonical form, Java's signed long.
SPEC_VECTORS = [
    ('"null"', '"null"', 7195948357588979594),
    ('{"type":"boolean"}', '"boolean"', -6970731678124411036),
    ('"int"', '"int"', 8247732601305521295),
    ('"string"', '"string"', -8142146995180207161),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    (
        '{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
        '{"name":"x.y.foo","type":"record","fields":[]}',
        5916914534497305771,
    ),
    (
        # The spec's input has "default":"true", which fastavro rightly refuses for a boolean.
        '{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":true},'
        ' {"order":"descending","name":"f2","doc":"Hello","type":"int"}],'
        ' "type":"record", "name":"foo"}',
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},'
        '{"name":"f2","type":"int"}]}',
        -4860222112080293046,
    ),
    (
        '{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar",'
        ' "symbols":["A1", "A2"]}',
        '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}',
        -4448647247586288245,
    ),
    ('{"name":"foo","type":"fixed","size":15}', '{"name":"foo","type":"fixed","size":15}',
     1756455273707447556),
    ('{ "items":{"type":"null"}, "type":"array"}', '{"type":"array","items":"null"}',
     -589620603366471059),
]  # fmt: skip


@pytest.mark.parametrize(("schema", "canonical", "java_long"), SPEC_VECTORS)
def test_fingerprints_match_the_avro_test_vectors(
    schema: str, canonical: str, java_long: int
) -> None:
    """fastavro's canonical form and our fingerprint bytes agree with Avro's own test vectors."""
    unsigned = java_long % 2**64
    assert rabin(canonical.encode()) == unsigned
    assert to_parsing_canonical_form(json.loads(schema)) == canonical
    assert fingerprint_of(canonical) == unsigned.to_bytes(8, "little")


def test_a_tiny_record_encodes_to_the_bytes_the_spec_prescribes() -> None:
    """C3 01, the little-endian fingerprint, then the binary body: checked byte by byte."""
    schema = {
        "type": "record",
        "name": "foo",
        "fields": [{"name": "f1", "type": "boolean"}, {"name": "f2", "type": "int"}],
    }
    codec = Codec(SchemaCatalogue({"foo": schema}))
    data = codec.encode("foo", {"f1": True, "f2": 7})
    fingerprint = (-4860222112080293046 % 2**64).to_bytes(8, "little")
    assert data == b"\xc3\x01" + fingerprint + b"\x01\x0e"
    decoded = codec.decode(data)
    assert decoded.record == {"f1": True, "f2": 7}
    assert decoded.fingerprint == fingerprint.hex()


# --- the project's schemas ------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.default()


def event_record(event_type: str, **payload_changes: Any) -> dict[str, Any]:
    raw = {
        "event_id": f"dps-974705788-{event_type}",
        "event_type": event_type,
        "occurred_at": "2026-11-23T08:15:00.123456+01:00",
        "source": {"agency": "dps", "org_id": "974705788", "system": "DIPS"},
        "subject": {"nin": NIN},
        "payload": {**EXAMPLE_PAYLOADS[event_type], **payload_changes},
    }
    event, problems = parse_event(raw)
    assert event is not None, problems
    return event_to_record(event, SUBJECT_KEY, RECEIVED_AT)


def dead_letter_record() -> dict[str, Any]:
    return {
        "reason": "undecodable_body",
        "detail": "body does not decode as no.carebus.v1.AdmissionEvent (EOFError)",
        "source_topic": "care.events.v1",
        "source_partition": 3,
        "source_offset": 2**40,
        "consumer": "router",
        "original_key": b"key",
        "original_value": b"\xc3\x01garbage",
        "dead_lettered_at": RECEIVED_AT,
    }


def test_default_codec_is_loaded_once(codec: Codec) -> None:
    """Codec.default() returns the same object every time."""
    assert Codec.default() is codec


def test_every_event_type_has_a_schema(codec: Codec) -> None:
    """The catalogue has a record schema per event type, named after it, and the other records."""
    for event_type in EVENT_TYPES:
        assert codec.catalogue.event_schema(event_type).name == event_schema_name(event_type)
    assert event_schema_name("discharge_ready_withdrawn") == (
        "no.carebus.v1.DischargeReadyWithdrawnEvent"
    )
    assert DEAD_LETTER in codec.catalogue
    others = {
        "DeadLetter",
        "ConsentChange",
        "CareTeamChange",
        "Delivery",
        "Disclosure",
        "Alert",
        "RegisterChange",
        "AuthorityRefusal",
        "PersonSnapshot",
    }
    assert set(codec.catalogue.names) == {
        *(event_schema_name(t) for t in EVENT_TYPES),
        *(f"no.carebus.v1.{name}" for name in others),
    }


def test_fingerprints_are_distinct(codec: Codec) -> None:
    """No two schemas share a fingerprint, so the header names exactly one schema."""
    fingerprints = [entry.fingerprint for entry in codec.catalogue]
    assert len(set(fingerprints)) == len(fingerprints)


def _named(schema: Any, found: list[str]) -> list[str]:
    if isinstance(schema, list):
        for branch in schema:
            _named(branch, found)
    elif isinstance(schema, dict):
        if schema["type"] in ("record", "enum", "fixed"):
            found.append(schema["name"])
        for f in schema.get("fields", ()):
            _named(f["type"], found)
        for key in ("items", "values"):
            if key in schema:
                _named(schema[key], found)
    return found


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_schemas_are_self_contained_and_fingerprinted_when_expanded(
    codec: Codec, event_type: str
) -> None:
    """Each named type is defined once, inline; the fingerprint covers the whole expansion."""
    entry = codec.catalogue.event_schema(event_type)
    names = _named(entry.schema, [])
    assert len(names) == len(set(names))
    assert {"no.carebus.v1.Agency", "no.carebus.v1.Source", "no.carebus.v1.EventType"} <= set(names)
    fastavro.parse_schema(copy.deepcopy(entry.schema))  # no named_schemas needed
    assert '"name":"no.carebus.v1.Agency","type":"enum","symbols":[' in entry.canonical_form
    assert entry.canonical_form == to_parsing_canonical_form(entry.schema)
    assert entry.fingerprint == header_fingerprint(entry.canonical_form)


def test_fastavro_alone_would_fingerprint_only_the_names() -> None:
    """Parsed with named_schemas, fastavro's canonical form keeps bare references: why we expand."""
    named: dict[str, Any] = {}
    fastavro.parse_schema(json.loads((SCHEMA_DIR / "common.avsc").read_text()), named)
    parsed = fastavro.parse_schema(
        json.loads((SCHEMA_DIR / "admission.avsc").read_text()), dict(named)
    )
    assert '"type":"no.carebus.v1.Source"' in to_parsing_canonical_form(parsed)


def _field_types(entry_schema: dict[str, Any]) -> dict[str, Any]:
    return {f["name"]: f for f in entry_schema["fields"]}


def _resolve(schema: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(schema, str) and schema in definitions:
        return definitions[schema]
    return schema


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_schema_follows_the_contract(codec: Codec, event_type: str) -> None:
    """Envelope order, payload names, optionality, times and enum symbols match events.py."""
    entry = codec.catalogue.event_schema(event_type)
    definitions = dict(entry.named_types)
    assert [f["name"] for f in entry.schema["fields"]] == [
        "event_id",
        "event_type",
        "occurred_at",
        "received_at",
        "source",
        "subject",
        "subject_key",
        "emergency",
        "payload",
    ]
    envelope = _field_types(entry.schema)
    assert envelope["emergency"]["default"] is None
    for name in ("occurred_at", "received_at"):
        assert envelope[name]["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    payload = envelope["payload"]["type"]
    assert payload["name"] == event_schema_name(event_type).replace("Event", "Payload")
    fields = _field_types(payload)
    assert list(fields) == list(PAYLOAD_FIELDS[event_type])
    for name, spec in PAYLOAD_FIELDS[event_type].items():
        avro_type = fields[name]["type"]
        if spec.required:
            assert "default" not in fields[name]
        elif spec.absent is not None:
            # An optional enum whose left-out value is a symbol of its own, not null.
            assert fields[name]["default"] == spec.absent
            assert _resolve(avro_type, definitions)["default"] == spec.absent
        else:
            assert avro_type[0] == "null"
            assert fields[name]["default"] is None
            avro_type = avro_type[1]
        avro_type = _resolve(avro_type, definitions)
        if spec.kind == "time":
            assert avro_type == {"type": "long", "logicalType": "timestamp-micros"}
        elif spec.kind == "bool":
            assert avro_type == "boolean"
        elif spec.kind == "enum":
            symbols = avro_type["symbols"]
            extra = [s for s in symbols if s not in spec.symbols]
            assert symbols[: len(spec.symbols)] == list(spec.symbols)
            assert extra == ([] if avro_type["default"] in spec.symbols else ["unknown"])


def test_every_enum_has_a_default(codec: Codec) -> None:
    """A new symbol stays readable: every enum names a default among its symbols."""
    for entry in codec.catalogue:
        for schema in entry.named_types.values():
            if schema["type"] == "enum":
                assert schema.get("default") in schema["symbols"], schema["name"]
                assert schema["default"] in ("other", "unknown"), schema["name"]


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_type_round_trips(codec: Codec, event_type: str) -> None:
    """encode_event then decode gives back the record, with the header naming its schema."""
    record = event_record(event_type)
    data = codec.encode_event(record)
    entry = codec.catalogue.event_schema(event_type)
    assert data[:2] == MAGIC == b"\xc3\x01"
    assert data[2:HEADER_SIZE] == header_fingerprint(entry.canonical_form)
    decoded = codec.decode(data)
    assert decoded.schema_name == event_schema_name(event_type)
    assert decoded.fingerprint == data[2:HEADER_SIZE].hex()
    assert decoded.record == record
    assert decoded.record["occurred_at"].tzinfo is not None
    assert decoded.record["occurred_at"].microsecond == 123456


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_optional_fields_round_trip_as_none(codec: Codec, event_type: str) -> None:
    """Records whose optional fields are all None round-trip too."""
    optional = {name: None for name, s in PAYLOAD_FIELDS[event_type].items() if not s.required}
    record = event_record(event_type, **optional)
    assert codec.decode(codec.encode_event(record)).record == record


def test_emergency_round_trips(codec: Codec) -> None:
    """The emergency block, with its recipients, survives the wire."""
    record = event_record("admission")
    record["emergency"] = {
        "justification": "Acute risk",
        "accountable": "Overlege Kari Nordmann",
        "recipients": [{"agency": "police", "org_id": "974760673"}],
    }
    assert codec.decode(codec.encode_event(record)).record == record


def test_dead_letters_round_trip(codec: Codec) -> None:
    """The DeadLetter schema encodes and decodes, bytes and large offsets included."""
    record = dead_letter_record()
    decoded = codec.decode(codec.encode(DEAD_LETTER, record))
    assert decoded.schema_name == DEAD_LETTER
    assert decoded.record == record


def test_decode_accepts_bytearray_and_memoryview(codec: Codec) -> None:
    """Whatever buffer type a Kafka client hands over decodes the same."""
    data = codec.encode_event(event_record("discharge"))
    assert codec.decode(bytearray(data)).record == codec.decode(memoryview(data)).record


# --- decode failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc3", id="one-byte"),
        pytest.param(b"\xc3\x01\x00\x00\x00\x00\x00\x00\x00", id="short-fingerprint"),
        pytest.param(b'{"event_id": "x", "subject": {"nin": "14038512324"}}', id="json"),
        pytest.param(b"\xc3\x02" + bytes(20), id="wrong-version"),
        pytest.param(b"\x00\x00\x00\x00\x01" + bytes(20), id="confluent-wire-format"),
        pytest.param("not bytes", id="str"),
        pytest.param(None, id="none"),
    ],
)
def test_garbage_is_not_a_single_object(codec: Codec, data: Any) -> None:
    """Anything without the C3 01 header is refused as not_single_object."""
    with pytest.raises(DecodeError) as raised:
        codec.decode(data)
    assert raised.value.reason == "not_single_object"
    assert NIN not in str(raised.value)


def test_unknown_fingerprint_is_unknown_schema(codec: Codec) -> None:
    """A well-formed header with a fingerprint nobody knows is unknown_schema."""
    data = codec.encode_event(event_record("admission"))
    forged = MAGIC + bytes.fromhex("0011223344556677") + data[HEADER_SIZE:]
    with pytest.raises(DecodeError) as raised:
        codec.decode(forged)
    assert raised.value.reason == "unknown_schema"
    assert "0011223344556677" in raised.value.message
    assert NIN not in str(raised.value)


def test_every_truncation_of_the_body_is_undecodable(codec: Codec) -> None:
    """Cutting the body anywhere gives undecodable_body, never a shorter record."""
    data = codec.encode_event(event_record("ip_update"))
    for end in range(HEADER_SIZE, len(data)):
        with pytest.raises(DecodeError) as raised:
            codec.decode(data[:end])
        assert raised.value.reason == "undecodable_body", end
        assert NIN not in str(raised.value)
        assert raised.value.__cause__ is None


def test_trailing_bytes_are_undecodable(codec: Codec) -> None:
    """Bytes after a complete body mean the writer used another schema: undecodable_body."""
    data = codec.encode_event(event_record("admission"))
    with pytest.raises(DecodeError) as raised:
        codec.decode(data + b"\x00")
    assert raised.value.reason == "undecodable_body"


def test_a_body_written_with_another_schema_is_undecodable(codec: Codec) -> None:
    """A body that does not fit the schema its header names is undecodable_body."""
    admission = codec.encode_event(event_record("admission"))
    dead_letter = codec.encode(DEAD_LETTER, dead_letter_record())
    with pytest.raises(DecodeError) as raised:
        codec.decode(admission[:HEADER_SIZE] + dead_letter[HEADER_SIZE:])
    assert raised.value.reason == "undecodable_body"


def test_corrupted_bodies_never_crash_the_decoder(codec: Codec) -> None:
    """Random byte flips decode or raise DecodeError; no other exception escapes."""
    rng = random.Random(20261123)
    data = bytearray(codec.encode_event(event_record("ip_update")))
    failures: list[DecodeError] = []
    for _ in range(2000):
        corrupted = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            corrupted[rng.randrange(HEADER_SIZE, len(data))] = rng.randrange(256)
        try:
            codec.decode(bytes(corrupted))
        except DecodeError as exc:
            failures.append(exc)
    assert failures
    assert {exc.reason for exc in failures} == {"undecodable_body"}
    assert not [exc for exc in failures if NIN in str(exc)]


# --- encode failures ------------------------------------------------------------------------


NAIVE = datetime(2026, 1, 1)  # deliberately naive
MUNICIPAL = "payload.needs_municipal_services"
DISCHARGE_AT = "payload.expected_discharge_at"


@pytest.mark.parametrize(
    ("change", "where"),
    [
        pytest.param(("payload", "needs_municipal_services", "true"), MUNICIPAL, id="bool-str"),
        pytest.param(("payload", "needs_municipal_services", 1), MUNICIPAL, id="bool-int"),
        pytest.param(("payload", "reason", "fever"), "payload.reason", id="enum"),
        pytest.param(("payload", "ward", 7), "payload.ward", id="optional-string"),
        pytest.param(("subject", "nin", 14038512324), "subject.nin", id="nin-int"),
        pytest.param(("source", "agency", "school"), "source.agency", id="agency"),
        pytest.param(("payload", "expected_discharge_at", NAIVE), DISCHARGE_AT, id="naive"),
        pytest.param(("payload", "expected_discharge_at", "2026-01-01Z"), DISCHARGE_AT, id="str"),
        pytest.param(("payload", "diagnosis", "F19"), "diagnosis", id="extra-field"),
        pytest.param(("payload", "reason", ...), "payload.reason", id="missing-field"),
    ],
)
def test_records_that_do_not_match_are_refused_by_field(
    codec: Codec, change: tuple[str, str, Any], where: str
) -> None:
    """EncodeError names the field and never the value."""
    record = event_record("admission")
    part, name, value = change
    if value is ...:
        del record[part][name]
    else:
        record[part][name] = value
    with pytest.raises(EncodeError) as raised:
        codec.encode_event(record)
    message = str(raised.value)
    assert where in message
    assert NIN not in message
    assert "fever" not in message
    assert raised.value.__cause__ is None


def test_encoding_needs_a_known_schema(codec: Codec) -> None:
    """Unknown schema names and event types are EncodeErrors."""
    with pytest.raises(EncodeError, match="no schema named"):
        codec.encode("no.carebus.v1.Nothing", {})
    with pytest.raises(EncodeError, match="no schema for event type"):
        codec.encode_event({**event_record("admission"), "event_type": "arrest"})
    with pytest.raises(EncodeError, match="no event_type"):
        codec.encode_event({})


def test_an_event_record_must_match_its_own_type(codec: Codec) -> None:
    """A discharge payload under event_type admission does not encode."""
    record = event_record("admission")
    record["payload"] = event_record("discharge")["payload"]
    with pytest.raises(
        EncodeError, match=re.escape("not a field of no.carebus.v1.AdmissionPayload")
    ):
        codec.encode_event(record)


# --- reading data written with a released schema --------------------------------------------


def test_released_writers_are_read_with_the_current_schema(tmp_path: Path) -> None:
    """Data written with release 1 decodes under a current schema that gained a field."""
    documents = {path.name: json.loads(path.read_text()) for path in SCHEMA_DIR.glob("*.avsc")}
    released = expand_schemas(documents)
    evolved = copy.deepcopy(documents)
    payload = evolved["admission.avsc"]["fields"][-1]["type"]
    payload["fields"].append({"name": "bed", "type": ["null", "string"], "default": None})
    old = Codec(SchemaCatalogue(released))
    new = Codec(SchemaCatalogue(expand_schemas(evolved), {1: released}))

    record = event_record("admission")
    old_data = old.encode_event(record)
    decoded = new.decode(old_data)
    assert decoded.schema_name == "no.carebus.v1.AdmissionEvent"
    assert decoded.fingerprint == old_data[2:HEADER_SIZE].hex()
    assert decoded.record["payload"]["bed"] is None
    assert decoded.record["payload"]["reason"] == "overdose"
    new_data = new.encode_event({**record, "payload": {**record["payload"], "bed": "12"}})
    assert new_data[2:HEADER_SIZE] != old_data[2:HEADER_SIZE]
    assert new.decode(new_data).record["payload"]["bed"] == "12"


def test_the_released_schemas_are_loaded(codec: Codec) -> None:
    """Release 1 is on disk and every released schema is a known writer."""
    assert 1 in codec.catalogue.release_numbers
    for entry in codec.catalogue.release(1).values():
        assert codec.catalogue.writer(entry.fingerprint) is not None


# --- expansion, formatting and freezing -----------------------------------------------------


def test_expansion_qualifies_names_by_namespace() -> None:
    """References resolve in the enclosing namespace; full names are kept as given."""
    documents = {
        "shared.avsc": [
            {"type": "enum", "name": "Colour", "namespace": "a.b", "symbols": ["red"]},
            {"type": "fixed", "name": "x.y.Id", "size": 2},
        ],
        "thing.avsc": {
            "type": "record",
            "name": "Thing",
            "namespace": "a.b",
            "fields": [
                {"name": "first", "type": "Colour"},
                {"name": "second", "type": {"type": "array", "items": "a.b.Colour"}},
                {"name": "id", "type": "x.y.Id"},
                {
                    "name": "inner",
                    "type": {
                        "type": "record",
                        "name": "Inner",
                        "namespace": "c",
                        "fields": [{"name": "colour", "type": "a.b.Colour"}],
                    },
                },
                {"name": "again", "type": ["null", "c.Inner"], "default": None},
            ],
        },
    }
    expanded = expand_schemas(documents)
    assert list(expanded) == ["a.b.Thing"]
    fields = {f["name"]: f["type"] for f in expanded["a.b.Thing"]["fields"]}
    assert fields["first"] == {"type": "enum", "name": "a.b.Colour", "symbols": ["red"]}
    assert fields["second"] == {"type": "array", "items": "a.b.Colour"}
    assert fields["id"] == {"type": "fixed", "name": "x.y.Id", "size": 2}
    assert fields["inner"]["name"] == "c.Inner"
    assert fields["again"] == ["null", "c.Inner"]
    fastavro.parse_schema(expanded["a.b.Thing"])


def test_expansion_refuses_unknown_and_conflicting_names() -> None:
    """An undefined reference or a name defined twice differently is a SchemaError."""
    with pytest.raises(SchemaError, match=re.escape("unknown type a.Missing")):
        expand_schemas(
            {
                "t.avsc": {
                    "type": "record",
                    "name": "a.T",
                    "fields": [{"name": "m", "type": "Missing"}],
                }
            }
        )
    enum_a = {"type": "enum", "name": "a.E", "symbols": ["x"]}
    enum_b = {"type": "enum", "name": "a.E", "symbols": ["y"]}
    with pytest.raises(SchemaError, match="defined twice"):
        expand_schemas({"1.avsc": [enum_a], "2.avsc": [enum_b]})
    with pytest.raises(SchemaError, match="named type"):
        expand_schemas({"t.avsc": {"type": "array", "items": "string"}})
    with pytest.raises(SchemaError, match="not an Avro schema"):
        expand_schemas({"t.avsc": {"name": "x"}})
    assert SchemaCatalogue.load(Path(__file__).parent / "no-such-dir").names == ()
    with pytest.raises(SchemaError, match="no release 9"):
        SchemaCatalogue({}).release(9)
    with pytest.raises(SchemaError, match="no schema named"):
        SchemaCatalogue({}).get("x")


def test_a_broken_schema_file_is_named(tmp_path: Path) -> None:
    """A schema file that is not JSON is reported with its path."""
    (tmp_path / "broken.avsc").write_text("{not json")
    with pytest.raises(SchemaError, match=re.escape("broken.avsc: not JSON")):
        SchemaCatalogue.load(tmp_path)


def test_format_schema_is_the_same_json() -> None:
    """format_schema only changes layout."""
    for path in SCHEMA_DIR.glob("*.avsc"):
        schema = json.loads(path.read_text())
        assert json.loads(format_schema(schema)) == schema


def test_the_schema_files_are_formatted(codec: Codec) -> None:
    """Schema files are in format_schema layout, so a review diff shows only real changes."""
    for path in [*SCHEMA_DIR.glob("*.avsc"), *SCHEMA_DIR.glob("released/*/*.avsc")]:
        text = path.read_text(encoding="utf-8")
        assert text == format_schema(json.loads(text)) + "\n", path.name


def test_write_release_freezes(tmp_path: Path, codec: Codec) -> None:
    """write_release writes one expanded file per schema and never overwrites a change."""
    written = write_release(tmp_path / "1", codec.catalogue)
    assert sorted(p.name for p in written) == sorted(f"{n}.avsc" for n in codec.catalogue.names)
    assert write_release(tmp_path / "1", codec.catalogue) == written  # same content: fine
    target = tmp_path / "1" / "no.carebus.v1.DeadLetter.avsc"
    target.write_text(target.read_text().replace('"detail"', '"details"'))
    with pytest.raises(SchemaError, match="frozen"):
        write_release(tmp_path / "1", codec.catalogue)
    reloaded = json.loads((tmp_path / "1" / "no.carebus.v1.AdmissionEvent.avsc").read_text())
    assert reloaded == codec.catalogue.get("no.carebus.v1.AdmissionEvent").schema
