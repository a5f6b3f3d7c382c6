"""carebus.wire.hl7v2: HL7 v2 ADT messages mapped whole to carebus events, or refused by
place, and the ACK that answers them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carebus.domain.events import parse_event
from carebus.wire import hl7v2
from carebus.wire.translation import (
    Party,
    StaticDirectory,
    Translation,
    Untranslatable,
    derived_event_id,
)

DATA = Path(__file__).parent.parent / "data" / "hl7v2"
SECRET = b"s" * 32
NOW = datetime(2026, 12, 1, 10, 16, 3, tzinfo=UTC)
HOSPITAL = Party("983974724", "dps", her_id="90234")
OTHER_HOSPITAL = Party("983974678", "dps", her_id="87441")
BERGEN = Party("964338531", "municipality", her_id="80621", municipality_number="4601")
ASKØY = Party("964338442", "municipality", her_id="80777", municipality_number="4627")
DIRECTORY = StaticDirectory((HOSPITAL, OTHER_HOSPITAL, BERGEN, ASKØY))
NINS = ("15076500565", "13116900216", "12057900499", "55076500559")
NAMES = ("Nordmann", "Kari", "Hansen", "Berg", "Østbø", "Åse", "Strandgaten", "55512345")

EXAMPLES = {
    "adt_a01_v25.hl7": "admission",
    # An outpatient's A04 and any A08 publish nothing (acknowledged AA).
    "adt_a04_v231.hl7": None,
    "adt_a08_v25.hl7": None,
    "adt_a03_v25.hl7": "discharge",
    "adt_a11_v25.hl7": "retraction",
    "adt_a13_v25.hl7": "retraction",
    "adt_a01_latin1_v231.hl7": "admission",
    "adt_a01_custom_encoding_v25.hl7": "admission",
}


def example(name: str, separator: str = "\r") -> str:
    """An example message with `separator` between its segments."""
    text = hl7v2.decode((DATA / name).read_bytes())
    return separator.join(text.splitlines())


def translate(text: str, sender: Party = HOSPITAL) -> Translation:
    return hl7v2.translate(hl7v2.read(text), sender, DIRECTORY, SECRET)


def read_once(text: str) -> hl7v2.Message | None:
    """The message as the adapters read it once for both its mapping and its ACK."""
    try:
        return hl7v2.read(text)
    except Untranslatable:
        return None


def only_event(text: str) -> dict[str, Any]:
    translation = translate(text)
    assert len(translation.events) == 1
    return dict(translation.events[0])


def refusal(text: str, sender: Party = HOSPITAL) -> Untranslatable:
    with pytest.raises(Untranslatable) as refused:
        translate(text, sender)
    return refused.value


def inpatient(text: str) -> str:
    """The outpatient A04 example as an inpatient's (PV1-2 I)."""
    return replaced(text, "PV1|1|O", "PV1|1|I")


def replaced(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def assert_valid(translation: Translation) -> None:
    for event in translation.events:
        parsed, problems = parse_event(dict(event))
        assert problems == []
        assert parsed is not None


def fields_of(ack: str, segment: str) -> list[str]:
    line = next(line for line in ack.split("\r") if line.startswith(segment))
    return line.split("|")


# --- mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
@pytest.mark.parametrize(("name", "event_type"), EXAMPLES.items())
def test_every_trigger_maps_to_a_valid_event_whatever_ends_its_segments(
    name: str, event_type: str | None, separator: str
) -> None:
    """Each example maps to one event of its type that passes the event contract (or, for an
    update or an outpatient's registration, to nothing)."""
    translation = translate(example(name, separator))
    assert_valid(translation)
    if event_type is None:
        assert translation.events == ()
        return
    assert translation.events[0]["event_type"] == event_type
    assert translation.events[0]["source"] == {"agency": "dps", "org_id": HOSPITAL.org_id}
    assert translation == translate(example(name, "\r"))


def test_an_admission_maps_field_by_field() -> None:
    """PV1-44 is the time, ICD-10 codes the reason, XAD.9 the municipality, PV1-3 the ward."""
    event = only_event(example("adt_a01_v25.hl7"))
    assert event["occurred_at"] == "2026-12-01T10:00:00+01:00"
    assert event["subject"] == {"nin": "15076500565"}
    assert event["event_id"] == derived_event_id(
        SECRET, "hl7v2", HOSPITAL.org_id, "admission", "PV1-19:V2026-000451^HB"
    )
    assert event["payload"] == {
        "reason": "overdose",  # T40.1 in DG1-3 outranks F10.3 in PV2-3
        "admission_kind": "unknown",
        "housing_status": "unknown",
        "needs_municipal_services": True,
        "home_municipality_org": BERGEN.org_id,
        "ward": "PSYK AKUTT",
        "expected_discharge_at": "2026-12-08T12:00:00+01:00",
    }


def test_the_origins_name_each_field_in_hl7_terms() -> None:
    """A refusal by the gateway of a mapped field is named by the HL7 field it came from."""
    translation = translate(example("adt_a01_v25.hl7"))
    assert translation.origin_of("events[0].subject.nin") == "PID-3"
    assert translation.origin_of("events[0].occurred_at") == "PV1-44"
    assert translation.origin_of("events[0].event_id") == "PV1-19"
    assert translation.origin_of("events[0].payload.reason") == "DG1-3"
    assert translation.origin_of("events[0].payload.home_municipality_org") == "PID-11"
    assert translation.origin_of("events[0].payload.ward") == "PV1-3"
    assert translation.origin_of("events[0].payload.expected_discharge_at") == "PV2-9"
    assert translation.origin_of("events[0].payload.needs_municipal_services") == "MSH-6"


def test_custom_encoding_characters_are_read_from_msh() -> None:
    """MSH-1 and MSH-2 of the sender's choosing split and unescape the message."""
    event = only_event(example("adt_a01_custom_encoding_v25.hl7"))
    assert event["subject"] == {"nin": "12057900499"}
    assert event["payload"]["ward"] == "PSYK AKUTT@A2"  # /S/ is the component character
    assert event["payload"]["reason"] == "psychosis"


def test_an_iso_8859_1_body_declared_in_msh_18_is_decoded() -> None:
    """Ø and Å of an 8859/1 body are read as such, and the D-nummer of the DNR type code."""
    body = (DATA / "adt_a01_latin1_v231.hl7").read_bytes()
    assert "Østbø^Åse".encode("iso-8859-1") in body
    text = hl7v2.decode(body)
    assert "Østbø^Åse" in text
    event = only_event(text)
    assert event["subject"] == {"nin": "55076500559"}
    assert event["payload"]["ward"] == "AKUTTPOST Ø"
    assert event["payload"]["reason"] == "suicide_attempt"  # code system 7110


def test_decode_takes_utf_8_and_falls_back_to_iso_8859_1() -> None:
    """Undeclared text is UTF-8; bytes that are no UTF-8 are ISO-8859-1."""
    text = example("adt_a04_v231.hl7")
    assert hl7v2.decode(text.encode()) == text
    assert hl7v2.decode(text.encode("iso-8859-1")) == text


def test_decode_strips_mllp_framing() -> None:
    """0x0B before and 0x1C 0x0D after the message are the transport's, not the message's."""
    text = example("adt_a01_v25.hl7")
    assert hl7v2.decode(b"\x0b" + text.encode() + b"\x1c\x0d") == text
    assert translate(hl7v2.decode(b"\x0b" + text.encode() + b"\x1c\r")) == translate(text)


@pytest.mark.parametrize(
    ("identifier", "nin"),
    [
        ("15076500565^^^HB&2.16.578.1.12.4.1.4.1&ISO", "15076500565"),
        ("15076500565^^^2.16.578.1.12.4.1.4.1", "15076500565"),
        ("55076500559^^^&2.16.578.1.12.4.1.4.2&ISO^NNNOR", "55076500559"),
        ("55076500559^^^2.16.578.1.12.4.1.4.2", "55076500559"),
        ("15076500565^^^^FNR", "15076500565"),
        ("55076500559^^^^DNR", "55076500559"),
        ("55076500559^^^^dnr", "55076500559"),
        ("4711042^^^HB^PI~15076500565^^^^FNR", "15076500565"),
        ("15076500565^^^^FNR~15076500565^^^2.16.578.1.12.4.1.4.1", "15076500565"),
    ],
)
def test_the_nin_is_found_by_assigning_authority_or_type_code(identifier: str, nin: str) -> None:
    """A fødselsnummer or D-nummer by OID (HD.1 or HD.2) or by FNR/DNR, in any repetition."""
    text = replaced(
        example("adt_a01_v25.hl7"),
        "15076500565^^^HB&2.16.578.1.12.4.1.4.1&ISO^NNNOR~4711042^^^HB^PI",
        identifier,
    )
    assert only_event(text)["subject"]["nin"] == nin


def test_a_wrong_check_digit_is_refused_without_repeating_the_number() -> None:
    """The error names PID-3 and never the number."""
    text = replaced(example("adt_a01_v25.hl7"), "15076500565", "15076500566")
    refused = refusal(text)
    assert (refused.where, refused.severity) == ("PID-3", "error")
    assert "15076500566" not in str(refused)
    ack = hl7v2.acknowledgement(text, refused, now=NOW)
    assert fields_of(ack, "MSA")[1] == "AE"
    assert fields_of(ack, "ERR")[3] == "102^Data type error^HL70357"
    assert "15076500566" not in ack


@pytest.mark.parametrize(
    "identifier", ["4711042^^^HB^PI", "15076500565^^^HB^PI", "", "15076500565^^^^XX"]
)
def test_no_nin_in_pid_3_is_an_error_naming_it(identifier: str) -> None:
    """Without an identifier marked as a nin the message cannot say whom it is about."""
    text = replaced(
        example("adt_a01_v25.hl7"),
        "15076500565^^^HB&2.16.578.1.12.4.1.4.1&ISO^NNNOR~4711042^^^HB^PI",
        identifier,
    )
    refused = refusal(text)
    assert (refused.where, refused.problem, refused.severity) == ("PID-3", hl7v2.NO_NIN, "error")
    err = fields_of(hl7v2.acknowledgement(text, refused, now=NOW), "ERR")
    assert err[2] == "PID^1^3"
    assert err[3] == "101^Required field missing^HL70357"


def test_two_different_nins_are_refused() -> None:
    """PID-3 that names two people is not guessed between."""
    text = replaced(example("adt_a01_v25.hl7"), "4711042^^^HB^PI", "13116900216^^^^FNR")
    assert refusal(text).problem == hl7v2.TWO_NINS


def test_msh_4_naming_another_organisation_is_rejected() -> None:
    """A caller's token does not send for another organisation of the directory."""
    for facility in ("87441^^HER", "HST^87441^HER", "983974678"):
        text = replaced(example("adt_a01_v25.hl7"), "|90234^^HER|", f"|{facility}|")
        refused = refusal(text)
        assert (refused.where, refused.problem) == ("MSH-4", hl7v2.OTHER_SENDER)
        assert refused.severity == "rejected"


def test_msh_4_in_a_local_code_or_naming_the_caller_is_fine() -> None:
    """Only an organisation other than the caller's is refused."""
    for facility in ("HELSEBERGEN", "983974724", "HB^90234^HER", ""):
        text = replaced(example("adt_a01_v25.hl7"), "|90234^^HER|", f"|{facility}|")
        assert_valid(translate(text))


def test_a_discharge_names_the_admission_of_its_episode() -> None:
    """A03 finds the A01's id from the visit number, without any stored state."""
    admission = only_event(example("adt_a01_v25.hl7"))
    discharge = only_event(example("adt_a03_v25.hl7"))
    assert discharge["payload"] == {
        "admission_event_id": admission["event_id"],
        "destination": "home",
        "crisis_plan": False,
        "kind": "planned",  # PV1-36 01, a routine discharge
    }
    assert discharge["occurred_at"] == "2026-12-05T14:00:00+01:00"  # PV1-45


def test_a11_retracts_the_admission_and_a13_the_discharge() -> None:
    """Cancel admit and cancel discharge withdraw the events of the same episode."""
    admission = only_event(example("adt_a01_v25.hl7"))
    discharge = only_event(example("adt_a03_v25.hl7"))
    cancel_admit = only_event(example("adt_a11_v25.hl7"))
    cancel_discharge = only_event(example("adt_a13_v25.hl7"))
    assert cancel_admit["payload"] == {
        "retracted_event_id": admission["event_id"],
        "reason": "sent_in_error",
    }
    assert cancel_discharge["payload"] == {
        "retracted_event_id": discharge["event_id"],
        "reason": "sent_in_error",
    }
    assert cancel_admit["occurred_at"] == "2026-12-01T10:45:00+01:00"  # EVN-2
    assert cancel_admit["event_id"] == derived_event_id(
        SECRET, "hl7v2", HOSPITAL.org_id, "retraction", admission["event_id"]
    )


def test_an_a08_update_publishes_nothing_even_when_it_changes_the_visit() -> None:
    """carebus keeps an admission as first reported: an A08 (also after a transfer, with a new
    ward or diagnosis) is acknowledged and publishes nothing, never a conflicting admission."""
    assert translate(example("adt_a08_v25.hl7")).events == ()
    changed = replaced(example("adt_a08_v25.hl7"), "T40.1", "F20.0")
    assert translate(changed).events == ()


def test_only_an_inpatients_registration_is_an_admission() -> None:
    """An A04 with PV1-2 I is an admission; O (outpatient) or E (emergency) publishes nothing."""
    outpatient = example("adt_a04_v231.hl7")
    assert translate(outpatient).events == ()
    assert translate(replaced(outpatient, "PV1|1|O", "PV1|1|E")).events == ()
    assert only_event(inpatient(outpatient))["event_type"] == "admission"


def test_the_same_message_twice_maps_to_the_same_events() -> None:
    """Idempotency: a resent message is the same batch."""
    for name in EXAMPLES:
        assert translate(example(name)) == translate(example(name))


def test_without_a_visit_number_the_episode_is_the_person_and_the_admit_time() -> None:
    """A v2.3.1 A04 without PV1-19 and its A03 share the admission id through PV1-44."""
    registration = only_event(inpatient(example("adt_a04_v231.hl7")))
    discharge_text = replaced(example("adt_a04_v231.hl7"), "ADT^A04", "ADT^A03")
    discharge = only_event(discharge_text)
    assert discharge["payload"]["admission_event_id"] == registration["event_id"]
    assert (
        translate(inpatient(example("adt_a04_v231.hl7"))).origin_of("events[0].event_id")
        == "PV1-44"
    )
    other_time = replaced(inpatient(example("adt_a04_v231.hl7")), "|200611301000", "|200611301001")
    assert only_event(other_time)["event_id"] != registration["event_id"]


def test_no_visit_number_and_no_admit_time_is_an_error() -> None:
    """Without either nothing names the episode, so no later message could find it."""
    text = replaced(example("adt_a04_v231.hl7"), "|200611301000", "|")
    refused = refusal(text)
    assert (refused.where, refused.problem) == ("PV1-19", hl7v2.NO_EPISODE)


def test_the_trigger_of_a_v2_2_message_is_read_from_evn_1() -> None:
    """MSH-9 without a trigger component: EVN-1 says it."""
    text = replaced(inpatient(example("adt_a04_v231.hl7")), "ADT^A04", "ADT")
    assert only_event(text)["event_type"] == "admission"


@pytest.mark.parametrize(
    ("value", "occurred_at"),
    [
        ("20261201100000", "2026-12-01T10:00:00+01:00"),
        ("202612011000", "2026-12-01T10:00:00+01:00"),
        ("2026120110", "2026-12-01T10:00:00+01:00"),
        ("20260701100000", "2026-07-01T10:00:00+02:00"),
        ("20261201100000.25", "2026-12-01T10:00:00.250000+01:00"),
        ("20261201100000+0000", "2026-12-01T10:00:00+00:00"),
        ("202612011000-0330", "2026-12-01T10:00:00-03:30"),
        ("20261201", "2026-12-01T00:00:00+01:00"),
    ],
)
def test_hl7_times_become_rfc_3339_in_norwegian_wall_time(value: str, occurred_at: str) -> None:
    """A TS without a zone is the time on the wall in Norway; a zone given is kept."""
    text = replaced(example("adt_a01_v25.hl7"), "|20261201100000\r", f"|{value}\r")
    assert only_event(text)["occurred_at"] == occurred_at


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-01",
        "20261301100000",
        "20261201250000",
        "20261201100000+1360",
        "20261201100000+1500",
        "20261201100000.1234567",
        "18001201",
        "202612",
        "2026120",
        "20261201T1000",
    ],
)
def test_a_time_that_is_not_one_is_an_error_naming_the_field(value: str) -> None:
    """PV1-44 that is not an HL7 time is named, not skipped for the next time field."""
    text = replaced(example("adt_a01_v25.hl7"), "|20261201100000\r", f"|{value}\r")
    refused = refusal(text)
    assert refused.where == "PV1-44"
    assert value not in refused.problem


def test_without_pv1_44_the_time_is_evn_6_then_evn_2_then_msh_7() -> None:
    """The fallbacks are taken in order, and the origin says which one it was."""
    text = replaced(example("adt_a01_v25.hl7"), "|20261201100000\r", "|\r")
    translation = translate(text)
    assert translation.events[0]["occurred_at"] == "2026-12-01T10:05:00+01:00"
    assert translation.origin_of("events[0].occurred_at") == "EVN-6"
    text = replaced(text, "|20261201100500", "|")
    assert translate(text).origin_of("events[0].occurred_at") == "EVN-2"
    text = replaced(text, "EVN|A01|20261201101500|", "EVN|A01||")
    assert translate(text).origin_of("events[0].occurred_at") == "MSH-7"


def test_the_home_municipality_falls_back_to_a_municipal_receiver() -> None:
    """No XAD.9 in PID-11: a municipality in MSH-6 is taken; neither is an error naming PID-11."""
    text = replaced(example("adt_a01_v25.hl7"), "NOR^H^^4601", "NOR^H")
    translation = translate(text)
    assert translation.events[0]["payload"]["home_municipality_org"] == BERGEN.org_id
    assert translation.origin_of("events[0].payload.home_municipality_org") == "MSH-6"
    to_hospital = replaced(text, "|80621^^HER|", "|87441^^HER|")
    refused = refusal(to_hospital)
    assert (refused.where, refused.problem) == ("PID-11", hl7v2.NO_MUNICIPALITY)


def test_the_first_address_with_a_kommunenummer_names_the_municipality() -> None:
    """A later address does not override the first one that has a code."""
    text = replaced(
        example("adt_a01_v25.hl7"), "NOR^H^^4601", "NOR^H^^4601~Postboks 1^^ASKØY^^5300^NOR^M^^4627"
    )
    assert only_event(text)["payload"]["home_municipality_org"] == BERGEN.org_id
    text = replaced(example("adt_a01_v25.hl7"), "NOR^H^^4601", "NOR^H~Kleppe^^ASKØY^^^NOR^M^^4627")
    assert only_event(text)["payload"]["home_municipality_org"] == ASKØY.org_id


def test_the_home_address_outranks_a_mailing_address_and_a_bad_one_is_never_taken() -> None:
    """PID-11's repetitions by type (XAD.7): a home (H) after a mailing address (M) still names
    the municipality; a bad address (BA) or an office (O) never does."""
    home_second = replaced(
        example("adt_a01_v25.hl7"),
        "NOR^H^^4601",
        "NOR^M^^4627~Strandgaten 12^^BERGEN^^5013^NOR^H^^4601",
    )
    assert only_event(home_second)["payload"]["home_municipality_org"] == BERGEN.org_id
    registry_home = replaced(
        example("adt_a01_v25.hl7"), "NOR^H^^4601", "NOR^H^^4601~Kleppe^^ASKØY^^^NOR^RH^^4627"
    )
    assert only_event(registry_home)["payload"]["home_municipality_org"] == ASKØY.org_id
    bad_only = replaced(
        example("adt_a01_v25.hl7"), "NOR^H^^4601", "NOR^BA^^4627~Kontor^^^^^NOR^O^^4627"
    )
    translation = translate(bad_only)
    assert translation.events[0]["payload"]["home_municipality_org"] == BERGEN.org_id
    assert translation.origin_of("events[0].payload.home_municipality_org") == "MSH-6"


@pytest.mark.parametrize(
    ("code", "problem"),
    [("0301", hl7v2.UNKNOWN_MUNICIPALITY), ("46O1", hl7v2.BAD_KOMMUNENUMMER)],
)
def test_a_kommunenummer_not_in_the_directory_is_an_error(code: str, problem: str) -> None:
    """The receiver is not taken instead: the person lives where the address says."""
    text = replaced(example("adt_a01_v25.hl7"), "NOR^H^^4601", f"NOR^H^^{code}")
    refused = refusal(text)
    assert (refused.where, refused.problem) == ("PID-11", problem)


def test_a_receiver_that_is_no_municipality_needs_no_municipal_services() -> None:
    """needs_municipal_services says whether the hospital addressed a municipality."""
    text = replaced(example("adt_a01_v25.hl7"), "|80621^^HER|", "|LOCAL|")
    assert only_event(text)["payload"]["needs_municipal_services"] is False


@pytest.mark.parametrize(
    "ward", ["PSYK\\X00\\AKUTT", "PSYK\\X1B\\AKUTT", "\\XE280AE\\PSYK", "A" * 201, '""']
)
def test_a_ward_carebus_cannot_carry_is_left_out(ward: str) -> None:
    """Control and format characters (escaped or not), overlong or null: no ward, no refusal."""
    text = replaced(example("adt_a01_v25.hl7"), "PSYK AKUTT^A2-12", f"{ward}^A2-12")
    translation = translate(text)
    assert_valid(translation)
    assert "ward" not in translation.events[0]["payload"]


def test_escape_sequences_are_decoded_without_expanding_repeat_counts() -> None:
    """\\F\\ is the field separator; formatting like \\.sp999999999\\ is dropped, not expanded."""
    text = replaced(example("adt_a01_v25.hl7"), "PSYK AKUTT^", "PSYK\\F\\AKUTT\\.sp999999999\\^")
    assert only_event(text)["payload"]["ward"] == "PSYK|AKUTT"


@pytest.mark.parametrize(
    ("code", "destination"),
    [
        ("01", "home"),
        ("1", "home"),
        ("06", "home"),
        ("08", "home"),
        ("02", "institution"),
        ("03", "institution"),
        ("04", "institution"),
        ("05", "institution"),
        ("07", "unknown"),
        ("09", "unknown"),
        ("20", "unknown"),
        ("HJEM", "unknown"),
        ("", "unknown"),
    ],
)
def test_discharge_disposition_table_0112_gives_the_destination(
    code: str, destination: str
) -> None:
    """Home codes are home, other facilities an institution, the rest unknown."""
    text = replaced(example("adt_a03_v25.hl7"), "|01|", f"|{code}|")
    assert only_event(text)["payload"]["destination"] == destination


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("01", "planned"),
        ("1", "planned"),
        ("02", "transfer"),
        ("07", "against_advice"),
        ("03", None),
        ("05", None),
        ("06", None),
        ("09", None),
        ("20", None),
        ("", None),
    ],
)
def test_discharge_disposition_table_0112_gives_the_kind_where_a_code_says_it(
    code: str, kind: str | None
) -> None:
    """A routine discharge is planned, another hospital's inpatient care a transfer, leaving
    against advice against advice; any other code leaves the kind out (unknown)."""
    text = replaced(example("adt_a03_v25.hl7"), "|01|", f"|{code}|")
    translation = translate(text)
    assert_valid(translation)
    assert translation.events[0]["payload"].get("kind") == kind
    if kind is not None:
        assert translation.origin_of("events[0].payload.kind") == "PV1-36"


@pytest.mark.parametrize(
    ("pv2_3", "dg1", "reason"),
    [
        ("F10.3^Abstinens^I10", "", "withdrawal"),
        ("F10.3^Abstinens^ICPC2", "", "unknown"),
        ("P15^Alkoholmisbruk^ICPC2^F10.3^Abstinens^ICD10", "", "withdrawal"),
        ("", "DG1|1||T43.0^Forgiftning^ICD10", "overdose"),
        ("", "DG1|1||T43.0^Forgiftning", "overdose"),
        ("", "DG1|1||T43.0^Forgiftning^ICPC2", "unknown"),
        ("", "DG1|1|I10|X70^Selvskading", "suicide_attempt"),
        ("", "DG1|1||Y12^Forgiftning, uavklart hensikt^ICD10", "possible_suicide_attempt"),
        ("", "DG1|1||Z03.9^Observasjon^ICD10", "other"),
        ("", "", "unknown"),
    ],
)
def test_the_reason_comes_from_icd_10_codes_of_pv2_3_and_dg1_3(
    pv2_3: str, dg1: str, reason: str
) -> None:
    """Only codes in ICD-10 count; a diagnosis without a coding system is a hospital's ICD-10."""
    text = replaced(example("adt_a01_v25.hl7"), "F10.3^Alkoholabstinens^I10", pv2_3)
    text = replaced(text, "DG1|1||T40.1^Forgiftning med heroin^ICD10|||A", dg1).strip()
    assert only_event(text)["payload"]["reason"] == reason


def test_required_segments_are_named_when_missing() -> None:
    """No PID or no PV1: an error naming the segment."""
    text = example("adt_a01_v25.hl7", "\n")
    without_pid = "\n".join(line for line in text.split("\n") if not line.startswith("PID"))
    assert refusal(without_pid).where == "PID"
    without_pv1 = "\n".join(line for line in text.split("\n") if not line.startswith("PV1"))
    assert refusal(without_pv1).where == "PV1"


# --- refusals of what is no message carebus takes --------------------------------------------


def test_an_unsupported_trigger_is_rejected_with_code_201() -> None:
    """A02 (transfer) is ADT but no event of carebus: AR, 201, naming MSH-9."""
    text = example("adt_a02_v25.hl7")
    refused = refusal(text)
    assert (refused.where, refused.severity) == ("MSH-9", "rejected")
    ack = hl7v2.acknowledgement(text, refused, now=NOW)
    assert fields_of(ack, "MSH")[8] == "ACK^A02^ACK"
    assert fields_of(ack, "MSA")[1:3] == ["AR", "HB20261202-000004"]
    assert fields_of(ack, "ERR")[2:5] == ["MSH^1^9", "201^Unsupported event code^HL70357", "E"]


def test_a_message_that_is_not_adt_is_rejected_with_code_200() -> None:
    """ORU is not an ADT message."""
    text = replaced(example("adt_a01_v25.hl7"), "ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    refused = refusal(text)
    assert (refused.where, refused.problem, refused.severity) == (
        "MSH-9",
        hl7v2.NOT_ADT,
        "rejected",
    )
    err = fields_of(hl7v2.acknowledgement(text, refused, now=NOW), "ERR")
    assert err[3] == "200^Unsupported message type^HL70357"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "PID|1||15076500565^^^^FNR",
        "MSH",
        "MSH|",
        "MSH|^~\\&",
        "MSH|^^^^|A",
        "MSH|^~\\|A",
        "MSHA^~\\&A",
        "MSH\r^~\\&\r",
        "\x00" * 20,
        '{"resourceType": "Bundle"}',
        "MSH|^~\\&|A" + "^" * 200_000,
        "MSH|^~\\&|A|B|C|D|20261201||ADT^A01|1|P|2.5\r" + "ZZZ\r" * 10_000,
        "MSH|^~\\&|A|B|C|D|20261201||ADT^A01|1|P|2.5\r" + "ZZZ|" + "x" * hl7v2.MAX_MESSAGE,
    ],
)
def test_garbage_is_rejected(text: str) -> None:
    """What is no HL7 v2 message (or no message of ADT) is AR, never another exception."""
    refused = refusal(text)
    assert refused.severity == "rejected"
    ack = hl7v2.acknowledgement(text, refused, now=NOW)
    assert fields_of(ack, "MSA")[1] == "AR"


def test_a_batch_of_several_messages_is_rejected() -> None:
    """One message per request: the batch is all or nothing at the gateway, not here."""
    text = example("adt_a01_v25.hl7") + "\r" + example("adt_a03_v25.hl7")
    assert refusal(text).problem == hl7v2.BATCH


def test_a_batch_file_is_rejected_as_a_batch() -> None:
    """A message in HL7's batch protocol (FHS/BHS first; tests/data/hl7v2/README.md) is AR
    saying it is a batch, not that it is no HL7 v2 message."""
    text = example("adt_a01_batch_v25.hl7")
    refused = refusal(text)
    assert (refused.where, refused.problem, refused.severity) == ("MSH", hl7v2.BATCH, "rejected")
    ack = hl7v2.acknowledgement(text, refused, now=NOW)
    assert fields_of(ack, "MSA")[1] == "AR"
    assert fields_of(ack, "ERR")[8] == hl7v2.BATCH


def test_a_segment_without_a_segment_id_is_rejected() -> None:
    """A line that is no segment means the message was cut or joined wrongly."""
    text = example("adt_a01_v25.hl7") + "\rthis is a note\r"
    assert refusal(text).problem == hl7v2.BAD_SEGMENT_ID


# --- acknowledgement ------------------------------------------------------------------------


def test_an_accepted_message_is_acknowledged_aa_to_its_sender() -> None:
    """Sending and receiving application and facility are swapped; MSH-11/12 echoed."""
    text = example("adt_a01_v25.hl7")
    ack = hl7v2.acknowledgement(text, None, now=NOW)
    msh = fields_of(ack, "MSH")
    assert msh[1:6] == ["^~\\&", "KOMMUNE", "80621^^HER", "DIPS", "90234^^HER"]
    assert msh[6] == "20261201101603+0000"
    assert msh[8] == "ACK^A01^ACK"
    assert msh[10:12] == ["P", "2.5"]
    assert fields_of(ack, "MSA") == ["MSA", "AA", "HB20261201-000001"]
    assert "ERR" not in ack


def test_a_message_carebus_cannot_take_now_is_rejected_to_be_sent_again_unchanged() -> None:
    """An outage is no fault of the message: AR (HL7's "resend later, unchanged"), with 207
    application internal error, not AE (which tells the sender to correct the message)."""
    text = example("adt_a01_v25.hl7")
    unavailable = Untranslatable("MSH", hl7v2.UNAVAILABLE, "rejected")
    ack = hl7v2.acknowledgement(text, unavailable, now=NOW)
    assert fields_of(ack, "MSA")[:3] == ["MSA", "AR", "HB20261201-000001"]
    err = fields_of(ack, "ERR")
    assert err[3].split("^")[0] == hl7v2.APPLICATION_INTERNAL_ERROR
    assert err[8] == hl7v2.UNAVAILABLE


def test_the_ack_control_id_is_new_and_deterministic() -> None:
    """The same original gives the same control id; another MSH-10 another one."""
    text = example("adt_a01_v25.hl7")
    control_id = fields_of(hl7v2.acknowledgement(text, None, now=NOW), "MSH")[9]
    assert control_id == fields_of(hl7v2.acknowledgement(text, None, now=NOW), "MSH")[9]
    assert control_id != "HB20261201-000001"
    assert len(control_id) <= 20
    other = replaced(text, "HB20261201-000001", "HB20261201-000002")
    assert control_id != fields_of(hl7v2.acknowledgement(other, None, now=NOW), "MSH")[9]


def test_a_refused_gateway_answer_is_acknowledged_ae_with_its_place() -> None:
    """The gateway's refusal, named by the HL7 origin of the field, is an AE."""
    text = example("adt_a01_v25.hl7")
    where = translate(text).origin_of("events[0].event_id")
    problem = "changes an admission already sent: cancel it (A11) and admit again"
    ack = hl7v2.acknowledgement(text, None, now=NOW, gateway_problem=(where, problem))
    assert fields_of(ack, "MSA")[1] == "AE"
    err = fields_of(ack, "ERR")
    assert err[2:5] == ["PV1^1^19", "207^Application internal error^HL70357", "E"]
    assert err[8] == problem


def test_the_ack_escapes_the_delimiters_of_the_original_in_its_text() -> None:
    """A problem text with a delimiter cannot break the ACK's fields."""
    text = example("adt_a01_custom_encoding_v25.hl7")
    ack = hl7v2.acknowledgement(text, None, now=NOW, gateway_problem=("PID-3", "a!b@c/d"))
    assert ack.startswith("MSH!@*/$!KOMMUNE!80621@@HER!DIPS!90234@@HER!")
    err = next(line for line in ack.split("\r") if line.startswith("ERR")).split("!")
    assert err[8] == "a/F/b/S/c/E/d"
    assert err[2] == "PID@1@3"


def test_a_v2_3_1_sender_reads_the_error_in_err_1_and_msa_3() -> None:
    """ERR-1 in v2.3.1's layout and MSA-3's text accompany v2.5's ERR fields."""
    text = replaced(example("adt_a04_v231.hl7"), "13116900216", "13116900217")
    refused = refusal(text)
    ack = hl7v2.acknowledgement(text, refused, now=NOW)
    assert fields_of(ack, "MSA")[3] == refused.problem
    assert fields_of(ack, "ERR")[1] == "PID^1^3^102&Data type error&HL70357"


def test_the_ack_is_in_the_character_set_of_the_original() -> None:
    """MSH-18 is echoed, and `encode` writes an 8859/1 ACK in ISO-8859-1."""
    text = replaced(example("adt_a01_latin1_v231.hl7"), "|90234^^HER|", "|FØRDE^^HER|")
    ack = hl7v2.acknowledgement(text, None, now=NOW)
    assert fields_of(ack, "MSH")[5:7] == ["FØRDE^^HER", "20261201101603+0000"]
    assert fields_of(ack, "MSH")[17] == "8859/1"
    assert hl7v2.encode(ack) == ack.encode("iso-8859-1")
    assert hl7v2.decode(hl7v2.encode(ack)) == ack
    utf8_ack = hl7v2.acknowledgement(example("adt_a01_v25.hl7"), None, now=NOW)
    assert hl7v2.encode(utf8_ack) == utf8_ack.encode()


def test_an_unreadable_original_gets_a_minimal_ar() -> None:
    """Without a readable MSH the ACK still says AR, in default encoding."""
    ack = hl7v2.acknowledgement("garbage 15076500565 Nordmann", None, now=NOW)
    msh, msa, err = (line.split("|") for line in ack.split("\r"))
    assert msh[0:2] == ["MSH", "^~\\&"]
    assert msh[8:12] == ["ACK^^ACK", msh[9], "P", "2.5"]
    assert msa == ["MSA", "AR", ""]
    assert err[3] == "100^Segment sequence error^HL70357"
    assert "15076500565" not in ack
    assert "Nordmann" not in ack


@pytest.mark.parametrize(
    "text",
    [
        replaced(example("adt_a01_v25.hl7"), "|HB20261201-000001|", "||"),
        example("adt_a01_v25.hl7").split("\r", 1)[0].rsplit("|", 9)[0],  # MSH cut before MSH-10
        example("adt_a01_v25.hl7", "\n"),
        example("adt_a01_v25.hl7", "\r\n"),
        example("adt_a01_custom_encoding_v25.hl7", "\n"),
        replaced(example("adt_a01_v25.hl7"), "MSH|^~\\&|", "MSH|^~\\^|"),
        replaced(example("adt_a01_v25.hl7"), "MSH|^~\\&|", "MSH|^~|"),
        replaced(example("adt_a01_v25.hl7"), "MSH|^~\\&|", "MSH|A~\\&|"),
        example("adt_a01_v25.hl7") + "\rthis is a note\r",
        example("adt_a01_v25.hl7") + "\r" + example("adt_a03_v25.hl7"),
        "garbage 15076500565 Nordmann",
        "",
    ],
    ids=[
        "empty-msh-10",
        "no-msh-10",
        "lf",
        "crlf",
        "lf-custom-encoding",
        "repeated-encoding-character",
        "two-encoding-characters",
        "letter-as-encoding-character",
        "not-a-segment",
        "batch",
        "garbage",
        "empty",
    ],
)
def test_the_ack_of_the_message_read_once_is_the_ack_of_its_text(text: str) -> None:
    """The adapters read a message once and build its ACK from that reading: for odd input
    (no MSH-10, bad encoding characters, \\n between segments, what `translate` refuses after
    reading) the ACK is the one built from the text, read again."""
    error: Untranslatable | None = None
    try:
        translate(text)
    except Untranslatable as refused:
        error = refused
    once = hl7v2.acknowledgement_of(read_once(text), error, now=NOW)
    assert once == hl7v2.acknowledgement(text, error, now=NOW)
    assert once.split("\r")[1].startswith("MSA")


def test_an_original_without_msh_10_is_answered_without_one() -> None:
    """MSA-2 is empty and the ACK's own control id is still deterministic."""
    text = replaced(example("adt_a01_v25.hl7", "\n"), "|HB20261201-000001|", "||")
    ack = hl7v2.acknowledgement_of(read_once(text), None, now=NOW)
    again = hl7v2.acknowledgement_of(read_once(text), None, now=NOW)
    assert fields_of(ack, "MSA") == ["MSA", "AA", ""]
    assert fields_of(ack, "MSH")[9] == fields_of(again, "MSH")[9]
    assert fields_of(ack, "MSH")[1:6] == ["^~\\&", "KOMMUNE", "80621^^HER", "DIPS", "90234^^HER"]


def test_bad_encoding_characters_are_answered_with_a_minimal_ar() -> None:
    """Nothing is read from an MSH whose encoding characters are not four distinct ones."""
    text = replaced(example("adt_a01_v25.hl7"), "MSH|^~\\&|", "MSH|^~\\^|")
    assert read_once(text) is None
    refused = refusal(text)
    assert refused.where == "MSH-2"
    ack = hl7v2.acknowledgement_of(None, refused, now=NOW)
    assert fields_of(ack, "MSA") == ["MSA", "AR", ""]
    assert fields_of(ack, "MSH")[1] == "^~\\&"


@pytest.mark.parametrize("name", [*EXAMPLES, "adt_a02_v25.hl7"])
def test_an_ack_never_repeats_the_patient(name: str) -> None:
    """No nin, no name, no address, whatever the answer."""
    text = example(name)
    for error in (
        None,
        Untranslatable("PID-3", hl7v2.NO_NIN),
        Untranslatable("MSH", "x", "rejected"),
    ):
        ack = hl7v2.acknowledgement(text, error, now=NOW)
        assert "PID" not in ack.replace("PID^1^3", "").replace("PID@1@3", "")
        for personal in (*NINS, *NAMES):
            assert personal not in ack


# --- malformed input ------------------------------------------------------------------------

EXAMPLE_TEXTS = [example(name) for name in (*EXAMPLES, "adt_a02_v25.hl7")]
NASTY = "\x00\x0b\x1c\r\n|^~\\&#\u202e\ud800\ufeffÆØÅ9 "


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A real example with characters deleted, duplicated, replaced or inserted, or cut off."""
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    for _ in range(draw(st.integers(1, 6))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "replace", "insert", "truncate"]))
        character = draw(st.sampled_from(NASTY) | st.characters())
        if action == "delete":
            text = text[:at] + text[at + 1 :]
        elif action == "duplicate":
            text = text[:at] + text[at] + text[at:]
        elif action == "replace":
            text = text[:at] + character + text[at + 1 :]
        elif action == "insert":
            text = text[:at] + character * draw(st.integers(1, 3)) + text[at:]
        else:
            text = text[:at]
    return text


def check_whole_or_untranslatable(text: str) -> None:
    error: Untranslatable | None = None
    try:
        translation = translate(text)
    except Untranslatable as refused:
        error = refused
    else:
        assert_valid(translation)
    if error is not None:
        # Every refusal is one of the module's own texts, so it cannot carry a message value.
        assert error.problem in hl7v2.ERROR_CODES
        assert re.fullmatch(r"[A-Z][A-Z0-9]{2}(-[0-9]{1,3})?", error.where)
        assert error.severity in ("rejected", "error")
    ack = hl7v2.acknowledgement(text, error, now=NOW)
    assert ack.startswith("MSH")
    assert ack.split("\r")[1].startswith("MSA")
    assert hl7v2.acknowledgement_of(read_once(text), error, now=NOW) == ack


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_message_maps_whole_or_is_untranslatable(text: str) -> None:
    """Whatever is done to a real message: valid events, or Untranslatable, and an ACK."""
    check_whole_or_untranslatable(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400))
def test_arbitrary_input_maps_whole_or_is_untranslatable(raw: bytes | str) -> None:
    """Random bytes and text never crash decode, translate or the ACK."""
    text = hl7v2.decode(raw) if isinstance(raw, bytes) else raw
    check_whole_or_untranslatable(text)
    check_whole_or_untranslatable("MSH|^~\\&|" + text)
