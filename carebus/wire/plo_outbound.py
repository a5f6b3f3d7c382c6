"""Deliveries as PLO 1.6 logistics messages in MsgHead 1.2, for a webhook that chose `plo`.

The four logistics messages a municipality's care system already takes from the hospital are
rendered from the events carebus routes (docs/adapters.md, "Outbound PLO"):

- admission -> LOG_INNLAGT, MeldingInnlagtPasient, Hendelsekode 1 (innlagt);
- discharge_ready -> LOG_UTSKRIVNINGSKLAR, MeldingUtskrivningsklarPasient, 3 (utskrivningsklar);
- discharge_ready_withdrawn -> LOG_AVMELDING, AvmeldingUtskrivningsklarPasient, 4 (avmelding);
- discharge -> LOG_UTSKREVET, MeldingOmUtskrevetPasient, 2 (utskrevet), with UtskrevetTil.

Everything else (police callouts, housing incidents, replies, retractions, ...) has no PLO
message and goes as carebus JSON (carebus.wire.outbound). MsgHead names the organisation the
event came from as Sender and the webhook's organisation as Receiver, each by HER-id (when the
directory has one) and ENH organisation number; the patient only by fødselsnummer or D-nummer
(carebus holds no names). MsgId is the delivery id, so a retry is the same message.

What carebus knows beyond the standard's fields and the recipient may see (why the patient was
admitted, the housing situation, a crisis plan, the follow-up appointment) is written, in
Norwegian, in the event's Merknad: a receiving caseworker reads it where PLO puts remarks, and
the transitions the sources call most dangerous (discharge after an overdose or a suicide
attempt, to homelessness) are never reduced to a bare logistics code.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from lxml import etree

from carebus.domain.identity import is_d_number
from carebus.wire.outbound import Addressee, Rendered, RenderError
from carebus.wire.plo import MSGHEAD, message_schema, schema_error_path
from carebus.wire.translation import NORWAY

CONTENT_TYPE: Final = "application/xml"
PLO_16: Final = "http://www.kith.no/xmlstds/po/Pasientlogistikk/2012-04-01"
PO_16: Final = "http://www.kith.no/xmlstds/po/poKomponent/2012-04-01"
FK1: Final = "http://www.kith.no/xmlstds/felleskomponent1"
HENDELSE: Final = "2.16.578.1.12.4.1.1.9121"
UTSKREVET_TIL: Final = "2.16.578.1.12.4.1.1.8408"
ORGANISATION_IDS: Final = "2.16.578.1.12.4.1.1.9051"
PERSON_IDS: Final = "2.16.578.1.12.4.1.1.8116"


# event type -> (MsgHead Type V, its DN, PLO element, Hendelsekode V, its DN)
MESSAGES: Final[Mapping[str, tuple[str, str, str, str, str]]] = {
    "admission": (
        "LOG_INNLAGT",
        "Melding om innlagt pasient",
        "MeldingInnlagtPasient",
        "1",
        "Pasient innlagt",
    ),
    "discharge_ready": (
        "LOG_UTSKRIVNINGSKLAR",
        "Melding om utskrivningsklar pasient",
        "MeldingUtskrivningsklarPasient",
        "3",
        "Pasient utskrivningsklar",
    ),
    "discharge_ready_withdrawn": (
        "LOG_AVMELDING",
        "Avmelding av utskrivningsklar pasient",
        "AvmeldingUtskrivningsklarPasient",
        "4",
        "Avmelding av utskrivningsklar pasient",
    ),
    "discharge": (
        "LOG_UTSKREVET",
        "Melding om utskrevet pasient",
        "MeldingOmUtskrevetPasient",
        "2",
        "Pasient utskrevet",
    ),
}

_REASON: Final = {
    "overdose": "overdose",
    "suicide_attempt": "selvmordsforsøk",
    "possible_suicide_attempt": "mulig selvmordsforsøk",
    "psychosis": "psykose",
    "withdrawal": "abstinens",
    "other": "annet",
}
_KIND: Final = {"voluntary": "frivillig", "involuntary": "tvungen"}
_HOUSING: Final = {
    "stable": "stabil bolig",
    "unstable": "ustabil bosituasjon",
    "homeless": "uten fast bopel",
    "municipal_housing": "kommunal bolig",
    "institution": "institusjon",
}
# "Utskrevet til" (8408): 1 is the person's home or workplace, which municipal housing is too.
# carebus knows no other code of the list for certain, so any other destination goes as the
# code's original text (OT) alone, never as a guessed code.
_DESTINATION: Final = {
    "home": ("1", "Bosted/arbeidssted"),
    "municipal_housing": ("1", "Bosted/arbeidssted"),
}
_DESTINATION_TEXT: Final = {
    "municipal_housing": "kommunal bolig",
    "institution": "institusjon",
    "homeless": "uten fast bopel",
    "temporary_housing": "midlertidig bolig",
    "unknown": "ukjent",
}
# The admissions the parliamentary proposal asks the municipality to be warned of at discharge.
_DANGEROUS: Final = frozenset({"overdose", "suicide_attempt", "possible_suicide_attempt"})
_TIMES: Final = (("expected_discharge_at", "Forventet utskrevet"), ("followup_at", "Oppfølging"))


def render(
    delivery: Mapping[str, Any], sender: Addressee, recipient: Addressee, now: datetime
) -> Rendered | None:
    """The delivery as MsgHead + PLO 1.6, validated; None when PLO has no message for it (or
    the person's identity was erased: a PLO message names its patient)."""
    message = MESSAGES.get(str(delivery.get("event_type")))
    nin = (delivery.get("subject") or {}).get("nin")
    if message is None or not isinstance(nin, str) or delivery.get("emergency"):
        # An emergency disclosure (helsepersonelloven § 23 no. 4) must reach its recipient with
        # its justification and who is accountable, which PLO has no element for: JSON.
        return None
    msg_type, msg_name, element, code, code_name = message
    payload: Mapping[str, Any] = delivery.get("payload") or {}
    occurred = _local(str(delivery["occurred_at"]))
    m = f"{{{MSGHEAD}}}"
    root = etree.Element(f"{m}MsgHead", nsmap={None: MSGHEAD})
    info = etree.SubElement(root, f"{m}MsgInfo")
    _cv(etree.SubElement(info, f"{m}Type"), msg_type, msg_name)
    etree.SubElement(info, f"{m}MIGversion").text = "v1.2 2006-05-24"
    etree.SubElement(info, f"{m}GenDate").text = _local_time(now)
    etree.SubElement(info, f"{m}MsgId").text = str(delivery["delivery_id"])
    _organisation(etree.SubElement(info, f"{m}Sender"), sender)
    _organisation(etree.SubElement(info, f"{m}Receiver"), recipient)
    patient = etree.SubElement(info, f"{m}Patient")
    ident = etree.SubElement(patient, f"{m}Ident")
    etree.SubElement(ident, f"{m}Id").text = nin
    kind = ("DNR", "D-nummer") if is_d_number(nin) else ("FNR", "Fødselsnummer")
    _cv(etree.SubElement(ident, f"{m}TypeId"), *kind, system=PERSON_IDS)
    ref_doc = etree.SubElement(etree.SubElement(root, f"{m}Document"), f"{m}RefDoc")
    etree.SubElement(ref_doc, f"{m}IssueDate").set("V", occurred)
    _cv(etree.SubElement(ref_doc, f"{m}MsgType"), "XML", "XML-instans")
    content = etree.SubElement(ref_doc, f"{m}Content")
    content.append(
        _logistics(str(delivery["event_type"]), element, code, code_name, occurred, payload)
    )
    document = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    schema = message_schema()
    if not schema.validate(etree.fromstring(document)):
        raise RenderError(f"the PLO message does not validate at {schema_error_path(schema)}")
    return Rendered(bytes(document), CONTENT_TYPE)


def _logistics(
    event_type: str,
    element: str,
    code: str,
    code_name: str,
    occurred: str,
    payload: Mapping[str, Any],
) -> Any:
    p, po = f"{{{PLO_16}}}", f"{{{PO_16}}}"
    plo = etree.Element(f"{p}Pasientlogistikk", nsmap={"p1": PLO_16, None: PO_16, "fk1": FK1})
    sending = etree.SubElement(plo, f"{po}InformasjonOmForsendelsen")
    _cv(etree.SubElement(sending, f"{po}Forsendelsesstatus"), "N", "Ny")
    message = etree.SubElement(plo, f"{p}{element}")
    if event_type == "discharge":
        _discharged_to(message, payload)
    happening = etree.SubElement(message, f"{po}TidsfestetHendelse")
    _cv(etree.SubElement(happening, f"{po}Hendelsekode"), code, code_name, system=HENDELSE)
    etree.SubElement(happening, f"{po}TidspunktForHendelse").set("V", occurred)
    etree.SubElement(happening, f"{po}Anslag").text = "false"
    remark = remarks(event_type, payload)
    if remark:
        etree.SubElement(happening, f"{po}Merknad").text = remark
    return plo


def _discharged_to(message: Any, payload: Mapping[str, Any]) -> None:
    po = f"{{{PO_16}}}"
    to = etree.SubElement(message, f"{po}UtskrevetTil")
    out = etree.SubElement(to, f"{po}UtTil")
    destination = payload.get("destination")
    if destination in _DESTINATION:
        value, name = _DESTINATION[destination]
        _cv(out, value, name, system=UTSKREVET_TIL)
    else:
        out.set("S", UTSKREVET_TIL)
        out.set("OT", _DESTINATION_TEXT.get(str(destination), "ikke oppgitt til mottaker"))
    if destination in _DESTINATION_TEXT:
        etree.SubElement(
            to, f"{po}Merknad"
        ).text = f"Utskrevet til {_DESTINATION_TEXT[destination]}"


def remarks(event_type: str, payload: Mapping[str, Any]) -> str:
    """What carebus knows beyond PLO's fields, in Norwegian, from the fields the recipient may
    see (each part only when its field was delivered)."""
    parts: list[str] = []
    reason = payload.get("reason")
    if reason in _DANGEROUS:
        parts.append(f"OBS: innlagt etter {_REASON[reason]}")
    elif reason in _REASON:
        parts.append(f"Innleggelsesårsak: {_REASON[reason]}")
    ward = payload.get("ward")
    if isinstance(ward, str) and ward:
        # TilknyttetEnhet would need the unit's identifier, which carebus is not told.
        parts.append(f"Avdeling: {_xml_text(ward)}")
    contact = payload.get("dps_contact")
    if isinstance(contact, str) and contact:
        # Whom the municipality should call about the follow-up (issue 17, item 1).
        parts.append(f"Kontakt ved DPS: {_xml_text(contact)}")
    if payload.get("admission_kind") in _KIND:
        parts.append(f"Innleggelse: {_KIND[payload['admission_kind']]}")
    housing = payload.get("housing_status")
    if housing == "homeless":
        parts.append("OBS: pasienten er uten fast bopel")
    elif housing in _HOUSING:
        parts.append(f"Bosituasjon: {_HOUSING[housing]}")
    if event_type == "discharge" and payload.get("destination") == "homeless":
        parts.append("OBS: utskrevet uten fast bopel")
    if event_type == "discharge" and payload.get("destination") == "temporary_housing":
        parts.append("OBS: utskrevet til midlertidig bolig")
    if payload.get("needs_municipal_services") is True:
        parts.append("Trenger kommunale tjenester")
    if "crisis_plan" in payload:
        parts.append("Kriseplan: " + ("ja" if payload["crisis_plan"] else "nei"))
    for key, label in (
        ("expected_discharge_at", "Forventet utskrevet"),
        ("followup_at", "Oppfølging"),
    ):
        value = payload.get(key)
        if isinstance(value, str):
            parts.append(f"{label}: {_local(value)}")
    return "; ".join(parts)


def _organisation(parent: Any, party: Addressee) -> None:
    m = f"{{{MSGHEAD}}}"
    organisation = etree.SubElement(parent, f"{m}Organisation")
    etree.SubElement(organisation, f"{m}OrganisationName").text = party.name or party.org_id
    if party.her_id:
        _ident(organisation, party.her_id, "HER", "HER-id")
    _ident(organisation, party.org_id, "ENH", "Organisasjonsnummeret i Enhetsregisteret")


def _ident(parent: Any, value: str, kind: str, name: str) -> None:
    m = f"{{{MSGHEAD}}}"
    ident = etree.SubElement(parent, f"{m}Ident")
    etree.SubElement(ident, f"{m}Id").text = value
    _cv(etree.SubElement(ident, f"{m}TypeId"), kind, name, system=ORGANISATION_IDS)


def _cv(element: Any, value: str, name: str, *, system: str | None = None) -> None:
    element.set("V", value)
    element.set("DN", name)
    if system is not None:
        element.set("S", system)


def _local(rfc3339: str) -> str:
    """An RFC 3339 time as Norwegian senders write PLO times: local, without an offset."""
    return _local_time(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")))


def _local_time(moment: datetime) -> str:
    try:
        local = moment.astimezone(NORWAY)
    except OverflowError:  # the last hours of year 9999 (a sender's "unknown"): kept in UTC
        return moment.astimezone(UTC).isoformat(timespec="seconds")
    return local.replace(tzinfo=None).isoformat(timespec="seconds")


def _xml_text(text: str) -> str:
    """`text` without what XML 1.0 cannot hold and the gateway's input rule lets through
    (the noncharacters U+FFFE and U+FFFF; surrogates and controls never pass it)."""
    return "".join(ch for ch in text if ch not in "\ufffe\uffff")
