"""JSON request bodies as pydantic models that refuse in the domain's words.

A body model declares its fields with the contract's own field rules (`Nin`, `OrgId`, `Time`,
`text`; closed choices as `Literal`), and `RequestBody` rewords pydantic's generic refusals
("Field required", "Input should be 'a' or 'b'", "Extra inputs are not permitted") the way the
event contract words them ("is required", "must be one of: a, b", "not a field of a consent"),
so a refusal reads the same whichever endpoint found it and however the body was validated
(by a route's `parse`, or by FastAPI for a body parameter). The texts never quote the input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from carebus.domain.events import (
    MAX_TEXT,
    Problem,
    check_identifier,
    check_org_id,
    check_text,
    parse_time,
)
from carebus.domain.identity import validate_nin
from carebus.domain.text import UNSHOWN_FIELD_PROBLEM, shown_field_name

__all__ = [
    "REFUSED",
    "Nin",
    "OrgId",
    "RequestBody",
    "Time",
    "field_path",
    "identifier",
    "parse",
    "plain_identifier",
    "plain_text",
    "problems",
    "refused",
    "request_body",
    "reword",
    "shown_loc",
    "text",
]

# The error type of every refusal already in the domain's words; pydantic's own types are
# reworded once, by the innermost model that holds the field.
REFUSED: Final = "refused"
_TYPE_WORDS: Final = {
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "bool_parsing": "must be true or false",
    "json_invalid": "is not valid JSON",
    "list_type": "must be a list",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
}
_LITERAL_SYMBOL: Final = re.compile(r"'([^']*)'")

B = TypeVar("B", bound=BaseModel)


def refused(problem: str) -> PydanticCustomError:
    """The error a field rule raises: `problem` as the whole message (it never quotes input)."""
    return PydanticCustomError(REFUSED, problem)


class RequestBody(BaseModel):
    """A JSON object in a request: JSON's own types only (`"true"` or 1 is not true), unknown
    fields refused, every refusal in the domain's words.

    `noun` names the object in "not a field of …"; `shape` is the refusal of a value that is not
    an object at all.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)

    noun: ClassVar[str] = "the request"
    shape: ClassVar[str] = "must be a JSON object"

    @model_validator(mode="wrap")
    @classmethod
    def _in_the_domains_words(cls, value: object, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if not isinstance(value, Mapping | cls):
            # Not yet in the domain's words: a model holding this one as a field says "is
            # required" for a null (`_reworded`), and `shape` otherwise.
            raise PydanticCustomError("not_an_object", cls.shape)
        try:
            return handler(value)
        except ValidationError as error:
            reworded = [_reworded(line, cls.noun) for line in error.errors()]
            raise ValidationError.from_exception_data(
                error.title, reworded, hide_input=True
            ) from None


def _reworded(line: Any, noun: str) -> InitErrorDetails:
    return InitErrorDetails(type=refused(reword(line, noun)), loc=line["loc"], input=line["input"])


def reword(line: Mapping[str, Any], noun: str = "the request") -> str:
    """One of pydantic's error lines in the domain's words (FastAPI's query and path checks
    too); the text never quotes the input."""
    kind, message = line["type"], str(line.get("msg", "is invalid"))
    ctx = line.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"not a field of {noun}"
    if kind != REFUSED and line.get("input") is None:
        return "is required"  # null is the same as absent, as in the event contract
    if kind in ("literal_error", "enum"):
        return "must be one of: " + ", ".join(_LITERAL_SYMBOL.findall(str(ctx.get("expected"))))
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = next(iter(ctx.values()), "")
        return {
            "greater_than_equal": f"must be at least {bound}",
            "less_than_equal": f"must be at most {bound}",
            "greater_than": f"must be more than {bound}",
            "less_than": f"must be less than {bound}",
        }[kind]
    return _TYPE_WORDS.get(kind, message)


# --- the contract's field rules as pydantic types ----------------------------------------------


def _nin(value: object) -> object:
    if value is None:
        raise refused("is required")
    problem = validate_nin(value)
    if problem is not None:
        raise refused(problem)  # the problem names the rule that failed, never the number
    return value


def _org_id(value: object) -> object:
    found: list[Problem] = []
    if check_org_id(value, "", found, required=True) is None:
        raise refused(found[0].problem)
    return value


def _time(value: object) -> datetime:
    found: list[Problem] = []
    moment = parse_time(value, "", found, required=True)
    if moment is None:
        raise refused(found[0].problem)
    return moment


def plain_text(value: object, limit: int = MAX_TEXT) -> str:
    """`value` if it is printable, non-empty text of at most `limit` characters (the contract's
    free-text rule), else the refusal."""
    found: list[Problem] = []
    checked = check_text(value, "", found, limit)
    if checked is None:
        raise refused(found[0].problem)
    return checked


def text(limit: int = MAX_TEXT) -> BeforeValidator:
    """The free-text rule as a pydantic validator: `Annotated[str, Field(max_length=200),
    text(200)]`."""
    return BeforeValidator(lambda value: plain_text(value, limit))


def plain_identifier(value: object, limit: int = MAX_TEXT) -> str:
    """`value` if it passes `plain_text` and holds no national identity number (the contract's
    rule for an identifier a client chooses), else the refusal."""
    found: list[Problem] = []
    checked = check_identifier(value, "", found, limit)
    if checked is None:
        raise refused(found[0].problem)
    return checked


def identifier(limit: int = MAX_TEXT) -> BeforeValidator:
    """The client-chosen identifier rule as a pydantic validator, like `text`."""
    return BeforeValidator(lambda value: plain_identifier(value, limit))


# The schema constraints come before the rule: pydantic writes only those into the JSON schema.
Nin = Annotated[
    str,
    Field(
        description="fødselsnummer or D-nummer, 11 digits", json_schema_extra={"writeOnly": True}
    ),
    BeforeValidator(_nin),
]
OrgId = Annotated[
    str,
    Field(pattern=r"^[0-9]{9}$", description="9-digit organisation number"),
    BeforeValidator(_org_id),
]
Time = Annotated[
    datetime,
    Field(description="RFC 3339 with offset, e.g. 2026-11-23T08:15:00+01:00"),
    BeforeValidator(_time),
]


# --- refusals, bodies and their OpenAPI ----------------------------------------------------------


def field_path(loc: Sequence[int | str]) -> str:
    """`("recipient", "org_id")` → `recipient.org_id`, `("categories", 1)` → `categories[1]`.

    A field name that may not be shown (`carebus.domain.text.shown_field_name`) ends the path:
    the refusal is then about the object that holds it.
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not shown_field_name(part):
            break
        else:
            path += f".{part}" if path else part
    return path


def shown_loc(loc: Sequence[int | str]) -> bool:
    """Whether every field name of `loc` may be shown in a refusal."""
    return all(isinstance(part, int) or shown_field_name(part) for part in loc)


def problems(error: ValidationError) -> list[Problem]:
    """Every refusal of `error` with its field path (`body` for the body as a whole)."""
    return [
        Problem(
            field_path(line["loc"]) or "body",
            line["msg"] if shown_loc(line["loc"]) else UNSHOWN_FIELD_PROBLEM,
        )
        for line in error.errors()
    ]


def parse(model: type[B], raw: object) -> tuple[B | None, list[Problem]]:
    """`raw` (decoded JSON) as `model`, or None and every problem found."""
    try:
        return model.model_validate(raw), []
    except ValidationError as error:
        return None, problems(error)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route that reads its body itself, from `model`'s schema.

    For FastAPI's `openapi_extra`; nested models are written in place (the schema's own `$defs`
    would not resolve inside the OpenAPI document)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _in_place(schema, definitions)}},
        }
    }


def _in_place(node: Any, definitions: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            return _in_place(definitions[reference.removeprefix("#/$defs/")], definitions)
        return {key: _in_place(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_in_place(item, definitions) for item in node]
    return node
