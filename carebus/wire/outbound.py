"""Deliveries in the receiver's own format: carebus JSON, PLO in MsgHead, or a FHIR message.

An organisation chooses the format of its webhook (`PUT /v1/webhooks` `format`, `POST
/fhir/Subscription`). The webhook dispatcher renders each delivery at the moment it sends it,
from the delivery JSON as queued (the person's sealed fields opened) and the two parties: the
organisation the event came from and the one it goes to. A format renders the event types it
has a message for; any other delivery goes as carebus JSON under its own `Content-Type`, so a
receiver that chose a standard format still learns everything it is entitled to learn, and a
receiver that handles only the standard's messages answers it with a 4xx, which dead-letters it
where operations see it, instead of carebus withholding it in silence (docs/adapters.md,
"Outbound").

Every rendered document is validated before it is sent (the PLO XSDs, fhir.resources); one that
does not validate is a bug in carebus, raised as `RenderError` and dead-lettered with that
reason, never sent half-right.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

JSON_CONTENT_TYPE: Final = "application/json"
# Who may receive a standard format: the health and care services whose systems speak PLO and
# FHIR (the DPS, the municipality's care services, the GP). A PLO or FHIR message names the
# organisation the event came from (MsgHead's Sender, MessageHeader.sender), which carebus's
# delivery JSON does not carry: a treatment unit's name can say why a person was admitted,
# which routing withholds from NAV, the police and the housing office (as it withholds the ward).
STANDARD_FORMAT_AGENCIES: Final = frozenset({"dps", "municipality", "fastlege"})


def format_problem(format: Format, agency: str) -> str | None:
    """Why an organisation of `agency` may not take its deliveries in `format`; None if it may."""
    if format is Format.CAREBUS or agency in STANDARD_FORMAT_AGENCIES:
        return None
    return (
        f"a {agency} organisation receives carebus JSON only: PLO and FHIR name the sending"
        " organisation, which its deliveries do not disclose"
    )


class Format(StrEnum):
    """What a webhook receives: carebus's delivery JSON, PLO 1.6 in MsgHead 1.2, or FHIR R4."""

    CAREBUS = "carebus"
    PLO = "plo"
    FHIR = "fhir"


@dataclass(frozen=True, slots=True)
class Addressee:
    """An organisation as a standard message names it, from the organisation directory."""

    org_id: str  # the ENH organisation number
    agency: str
    name: str
    her_id: str | None = None
    # A municipality's kommunenummer (4 digits): FHIR and HL7 v2 name a home municipality by it.
    municipality_number: str | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    """The exact bytes to POST and their media type (the signature covers these bytes)."""

    body: bytes
    content_type: str


class RenderError(Exception):
    """A delivery that should have rendered did not validate; the text names the document
    part (no personal data), for the dead letter."""


# A renderer: the delivery JSON, its sender and recipient, the time of sending -> the document,
# or None when the format has no message for this delivery.
Renderer = Callable[[Mapping[str, Any], Addressee, Addressee, datetime], Rendered | None]
