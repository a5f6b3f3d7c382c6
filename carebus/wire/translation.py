"""What every protocol adapter (PLO, HL7 v2, FHIR) maps a message to: carebus events, whole or
not at all, and the few rules the three protocols share.

An adapter is a thin parser plus a pure mapping from the parsed message to the JSON events of
`POST /v1/events:batch` (docs/design.md). The mapping never does I/O: the organisation
directory reaches it as a `DirectoryView` snapshot, the time zone and the id secret as values.
A message that cannot be mapped whole raises `Untranslatable` naming where in the message the
problem is; nothing of it is published.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol
from zoneinfo import ZoneInfo

from carebus.domain.identity import validate_nin

# Norwegian senders write local times without an offset (PLO's TidspunktForHendelse, HL7 v2's
# TS without a zone): they mean the time on the wall in Norway.
NORWAY: Final = ZoneInfo("Europe/Oslo")

# The national identity number's identifier systems (Direktoratet for e-helse's OIDs): the
# fødselsnummer and the D-nummer.
FNR_OID: Final = "2.16.578.1.12.4.1.4.1"
DNR_OID: Final = "2.16.578.1.12.4.1.4.2"
NIN_OIDS: Final = (FNR_OID, DNR_OID)
# The same as identifier type codes (HL7 v2 CX.5, KITH's code list 8116 in PLO).
NIN_TYPE_CODES: Final = ("FNR", "DNR")

Severity = Literal["rejected", "error"]


@dataclass(frozen=True, slots=True)
class Party:
    """An organisation of the directory, as the mappings see it."""

    org_id: str
    agency: str
    her_id: str | None = None
    # A municipality's kommunenummer (4 digits), by which HL7 v2 and FHIR addresses name it.
    municipality_number: str | None = None


class DirectoryView(Protocol):
    """The organisation directory, read-only, as a mapping needs it."""

    def by_org_id(self, org_id: str) -> Party | None: ...

    def by_her_id(self, her_id: str) -> Party | None: ...

    def municipality(self, number: str) -> Party | None:
        """The municipality whose kommunenummer is `number`."""
        ...


@dataclass(frozen=True, slots=True)
class StaticDirectory:
    """A directory held in memory: the adapters' snapshot of the real one, and the tests'."""

    parties: tuple[Party, ...] = ()
    _by_org: dict[str, Party] = field(init=False, repr=False)
    _by_her: dict[str, Party] = field(init=False, repr=False)
    _by_number: dict[str, Party] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_org", {p.org_id: p for p in self.parties})
        object.__setattr__(
            self, "_by_her", {p.her_id: p for p in self.parties if p.her_id is not None}
        )
        object.__setattr__(
            self,
            "_by_number",
            {
                p.municipality_number: p
                for p in self.parties
                if p.municipality_number is not None and p.agency == "municipality"
            },
        )

    def by_org_id(self, org_id: str) -> Party | None:
        return self._by_org.get(org_id)

    def by_her_id(self, her_id: str) -> Party | None:
        return self._by_her.get(her_id)

    def municipality(self, number: str) -> Party | None:
        return self._by_number.get(number)


@dataclass(frozen=True, slots=True)
class Translation:
    """A message mapped whole: the carebus events to publish together, in order, and where in
    the message each event field came from (`"events[0].payload.home_municipality_org"` ->
    `"MsgHead/MsgInfo/Receiver/Organisation"`), so that a field the gateway refuses is named
    to the sender in its own protocol's terms."""

    events: tuple[Mapping[str, Any], ...]
    origins: Mapping[str, str] = field(default_factory=dict)

    def origin_of(self, carebus_path: str) -> str:
        """The message's own path for a field path of the batch, or the nearest known one."""
        path = carebus_path
        while path:
            if path in self.origins:
                return self.origins[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return carebus_path


class Untranslatable(Exception):  # noqa: N818 (a message that is not an error of ours)
    """The message cannot be mapped whole.

    `where` names the place in the message (a protocol path: `PID-3`, `Encounter.status`,
    `MsgHead/MsgInfo/Patient/Ident`); `problem` says what is wrong without repeating any value
    of the message (it may be personal data). `severity` "rejected": the message is not one
    the adapter takes at all (unknown type, not the protocol); "error": it is, but its content
    is wrong or incomplete.
    """

    def __init__(self, where: str, problem: str, severity: Severity = "error") -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem
        self.severity = severity


def derived_event_id(secret: bytes, protocol: str, sender_org: str, *parts: str) -> str:
    """A carebus event id the same message (or a later one about the same episode) always maps
    to, and that shows nothing of what it was made from.

    Keyed (HMAC-SHA256 under the adapters' id secret) because the parts may be a national
    identity number and a time: a plain hash of those could be reversed by trying every nin.
    """
    # surrogatepass: a part is the sender's text, and may hold a lone surrogate.
    material = "\x1f".join((protocol, sender_org, *parts)).encode("utf-8", "surrogatepass")
    digest = hmac.new(secret, material, hashlib.sha256).hexdigest()[:32]
    # In groups of 8: 32 hex digits in a row hold an 11-digit run that passes the nin check
    # about once in 7,800 ids, and the gateway refuses any id that embeds a nin, for good.
    return f"{protocol}-" + "-".join(digest[i : i + 8] for i in range(0, 32, 8))


# FHIR's dateTime (and XML Schema's gYearMonth) may be a year or a month alone, which says no
# day for an event to have happened on.
PARTIAL_OR_NO_TIME: Final = (
    "must be a whole date (YYYY-MM-DD) or a date and time (ISO 8601): a year or a month alone "
    "does not say when"
)
# The fraction of a second may have any number of digits (XML Schema's dateTime; FHIR R4's
# dateTime up to 9): Java writes nanoseconds (`LocalDateTime.now()` in a MsgHead GenDate),
# .NET ticks of 100 ns (7 digits, the Firely SDK's FHIR times).
_LOCAL_TIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?P<fraction>\.[0-9]+)?)?)?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})?"
)
# A datetime holds microseconds: a finer fraction is cut to them (not rounded, so that the same
# time always gives the same instant, and the same derived event id).
_MICROSECOND_DIGITS: Final = 6


def norwegian_time(value: str, where: str) -> str:
    """An XML/ISO time as RFC 3339 with an offset; without one it is Norwegian wall time, and a
    date alone is its midnight there; a fraction of a second finer than a microsecond is cut to
    microseconds. Untranslatable (naming `where`) when it is neither."""
    text = value.strip()
    match = _LOCAL_TIME.fullmatch(text)
    if match is None:
        raise Untranslatable(where, PARTIAL_OR_NO_TIME)
    fraction = match["fraction"]
    if fraction is not None and len(fraction) > 1 + _MICROSECOND_DIGITS:
        start, end = match.span("fraction")
        text = text[:start] + fraction[: 1 + _MICROSECOND_DIGITS] + text[end:]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Untranslatable(where, "is not a real date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=NORWAY)
    return moment.isoformat()


def national_identity_number(value: str, where: str) -> str:
    """`value` as a valid nin, or Untranslatable naming `where` (never the value)."""
    nin = value.strip()
    problem = validate_nin(nin)
    if problem is not None:
        raise Untranslatable(where, problem)
    return nin


# ICD-10 (the Norwegian edition, code system 7110, and the WHO's) -> the admission's `reason`.
# Intentional self-harm (X60-X84) is a suicide attempt, and outranks the poisoning it was done
# with; an event of undetermined intent (Y10-Y34: poisoning or injury where it is not
# established whether it was self-inflicted on purpose) is a possible suicide attempt, below a
# suicide attempt and, like it, above the poisoning it names (Y10-Y19 always come with a
# poisoning code: below overdose they could never count); poisoning by narcotics (T40),
# sedatives (T42), psychotropics (T43) or alcohol (T51) is an overdose; the withdrawal states of
# substance use (F1x.3, F1x.4) withdrawal; F20-F29 psychosis. The Y10-Y34 mapping is carebus's
# reading of the proposal's "mogleg sjølvmordsforsøk" (docs/adapters.md), not a coding rule.
_ICD10: Final = re.compile(r"([A-Z])([0-9]{2})(?:\.?([0-9A-Z]{1,4}))?")


def admission_reason(icd10_codes: list[str]) -> str:
    """The carebus `reason` the diagnosis codes of an admission give; `unknown` without any,
    `other` when none of them is one the sources single out."""
    reasons = [_reason_of(code) for code in icd10_codes]
    for wanted in (
        "suicide_attempt",
        "possible_suicide_attempt",
        "overdose",
        "withdrawal",
        "psychosis",
    ):
        if wanted in reasons:
            return wanted
    return "other" if icd10_codes else "unknown"


def _reason_of(code: str) -> str:
    match = _ICD10.fullmatch(code.strip().upper())
    if match is None:
        return "other"
    chapter, number, detail = match.group(1), int(match.group(2)), match.group(3) or ""
    if chapter == "X" and 60 <= number <= 84:
        return "suicide_attempt"
    if chapter == "Y" and 10 <= number <= 34:
        return "possible_suicide_attempt"
    if chapter == "T" and number in (40, 42, 43, 51):
        return "overdose"
    if chapter == "F" and 10 <= number <= 19 and detail[:1] in ("3", "4"):
        return "withdrawal"
    if chapter == "F" and 20 <= number <= 29:
        return "psychosis"
    return "other"
