"""Avro single-object encoding of every carebus record, with schemas resolved by fingerprint."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import fastavro
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from carebus.domain.events import EVENT_TYPES
from carebus.domain.records import event_schema_name
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.avro_writer import MismatchError, compile_writer

SCHEMA_DIR: Final = PROJECT_ROOT / "schemas" / "avro"
MAGIC: Final = b"\xc3\x01"
HEADER_SIZE: Final = len(MAGIC) + 8

PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_NAMED: Final = frozenset({"record", "error", "enum", "fixed"})


class SchemaError(Exception):
    """A schema file is malformed, or a schema name or release is not what was asked for."""


class EncodeError(ValueError):
    """A record does not match its schema; the message names the field, never its value."""


class DecodeError(Exception):
    """Bytes that are not a carebus record; `reason` is a dead-letter reason code.

    Reasons: `not_single_object`, `unknown_schema`, `undecodable_body`. The message never
    contains the bytes or anything decoded from them.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def fingerprint_of(canonical_form: str) -> bytes:
    """The CRC-64-AVRO fingerprint of a parsing canonical form, as the 8 little-endian bytes.

    fastavro returns the hex of the little-endian bytes, the order the single-object header
    uses (checked against the spec's algorithm in tests/unit/test_codec.py).
    """
    return bytes.fromhex(_fastavro_fingerprint(canonical_form, "CRC-64-AVRO"))


# --- schema expansion -----------------------------------------------------------------------

Schema = Any  # a JSON schema: a name, a list (union) or an object


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _qualify(schema: Schema, namespace: str) -> Schema:
    """A copy of `schema` whose every name and reference is a full name, without `namespace`."""
    if isinstance(schema, str):
        return schema if schema in PRIMITIVES else _fullname(schema, namespace)
    if isinstance(schema, list):
        return [_qualify(branch, namespace) for branch in schema]
    if not isinstance(schema, dict) or "type" not in schema:
        raise SchemaError(f"not an Avro schema: {schema!r}")
    kind = schema["type"]
    qualified = {key: value for key, value in schema.items() if key != "namespace"}
    if kind in _NAMED:
        name = _fullname(schema["name"], schema.get("namespace", namespace))
        qualified["name"] = name
        if kind in ("record", "error"):
            inner = name.rpartition(".")[0]
            qualified["fields"] = [
                {**f, "type": _qualify(f["type"], inner)} for f in schema["fields"]
            ]
    elif kind == "array":
        qualified["items"] = _qualify(schema["items"], namespace)
    elif kind == "map":
        qualified["values"] = _qualify(schema["values"], namespace)
    elif kind not in PRIMITIVES:
        qualified["type"] = _qualify(kind, namespace)
    return qualified


def _definitions(schema: Schema, found: dict[str, Schema]) -> None:
    """Collect every named type defined in a qualified schema, by full name."""
    if isinstance(schema, list):
        for branch in schema:
            _definitions(branch, found)
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in _NAMED:
            if schema["name"] in found and found[schema["name"]] != schema:
                raise SchemaError(f"{schema['name']} is defined twice, differently")
            found[schema["name"]] = schema
            for f in schema.get("fields", ()):
                _definitions(f["type"], found)
        elif kind == "array":
            _definitions(schema["items"], found)
        elif kind == "map":
            _definitions(schema["values"], found)
        elif not isinstance(kind, str) or kind not in PRIMITIVES:
            _definitions(kind, found)


def _expand(schema: Schema, definitions: Mapping[str, Schema], defined: set[str]) -> Schema:
    """Inline each named type at its first use and refer to it by full name afterwards.

    fastavro's own `expand_schema` inlines one level only and repeats a definition at every
    use, which is not a valid schema; fingerprints must cover the whole self-contained form.
    """
    if isinstance(schema, str):
        if schema in PRIMITIVES or schema in defined:
            return schema
        if schema not in definitions:
            raise SchemaError(f"unknown type {schema}")
        return _expand(definitions[schema], definitions, defined)
    if isinstance(schema, list):
        return [_expand(branch, definitions, defined) for branch in schema]
    kind = schema["type"]
    if kind in _NAMED:
        if schema["name"] in defined:
            return schema["name"]
        defined.add(schema["name"])
        if kind in ("record", "error"):
            fields = [
                {**f, "type": _expand(f["type"], definitions, defined)} for f in schema["fields"]
            ]
            return {**schema, "fields": fields}
        return dict(schema)
    if kind == "array":
        return {**schema, "items": _expand(schema["items"], definitions, defined)}
    if kind == "map":
        return {**schema, "values": _expand(schema["values"], definitions, defined)}
    if kind in PRIMITIVES:
        return dict(schema)
    return {**schema, "type": _expand(kind, definitions, defined)}


def expand_schemas(documents: Mapping[str, Schema]) -> dict[str, Schema]:
    """Self-contained schemas from schema documents that refer to each other's named types.

    A document that is a JSON list holds shared named types only; every other document is a
    top-level schema and is returned, expanded, under its full name.
    """
    qualified = {source: _qualify(document, "") for source, document in documents.items()}
    definitions: dict[str, Schema] = {}
    for document in qualified.values():
        _definitions(document, definitions)
    expanded: dict[str, Schema] = {}
    for source, document in qualified.items():
        if isinstance(document, list):
            continue
        if not isinstance(document, dict) or document.get("type") not in _NAMED:
            raise SchemaError(f"{source}: a top-level schema must be a named type")
        expanded[document["name"]] = _expand(document, definitions, set())
    return expanded


def _named_types(schema: Schema, found: dict[str, Schema]) -> dict[str, Schema]:
    _definitions(schema, found)
    return found


def format_schema(schema: Schema, indent: int = 0, width: int = 100) -> str:
    """JSON for a schema file: values that fit on a line stay on one line."""
    compact = json.dumps(schema, ensure_ascii=False, separators=(", ", ": "))
    if len(compact) + indent <= width or not isinstance(schema, dict | list) or not schema:
        return compact
    pad = " " * (indent + 2)
    if isinstance(schema, dict):
        lines = [
            f"{pad}{json.dumps(key, ensure_ascii=False)}: {format_schema(value, indent + 2, width)}"
            for key, value in schema.items()
        ]
        return "{\n" + ",\n".join(lines) + "\n" + " " * indent + "}"
    lines = [pad + format_schema(value, indent + 2, width) for value in schema]
    return "[\n" + ",\n".join(lines) + "\n" + " " * indent + "]"


# --- the catalogue --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchemaEntry:
    """One self-contained schema, parsed once, with its canonical form and fingerprint."""

    name: str
    schema: dict[str, Any] = field(repr=False)
    parsed: Any = field(repr=False)
    canonical_form: str = field(repr=False)
    fingerprint: bytes
    # Every named type in the schema by full name, for explaining encode failures.
    named_types: dict[str, Any] = field(repr=False)
    check: Callable[[object], str | None] = field(repr=False)
    # Checks and writes in one pass (carebus.wire.avro_writer); None: check, then fastavro.
    write: Callable[[Any], bytes] | None = field(repr=False)
    header: bytes = field(repr=False)  # the single-object header: C3 01 and the fingerprint

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, written: bool = True) -> SchemaEntry:
        """The entry for `schema`; a released schema (`written=False`) is only ever read, so it
        gets no compiled writer (generating one costs a few ms per schema at every start)."""
        canonical_form = to_parsing_canonical_form(schema)
        fingerprint = fingerprint_of(canonical_form)
        return cls(
            name=schema["name"],
            schema=schema,
            parsed=fastavro.parse_schema(schema),
            canonical_form=canonical_form,
            fingerprint=fingerprint,
            named_types=_named_types(schema, {}),
            check=compile_check(schema),
            write=compile_writer(schema) if written else None,
            header=MAGIC + fingerprint,
        )


def _read_documents(directory: Path) -> dict[str, Schema]:
    documents: dict[str, Schema] = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            documents[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path}: not JSON ({exc})") from exc
    return documents


class SchemaCatalogue:
    """The current schemas by full name, and every known writer schema by fingerprint.

    Released schemas (`released/<n>/`) are writers too: data written with an older release
    is read with the current schema of the same name, by Avro schema resolution.
    """

    def __init__(
        self,
        current: Mapping[str, dict[str, Any]],
        releases: Mapping[int, Mapping[str, dict[str, Any]]] | None = None,
    ) -> None:
        self._current = {name: SchemaEntry.from_schema(s) for name, s in current.items()}
        self._releases = {
            number: {name: SchemaEntry.from_schema(s, written=False) for name, s in schemas.items()}
            for number, schemas in (releases or {}).items()
        }
        self._writers: dict[bytes, SchemaEntry] = {}
        for release in [self._current, *self._releases.values()]:
            for entry in release.values():
                self._writers.setdefault(entry.fingerprint, entry)
        self._event_schemas = {
            event_type: event_schema_name(event_type)
            for event_type in EVENT_TYPES
            if event_schema_name(event_type) in self._current
        }

    @classmethod
    def load(cls, directory: Path = SCHEMA_DIR) -> SchemaCatalogue:
        """The schemas in `directory` (references expanded) and its frozen `released/<n>/`."""
        current = expand_schemas(_read_documents(directory))
        releases: dict[int, dict[str, dict[str, Any]]] = {}
        released_dir = directory / "released"
        if released_dir.is_dir():
            for release_dir in released_dir.iterdir():
                if release_dir.is_dir() and release_dir.name.isdigit():
                    documents = _read_documents(release_dir)
                    # Released files are already self-contained; expanding is a no-op check.
                    releases[int(release_dir.name)] = expand_schemas(documents)
        return cls(current, releases)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._current)

    @property
    def release_numbers(self) -> tuple[int, ...]:
        return tuple(sorted(self._releases))

    def __contains__(self, name: object) -> bool:
        return name in self._current

    def __iter__(self) -> Iterator[SchemaEntry]:
        return iter(self._current.values())

    def get(self, name: str) -> SchemaEntry:
        """The current schema called `name`."""
        try:
            return self._current[name]
        except KeyError:
            raise SchemaError(f"no schema named {name}") from None

    def release(self, number: int) -> Mapping[str, SchemaEntry]:
        """The frozen schemas of release `number` by full name."""
        try:
            return self._releases[number]
        except KeyError:
            raise SchemaError(f"no release {number}") from None

    def writer(self, fingerprint: bytes) -> SchemaEntry | None:
        """The schema, current or released, whose fingerprint is `fingerprint`."""
        return self._writers.get(fingerprint)

    def reader_for(self, writer: SchemaEntry) -> SchemaEntry:
        """The schema to read `writer`'s data with: the current one of the same name."""
        return self._current.get(writer.name, writer)

    def event_schema(self, event_type: str) -> SchemaEntry:
        """The current record schema of `event_type`."""
        try:
            return self._current[self._event_schemas[event_type]]
        except KeyError:
            raise SchemaError(f"no schema for event type {event_type!r}") from None


def write_release(directory: Path, catalogue: SchemaCatalogue | None = None) -> list[Path]:
    """Freeze the current schemas, expanded, as `directory/<fullname>.avsc`.

    A release is immutable: an existing file with different content is an error, not an
    overwrite.
    """
    catalogue = catalogue or SchemaCatalogue.load()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in catalogue:
        path = directory / f"{entry.name}.avsc"
        text = format_schema(entry.schema) + "\n"
        if path.exists() and path.read_text(encoding="utf-8") != text:
            raise SchemaError(f"{path} is frozen and differs from the current schema")
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# --- encoding and decoding ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded record: the schema it was read with, the record, the writer's fingerprint (hex)."""

    schema_name: str
    record: dict[str, Any] = field(repr=False)
    fingerprint: str


class Codec:
    """Encodes records to and decodes them from Avro single-object encoding."""

    def __init__(self, catalogue: SchemaCatalogue) -> None:
        self.catalogue = catalogue

    @classmethod
    def default(cls) -> Codec:
        """The codec over the project's schemas, loaded once per process."""
        return _default_codec()

    def encode(self, schema_name: str, record: Mapping[str, Any]) -> bytes:
        """`record` as C3 01, the schema's fingerprint, then the Avro binary body."""
        try:
            entry = self.catalogue.get(schema_name)
        except SchemaError as exc:
            raise EncodeError(str(exc)) from None
        return self._encode(entry, record)

    def encode_event(self, record: Mapping[str, Any]) -> bytes:
        """An event record, with the schema chosen by its `event_type`."""
        event_type = record.get("event_type")
        if not isinstance(event_type, str):
            raise EncodeError("event record has no event_type")
        try:
            entry = self.catalogue.event_schema(event_type)
        except SchemaError as exc:
            raise EncodeError(str(exc)) from None
        return self._encode(entry, record)

    def _encode(self, entry: SchemaEntry, record: Mapping[str, Any]) -> bytes:
        # fastavro coerces some wrong types silently ("true" for a boolean) and its errors quote
        # the value, which may be a nin: the compiled writer checks each value as it writes it
        # and names only the field path; a schema it cannot compile is checked, then fastavro.
        if entry.write is not None:
            try:
                return entry.header + entry.write(record)
            except MismatchError as mismatch:
                raise EncodeError(f"record does not match {entry.name}: {mismatch}") from None
        problem = entry.check(record)
        if problem is not None:
            raise EncodeError(f"record does not match {entry.name}: {problem}")
        buffer = io.BytesIO()
        buffer.write(entry.header)
        try:
            fastavro.schemaless_writer(buffer, entry.parsed, record)
        except Exception:  # the cause may quote personal data; name no value
            raise EncodeError(f"record does not match {entry.name}") from None
        return buffer.getvalue()

    def decode(self, data: bytes | bytearray | memoryview) -> Decoded:
        """The record in `data`; DecodeError for anything that is not a known carebus record."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("not_single_object", f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise DecodeError(
                "not_single_object", "no Avro single-object header (C3 01 and a fingerprint)"
            )
        fingerprint = data[2:HEADER_SIZE]
        writer = self.catalogue.writer(fingerprint)
        if writer is None:
            raise DecodeError("unknown_schema", f"no schema has fingerprint {fingerprint.hex()}")
        reader = self.catalogue.reader_for(writer)
        buffer = io.BytesIO(data)
        buffer.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(
                buffer, writer.parsed, None if reader is writer else reader.parsed
            )
        except Exception as exc:  # any failure of untrusted bytes is a dead letter
            raise DecodeError(
                "undecodable_body",
                f"body does not decode as {writer.name} ({type(exc).__name__})",
            ) from None
        if buffer.tell() != len(data):
            raise DecodeError(
                "undecodable_body",
                f"{len(data) - buffer.tell()} bytes left over after a {writer.name} body",
            )
        if not isinstance(record, dict):
            raise DecodeError("undecodable_body", f"{writer.name} is not a record schema")
        return Decoded(reader.name, record, fingerprint.hex())


@functools.cache
def _default_codec() -> Codec:
    return Codec(SchemaCatalogue.load(SCHEMA_DIR))


# --- checking a record against its schema ---------------------------------------------------

# A check returns None when the value fits, else (path below the checked value, problem).
# Paths are built only on failure, so a fitting record costs one call per field.
Check = Callable[[object], tuple[str, str] | None]

_INT32: Final = 2**31
_INT64: Final = 2**63
_TIMESTAMPS: Final = frozenset({"timestamp-micros", "timestamp-millis"})


def _is_int(value: object, bound: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -bound <= value < bound


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_PRIMITIVE_TESTS: Final[Mapping[str, Callable[[object], bool]]] = {
    "null": lambda value: value is None,
    "boolean": lambda value: isinstance(value, bool),
    "int": lambda value: _is_int(value, _INT32),
    "long": lambda value: _is_int(value, _INT64),
    "float": _is_number,
    "double": _is_number,
    "bytes": lambda value: isinstance(value, bytes | bytearray),
    "string": lambda value: isinstance(value, str),
}


def _under(name: str, below: str) -> str:
    if not below:
        return name
    return f"{name}{below}" if below.startswith("[") else f"{name}.{below}"


def _describe(schema: Schema) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return " or ".join(_describe(branch) for branch in schema)
    return str(schema.get("name") or schema.get("logicalType") or schema["type"])


def _primitive_check(kind: str) -> Check:
    test = _PRIMITIVE_TESTS[kind]
    problem = ("", f"expected {kind}")

    def check(value: object) -> tuple[str, str] | None:
        return None if test(value) else problem

    return check


def _timestamp_check(value: object) -> tuple[str, str] | None:
    if isinstance(value, datetime):
        return None if value.tzinfo is not None else ("", "expected a timezone-aware datetime")
    return None if _is_int(value, _INT64) else ("", "expected a timezone-aware datetime")


def _union_check(branches: list[Check], schema: list[Schema]) -> Check:
    non_null = [check for check, branch in zip(branches, schema, strict=True) if branch != "null"]
    if len(schema) == 2 and len(non_null) == 1:
        only = non_null[0]

        # [null, T], the optional field: say what is wrong inside T.
        def optional(value: object) -> tuple[str, str] | None:
            return None if value is None else only(value)

        return optional
    problem = ("", f"expected {_describe(schema)}")

    def union(value: object) -> tuple[str, str] | None:
        return None if any(check(value) is None for check in branches) else problem

    return union


def _record_check(schema: Mapping[str, Any], compile_type: Callable[[Schema], Check]) -> Check:
    name = schema["name"]
    fields = [(f["name"], compile_type(f["type"]), "default" in f) for f in schema["fields"]]
    names = frozenset(f["name"] for f in schema["fields"])

    def record(value: object) -> tuple[str, str] | None:
        if not isinstance(value, Mapping):
            return ("", f"expected a {name} record")
        for key in value:
            if key not in names:
                return ("", f"{key} is not a field of {name}")
        for field_name, check, has_default in fields:
            if field_name in value:
                problem = check(value[field_name])
                if problem is not None:
                    return (_under(field_name, problem[0]), problem[1])
            elif not has_default:
                return (field_name, "is required")
        return None

    return record


def _array_check(items: Check) -> Check:
    def array(value: object) -> tuple[str, str] | None:
        if not isinstance(value, list | tuple):
            return ("", "expected an array")
        for index, item in enumerate(value):
            problem = items(item)
            if problem is not None:
                return (_under(f"[{index}]", problem[0]), problem[1])
        return None

    return array


def _map_check(values: Check) -> Check:
    def mapping(value: object) -> tuple[str, str] | None:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return ("", "expected a map with string keys")
        for item in value.values():
            problem = values(item)
            if problem is not None:
                # Map keys are data, possibly personal: the path says "a value", not which.
                return (_under("[*]", problem[0]), problem[1])
        return None

    return mapping


def compile_check(schema: Schema) -> Callable[[object], str | None]:
    """A function telling where a value does not fit the self-contained `schema`, or None.

    The answer is `path: problem` with the field path and never the value, so it is safe to
    raise and log even when the value is personal data.
    """
    named = _named_types(schema, {})
    compiled: dict[str, Check] = {}

    def compile_type(schema: Schema) -> Check:
        if isinstance(schema, str):
            if schema in _PRIMITIVE_TESTS:
                return _primitive_check(schema)
            if schema not in compiled:
                return compile_type(named[schema])
            return lambda value: compiled[schema](value)  # resolved late: types may recurse
        if isinstance(schema, list):
            return _union_check([compile_type(branch) for branch in schema], schema)
        kind = schema["type"]
        if kind in ("record", "error"):
            # Registered before its fields are compiled, so a field may refer to this record.
            compiled[schema["name"]] = lambda value: compiled[schema["name"]](value)
            compiled[schema["name"]] = check = _record_check(schema, compile_type)
            return check
        if kind == "enum":
            symbols = frozenset(schema["symbols"])
            problem = ("", f"expected a symbol of {schema['name']}")
            compiled[schema["name"]] = check = lambda value: (
                None if isinstance(value, str) and value in symbols else problem
            )
            return check
        if kind == "fixed":
            size = schema["size"]
            fixed_problem = ("", f"expected {size} bytes")
            compiled[schema["name"]] = check = lambda value: (
                None
                if isinstance(value, bytes | bytearray) and len(value) == size
                else fixed_problem
            )
            return check
        if kind == "array":
            return _array_check(compile_type(schema["items"]))
        if kind == "map":
            return _map_check(compile_type(schema["values"]))
        if kind == "long" and schema.get("logicalType") in _TIMESTAMPS:
            return _timestamp_check
        return compile_type(kind)

    top = compile_type(schema)

    def check(value: object) -> str | None:
        problem = top(value)
        if problem is None:
            return None
        return f"{problem[0] or 'record'}: {problem[1]}"

    return check
