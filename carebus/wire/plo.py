"""PLO messages (pleie- og omsorgsmeldinger 1.6 and 1.5 in a MsgHead 1.2): read safely, validated
against the standard's own XSDs, mapped to carebus events, and answered with an AppRec 1.1.

The mapping is documented field by field in docs/adapters.md. Only the messages carebus has an
event for are taken; any other PLO message is answered `Avvist` (code T10) with a text saying
that carebus does not carry it, so the sender's system shows that it reached no one.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import Any, Final

from lxml import etree

from carebus.domain.events import MAX_TEXT
from carebus.domain.text import text_problem
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.translation import (
    NORWAY,
    DirectoryView,
    Party,
    Translation,
    Untranslatable,
    derived_event_id,
    national_identity_number,
    norwegian_time,
)

PROTOCOL: Final = "plo"
SCHEMA_DIR: Final = PROJECT_ROOT / "schemas" / "plo"
MSGHEAD: Final = "http://www.kith.no/xmlstds/msghead/2006-05-24"
APPREC: Final = "http://www.kith.no/xmlstds/apprec/2012-02-15"
PLO_16: Final = "http://www.kith.no/xmlstds/po/Pasientlogistikk/2012-04-01"
PLO_15: Final = "http://www.kith.no/xmlstds/po/Pasientlogistikk/2009-06-30"
# Every content namespace of PLO 1.6 and 1.5 (`schemas/plo/carebus-plo.xsd`): a MsgHead whose
# content is in another namespace is not a PLO message.
PLO_NAMESPACES: Final = frozenset(
    f"http://www.kith.no/xmlstds/po/{name}/{version}"
    for version in ("2012-04-01", "2009-06-30")
    for name in (
        "Pasientlogistikk",
        "HelseopplysningerVedSoknad",
        "HelseopplysningerTilLege",
        "Konsultasjon",
        "Innleggelsesrapport",
        "MedisinskeOpplysninger",
        "OverforingMedisinskeOpplysninger",
        "MeldingFravar",
        "OrienteringOmTjenestetilbud",
        "TverrfagligEpikrise",
    )
)
# A PLO message is a few kilobytes; the largest real ones (with attachments) stay far below.
MAX_BYTES: Final = 2 * 1024 * 1024
_NS: Final = {"mh": MSGHEAD}
# The element an XSD error names: "Element '{namespace}Name': ..."
_XSD_ELEMENT: Final = re.compile(r"Element '(?:\{[^}]*\})?([A-Za-z0-9_.-]+)'")

# KITH code lists: AppRec status (8258) and the general AppRec error codes (8221).
STATUS_CODES: Final = "2.16.578.1.12.4.1.1.8258"
ERROR_CODES: Final = "2.16.578.1.12.4.1.1.8221"
STATUS_TEXT: Final = {"1": "OK", "2": "Avvist", "3": "OK, feil i delmelding"}
ERROR_TEXT: Final = {
    "T01": "Ikke XML / ikke 'well formed' / uleselig",
    "T02": "XML validerer ikke",
    "T10": "Støtter ikke meldingsformatet",
    "T99": "Annen feil på format",
    "E10": "Ugyldig meldingsidentifikator",
    "E21": "Mottaker finnes ikke",
    "E30": "Pasientens fødselsnummer mangler",
    "E31": "Pasientens fødselsnummer er feil",
    "E36": "Pasientopplysninger er utilstrekkelig",
    "X99": "Annen feil",
}
# TidsfestetHendelse/Hendelsekode (code list 9121).
ADMITTED: Final = "1"
DISCHARGED: Final = "2"
DISCHARGE_READY: Final = "3"
DISCHARGE_READY_WITHDRAWN: Final = "4"
# Forsendelsesstatus: N (ny), M (endring), C (kansellering).
NEW, CHANGE, CANCEL = "N", "M", "C"

# The MsgHead message types carebus has an event for, and the event.
_EVENT_OF: Final = {
    "LOG_INNLAGT": "admission",
    "LOG_UTSKRIVNINGSKLAR": "discharge_ready",
    "LOG_AVMELDING": "discharge_ready_withdrawn",
    "LOG_UTSKREVET": "discharge",
    # Health information about an admitted patient to the municipality, on admission
    # (helseopplysninger) or at discharge (utskrivningsrapport): the obligation the SLA tracks.
    "HELSEOPPL_SOKNAD": "health_info_sent",
    "UTSKRIVNINGSRAPPORT": "health_info_sent",
}
_NOT_CARRIED: Final = {
    "LOG_DOD": "an orientation about a death",
    "INNLEGGELSESRAPPORT": "an admission report from the municipality to the hospital",
    "HELSEOPPLYSNINGER_LEGE": "health information to the GP",
    "MEDISINSKE_OPPLYSNINGER": "medical information from the GP",
    "ORIENTERING_TJENESTETILBUD": "an orientation about municipal services to the GP",
    "MELDING_FRAVAR": "a notice of absence",
    "TVERRFAGLIG_EPIKRISE": "an interdisciplinary discharge summary",
}
# "Utskrevet til" (code list 8408): 1 is the person's home or workplace.
_DESTINATION_OF: Final = {"1": "home"}


class PloRefusal(Untranslatable):
    """A PLO message refused, with the AppRec error code (8221) that says why."""

    def __init__(self, where: str, problem: str, code: str, severity: str = "error") -> None:
        super().__init__(where, problem, "rejected" if severity == "rejected" else "error")
        self.code = code


@dataclass(frozen=True, slots=True)
class OrganisationRef:
    """A MsgHead organisation as named in the message: its name, its identifiers (TypeId V ->
    Id: HER, ENH, ...) and its sub-unit (a department), for the directory and the AppRec."""

    name: str
    idents: tuple[tuple[str, str], ...]
    unit: OrganisationRef | None = None


@dataclass(frozen=True, slots=True)
class PloMessage:
    """What carebus reads of a PLO message (nothing more is kept)."""

    msg_type: str
    msg_type_name: str
    msg_id: str
    gen_date: str
    sender: OrganisationRef
    receiver: OrganisationRef
    nin: str | None
    status: str
    parent: str | None
    conversation: str | None
    happenings: Mapping[str, str]
    contact_unit: str | None
    discharged_to: str | None


# lxml ships no type information: its Resolver is Any to mypy.
class _LocalSchemas(etree.Resolver):  # type: ignore[misc]
    """The standard's http:// imports (xmldsig, kith.xsd) from the copies in schemas/plo."""

    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:
        local = SCHEMA_DIR / system_url.rsplit("/", 1)[-1]
        if local.is_file():
            return self.resolve_filename(str(local), context)
        raise OSError("a PLO schema import that is not in schemas/plo")


_PER_THREAD = threading.local()


def _schema(name: str) -> etree.XMLSchema:
    """The schema, one per thread: an XMLSchema's error log is its own, so two threads
    validating with one would read each other's errors."""
    schemas: dict[str, etree.XMLSchema] = _PER_THREAD.__dict__.setdefault("schemas", {})
    if name not in schemas:
        # The schemas are ours (xmldsig's needs its internal DTD's entities); messages never are.
        parser = etree.XMLParser(no_network=True, resolve_entities=True, load_dtd=False)
        parser.resolvers.add(_LocalSchemas())
        schemas[name] = etree.XMLSchema(etree.parse(str(SCHEMA_DIR / name), parser))
    return schemas[name]


def message_schema() -> etree.XMLSchema:
    """MsgHead 1.2 with every PLO 1.6 and 1.5 content schema (Content is strictly validated)."""
    return _schema("carebus-plo.xsd")


def apprec_schema() -> etree.XMLSchema:
    return _schema("AppRec-v1.1.xsd")


def _safe_parser() -> etree.XMLParser:
    # No DTD, no entities, no network, no huge text nodes: a message is data, never instructions.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def read(body: bytes) -> PloMessage:
    """Parse and validate `body`; PloRefusal (T01 unreadable, T02 invalid, T10 not PLO)."""
    if len(body) > MAX_BYTES:
        raise PloRefusal("MsgHead", f"is larger than {MAX_BYTES} bytes", "T99", "rejected")
    try:
        root = etree.fromstring(body, _safe_parser())
    except (etree.XMLSyntaxError, ValueError):
        raise PloRefusal("MsgHead", "is not well-formed XML", "T01", "rejected") from None
    if root.getroottree().docinfo.doctype:
        raise PloRefusal("MsgHead", "must not have a document type declaration", "T01", "rejected")
    if root.tag != f"{{{MSGHEAD}}}MsgHead":
        raise PloRefusal("MsgHead", "the document is not a MsgHead 1.2 message", "T10", "rejected")
    content = _content(root)
    schema = message_schema()
    if not schema.validate(root):
        raise PloRefusal(schema_error_path(schema), "does not validate against the XSD", "T02")
    return _message(root, content)


def _content(root: Any) -> Any:
    contents = root.xpath("mh:Document/mh:RefDoc/mh:Content/*", namespaces=_NS)
    if not contents:
        raise PloRefusal(
            "MsgHead/Document/RefDoc/Content", "holds no PLO message", "T10", "rejected"
        )
    content = contents[0]
    if etree.QName(content).namespace not in PLO_NAMESPACES:
        raise PloRefusal(
            "MsgHead/Document/RefDoc/Content", "is not a PLO 1.5 or 1.6 message", "T10", "rejected"
        )
    return content


def schema_error_path(schema: etree.XMLSchema) -> str:
    """Where the last XSD error is, as an element path without positions or values: the path
    lxml gives, its unnamed steps (`*`, in a foreign namespace) named from the error's text."""
    error = schema.error_log.last_error
    path = getattr(error, "path", None) or "/MsgHead"
    steps = [step.split("[", 1)[0].split(":")[-1] for step in str(path).split("/") if step]
    named = _XSD_ELEMENT.search(getattr(error, "message", "") or "")
    if named is not None and steps and steps[-1] == "*":
        steps[-1] = named.group(1)
    return "/".join(step for step in steps if step != "*") or "MsgHead"


def _text(node: Any, path: str) -> str | None:
    found = node.xpath(path, namespaces=_NS)
    if not found:
        return None
    value = found[0]
    text = value if isinstance(value, str) else value.text
    return str(text).strip() if text is not None else None


def _organisation(node: Any) -> OrganisationRef:
    idents = tuple(
        (str(ident.xpath("string(mh:TypeId/@V)", namespaces=_NS)), str(ident_id).strip())
        for ident in node.xpath("mh:Ident", namespaces=_NS)
        for ident_id in ident.xpath("mh:Id/text()", namespaces=_NS)
    )
    units = node.xpath("mh:Organisation", namespaces=_NS)
    return OrganisationRef(
        name=_text(node, "mh:OrganisationName") or "",
        idents=idents,
        unit=_organisation(units[0]) if units else None,
    )


def _message(root: Any, content: Any) -> PloMessage:
    info = root.xpath("mh:MsgInfo", namespaces=_NS)[0]
    nins = [
        str(ident.xpath("string(mh:Id)", namespaces=_NS))
        for ident in info.xpath("mh:Patient/mh:Ident", namespaces=_NS)
        if ident.xpath("string(mh:TypeId/@V)", namespaces=_NS) in ("FNR", "DNR")
    ]
    happenings: dict[str, str] = {}
    for happening in content.xpath(".//*[local-name()='TidsfestetHendelse']"):
        code = happening.xpath("string(*[local-name()='Hendelsekode']/@V)")
        moment = happening.xpath("string(*[local-name()='TidspunktForHendelse']/@V)")
        if code and moment and code not in happenings:
            happenings[code] = moment
    return PloMessage(
        msg_type=str(info.xpath("string(mh:Type/@V)", namespaces=_NS)),
        msg_type_name=str(info.xpath("string(mh:Type/@DN)", namespaces=_NS)),
        msg_id=_text(info, "mh:MsgId") or "",
        gen_date=_text(info, "mh:GenDate") or "",
        sender=_organisation(info.xpath("mh:Sender/mh:Organisation", namespaces=_NS)[0]),
        receiver=_organisation(info.xpath("mh:Receiver/mh:Organisation", namespaces=_NS)[0]),
        nin=nins[0].strip() if nins else None,
        status=str(content.xpath("string(.//*[local-name()='Forsendelsesstatus']/@V)")),
        parent=_text(info, "mh:ConversationRef/mh:RefToParent"),
        conversation=_text(info, "mh:ConversationRef/mh:RefToConversation"),
        happenings=happenings,
        contact_unit=str(
            content.xpath(
                "string(*[local-name()='TilknyttetEnhet']/*[local-name()='Kontaktenhet']"
                "/*[local-name()='OrganisationName'])"
            )
        ).strip()
        or None,
        discharged_to=str(content.xpath("string(.//*[local-name()='UtTil']/@V)")) or None,
    )


def resolve(ref: OrganisationRef, directory: DirectoryView) -> Party | None:
    """The directory's organisation a MsgHead organisation names: by organisation number (ENH)
    or HER-id, the organisation itself first, then its unit (some register a department)."""
    node: OrganisationRef | None = ref
    while node is not None:
        for kind, value in node.idents:
            party = (
                directory.by_org_id(value)
                if kind == "ENH"
                else directory.by_her_id(value)
                if kind == "HER"
                else None
            )
            if party is not None:
                return party
        node = node.unit
    return None


SENDER_PATH: Final = "MsgHead/MsgInfo/Sender/Organisation"
RECEIVER_PATH: Final = "MsgHead/MsgInfo/Receiver/Organisation"
PATIENT_PATH: Final = "MsgHead/MsgInfo/Patient/Ident"


def sender_of(message: PloMessage, directory: DirectoryView) -> Party:
    """The organisation that sent `message`, or PloRefusal when the directory does not know it."""
    party = resolve(message.sender, directory)
    if party is None:
        raise PloRefusal(
            SENDER_PATH,
            "is not registered in the carebus directory by organisation number (ENH) or HER-id",
            "X99",
            "rejected",
        )
    return party


def carried(message: PloMessage) -> str:
    """The carebus event type `message` maps to, or PloRefusal (T10) saying carebus does not
    carry it (checked first: the most useful answer to a message carebus never takes)."""
    event_type = _EVENT_OF.get(message.msg_type)
    if event_type is None:
        what = _NOT_CARRIED.get(message.msg_type, "this message type")
        raise PloRefusal(
            "MsgHead/MsgInfo/Type",
            f"carebus carries no event for {what}; send it to the receiver another way",
            "T10",
            "rejected",
        )
    return event_type


def translate(
    message: PloMessage, sender: Party, directory: DirectoryView, secret: bytes
) -> Translation:
    """The carebus events `message` maps to, whole, or PloRefusal naming where it cannot.

    `sender` is the organisation the message comes from (`sender_of`, which the caller has
    checked is the caller's own).
    """
    event_type = carried(message)
    if not message.msg_id:
        raise PloRefusal("MsgHead/MsgInfo/MsgId", "is empty", "E10")
    if message.nin is None:
        raise PloRefusal(PATIENT_PATH, "has no fødselsnummer or D-nummer (FNR, DNR)", "E30")
    try:
        nin = national_identity_number(message.nin, PATIENT_PATH)
    except Untranslatable as wrong:
        raise PloRefusal(wrong.where, wrong.problem, "E31") from None
    episode = _Episode(message, sender, nin, secret)
    if message.status == CANCEL:
        return episode.cancellation(event_type)
    built = episode.event(event_type, directory)
    if message.status == CHANGE:
        if event_type != "health_info_sent":
            raise PloRefusal(
                "Forsendelsesstatus",
                "a logistics message is not changed (Endring): cancel it and send a new one",
                "X99",
            )
        return episode.change(built)
    return Translation(events=(built.event,), origins=built.origins)


@dataclass(frozen=True, slots=True)
class _Built:
    event: dict[str, Any]
    origins: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Episode:
    """One message's place in its patient's stay: the ids of the events it is about."""

    message: PloMessage
    sender: Party
    nin: str
    secret: bytes

    def _id(self, *parts: str) -> str:
        return derived_event_id(self.secret, PROTOCOL, self.sender.org_id, *parts)

    def _time(self, code: str, what: str) -> str:
        raw = self.message.happenings.get(code)
        where = f"TidsfestetHendelse[Hendelsekode={code}]/TidspunktForHendelse"
        if raw is None:
            raise PloRefusal(where, f"is required: the time the patient was {what}", "E36")
        try:
            return norwegian_time(raw, where)
        except Untranslatable as wrong:
            raise PloRefusal(wrong.where, wrong.problem, "T99") from None

    def admission_id(self) -> str:
        """The admission's event: keyed by the admission time every logistics message about
        the stay repeats; without one, by the conversation the message belongs to."""
        if ADMITTED in self.message.happenings:
            return self._id("admission", self.nin, self._time(ADMITTED, "admitted"))
        return self._id("conversation", self.message.conversation or self.message.msg_id)

    def ready_id(self) -> str:
        return self._id(
            "discharge_ready",
            self.nin,
            self._time(ADMITTED, "admitted"),
            self._time(DISCHARGE_READY, "declared ready for discharge"),
        )

    def own_id(self, event_type: str) -> str:
        """The id of the event this message maps to (a report's: its MsgId)."""
        if event_type == "admission":
            return self.admission_id()
        if event_type == "discharge_ready":
            return self.ready_id()
        if event_type == "discharge_ready_withdrawn":
            withdrawn = self._time(DISCHARGE_READY_WITHDRAWN, "withdrawn as ready")
            return self._id("withdrawn", self.ready_id(), withdrawn)
        if event_type == "discharge":
            return self._id("discharge", self.nin, self._time(DISCHARGED, "discharged"))
        return self._id("message", self.message.msg_id)

    def base(self, event_type: str, event_id: str, occurred_at: str) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "event_type": event_type,
            "occurred_at": occurred_at,
            "source": {"agency": self.sender.agency, "org_id": self.sender.org_id},
            "subject": {"nin": self.nin},
        }

    def event(self, event_type: str, directory: DirectoryView) -> _Built:
        origins = {"events[0].subject.nin": PATIENT_PATH, "events[0].event_id": "MsgHead/MsgInfo"}
        payload: dict[str, Any]
        if event_type == "admission":
            occurred = self._time(ADMITTED, "admitted")
            payload = self._admission(directory, origins)
            origins["events[0].occurred_at"] = _where(ADMITTED)
        elif event_type == "discharge_ready":
            # The notice's own time (GenDate): the municipality's reply deadline runs from when
            # it was told. The ready time itself is often a date alone, or an estimate
            # (Anslag), and still keys the notice's id (`ready_id`).
            self._time(DISCHARGE_READY, "declared ready for discharge")
            occurred = self._sent_at()
            payload = {
                "admission_event_id": self.admission_id(),
                "needs_municipal_services": True,
                "housing_status": "unknown",
            }
            origins["events[0].occurred_at"] = "MsgHead/MsgInfo/GenDate"
        elif event_type == "discharge_ready_withdrawn":
            occurred = self._time(DISCHARGE_READY_WITHDRAWN, "withdrawn as ready")
            payload = {"discharge_ready_event_id": self.ready_id()}
            origins["events[0].occurred_at"] = _where(DISCHARGE_READY_WITHDRAWN)
        elif event_type == "discharge":
            occurred = self._time(DISCHARGED, "discharged")
            payload = {
                "admission_event_id": self.admission_id(),
                "destination": _DESTINATION_OF.get(self.message.discharged_to or "", "unknown"),
                "crisis_plan": False,
            }
            origins["events[0].occurred_at"] = _where(DISCHARGED)
            origins["events[0].payload.destination"] = "UtskrevetTil/UtTil"
        else:
            occurred = self._sent_at()
            payload = {"admission_event_id": self.admission_id()}
            origins["events[0].occurred_at"] = "MsgHead/MsgInfo/GenDate"
        event = self.base(event_type, self.own_id(event_type), occurred)
        event["payload"] = payload
        return _Built(event, origins)

    def _sent_at(self) -> str:
        try:
            return norwegian_time(self.message.gen_date, "MsgHead/MsgInfo/GenDate")
        except Untranslatable as wrong:
            raise PloRefusal(wrong.where, wrong.problem, "T99") from None

    def _admission(self, directory: DirectoryView, origins: dict[str, str]) -> dict[str, Any]:
        municipality = resolve(self.message.receiver, directory)
        if municipality is None:
            raise PloRefusal(
                RECEIVER_PATH,
                "is not registered in the carebus directory by organisation number or HER-id",
                "E21",
            )
        if municipality.agency != "municipality":
            raise PloRefusal(
                RECEIVER_PATH,
                "must be the patient's municipality: a message about an admitted patient goes to"
                " the municipality's care services",
                "E21",
            )
        origins["events[0].payload.home_municipality_org"] = RECEIVER_PATH
        payload: dict[str, Any] = {
            # A logistics message carries no health information: carebus is not told why.
            "reason": "unknown",
            "admission_kind": "unknown",
            "housing_status": "unknown",
            # The hospital sends it because the patient receives or needs municipal services.
            "needs_municipal_services": True,
            "home_municipality_org": municipality.org_id,
        }
        ward = self.message.contact_unit
        if ward is not None and len(ward) <= MAX_TEXT and text_problem(ward) is None:
            payload["ward"] = ward
            origins["events[0].payload.ward"] = "TilknyttetEnhet/Kontaktenhet/OrganisationName"
        return payload

    def cancellation(self, event_type: str) -> Translation:
        """Kansellering: a retraction of the event the cancelled message mapped to (found from
        the same content for a logistics message, from RefToParent for a report)."""
        if event_type == "health_info_sent":
            if not self.message.parent:
                raise PloRefusal(
                    "MsgHead/MsgInfo/ConversationRef/RefToParent",
                    "is required: the MsgId of the message that is cancelled",
                    "E10",
                )
            target = self._id("message", self.message.parent)
        else:
            target = self.own_id(event_type)
        return Translation(
            events=(self._retraction(target),),
            origins={
                "events[0].subject.nin": PATIENT_PATH,
                "events[0].payload.retracted_event_id": "MsgHead/MsgInfo/ConversationRef",
            },
        )

    def change(self, built: _Built) -> Translation:
        """Endring of a report: the report it replaces is retracted and the new one sent."""
        if not self.message.parent:
            raise PloRefusal(
                "MsgHead/MsgInfo/ConversationRef/RefToParent",
                "is required: the MsgId of the message that is changed",
                "E10",
            )
        retraction = self._retraction(self._id("message", self.message.parent))
        origins = {key.replace("events[0]", "events[1]"): v for key, v in built.origins.items()}
        origins["events[0].payload.retracted_event_id"] = "MsgHead/MsgInfo/ConversationRef"
        origins["events[0].subject.nin"] = PATIENT_PATH
        return Translation(events=(retraction, built.event), origins=origins)

    def _retraction(self, target: str) -> dict[str, Any]:
        event = self.base("retraction", self._id("retraction", target), self._sent_at())
        event["payload"] = {"retracted_event_id": target, "reason": "sent_in_error"}
        return event


def _where(code: str) -> str:
    return f"TidsfestetHendelse[Hendelsekode={code}]/TidspunktForHendelse"


# ---- AppRec 1.1 ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an AppRec answers: status 1 (OK) or 2 (Avvist) with errors (code, extra text)."""

    status: str
    errors: tuple[tuple[str, str], ...] = ()

    @classmethod
    def ok(cls) -> Receipt:
        return cls("1")

    @classmethod
    def refused(cls, code: str, text: str) -> Receipt:
        return cls("2", ((code if code in ERROR_TEXT else "X99", text),))


def apprec(
    message: PloMessage | None, receipt: Receipt, *, now: datetime, original: bytes = b""
) -> bytes:
    """The AppRec 1.1 answering `message` (None: unreadable; its ids are then unknown), valid
    against the AppRec XSD. Its Id is the same for the same message and status, so a repeated
    message is answered as before."""
    a = f"{{{APPREC}}}"
    root = etree.Element(f"{a}AppRec", nsmap={None: APPREC})
    _cs(root, f"{a}MsgType", "APPREC", "Applikasjonskvittering")
    etree.SubElement(root, f"{a}MIGversion").text = "v1.1 2012-02-15"
    etree.SubElement(root, f"{a}SoftwareName").text = "carebus"
    etree.SubElement(root, f"{a}GenDate").text = now.astimezone(NORWAY).isoformat(
        timespec="seconds"
    )
    original_id = message.msg_id if message else _unreadable_id(original)
    etree.SubElement(root, f"{a}Id").text = str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"carebus:apprec:{original_id}:{receipt.status}")
    )
    _party(root, f"{a}Sender", message.receiver if message else None)
    _party(root, f"{a}Receiver", message.sender if message else None)
    _cs(root, f"{a}Status", receipt.status, STATUS_TEXT[receipt.status])
    for code, text in receipt.errors:
        error = etree.SubElement(root, f"{a}Error")
        error.set("V", code)
        error.set("DN", ERROR_TEXT.get(code, "Annen feil"))
        error.set("S", ERROR_CODES)
        error.set("OT", text[:1000])
    original_ref = etree.SubElement(root, f"{a}OriginalMsgId")
    _cs(
        original_ref,
        f"{a}MsgType",
        (message.msg_type if message else "") or "UKJENT",
        (message.msg_type_name if message else "") or "Ukjent",
    )
    issued = message.gen_date if message and message.gen_date else None
    etree.SubElement(original_ref, f"{a}IssueDate").text = _issue_date(issued, now)
    etree.SubElement(original_ref, f"{a}Id").text = original_id
    document = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    apprec_schema().assertValid(etree.fromstring(document, _safe_parser()))
    return bytes(document)


def _cs(parent: Any, tag: str, value: str, name: str) -> None:
    element = etree.SubElement(parent, tag)
    element.set("V", value)
    element.set("DN", name)


def _party(parent: Any, tag: str, ref: OrganisationRef | None) -> None:
    a = f"{{{APPREC}}}"
    hcp = etree.SubElement(etree.SubElement(parent, tag), f"{a}HCP")
    inst = etree.SubElement(hcp, f"{a}Inst")
    if ref is None:
        return
    etree.SubElement(inst, f"{a}Name").text = _clean(ref.name)
    if ref.idents:
        kind, value = ref.idents[0]
        etree.SubElement(inst, f"{a}Id").text = _clean(value)
        etree.SubElement(inst, f"{a}TypeId").set("V", _clean(kind))
    if ref.unit is not None:
        dept = etree.SubElement(inst, f"{a}Dept")
        etree.SubElement(dept, f"{a}Name").text = _clean(ref.unit.name)
        if ref.unit.idents:
            kind, value = ref.unit.idents[0]
            etree.SubElement(dept, f"{a}Id").text = _clean(value)
            etree.SubElement(dept, f"{a}TypeId").set("V", _clean(kind))


def _clean(text: str) -> str:
    """`text` with nothing XML cannot hold (the XSD validated it; this is for the unreadable)."""
    return "".join(ch for ch in text if ch.isprintable())[:200]


def _issue_date(issued: str | None, now: datetime) -> str:
    if issued:
        try:
            datetime.fromisoformat(issued)
        except ValueError:
            pass
        else:
            return issued
    return now.astimezone(NORWAY).isoformat(timespec="seconds")


def _unreadable_id(original: bytes) -> str:
    """An id for a message whose MsgId could not be read: the same for the same bytes."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"carebus:unreadable:{sha256(original).hexdigest()}"))
