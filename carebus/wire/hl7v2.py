"""HL7 v2 ADT messages (admit, register, update, discharge and their cancellations) mapped to
carebus events, and the HL7 acknowledgement that answers them.

The parse is python-hl7's; this module reads the parsed tree into typed segments, maps it whole
or raises `Untranslatable` naming the HL7 place (`PID-3`, `PV1-44`), and writes ACK messages
that never repeat personal data. Pure: the directory, the sender and the id secret are
parameters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import hl7

from carebus.domain import identity
from carebus.domain.events import MAX_TEXT
from carebus.domain.text import text_problem
from carebus.wire.translation import (
    DNR_OID,
    FNR_OID,
    NIN_TYPE_CODES,
    DirectoryView,
    Party,
    Translation,
    Untranslatable,
    admission_reason,
    derived_event_id,
    national_identity_number,
    norwegian_time,
)

__all__ = [
    "PROTOCOL",
    "Message",
    "acknowledgement",
    "acknowledgement_of",
    "decode",
    "encode",
    "error_code",
    "read",
    "translate",
]

PROTOCOL: Final = "hl7v2"

# An ADT message is a few kilobytes with a few hundred delimiters; a megabyte, or ten thousand
# delimiters, is no message of this kind. python-hl7 builds an object per part (about 25 µs
# each), so the bounds keep a hostile body from costing the parse seconds.
MAX_MESSAGE: Final = 1_000_000
MAX_DELIMITERS: Final = 10_000

ADMISSION_TRIGGERS: Final = ("A01", "A04", "A08")
REGISTER: Final = "A04"
UPDATE: Final = "A08"
# PV1-2 patient class (table 0004): an inpatient.
INPATIENT: Final = "I"
DISCHARGE_TRIGGER: Final = "A03"
CANCEL_ADMISSION: Final = "A11"
CANCEL_DISCHARGE: Final = "A13"
TRIGGERS: Final = (*ADMISSION_TRIGGERS, DISCHARGE_TRIGGER, CANCEL_ADMISSION, CANCEL_DISCHARGE)

# Problem texts (never a value of the message) and the HL7 table 0357 code each is answered
# with in the ACK's ERR segment.
NOT_HL7: Final = "is not an HL7 v2 message: it must begin with an MSH segment"
BAD_ENCODING: Final = (
    "must hold four distinct encoding characters (component, repetition, escape, subcomponent) "
    "after one field separator, none a letter, digit or space"
)
TOO_LONG: Final = f"is longer than {MAX_MESSAGE} characters"
TOO_MANY_PARTS: Final = f"has more than {MAX_DELIMITERS} delimiters"
UNPARSABLE: Final = "cannot be parsed as HL7 v2"
BATCH: Final = "holds more than one message: send one message per request"
BAD_SEGMENT_ID: Final = "holds a segment whose id is not three letters or digits"
NOT_ADT: Final = "must be an ADT message"
UNSUPPORTED_TRIGGER: Final = "is a trigger event carebus does not take (it takes " + (
    ", ".join(TRIGGERS) + ")"
)
REQUIRED: Final = "is required"
NO_NIN: Final = (
    "must hold a fødselsnummer or D-nummer (assigning authority 2.16.578.1.12.4.1.4.1 or "
    ".2, or identifier type code FNR or DNR)"
)
TWO_NINS: Final = "holds two different national identity numbers"
OTHER_SENDER: Final = "names another organisation than the caller's"
NO_EPISODE: Final = (
    "is required: without a visit number (PV1-19) the admit time must say the episode"
)
BAD_TIME: Final = "must be an HL7 time YYYYMMDD[HHMM[SS[.S+]]][+/-ZZZZ]"
UNREAL_TIME: Final = "is not a real date and time"
IMPLAUSIBLE_TIME: Final = "must be a time between the years 1900 and 2199"
BAD_KOMMUNENUMMER: Final = "county/parish code (XAD.9) must be a 4-digit kommunenummer"
UNKNOWN_MUNICIPALITY: Final = "county/parish code (XAD.9) is no municipality in the directory"
NO_MUNICIPALITY: Final = (
    "has no county/parish code (XAD.9, the kommunenummer), and the receiving facility (MSH-6) "
    "is no municipality in the directory"
)
BAD_IDENTIFIER: Final = "must not contain control or format characters"
# carebus could not take the message for a reason that is not the message's (the gateway or
# the database is down): an AR, which tells the sender to send it again, unchanged, later.
UNAVAILABLE: Final = "carebus cannot take the message now; send it again later"
# Address types (HL7 table 0190) by how surely they are the person's home: registry home,
# legal, home, permanent, none given; every other type but those never a home comes after.
_HOME_RANK: Final[Mapping[str, int]] = {"RH": 0, "L": 1, "H": 2, "P": 3, "": 4}
# Bad address, birth (delivery location, residence, nee), country of origin, business, office,
# billing: never where the person lives now.
_NOT_A_HOME: Final = frozenset({"BA", "BDL", "BR", "N", "F", "B", "O", "BI"})

SEGMENT_SEQUENCE: Final = "100"
REQUIRED_FIELD_MISSING: Final = "101"
DATA_TYPE_ERROR: Final = "102"
TABLE_VALUE_NOT_FOUND: Final = "103"
UNSUPPORTED_MESSAGE_TYPE: Final = "200"
UNSUPPORTED_EVENT_CODE: Final = "201"
APPLICATION_INTERNAL_ERROR: Final = "207"

ERROR_CODES: Final[Mapping[str, str]] = {
    NOT_HL7: SEGMENT_SEQUENCE,
    BAD_ENCODING: SEGMENT_SEQUENCE,
    TOO_LONG: SEGMENT_SEQUENCE,
    TOO_MANY_PARTS: SEGMENT_SEQUENCE,
    UNPARSABLE: SEGMENT_SEQUENCE,
    BATCH: SEGMENT_SEQUENCE,
    BAD_SEGMENT_ID: SEGMENT_SEQUENCE,
    NOT_ADT: UNSUPPORTED_MESSAGE_TYPE,
    UNAVAILABLE: APPLICATION_INTERNAL_ERROR,
    UNSUPPORTED_TRIGGER: UNSUPPORTED_EVENT_CODE,
    REQUIRED: REQUIRED_FIELD_MISSING,
    NO_NIN: REQUIRED_FIELD_MISSING,
    NO_EPISODE: REQUIRED_FIELD_MISSING,
    NO_MUNICIPALITY: REQUIRED_FIELD_MISSING,
    TWO_NINS: DATA_TYPE_ERROR,
    BAD_TIME: DATA_TYPE_ERROR,
    UNREAL_TIME: DATA_TYPE_ERROR,
    IMPLAUSIBLE_TIME: DATA_TYPE_ERROR,
    BAD_KOMMUNENUMMER: DATA_TYPE_ERROR,
    BAD_IDENTIFIER: DATA_TYPE_ERROR,
    UNKNOWN_MUNICIPALITY: TABLE_VALUE_NOT_FOUND,
    OTHER_SENDER: TABLE_VALUE_NOT_FOUND,
    # What `national_identity_number` says of a number that is not one.
    identity.MUST_BE_STRING: DATA_TYPE_ERROR,
    identity.ONLY_DIGITS: DATA_TYPE_ERROR,
    identity.ELEVEN_DIGITS: DATA_TYPE_ERROR,
    identity.H_NUMBER: DATA_TYPE_ERROR,
    identity.SYNTHETIC: DATA_TYPE_ERROR,
    identity.CHECK_DIGIT: DATA_TYPE_ERROR,
    identity.NOT_A_DATE: DATA_TYPE_ERROR,
    identity.CENTURY: DATA_TYPE_ERROR,
}
_ERROR_TEXTS: Final[Mapping[str, str]] = {
    SEGMENT_SEQUENCE: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}

# Coding systems of an ICD-10 code: HL7 table 0396's I10, what Norwegian senders write, and
# Direktoratet for e-helse's OID for the Norwegian edition (kodeverk 7110).
ICD10_SYSTEMS: Final = frozenset({"I10", "ICD10", "ICD-10", "ICD10NO", "2.16.578.1.12.4.1.1.7110"})

# HL7 table 0112 (discharge disposition; user-defined, the values HL7 v2.5 suggests, which are
# the UB-92 patient status codes): to home or self care (01), home with home health care (06),
# home with a home IV provider (08); to another hospital (02), a skilled nursing facility (03),
# an intermediate care facility (04), another institution (05). The rest (left against advice,
# admitted here, died, still a patient, state-defined ranges) say nothing of where the person
# went: unknown.
DISCHARGE_DESTINATIONS: Final[Mapping[str, str]] = {
    "01": "home",
    "06": "home",
    "08": "home",
    "02": "institution",
    "03": "institution",
    "04": "institution",
    "05": "institution",
}

# The same table -> the discharge's `kind`, only where a code says how the stay ended: "01
# Discharged to home or self care (routine discharge)" is planned, "02 Discharged/transferred to
# another short term general hospital for inpatient care" a transfer, "07 Left against medical
# advice or discontinued care" against advice. The rest (a nursing or other facility that may or
# may not be inpatient care, home with home health care, died, still a patient) leave it out.
DISCHARGE_KINDS: Final[Mapping[str, str]] = {
    "01": "planned",
    "02": "transfer",
    "07": "against_advice",
}

_SEGMENT_ID: Final = re.compile(r"[A-Z][A-Z0-9]{2}")
_HL7_TIME: Final = re.compile(
    r"(?P<date>[0-9]{8})(?P<hour>[0-9]{2})?(?P<minute>[0-9]{2})?"
    r"(?P<second>[0-9]{2}(?:\.[0-9]{1,6})?)?(?P<offset>[+-][0-9]{4})?"
)
_KOMMUNENUMMER: Final = re.compile(r"[0-9]{4}")
_DIGITS: Final = re.compile(r"[0-9]{1,20}")
_ORG_NUMBER: Final = re.compile(r"[0-9]{9}")
_WHERE: Final = re.compile(r"(?P<segment>[A-Z][A-Z0-9]{2})(?:-(?P<field>[0-9]{1,3}))?")
_BATCH_HEADERS: Final = ("FHS", "BHS")
_MLLP_START: Final = b"\x0b"
_MLLP_END: Final = b"\x1c"

# A field as HL7 nests it: repetitions of components of subcomponents, unescaped.
Field = tuple[tuple[tuple[str, ...], ...], ...]


@dataclass(frozen=True, slots=True)
class Encoding:
    """The message's own delimiters (MSH-1, MSH-2)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment: its id, its fields unescaped (`fields[n]` is field n; for MSH, MSH-n) and
    as the sender wrote them (`raw[n]`, for echoing in an ACK)."""

    name: str
    fields: tuple[Field, ...]
    raw: tuple[str, ...]

    def field(self, number: int) -> Field:
        return self.fields[number] if 0 < number < len(self.fields) else ()

    def value(self, number: int, component: int = 1, sub: int = 1, repetition: int = 1) -> str:
        """One value of field `number`, stripped; empty when absent or HL7's null `""`."""
        return _part(self.field(number), component, sub, repetition)

    def raw_field(self, number: int) -> str:
        return self.raw[number] if 0 < number < len(self.raw) else ""


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed HL7 v2 message: its encoding and its segments, MSH first."""

    encoding: Encoding
    segments: tuple[Segment, ...]

    @property
    def header(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.name == name)


def _part(field: Field, component: int = 1, sub: int = 1, repetition: int = 1) -> str:
    try:
        value = field[repetition - 1][component - 1][sub - 1].strip()
    except IndexError:
        return ""
    return "" if value == '""' else value


# --- decoding and parsing -------------------------------------------------------------------


def decode(body: bytes) -> str:
    """The message text of a request body: MLLP framing removed; ISO-8859-1 when MSH-18 says
    8859/1 (or the body is no UTF-8), UTF-8 otherwise."""
    if body.startswith(_MLLP_START):
        body = body[1:]
    end = body.rfind(_MLLP_END)
    if end >= 0 and not body[end + 1 :].strip(b"\r\n"):
        body = body[:end]
    if _declared_latin1(body):
        return body.decode("iso-8859-1")
    try:
        return body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return body.decode("iso-8859-1")


def _declared_latin1(body: bytes) -> bool:
    # Every byte is a character in ISO-8859-1, and MSH up to MSH-18 is ASCII in both encodings.
    # Only the first segment is read: parsing the whole message here cost a third of the work.
    first = re.split(r"[\r\n]", body[:4096].decode("iso-8859-1").lstrip("\x0b"), maxsplit=1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return False
    fields = first.split(first[3])
    # fields[0] is "MSH" and MSH-1 is the separator itself: MSH-n is fields[n - 1].
    charset = fields[17].split(first[4])[0] if len(fields) > 17 else ""
    return charset.upper().replace(" ", "") in ("8859/1", "ISO-8859-1", "ISOIR100")


def read(text: str) -> Message:
    """The segments of `text` as python-hl7 parses them, whatever they are after MSH: what
    `translate` maps and `acknowledgement_of` answers, so a message is parsed once. Raises
    Untranslatable "rejected" when `text` has no MSH that can be read."""
    if len(text) > MAX_MESSAGE:
        raise Untranslatable("MSH", TOO_LONG, "rejected")
    # Senders end segments with \r (the standard), \n or \r\n; python-hl7 splits on \r only.
    text = re.sub(r"[\r\n]+", "\r", text.strip().strip("\x0b\x1c").strip())
    if text[:3] in _BATCH_HEADERS:
        # HL7's batch protocol (chapter 2): file and batch headers around the messages. Said
        # as such, not as "no MSH", so the sender knows to send the messages one by one.
        raise Untranslatable("MSH", BATCH, "rejected")
    encoding = _encoding(text)
    # The escape character too: each escape sequence costs as much to decode as a part.
    delimiters = (
        "\r",
        encoding.field,
        encoding.component,
        encoding.repetition,
        encoding.subcomponent,
        encoding.escape,
    )
    if sum(text.count(delimiter) for delimiter in delimiters) > MAX_DELIMITERS:
        raise Untranslatable("MSH", TOO_MANY_PARTS, "rejected")
    try:
        parsed = hl7.parse(text)
        segments = tuple(_segment(raw, encoding) for raw in parsed)
    except Exception:  # python-hl7 raises what it meets; any of it means: not HL7 we can read
        raise Untranslatable("MSH", UNPARSABLE, "rejected") from None
    if not segments or segments[0].name != "MSH":
        raise Untranslatable("MSH", NOT_HL7, "rejected")
    return Message(encoding, segments)


def _one_message(message: Message) -> None:
    """Untranslatable "rejected" when `message` is not one HL7 v2 message of segments."""
    if any(not _SEGMENT_ID.fullmatch(s.name) for s in message.segments):
        raise Untranslatable("MSH", BAD_SEGMENT_ID, "rejected")
    if any(s.name in ("MSH", *_BATCH_HEADERS) for s in message.segments[1:]):
        raise Untranslatable("MSH", BATCH, "rejected")


def _encoding(text: str) -> Encoding:
    if not text.startswith("MSH") or len(text) < 9:
        raise Untranslatable("MSH", NOT_HL7, "rejected")
    separator = text[3]
    end = text.find(separator, 4)
    characters = text[4:end] if end > 0 else ""
    delimiters = separator + characters[:4]
    if (
        len(characters) not in (4, 5)
        or len(set(delimiters)) != 5
        or any(c.isalnum() or c.isspace() or not c.isprintable() for c in delimiters)
    ):
        raise Untranslatable("MSH-2", BAD_ENCODING, "rejected")
    return Encoding(separator, *characters[:4])


def _segment(parsed: Any, encoding: Encoding) -> Segment:
    parts: Sequence[Any] = [parsed] if isinstance(parsed, str) else list(parsed)
    name = str(parts[0]) if parts else ""
    unescape = _unescaper(encoding)
    if name == "MSH":
        # MSH-1 and MSH-2 are the delimiters themselves, not values to split or unescape.
        fields: list[Field] = [((("MSH",),),), (((encoding.field,),),), (((str(parts[2]),),),)]
        fields += [_field(part, unescape) for part in parts[3:]]
    else:
        fields = [_field(part, unescape) for part in parts]
    return Segment(name, tuple(fields), tuple(str(part) for part in parts))


def _field(parsed: Any, unescape: Callable[[str], str]) -> Field:
    if isinstance(parsed, str):
        return (((unescape(parsed),),),)
    return tuple(_repetition(part, unescape) for part in parsed)


def _repetition(parsed: Any, unescape: Callable[[str], str]) -> tuple[tuple[str, ...], ...]:
    if isinstance(parsed, str):
        return ((unescape(parsed),),)
    return tuple(_component(part, unescape) for part in parsed)


def _component(parsed: Any, unescape: Callable[[str], str]) -> tuple[str, ...]:
    if isinstance(parsed, str):
        return (unescape(parsed),)
    return tuple(unescape(str(part)) for part in parsed)


def _unescaper(encoding: Encoding) -> Callable[[str], str]:
    """HL7 escape sequences (chapter 2.7) decoded.

    Not python-hl7's `unescape`: it logs the value it cannot decode (personal data in a log)
    and expands `\\.sp<n>\\` to n characters, however large n is. Here the delimiters and hex
    bytes are decoded and formatting (highlight, line breaks, character set switches) dropped.
    """
    named = {
        "F": encoding.field,
        "S": encoding.component,
        "R": encoding.repetition,
        "T": encoding.subcomponent,
        "E": encoding.escape,
    }
    esc = encoding.escape

    def unescape(value: str) -> str:
        if esc not in value:
            return value
        out: list[str] = []
        start = 0
        while (begin := value.find(esc, start)) >= 0:
            end = value.find(esc, begin + 1)
            if end < 0:
                break
            out.append(value[start:begin])
            sequence = value[begin + 1 : end]
            out.append(named.get(sequence) or _hex(sequence))
            start = end + 1
        out.append(value[start:])
        return "".join(out)

    return unescape


def _hex(sequence: str) -> str:
    if not sequence.startswith("X"):
        return ""
    try:
        data = bytes.fromhex(sequence[1:])
    except ValueError:
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("iso-8859-1")


# --- translation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    """What every event of one message shares."""

    message: Message
    sender: Party
    directory: DirectoryView
    secret: bytes
    nin: str
    episode: str
    episode_origin: str

    def event_id(self, *parts: str) -> str:
        return derived_event_id(self.secret, PROTOCOL, self.sender.org_id, *parts)


def translate(
    message: Message, sender: Party, directory: DirectoryView, secret: bytes
) -> Translation:
    """The carebus event an ADT message (as `read`) says, or Untranslatable naming the HL7
    place."""
    _one_message(message)
    trigger = _trigger(message)
    _check_sender(message.header, sender, directory)
    pid = _required(message, "PID")
    pv1 = _required(message, "PV1")
    nin = _nin(pid)
    episode, episode_origin = _episode(pv1, nin)
    context = _Context(message, sender, directory, secret, nin, episode, episode_origin)
    if trigger == UPDATE or (trigger == REGISTER and pv1.value(2) != INPATIENT):
        # An A08 changes what carebus does not carry (names, addresses, beds) or what it keeps
        # as first reported; an A04 of an outpatient or emergency visit is no admission. Both
        # are acknowledged (AA) with nothing published.
        return Translation(events=())
    if trigger in ADMISSION_TRIGGERS:
        return _admission(context, pid, pv1)
    if trigger == DISCHARGE_TRIGGER:
        return _discharge(context, pv1)
    retracted = "admission" if trigger == CANCEL_ADMISSION else "discharge"
    return _retraction(context, retracted)


def _trigger(message: Message) -> str:
    header = message.header
    if header.value(9).upper() != "ADT":
        raise Untranslatable("MSH-9", NOT_ADT, "rejected")
    trigger = header.value(9, 2).upper()
    evn = message.first("EVN")
    if not trigger and evn is not None:  # before v2.3 the trigger was EVN-1's only
        trigger = evn.value(1).upper()
    if trigger not in TRIGGERS:
        raise Untranslatable("MSH-9", UNSUPPORTED_TRIGGER, "rejected")
    return trigger


def _check_sender(header: Segment, sender: Party, directory: DirectoryView) -> None:
    """MSH-4 may name the sending organisation in a local code, but not another organisation
    of the directory: a token of one organisation does not send for another."""
    named = _party(header.field(4), directory)
    if named is not None and named.org_id != sender.org_id:
        raise Untranslatable("MSH-4", OTHER_SENDER, "rejected")


def _party(hd: Field, directory: DirectoryView) -> Party | None:
    """The organisation an HD names by HER-id or organisation number in HD.1 or HD.2."""
    for component in (1, 2):
        value = _part(hd, component)
        if not _DIGITS.fullmatch(value):
            continue
        party = directory.by_her_id(value)
        if party is None and _ORG_NUMBER.fullmatch(value):
            party = directory.by_org_id(value)
        if party is not None:
            return party
    return None


def _required(message: Message, name: str) -> Segment:
    segment = message.first(name)
    if segment is None:
        raise Untranslatable(name, REQUIRED)
    return segment


def _nin(pid: Segment) -> str:
    """The PID-3 identifier that is a fødselsnummer or D-nummer, by authority or type code."""
    found: set[str] = set()
    for repetition in pid.field(3):
        cx: Field = (repetition,)
        authorities = (_part(cx, 4, 1), _part(cx, 4, 2))
        kind = _part(cx, 5).upper()
        if kind in NIN_TYPE_CODES or FNR_OID in authorities or DNR_OID in authorities:
            found.add(national_identity_number(_part(cx, 1), "PID-3"))
    if not found:
        raise Untranslatable("PID-3", NO_NIN)
    if len(found) > 1:
        raise Untranslatable("PID-3", TWO_NINS)
    return found.pop()


def _episode(pv1: Segment, nin: str) -> tuple[str, str]:
    """What names the stay in every message about it, without stored state: the visit number
    (with its assigning authority), else the person and the admit time."""
    visit = pv1.value(19)
    if visit:
        authority = "&".join(pv1.field(19)[0][3]) if len(pv1.field(19)[0]) > 3 else ""
        if text_problem(visit + authority) is not None:
            raise Untranslatable("PV1-19", BAD_IDENTIFIER)
        return f"PV1-19:{visit}^{authority}", "PV1-19"
    admitted = _time(pv1, 44)
    if admitted is None:
        raise Untranslatable("PV1-19", NO_EPISODE)
    return f"PV1-44:{nin}^{admitted}", "PV1-44"


def _occurred_at(message: Message, places: tuple[tuple[str, int], ...]) -> tuple[str, str]:
    """The first time present of `places`, and which it was."""
    for name, number in places:
        segment = message.first(name)
        moment = _time(segment, number) if segment is not None else None
        if moment is not None:
            return moment, f"{name}-{number}"
    raise Untranslatable("MSH-7", REQUIRED)


def _time(segment: Segment, number: int) -> str | None:
    """An HL7 TS/DTM field as RFC 3339; without an offset it is Norwegian wall time. None when
    the field is empty."""
    where = f"{segment.name}-{number}"
    value = segment.value(number)
    if not value:
        return None
    match = _HL7_TIME.fullmatch(value)
    if match is None:
        raise Untranslatable(where, BAD_TIME)
    date = match["date"]
    if not 1900 <= int(date[:4]) <= 2199:
        raise Untranslatable(where, IMPLAUSIBLE_TIME)
    iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    if match["hour"]:
        iso += f"T{match['hour']}:{match['minute'] or '00'}:{match['second'] or '00'}"
        if offset := match["offset"]:
            # Offsets on Earth run from -12:00 to +14:00.
            if int(offset[1:3]) > 14 or int(offset[3:]) > 59:
                raise Untranslatable(where, BAD_TIME)
            iso += f"{offset[:3]}:{offset[3:]}"
    elif match["minute"] or match["second"] or match["offset"]:
        raise Untranslatable(where, BAD_TIME)
    try:
        return norwegian_time(iso, where)
    except Untranslatable:
        raise Untranslatable(where, UNREAL_TIME) from None


def _event(
    context: _Context, event_type: str, event_id: str, occurred_at: str, payload: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": occurred_at,
        "source": {"agency": context.sender.agency, "org_id": context.sender.org_id},
        "subject": {"nin": context.nin},
        "payload": payload,
    }


def _origins(
    context: _Context, occurred_origin: str, payload_origins: Mapping[str, str]
) -> dict[str, str]:
    origins = {
        "events[0].event_id": context.episode_origin,
        "events[0].occurred_at": occurred_origin,
        "events[0].source": "MSH-4",
        "events[0].subject": "PID-3",
        "events[0].subject.nin": "PID-3",
        # The event as a whole (a refusal of the batch or of its type): the message type.
        "events[0]": "MSH-9",
    }
    origins.update({f"events[0].payload.{name}": place for name, place in payload_origins.items()})
    return origins


def _admission(context: _Context, pid: Segment, pv1: Segment) -> Translation:
    """A01 admit, A04 register, A08 update: one admission under the episode's id, so that an
    A08 that changes nothing is a repeat, and one that changes something a conflict."""
    message = context.message
    occurred_at, occurred_origin = _occurred_at(
        message, (("PV1", 44), ("EVN", 6), ("EVN", 2), ("MSH", 7))
    )
    reason, reason_origin = _reason(message)
    municipality, municipality_origin = _home_municipality(context, pid)
    receiver = _party(message.header.field(6), context.directory)
    payload: dict[str, Any] = {
        "reason": reason,
        # PV1-4 (admission type, user table 0007) is where involuntary care could be said, but
        # no Norwegian code for it in that field is documented: the message does not say.
        "admission_kind": "unknown",
        "housing_status": "unknown",
        # A hospital addressing the message to a municipality tells it that it is needed.
        "needs_municipal_services": receiver is not None and receiver.agency == "municipality",
        "home_municipality_org": municipality,
    }
    origins = {
        "reason": reason_origin,
        "admission_kind": "PV1-4",
        "housing_status": "PID-11",
        "needs_municipal_services": "MSH-6",
        "home_municipality_org": municipality_origin,
    }
    ward = _ward(pv1)
    if ward is not None:
        payload["ward"] = ward
        origins["ward"] = "PV1-3"
    pv2 = message.first("PV2")
    expected = _time(pv2, 9) if pv2 is not None else None
    if expected is not None:
        payload["expected_discharge_at"] = expected
        origins["expected_discharge_at"] = "PV2-9"
    event_id = context.event_id("admission", context.episode)
    event = _event(context, "admission", event_id, occurred_at, payload)
    return Translation((event,), _origins(context, occurred_origin, origins))


def _reason(message: Message) -> tuple[str, str]:
    """The admission reason the ICD-10 codes of PV2-3 (admit reason) and DG1-3 (diagnoses)
    give, and the field whose code gave it."""
    coded: list[tuple[str, str]] = []
    pv2 = message.first("PV2")
    if pv2 is not None:
        coded += [(code, "PV2-3") for code in _icd10_codes(pv2.field(3), default_system=False)]
    for dg1 in message.all("DG1"):
        # DG1-2 (coding method, v2.3.1) names the system when DG1-3 does not; a hospital's
        # diagnoses without either are ICD-10, the code system Norwegian hospitals must use.
        default = dg1.value(2).upper() in ("", *ICD10_SYSTEMS)
        coded += [(code, "DG1-3") for code in _icd10_codes(dg1.field(3), default_system=default)]
    reason = admission_reason([code for code, _ in coded])
    origin = next((place for code, place in coded if admission_reason([code]) == reason), "PV2-3")
    return reason, origin


def _icd10_codes(ce: Field, *, default_system: bool) -> list[str]:
    """The codes of a CE/CWE field (the identifier or the alternate one) coded in ICD-10."""
    codes = []
    for repetition in ce:
        for first in (1, 4):  # CE.1-3 the identifier, CE.4-6 the alternate identifier
            code = _part((repetition,), first)
            system = _part((repetition,), first + 2).upper()
            if code and (system in ICD10_SYSTEMS or (not system and default_system)):
                codes.append(code)
                break
    return codes


def _home_municipality(context: _Context, pid: Segment) -> tuple[str, str]:
    """The municipality of the person's home address with a kommunenummer (XAD.9): the
    repetitions of PID-11 by their type (XAD.7, table 0190) — the registry home first, then
    legal, home, permanent and untyped addresses, then any other in order — leaving out those
    that are no home (bad, birth, business, billing, office, country of origin); else the
    receiving facility when it is a municipality."""
    candidates: list[tuple[int, int, str]] = []
    for index, repetition in enumerate(pid.field(11)):
        number = _part((repetition,), 9)
        kind = _part((repetition,), 7).upper()
        if number and kind not in _NOT_A_HOME:
            candidates.append((_HOME_RANK.get(kind, len(_HOME_RANK)), index, number))
    if candidates:
        number = min(candidates)[2]
        if not _KOMMUNENUMMER.fullmatch(number):
            raise Untranslatable("PID-11", BAD_KOMMUNENUMMER)
        municipality = context.directory.municipality(number)
        if municipality is None:
            # Not the receiver instead: the person lives where the address says.
            raise Untranslatable("PID-11", UNKNOWN_MUNICIPALITY)
        return municipality.org_id, "PID-11"
    receiver = _party(context.message.header.field(6), context.directory)
    if receiver is not None and receiver.agency == "municipality":
        return receiver.org_id, "MSH-6"
    raise Untranslatable("PID-11", NO_MUNICIPALITY)


def _ward(pv1: Segment) -> str | None:
    """PV1-3.1 (point of care) when it is text carebus carries; otherwise left out, since the
    ward is optional and not worth refusing an admission for."""
    ward = pv1.value(3)
    if not ward or len(ward) > MAX_TEXT or text_problem(ward) is not None:
        return None
    return ward


def _discharge(context: _Context, pv1: Segment) -> Translation:
    """A03: the discharge of the episode's admission, its id found again from the episode."""
    occurred_at, occurred_origin = _occurred_at(
        context.message, (("PV1", 45), ("EVN", 6), ("EVN", 2), ("MSH", 7))
    )
    disposition = pv1.value(36)
    if len(disposition) == 1 and disposition.isdigit():
        disposition = "0" + disposition  # "1" for "01": some senders drop the leading zero
    payload = {
        "admission_event_id": context.event_id("admission", context.episode),
        "destination": DISCHARGE_DESTINATIONS.get(disposition, "unknown"),
        # HL7 v2 carries no crisis plan; false is what the contract has for "none said".
        "crisis_plan": False,
    }
    origins = {
        "admission_event_id": context.episode_origin,
        "destination": "PV1-36",
        "crisis_plan": "PV1",
    }
    kind = DISCHARGE_KINDS.get(disposition)
    if kind is not None:
        payload["kind"] = kind
        origins["kind"] = "PV1-36"
    event_id = context.event_id("discharge", context.episode)
    event = _event(context, "discharge", event_id, occurred_at, payload)
    return Translation((event,), _origins(context, occurred_origin, origins))


def _retraction(context: _Context, retracted_type: str) -> Translation:
    """A11 and A13: the cancelled admission or discharge retracted as sent in error."""
    occurred_at, occurred_origin = _occurred_at(context.message, (("EVN", 2), ("MSH", 7)))
    retracted = context.event_id(retracted_type, context.episode)
    payload = {"retracted_event_id": retracted, "reason": "sent_in_error"}
    origins = {"retracted_event_id": context.episode_origin, "reason": "MSH-9"}
    event_id = context.event_id("retraction", retracted)
    event = _event(context, "retraction", event_id, occurred_at, payload)
    return Translation((event,), _origins(context, occurred_origin, origins))


# --- acknowledgement ------------------------------------------------------------------------

_ACK_VERSION: Final = "2.5"
# MSA-3 (text message) is what senders before v2.5 show; v2.5 deprecated it for ERR.
_MSA_TEXT_VERSIONS: Final = frozenset({"2.1", "2.2", "2.3", "2.3.1", "2.4"})
_MAX_ECHO: Final = 200


def error_code(where: str, problem: str, severity: str) -> str:
    """The HL7 table 0357 code for a problem of this module (or the gateway's)."""
    code = ERROR_CODES.get(problem)
    if code is not None:
        return code
    if problem == REQUIRED or problem.startswith(REQUIRED):
        return REQUIRED_FIELD_MISSING
    if severity == "rejected":
        return UNSUPPORTED_EVENT_CODE if where == "MSH-9" else UNSUPPORTED_MESSAGE_TYPE
    return APPLICATION_INTERNAL_ERROR


def acknowledgement(
    text: str,
    error: Untranslatable | None,
    *,
    now: datetime,
    gateway_problem: tuple[str, str] | None = None,
) -> str:
    """The ACK for `text` not yet read: `acknowledgement_of` the message `read` from it (a
    parse; an adapter that has read the message passes it instead)."""
    try:
        message: Message | None = read(text)
    except Untranslatable:
        message = None
    return acknowledgement_of(message, error, now=now, gateway_problem=gateway_problem)


def acknowledgement_of(
    message: Message | None,
    error: Untranslatable | None,
    *,
    now: datetime,
    gateway_problem: tuple[str, str] | None = None,
) -> str:
    """The original-mode ACK for `message` (as `read`; None when nothing could be read): AA, AE
    (content wrong, or the gateway refused it: `gateway_problem` is (where, problem)) or AR
    (not a message carebus takes, or carebus cannot take one now: HL7's "send it again later,
    unchanged"). Only MSH is read again; segments are joined by \r; nothing
    of the patient is repeated."""
    encoding = message.encoding if message is not None else Encoding()
    header = message.header if message is not None else None
    problem: tuple[str, str, str] | None = None
    if error is not None:
        problem = (error.where, error.problem, error.severity)
    elif gateway_problem is not None:
        problem = (gateway_problem[0], gateway_problem[1], "error")
    elif header is None:
        problem = ("MSH", NOT_HL7, "rejected")
    code = "AA" if problem is None else ("AR" if problem[2] == "rejected" else "AE")
    version = _echo(header.raw_field(12)) if header is not None else ""
    segments = [
        _ack_header(header, encoding, now),
        _ack_msa(header, encoding, code, problem, version),
    ]
    if problem is not None:
        segments.append(_ack_err(encoding, *problem))
    return "\r".join(encoding.field.join(fields) for fields in segments)


def _ack_header(header: Segment | None, encoding: Encoding, now: datetime) -> list[str]:
    if header is None:
        characters = encoding.component + encoding.repetition + encoding.escape
        characters += encoding.subcomponent
        original_id = ""
        trigger = ""
        echoed = ["", "", "", "", "P", _ACK_VERSION]  # MSH-3..6, MSH-11, MSH-12
    else:
        characters = header.raw_field(2)
        original_id = header.value(10)
        trigger = header.value(9, 2).upper()
        trigger = trigger if _SEGMENT_ID.fullmatch(trigger) else ""
        echoed = [_echo(header.raw_field(n)) for n in (5, 6, 3, 4, 11, 12)]
        echoed[4] = echoed[4] or "P"
        echoed[5] = echoed[5] or _ACK_VERSION
    c = encoding.component
    # Deterministic, so that an ACK sent again for a message sent again is the same ACK.
    digest = hashlib.sha256(f"ack\x1f{original_id}".encode(errors="surrogatepass"))
    control_id = "A" + digest.hexdigest()[:19].upper()
    return [
        "MSH",
        characters,
        *echoed[:4],  # the receiver answers as the sender, to the sender
        now.strftime("%Y%m%d%H%M%S%z"),
        "",
        f"ACK{c}{trigger}{c}ACK",
        control_id,
        *echoed[4:],
        *_character_set(header),
    ]


def _character_set(header: Segment | None) -> list[str]:
    """MSH-13..18 with MSH-18 echoed: the ACK is in the original's character set (`encode`)."""
    character_set = _echo(header.raw_field(18)) if header is not None else ""
    return ["", "", "", "", "", character_set] if character_set else []


def encode(ack: str) -> bytes:
    """The bytes of an ACK (or any message of this module): ISO-8859-1 when its MSH-18 says
    8859/1, as the original's did, UTF-8 otherwise; MLLP framing is the transport's."""
    if _declared_latin1(ack.encode("utf-8", errors="replace")):
        return ack.encode("iso-8859-1", errors="replace")
    return ack.encode("utf-8", errors="replace")


def _ack_msa(
    header: Segment | None,
    encoding: Encoding,
    code: str,
    problem: tuple[str, str, str] | None,
    version: str,
) -> list[str]:
    fields = ["MSA", code, _echo(header.raw_field(10)) if header is not None else ""]
    if problem is not None and version in _MSA_TEXT_VERSIONS:
        fields.append(_escape(problem[1], encoding))
    return fields


def _ack_err(encoding: Encoding, where: str, problem: str, severity: str) -> list[str]:
    """ERR in v2.5's layout, with ERR-1 (v2.3.1's error code and location) filled as well so
    that a sender of either version reads it."""
    c, s = encoding.component, encoding.subcomponent
    code = error_code(where, problem, severity)
    text = _ERROR_TEXTS[code]
    match = _WHERE.fullmatch(where)
    segment, field = (match["segment"], match["field"] or "") if match is not None else ("", "")
    sequence = "1" if segment else ""
    location = c.join(part for part in (segment, sequence, field) if part)
    err1 = f"{segment}{c}{sequence}{c}{field}{c}{code}{s}{text}{s}HL70357"
    return [
        "ERR",
        err1,
        location,
        f"{code}{c}{text}{c}HL70357",
        "E",
        "",
        "",
        "",
        _escape(problem, encoding),
    ]


def _echo(raw: str) -> str:
    """A field of the original as written, when it is fit to send back (MSH fields name
    systems, not people)."""
    return raw if len(raw) <= _MAX_ECHO and text_problem(raw) is None else ""


def _escape(value: str, encoding: Encoding) -> str:
    """`value` as HL7 text of this encoding: its delimiters escaped, controls dropped."""
    value = "".join(ch for ch in value[: _MAX_ECHO * 4] if text_problem(ch) is None)
    esc = encoding.escape
    value = value.replace(esc, f"{esc}E{esc}")
    for character, name in (
        (encoding.field, "F"),
        (encoding.component, "S"),
        (encoding.repetition, "R"),
        (encoding.subcomponent, "T"),
    ):
        value = value.replace(character, f"{esc}{name}{esc}")
    return value
