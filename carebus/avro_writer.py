"""Avro binary encoding compiled from a schema: checks and writes a record in one pass.

fastavro writes fast but coerces some wrong types silently ("true" for a boolean) and quotes
values in its errors, so every record used to be checked by a separate pass first; together
the two cost ~60 µs for a router delivery. `compile_writer` turns a self-contained schema into
closures that test each value's type as they write it and, on a mismatch, name the field path
and the problem, never the value. The bytes are exactly fastavro's (tests compare them for
every schema). Schemas with a logical type or a union not handled here get None, and the codec
keeps the check-then-fastavro path for them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

Schema = Any
Write = Callable[[Any, bytearray], None]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_INT32: Final = 2**31
_INT64: Final = 2**63
_FLOAT: Final = struct.Struct("<f")
_DOUBLE: Final = struct.Struct("<d")
_TIMESTAMP_SCALE: Final = {"timestamp-micros": 1, "timestamp-millis": 1000}
_ABSENT: Final = object()


class MismatchError(Exception):
    """A value does not fit its schema: where (a field path) and what is wrong, never the value."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem

    def under(self, name: str) -> MismatchError:
        if not self.path:
            return MismatchError(name, self.problem)
        joined = f"{name}{self.path}" if self.path.startswith("[") else f"{name}.{self.path}"
        return MismatchError(joined, self.problem)

    def __str__(self) -> str:
        return f"{self.path or 'record'}: {self.problem}"


class UnsupportedSchemaError(Exception):
    """The schema uses something this writer does not encode (the codec uses fastavro)."""


def write_long(value: int, out: bytearray) -> None:
    """Zig-zag varint, as Avro writes int and long."""
    if 0 <= value < 64:
        out.append(value << 1)
        return
    value = (value << 1) ^ (value >> 63)
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _null(value: Any, out: bytearray) -> None:
    if value is not None:
        raise MismatchError("", "expected null")


def _boolean(value: Any, out: bytearray) -> None:
    if value is True:
        out.append(1)
    elif value is False:
        out.append(0)
    else:
        raise MismatchError("", "expected boolean")


def _integer(kind: str, bound: int) -> Write:
    problem = f"expected {kind}"

    def integer(value: Any, out: bytearray) -> None:
        if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
            raise MismatchError("", problem)
        if not -bound <= value < bound:
            raise MismatchError("", problem)
        write_long(value, out)

    return integer


def _real(kind: str, packer: struct.Struct) -> Write:
    problem = f"expected {kind}"

    def real(value: Any, out: bytearray) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise MismatchError("", problem)
        out += packer.pack(value)

    return real


def _bytes(value: Any, out: bytearray) -> None:
    if not isinstance(value, bytes | bytearray):
        raise MismatchError("", "expected bytes")
    write_long(len(value), out)
    out += value


def _string(value: Any, out: bytearray) -> None:
    if type(value) is not str and not isinstance(value, str):
        raise MismatchError("", "expected string")
    try:
        data = value.encode()
    except UnicodeEncodeError:
        raise MismatchError("", "expected a string of valid Unicode") from None
    size = len(data)
    if size < 64:
        out.append(size << 1)
    else:
        write_long(size, out)
    out += data


_PRIMITIVES: Final[Mapping[str, Write]] = {
    "null": _null,
    "boolean": _boolean,
    "int": _integer("int", _INT32),
    "long": _integer("long", _INT64),
    "float": _real("float", _FLOAT),
    "double": _real("double", _DOUBLE),
    "bytes": _bytes,
    "string": _string,
}


def _timestamp(scale: int) -> Write:
    problem = "expected a timezone-aware datetime"

    def timestamp(value: Any, out: bytearray) -> None:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise MismatchError("", problem)
            delta = value - _EPOCH
            micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            write_long(micros // scale, out)
        elif isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64:
            write_long(value, out)
        else:
            raise MismatchError("", problem)

    return timestamp


def _enum(schema: Mapping[str, Any]) -> Write:
    index = {symbol: position for position, symbol in enumerate(schema["symbols"])}
    problem = f"expected a symbol of {schema['name']}"

    def enum(value: Any, out: bytearray) -> None:
        position = index.get(value) if isinstance(value, str) else None
        if position is None:
            raise MismatchError("", problem)
        write_long(position, out)

    return enum


def _fixed(schema: Mapping[str, Any]) -> Write:
    size = schema["size"]
    problem = f"expected {size} bytes"

    def fixed(value: Any, out: bytearray) -> None:
        if not isinstance(value, bytes | bytearray) or len(value) != size:
            raise MismatchError("", problem)
        out += value

    return fixed


def _array(items: Write) -> Write:
    def array(value: Any, out: bytearray) -> None:
        if not isinstance(value, list | tuple):
            raise MismatchError("", "expected an array")
        if value:
            write_long(len(value), out)
            for position, item in enumerate(value):
                try:
                    items(item, out)
                except MismatchError as mismatch:
                    raise mismatch.under(f"[{position}]") from None
        out.append(0)

    return array


def _map(values: Write) -> Write:
    def mapping(value: Any, out: bytearray) -> None:
        if not isinstance(value, Mapping):
            raise MismatchError("", "expected a map with string keys")
        if value:
            write_long(len(value), out)
            for key, item in value.items():
                if not isinstance(key, str):
                    raise MismatchError("", "expected a map with string keys")
                _string(key, out)
                try:
                    values(item, out)
                except MismatchError as mismatch:
                    # Map keys are data, possibly personal: the path says "a value", not which.
                    raise mismatch.under("[*]") from None
        out.append(0)

    return mapping


def _optional(only: Write) -> Write:
    """[null, T], the optional field (every union carebus's schemas have)."""

    def optional(value: Any, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(2)  # branch 1, zig-zag encoded
            only(value, out)  # says what is wrong inside T

    return optional


def _record(schema: Mapping[str, Any], compile_type: Callable[[Schema], Write]) -> Write:
    name = schema["name"]
    fields = []
    for field in schema["fields"]:
        write = compile_type(field["type"])
        default = bytearray()
        has_default = "default" in field
        if has_default:
            try:
                write(_default_value(field["type"], field["default"]), default)
            except MismatchError:
                raise UnsupportedSchemaError(f"default of {name}.{field['name']}") from None
        fields.append((field["name"], write, has_default, bytes(default)))
    names = frozenset(field["name"] for field in schema["fields"])
    expected = f"expected a {name} record"

    def record(value: Any, out: bytearray) -> None:
        if not isinstance(value, Mapping):
            raise MismatchError("", expected)
        if len(value) > len(names) or not names.issuperset(value):
            extra = next(key for key in value if key not in names)
            raise MismatchError("", f"{extra} is not a field of {name}")
        for field_name, write, has_default, default in fields:
            field_value = value.get(field_name, _ABSENT)
            if field_value is not _ABSENT:
                try:
                    write(field_value, out)
                except MismatchError as mismatch:
                    raise mismatch.under(field_name) from None
            elif has_default:
                out += default
            else:
                raise MismatchError(field_name, "is required")

    return record


def _default_value(schema: Schema, default: Any) -> Any:
    """A field default (JSON, for a union the first branch) as the writer takes it."""
    if isinstance(schema, list):
        return _default_value(schema[0], default)
    if schema == "bytes" or (isinstance(schema, dict) and schema.get("type") in ("bytes", "fixed")):
        return default.encode("latin-1")
    return default


def compile_writer(schema: Schema) -> Callable[[Any], bytes] | None:
    """An encoder for the self-contained `schema` raising MismatchError, or None if unsupported."""
    named: dict[str, Write] = {}

    def compile_type(schema: Schema) -> Write:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema]
            if schema not in named:
                raise UnsupportedSchemaError(f"type {schema} used before its definition")

            def by_name(value: Any, out: bytearray) -> None:
                named[schema](value, out)  # resolved late: a record may contain itself

            return by_name
        if isinstance(schema, list):
            if len(schema) != 2 or schema[0] != "null" or schema[1] == "null":
                # fastavro picks a branch of a wider union by its own rules (the record with
                # the most matching fields …); rather than mimic them, leave such schemas to it.
                raise UnsupportedSchemaError("a union other than [null, T]")
            return _optional(compile_type(schema[1]))
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical is not None:
            if kind == "long" and logical in _TIMESTAMP_SCALE:
                return _timestamp(_TIMESTAMP_SCALE[logical])
            raise UnsupportedSchemaError(f"logical type {logical}")
        if kind in ("record", "error"):
            # Registered before its fields are compiled, so a field may refer to this record.
            named[schema["name"]] = _null
            named[schema["name"]] = write = _record(schema, compile_type)
            return write
        if kind == "enum":
            named[schema["name"]] = write = _enum(schema)
            return write
        if kind == "fixed":
            named[schema["name"]] = write = _fixed(schema)
            return write
        if kind == "array":
            return _array(compile_type(schema["items"]))
        if kind == "map":
            return _map(compile_type(schema["values"]))
        return compile_type(kind)

    try:
        top = compile_type(schema)
    except UnsupportedSchemaError:
        return None

    def encode(value: Any) -> bytes:
        out = bytearray()
        top(value, out)
        return bytes(out)

    return encode
