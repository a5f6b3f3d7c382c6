"""PLO messages (carebus.wire.plo): every example of the standard read, mapped or refused with
the right code, and answered with a valid AppRec; hostile and mutated messages never crash."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from carebus.domain.events import parse_event
from carebus.wire import plo
from carebus.wire.translation import Party, StaticDirectory, Translation

DATA = Path(__file__).parents[1] / "data" / "plo"
NIN = "15076500565"
# The examples' patients.
NINS = ("15076500565", "13116900216", "12057900499")
SECRET = b"s" * 32
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
HOSPITAL = Party("974749025", "dps", "59")
MUNICIPALITY = Party("939865942", "municipality", "99387", "3428")
GP = Party("912345675", "fastlege", "56704")
DIRECTORY = StaticDirectory((HOSPITAL, MUNICIPALITY, GP))

# Each example of the standard (PLO 1.6 and 1.5): the event types it maps to, or the code it is
# refused with.
EXPECTED: dict[str, tuple[str, ...] | str] = {
    "Pasientlogistikk_Innlagt_pasient": ("admission",),
    "Pasientlogistikk_Innlagt_pasient_Kansellering": ("retraction",),
    "Pasientlogistikk_Utskrivningsklar_pasient": ("discharge_ready",),
    "Pasientlogistikk_Avmelding_av_utskrivningsklar_pasient": ("discharge_ready_withdrawn",),
    "Pasientlogistikk_Melding_om_utskrevet_pasient": ("discharge",),
    "Pasientlogistikk_Orientering_om_dodsfall": "T10",
    "Pasientlogistikk_Orientering_om_dodsfall_Kansellering": "T10",
    "Utskrivningsrapport": ("health_info_sent",),
    "Utskrivningsrapport_Endring": ("retraction", "health_info_sent"),
    "Utskrivningsrapport_Kansellering": ("retraction",),
    "Helseopplysninger_Varsel_om_innlagt_pasient": ("health_info_sent",),
    "Helseopplysninger_Oppdaterte_opplysninger_Endring1": ("retraction", "health_info_sent"),
    "Helseopplysninger_Oppdaterte_opplysninger_Endring2": ("retraction", "health_info_sent"),
    "Helseopplysninger_ved_soknad_Varsel": ("health_info_sent",),
    "Helseopplysninger_ved_soknad_Oppdatert_Endring1": ("retraction", "health_info_sent"),
    "Helseopplysninger_ved_soknad_Oppdatert_Endring2": ("retraction", "health_info_sent"),
    "Innleggelsesrapport": "T10",
    "Innleggelsesrapport_Endring": "T10",
    "Innleggelsesrapport_Kansellering": "T10",
    "Helseopplysninger_til_lege": "T10",
    "Helseopplysninger_til_lege_Kansellering": "T10",
    "Medisinske_opplysninger": "T10",
    "Medisinske_opplysninger_Kansellering": "T10",
    "Orientering_om_tjenestetilbud": "T10",
    "Orientering_om_tjenestetilbud_Kansellering": "T10",
}
EXAMPLES = sorted((DATA / "1_6").glob("*.xml")) + sorted((DATA / "1_5").glob("*.xml"))


def kind_of(path: Path) -> str:
    """`Utskrivningsrapport_v1-6_Endring.xml` -> `Utskrivningsrapport_Endring`."""
    stem = path.stem
    for version in ("_v1-6", "_v1-5"):
        stem = stem.replace(version, "")
    return stem.removesuffix("_Ny")


def outcome(body: bytes) -> tuple[plo.PloMessage | None, Translation | plo.PloRefusal]:
    message = None
    try:
        message = plo.read(body)
        plo.carried(message)
        translation = plo.translate(message, plo.sender_of(message, DIRECTORY), DIRECTORY, SECRET)
    except plo.PloRefusal as refusal:
        return message, refusal
    return message, translation


def test_every_example_is_known_here() -> None:
    """The table above covers every example message, PLO 1.6 and 1.5 (44 files)."""
    assert len(EXAMPLES) == 44
    assert {kind_of(path) for path in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_each_example_maps_whole_or_is_refused_with_its_code(path: Path) -> None:
    """Carried messages map to valid carebus events of the hospital about the patient; the
    others are refused T10; every answer is a valid AppRec without the nin."""
    message, result = outcome(path.read_bytes())
    expected = EXPECTED[kind_of(path)]
    if isinstance(expected, str):
        assert isinstance(result, plo.PloRefusal)
        assert result.code == expected
        receipt = plo.Receipt.refused(result.code, f"{result.where}: {result.problem}")
    else:
        assert isinstance(result, Translation), result
        assert tuple(e["event_type"] for e in result.events) == expected
        for event in result.events:
            parsed, problems = parse_event(dict(event))
            assert problems == [], problems
            assert parsed is not None
            assert parsed.source_org == HOSPITAL.org_id
            assert parsed.nin in NINS
            assert parsed.nin not in parsed.event_id
        receipt = plo.Receipt.ok()
    document = plo.apprec(message, receipt, now=NOW)
    assert plo.apprec_schema().validate(etree.fromstring(document))
    assert not any(nin.encode() in document for nin in NINS)


def test_the_messages_of_one_stay_refer_to_each_other() -> None:
    """Utskrivningsklar and avmelding name the admission innlagt made (same admission time);
    avmelding names the discharge-ready notice; a cancellation retracts exactly it."""
    by_kind = {kind_of(p): outcome(p.read_bytes())[1] for p in sorted((DATA / "1_6").glob("*"))}
    admission = by_kind["Pasientlogistikk_Innlagt_pasient"]
    ready = by_kind["Pasientlogistikk_Utskrivningsklar_pasient"]
    withdrawn = by_kind["Pasientlogistikk_Avmelding_av_utskrivningsklar_pasient"]
    cancelled = by_kind["Pasientlogistikk_Innlagt_pasient_Kansellering"]
    assert isinstance(admission, Translation)
    assert isinstance(ready, Translation)
    assert isinstance(withdrawn, Translation)
    assert isinstance(cancelled, Translation)
    admission_id = admission.events[0]["event_id"]
    assert ready.events[0]["payload"]["admission_event_id"] == admission_id
    assert withdrawn.events[0]["payload"]["discharge_ready_event_id"] == ready.events[0]["event_id"]
    assert cancelled.events[0]["payload"]["retracted_event_id"] == admission_id


def test_an_admission_names_the_receiving_municipality_and_says_what_it_does_not_know() -> None:
    """The receiver (by HER-id) is the home municipality; reason, kind and housing are unknown:
    a logistics message carries no health information."""
    _, result = outcome(
        (DATA / "1_6" / "Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml").read_bytes()
    )
    assert isinstance(result, Translation)
    event = result.events[0]
    assert event["occurred_at"] == "2018-01-29T10:00:00+01:00"
    assert event["payload"]["home_municipality_org"] == MUNICIPALITY.org_id
    assert event["payload"]["reason"] == "unknown"
    assert event["payload"]["admission_kind"] == "unknown"
    assert event["payload"]["housing_status"] == "unknown"
    assert result.origin_of("events[0].payload.home_municipality_org") == plo.RECEIVER_PATH


def test_a_gen_date_in_nanoseconds_is_read() -> None:
    """A Java sender's GenDate (LocalDateTime.toString(), 9 fraction digits; tests/data/plo/
    README.md) is a valid dateTime: the discharge-ready notice is mapped at that time, to the
    microsecond, as the same event as without the fraction, and answered with a valid AppRec."""
    body = (
        DATA / "vendor" / "Pasientlogistikk_Utskrivningsklar_pasient_v1-6_GenDate_nanosekunder.xml"
    ).read_bytes()
    message, result = outcome(body)
    assert isinstance(result, Translation), result
    [event] = result.events
    assert event["occurred_at"] == "2018-01-31T10:20:11.232947+01:00"
    assert parse_event(dict(event))[1] == []
    _, standard = outcome(
        (DATA / "1_6" / "Pasientlogistikk_Utskrivningsklar_pasient_v1-6_Ny.xml").read_bytes()
    )
    assert isinstance(standard, Translation)
    assert event["event_id"] == standard.events[0]["event_id"]
    document = plo.apprec(message, plo.Receipt.ok(), now=NOW, original=body)
    assert plo.apprec_schema().validate(etree.fromstring(document))


def test_a_sender_or_receiver_the_directory_does_not_know_is_refused() -> None:
    """Unknown sender: X99 naming the sender; unknown receiver of an admission: E21."""
    body = (DATA / "1_6" / "Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml").read_bytes()
    message = plo.read(body)
    with pytest.raises(plo.PloRefusal) as unknown_sender:
        plo.sender_of(message, StaticDirectory((MUNICIPALITY,)))
    assert unknown_sender.value.where == plo.SENDER_PATH
    with pytest.raises(plo.PloRefusal) as unknown_receiver:
        plo.translate(message, HOSPITAL, StaticDirectory((HOSPITAL,)), SECRET)
    assert unknown_receiver.value.code == "E21"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "T01"),
        (b"\x00\x01\x02", "T01"),
        (b"<a>", "T01"),
        (b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "file:///etc/passwd"><a/>', "T01"),
        (b'<a xmlns="urn:x"/>', "T10"),
        (b'<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24"/>', "T10"),
        (b"<a>" * 10_000 + b"</a>" * 10_000, "T01"),
        (b"<a>" + b"x" * (plo.MAX_BYTES + 1) + b"</a>", "T99"),
    ],
    ids=[
        "empty",
        "binary",
        "truncated",
        "external-dtd",
        "not-msghead",
        "no-content",
        "deep",
        "huge",
    ],
)
def test_hostile_bodies_are_refused_not_parsed(body: bytes, code: str) -> None:
    """No DTD, no external entity, no deep tree, no huge body reaches the mapping."""
    with pytest.raises(plo.PloRefusal) as refused:
        plo.read(body)
    assert refused.value.code == code
    document = plo.apprec(
        None, plo.Receipt.refused(refused.value.code, refused.value.problem), now=NOW, original=body
    )
    assert plo.apprec_schema().validate(etree.fromstring(document))


SEED = (DATA / "1_6" / "Pasientlogistikk_Utskrivningsklar_pasient_v1-6_Ny.xml").read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(SEED)),
            st.integers(min_value=0, max_value=40),
            st.binary(max_size=8),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_a_mutated_message_maps_whole_or_is_refused_never_anything_else(
    cuts: list[tuple[int, int, bytes]],
) -> None:
    """Bytes deleted, replaced or inserted anywhere: valid events, or a PloRefusal and a valid
    AppRec — never another exception."""
    body = SEED
    for at, length, insert in cuts:
        body = body[:at] + insert + body[at + length :]
    message, result = outcome(body)
    if isinstance(result, Translation):
        for event in result.events:
            assert parse_event(dict(event))[1] == []
        receipt = plo.Receipt.ok()
    else:
        receipt = plo.Receipt.refused(result.code, result.problem)
    document = plo.apprec(message, receipt, now=NOW, original=body)
    assert plo.apprec_schema().validate(etree.fromstring(document))
