"""Every current schema must read data of its frozen release and be readable by it (both ways).

The check walks writer and reader schemas by the resolution rules of the Avro specification
("Schema Resolution"), and sample records are round-tripped through fastavro with the two
schemas to confirm that the verdict is what a real reader does.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from carebus.domain.events import EVENT_TYPES, EXAMPLE_PAYLOADS, event_to_record, parse_event
from carebus.domain.records import DEAD_LETTER, event_schema_name
from carebus.wire.codec import PRIMITIVES, SchemaCatalogue

# A writer's type may be read as any of these (spec: "the writer's schema may be promoted").
PROMOTIONS: Mapping[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
NAMED = ("record", "error", "enum", "fixed")


def _named_types(schema: Any, found: dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, found)
    elif isinstance(schema, dict):
        if schema["type"] in NAMED:
            found.setdefault(schema["name"], schema)
        for f in schema.get("fields", ()):
            _named_types(f["type"], found)
        for key in ("items", "values"):
            if key in schema:
                _named_types(schema[key], found)
    return found


def _short(name: str) -> str:
    return name.rpartition(".")[2]


class Resolution:
    """Checks that data written with `writer` can be read with `reader` (expanded schemas)."""

    def __init__(self, writer: Any, reader: Any) -> None:
        self.writer = writer
        self.reader = reader
        self.writer_names = _named_types(writer, {})
        self.reader_names = _named_types(reader, {})
        self.visiting: set[tuple[str, str]] = set()

    def problems(self) -> list[str]:
        name = self.reader.get("name", "") if isinstance(self.reader, dict) else ""
        return self.check(self.writer, self.reader, _short(name) or "schema")

    @staticmethod
    def _deref(schema: Any, names: Mapping[str, Any]) -> Any:
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return names[schema]
        return schema

    @staticmethod
    def _kind(schema: Any) -> str:
        if isinstance(schema, str):
            return schema
        if isinstance(schema, list):
            return "union"
        return str(schema["type"])

    @staticmethod
    def _logical(schema: Any) -> str | None:
        return schema.get("logicalType") if isinstance(schema, dict) else None

    def _matches(self, writer: Any, reader: Any, *, promote: bool) -> bool:
        """The spec's "match" used to pick a reader union branch (names unqualified)."""
        w_kind, r_kind = self._kind(writer), self._kind(reader)
        if w_kind == r_kind:
            if w_kind in NAMED:
                return _short(writer["name"]) == _short(reader["name"])
            return True
        return promote and r_kind in PROMOTIONS.get(w_kind, frozenset())

    def check(self, writer: Any, reader: Any, path: str) -> list[str]:
        writer = self._deref(writer, self.writer_names)
        reader = self._deref(reader, self.reader_names)
        w_kind, r_kind = self._kind(writer), self._kind(reader)

        if w_kind == "union":
            # Any branch may have been written, so every branch must be readable.
            found: list[str] = []
            for index, branch in enumerate(writer):
                found += self.check(branch, reader, f"{path}<branch {index}>")
            return found
        if r_kind == "union":
            branches = [self._deref(b, self.reader_names) for b in reader]
            for promote in (False, True):
                for branch in branches:
                    if self._matches(writer, branch, promote=promote):
                        return self.check(writer, branch, path)
            return [f"{path}: the writer's {w_kind} matches no branch of the reader's union"]
        if w_kind != r_kind:
            if r_kind in PROMOTIONS.get(w_kind, frozenset()):
                return []
            return [f"{path}: the writer's {w_kind} cannot be read as {r_kind}"]
        if self._logical(writer) != self._logical(reader):
            # Legal by the spec's letter (the underlying types match) but not the same data.
            return [f"{path}: logical type {self._logical(writer)} read as {self._logical(reader)}"]
        if w_kind in NAMED and _short(writer["name"]) != _short(reader["name"]):
            return [f"{path}: {writer['name']} cannot be read as {reader['name']}"]

        if w_kind in ("record", "error"):
            return self._record(writer, reader, path)
        if w_kind == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and reader.get("default") not in reader["symbols"]:
                return [f"{path}: the reader lacks symbols {missing} and has no default"]
            return []
        if w_kind == "fixed" and writer["size"] != reader["size"]:
            return [f"{path}: fixed size {writer['size']} read as {reader['size']}"]
        if w_kind == "array":
            return self.check(writer["items"], reader["items"], f"{path}[]")
        if w_kind == "map":
            return self.check(writer["values"], reader["values"], f"{path}{{}}")
        return []

    def _record(self, writer: dict[str, Any], reader: dict[str, Any], path: str) -> list[str]:
        key = (writer["name"], reader["name"])
        if key in self.visiting:
            return []  # a recursive type already being checked further up
        self.visiting.add(key)
        writer_fields = {f["name"]: f for f in writer["fields"]}
        found: list[str] = []
        for field in reader["fields"]:
            names = [field["name"], *field.get("aliases", ())]
            source = next((writer_fields[n] for n in names if n in writer_fields), None)
            if source is not None:
                found += self.check(source["type"], field["type"], f"{path}.{field['name']}")
            elif "default" not in field:
                found.append(f"{path}.{field['name']}: not written and the reader has no default")
        self.visiting.discard(key)
        return found


def incompatibilities(writer: Any, reader: Any) -> list[str]:
    """Why data written with `writer` cannot be read with `reader`; empty if it can."""
    return Resolution(writer, reader).problems()


# --- samples and helpers --------------------------------------------------------------------

NIN = "14038512324"
RECEIVED_AT = datetime(2026, 11, 23, 7, 15, 1, tzinfo=UTC)


def sample_record(event_type: str, **payload: Any) -> dict[str, Any]:
    raw = {
        "event_id": f"dps-974705788-{event_type}",
        "event_type": event_type,
        "occurred_at": "2026-11-23T08:15:00+01:00",
        "source": {"agency": "dps", "org_id": "974705788", "system": "DIPS"},
        "subject": {"nin": NIN},
        "payload": {**EXAMPLE_PAYLOADS[event_type], **payload},
        "emergency": {
            "justification": "risk",
            "accountable": "A",
            "recipients": [{"agency": "police", "org_id": "974760673"}],
        },
    }
    event, problems = parse_event(raw)
    assert event is not None, problems
    return event_to_record(event, "ab" * 32, RECEIVED_AT)


def dead_letter_sample() -> dict[str, Any]:
    return {
        "reason": "unknown_schema",
        "detail": "no schema has fingerprint 0011223344556677",
        "source_topic": "care.events.v1",
        "source_partition": 1,
        "source_offset": 42,
        "consumer": "router",
        "original_key": None,
        "original_value": b"\xc3\x01",
        "dead_lettered_at": RECEIVED_AT,
    }


def samples(name: str) -> list[dict[str, Any]]:
    if name == DEAD_LETTER:
        return [dead_letter_sample()]
    event_type = next(t for t in EVENT_TYPES if event_schema_name(t) == name)
    return [sample_record(event_type)]


def read_as(writer: Any, reader: Any, record: Mapping[str, Any]) -> Any:
    """Write `record` with `writer`, read it back with `reader`, as fastavro does."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(copy.deepcopy(writer)), record)
    buffer.seek(0)
    return fastavro.schemaless_reader(
        buffer,
        fastavro.parse_schema(copy.deepcopy(writer)),
        fastavro.parse_schema(copy.deepcopy(reader)),
    )


@pytest.fixture(scope="module")
def catalogue() -> SchemaCatalogue:
    return SchemaCatalogue.load()


def released_pairs() -> list[Any]:
    catalogue = SchemaCatalogue.load()
    return [
        pytest.param(number, name, id=f"{number}-{_short(name)}")
        for number in catalogue.release_numbers
        for name in catalogue.release(number)
    ]


# --- the release check ----------------------------------------------------------------------


# Event schemas added after the last release; the next release freezes them (schemas/avro/README).
NOT_YET_RELEASED = frozenset(
    event_schema_name(name)
    for name in (
        "retraction",
        "followup_scheduled",
        "treatment_interrupted",
        "prison_release",
        "housing_waitlisted",
        "temporary_housing_started",
        "temporary_housing_ended",
        "tenancy_at_risk",
        "brukerplan_assessment",
        "somatic_check_done",
        "somatic_referral",
    )
)


def test_there_is_a_release(catalogue: SchemaCatalogue) -> None:
    """Release 1 is frozen and holds every event schema (but those added since) and the dead
    letter."""
    assert 1 in catalogue.release_numbers
    released = set(catalogue.release(1))
    expected = {event_schema_name(t) for t in EVENT_TYPES} - NOT_YET_RELEASED
    assert expected | {DEAD_LETTER} <= released
    assert not NOT_YET_RELEASED & released, "released now: take it out of NOT_YET_RELEASED"


@pytest.mark.parametrize(("number", "name"), released_pairs())
def test_current_schema_is_compatible_both_ways_with_its_release(
    catalogue: SchemaCatalogue, number: int, name: str
) -> None:
    """The current schema reads released data, and the release reads current data."""
    assert name in catalogue, f"{name} was released in {number} and must not be removed"
    current = catalogue.get(name).schema
    released = catalogue.release(number)[name].schema
    assert incompatibilities(released, current) == []
    assert incompatibilities(current, released) == []


@pytest.mark.parametrize(("number", "name"), released_pairs())
def test_samples_round_trip_between_current_and_released(
    catalogue: SchemaCatalogue, number: int, name: str
) -> None:
    """fastavro reads released-writer data with the current reader, and the other way: the
    fields added since the release are dropped by its readers and read as their defaults from
    its data, every other value is kept."""
    current = catalogue.get(name).schema
    released = catalogue.release(number)[name].schema
    for record in samples(name):
        old = as_read_by(released, record)
        assert read_as(released, current, record) == as_read_by(current, old)
        assert read_as(current, released, record) == old


def as_read_by(reader: Any, record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` as a reader of schema `reader` sees it: payload fields it does not know dropped,
    those only it knows at their defaults (the envelope is the same in every release)."""
    fields = {f["name"]: f for f in reader["fields"]}
    if "payload" not in fields:
        return dict(record)
    payload = record["payload"]
    return {
        **record,
        "payload": {
            f["name"]: payload[f["name"]] if f["name"] in payload else f["default"]
            for f in fields["payload"]["type"]["fields"]
        },
    }


def test_fields_added_since_the_release_are_defaults_to_its_data_and_unseen_by_its_readers(
    catalogue: SchemaCatalogue,
) -> None:
    """A released reader reads a discharge with kind and a DPS contact without them; data a
    released writer wrote reads with kind unknown and the contact null."""
    name = event_schema_name("discharge")
    current = catalogue.get(name).schema
    released = catalogue.release(1)[name].schema
    record = sample_record("discharge", kind="against_advice", dps_contact="Vakt, 22 00 00 00")
    old = read_as(current, released, record)
    assert "kind" not in old["payload"]
    assert "dps_contact" not in old["payload"]
    assert old["payload"]["crisis_plan"] is True
    new = read_as(released, current, record)["payload"]
    assert (new["kind"], new["dps_contact"], new["crisis_plan_id"]) == ("unknown", None, None)
    name = event_schema_name("application_received")
    application = sample_record("application_received")
    received = read_as(catalogue.release(1)[name].schema, catalogue.get(name).schema, application)
    assert received["payload"]["service_kind"] is None


# --- the check must catch incompatible changes ----------------------------------------------


def _admission(catalogue: SchemaCatalogue) -> dict[str, Any]:
    return copy.deepcopy(catalogue.get(event_schema_name("admission")).schema)


def _payload_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    payload = schema["fields"][-1]
    assert payload["name"] == "payload"
    fields: list[dict[str, Any]] = payload["type"]["fields"]
    return fields


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in _payload_fields(schema) if f["name"] == name)


def test_adding_a_required_field_is_incompatible(catalogue: SchemaCatalogue) -> None:
    """A new field without a default cannot be filled from released data."""
    released = _admission(catalogue)
    changed = _admission(catalogue)
    _payload_fields(changed).append({"name": "bed", "type": "string"})
    problems = incompatibilities(released, changed)
    assert problems == ["AdmissionEvent.payload.bed: not written and the reader has no default"]
    assert incompatibilities(changed, released) == []  # only one direction fails
    with pytest.raises(fastavro.read.SchemaResolutionError):
        read_as(released, changed, sample_record("admission"))


def test_removing_a_required_field_is_incompatible(catalogue: SchemaCatalogue) -> None:
    """Dropping a field the released reader needs breaks old readers."""
    released = _admission(catalogue)
    changed = _admission(catalogue)
    changed["fields"][-1]["type"]["fields"] = [
        f for f in _payload_fields(changed) if f["name"] != "reason"
    ]
    problems = incompatibilities(changed, released)
    assert problems == [
        "AdmissionEvent.payload.reason: not written and the reader has no default",
    ]
    assert incompatibilities(released, changed) == []


def test_removing_an_enum_symbol_without_default_is_incompatible(
    catalogue: SchemaCatalogue,
) -> None:
    """A reader that lost a symbol and has no default cannot read records that use it."""
    released = _admission(catalogue)
    changed = _admission(catalogue)
    reason = _field(changed, "reason")["type"]
    reason["symbols"].remove("psychosis")
    del reason["default"]
    problems = incompatibilities(released, changed)
    assert len(problems) == 1
    assert "payload.reason" in problems[0]
    assert "psychosis" in problems[0]
    with pytest.raises(fastavro.read.SchemaResolutionError):
        read_as(released, changed, sample_record("admission", reason="psychosis"))


def test_a_new_enum_symbol_is_read_as_the_default(catalogue: SchemaCatalogue) -> None:
    """A symbol the released reader does not know becomes its default: compatible."""
    released = _admission(catalogue)
    changed = _admission(catalogue)
    _field(changed, "reason")["type"]["symbols"].insert(0, "alcohol_poisoning")
    assert incompatibilities(changed, released) == []
    assert incompatibilities(released, changed) == []
    record = read_as(changed, released, sample_record("admission", reason="overdose"))
    assert record["payload"]["reason"] == "overdose"
    written = sample_record("admission")
    written["payload"]["reason"] = "alcohol_poisoning"
    assert read_as(changed, released, written)["payload"]["reason"] == "other"


def test_changing_a_field_type_is_incompatible(catalogue: SchemaCatalogue) -> None:
    """A string field that becomes an int cannot be read either way."""
    released = _admission(catalogue)
    changed = _admission(catalogue)
    _field(changed, "ward")["type"] = ["null", "int"]
    assert incompatibilities(released, changed) == [
        "AdmissionEvent.payload.ward<branch 1>: the writer's string matches no branch of the"
        " reader's union"
    ]
    assert len(incompatibilities(changed, released)) == 1
    with pytest.raises(fastavro.read.SchemaResolutionError):
        read_as(released, changed, sample_record("admission"))


def test_making_a_field_required_is_incompatible_for_null_data(
    catalogue: SchemaCatalogue,
) -> None:
    """An optional field turned required cannot read the null branch of released data."""
    released = _admission(catalogue)
    changed = _admission(catalogue)
    ward = _field(changed, "ward")
    ward["type"] = "string"
    del ward["default"]
    problems = incompatibilities(released, changed)
    assert problems == [
        "AdmissionEvent.payload.ward<branch 0>: the writer's null cannot be read as string"
    ]


def test_widening_int_to_long_is_compatible_one_way_only(catalogue: SchemaCatalogue) -> None:
    """A promotion lets the new reader read old data, but old readers cannot read long."""
    released = copy.deepcopy(catalogue.get(DEAD_LETTER).schema)
    changed = copy.deepcopy(released)
    next(f for f in changed["fields"] if f["name"] == "source_partition")["type"] = "long"
    assert incompatibilities(released, changed) == []
    assert incompatibilities(changed, released) == [
        "DeadLetter.source_partition: the writer's long cannot be read as int"
    ]
    assert read_as(released, changed, dead_letter_sample())["source_partition"] == 1


def test_renaming_a_record_is_incompatible(catalogue: SchemaCatalogue) -> None:
    """Records resolve by name: a renamed payload record is another type."""
    released = _admission(catalogue)
    changed = _admission(catalogue)
    changed["fields"][-1]["type"]["name"] = "no.carebus.v1.HospitalAdmissionPayload"
    problems = incompatibilities(released, changed)
    assert len(problems) == 1
    assert "HospitalAdmissionPayload" in problems[0]


def test_changing_a_logical_type_is_flagged(catalogue: SchemaCatalogue) -> None:
    """Millis read as micros is the same long but another time: flagged."""
    released = _admission(catalogue)
    changed = _admission(catalogue)
    changed["fields"][2]["type"] = {"type": "long", "logicalType": "timestamp-millis"}
    assert incompatibilities(released, changed) == [
        "AdmissionEvent.occurred_at: logical type timestamp-micros read as timestamp-millis"
    ]


def test_adding_an_optional_field_is_compatible_both_ways(catalogue: SchemaCatalogue) -> None:
    """The contract's way to evolve: optional fields with a null default."""
    released = _admission(catalogue)
    changed = _admission(catalogue)
    _payload_fields(changed).append({"name": "bed", "type": ["null", "string"], "default": None})
    assert incompatibilities(released, changed) == []
    assert incompatibilities(changed, released) == []
    assert read_as(released, changed, sample_record("admission"))["payload"]["bed"] is None


# --- the checker's own rules on small schemas -----------------------------------------------


@pytest.mark.parametrize(
    ("writer", "reader", "compatible"),
    [
        pytest.param("int", "long", True, id="int-long"),
        pytest.param("int", "double", True, id="int-double"),
        pytest.param("long", "int", False, id="long-int"),
        pytest.param("string", "bytes", True, id="string-bytes"),
        pytest.param("boolean", "int", False, id="boolean-int"),
        pytest.param("int", ["null", "long"], True, id="into-union-promoted"),
        pytest.param(["null", "int"], "int", False, id="union-into-non-union"),
        pytest.param(["null", "int"], ["int", "null"], True, id="union-reordered"),
        pytest.param(
            {"type": "array", "items": "int"}, {"type": "array", "items": "long"}, True, id="array"
        ),
        pytest.param(
            {"type": "map", "values": "long"}, {"type": "map", "values": "int"}, False, id="map"
        ),
        pytest.param(
            {"type": "fixed", "name": "a.F", "size": 4},
            {"type": "fixed", "name": "b.F", "size": 4},
            True,
            id="fixed-unqualified-name",
        ),
        pytest.param(
            {"type": "fixed", "name": "F", "size": 4},
            {"type": "fixed", "name": "F", "size": 8},
            False,
            id="fixed-size",
        ),
        pytest.param(
            {"type": "enum", "name": "E", "symbols": ["a", "b"]},
            {"type": "enum", "name": "E", "symbols": ["a"], "default": "a"},
            True,
            id="enum-default",
        ),
        pytest.param(
            {"type": "enum", "name": "E", "symbols": ["a", "b"]},
            {"type": "enum", "name": "E", "symbols": ["a"]},
            False,
            id="enum-no-default",
        ),
    ],
)
def test_resolution_rules(writer: Any, reader: Any, compatible: bool) -> None:
    """The checker follows the specification's promotion, union, enum and fixed rules."""
    assert (incompatibilities(writer, reader) == []) is compatible


def test_recursive_records_terminate() -> None:
    """A self-referencing record is checked without recursing forever."""
    node: dict[str, Any] = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "value", "type": "int"},
            {"name": "next", "type": ["null", "Node"], "default": None},
        ],
    }
    wider = copy.deepcopy(node)
    wider["fields"][0]["type"] = "long"
    assert incompatibilities(node, wider) == []
    assert incompatibilities(wider, node) == ["Node.value: the writer's long cannot be read as int"]


def test_reader_field_aliases_count_as_the_writer_field() -> None:
    """A reader field renamed with an alias still reads the old field."""
    writer = {"type": "record", "name": "R", "fields": [{"name": "old", "type": "int"}]}
    reader = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "new", "aliases": ["old"], "type": "int"}],
    }
    assert incompatibilities(writer, reader) == []
