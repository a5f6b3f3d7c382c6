"""The rules every protocol adapter shares (carebus.wire.translation)."""

from __future__ import annotations

import pytest

from carebus.domain.text import identifier_problem
from carebus.wire.translation import (
    Party,
    StaticDirectory,
    Translation,
    Untranslatable,
    admission_reason,
    derived_event_id,
    national_identity_number,
    norwegian_time,
)

NIN = "15076500565"


def test_a_derived_id_is_stable_and_shows_nothing_of_its_parts() -> None:
    """The same parts give the same id; another secret or part another; no part shows."""
    first = derived_event_id(b"k" * 32, "plo", "974705788", NIN, "2018-01-29T10:00:00+01:00")
    assert first == derived_event_id(
        b"k" * 32, "plo", "974705788", NIN, "2018-01-29T10:00:00+01:00"
    )
    assert first != derived_event_id(
        b"j" * 32, "plo", "974705788", NIN, "2018-01-29T10:00:00+01:00"
    )
    assert first != derived_event_id(
        b"k" * 32, "plo", "974705788", NIN, "2018-01-29T10:01:00+01:00"
    )
    assert first.startswith("plo-")
    assert NIN not in first
    assert "974705788" not in first


def test_no_derived_id_embeds_something_the_gateway_takes_for_a_nin() -> None:
    """Digits come in runs of at most 8, so no id is refused as carrying a nin (before: about
    one in 7,800)."""
    for n in range(20_000):
        event_id = derived_event_id(b"k" * 32, "hl7v2", "974705788", f"V{n}")
        assert identifier_problem(event_id) is None, event_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2018-01-29T10:00:00", "2018-01-29T10:00:00+01:00"),
        ("2018-07-29T10:00:00", "2018-07-29T10:00:00+02:00"),
        ("2018-01-31", "2018-01-31T00:00:00+01:00"),
        ("2018-01-29T10:00:00Z", "2018-01-29T10:00:00+00:00"),
        ("2018-01-29T10:00:00+03:00", "2018-01-29T10:00:00+03:00"),
    ],
)
def test_a_time_without_offset_is_norwegian_wall_time(value: str, expected: str) -> None:
    """Norwegian senders mean Norway's time; an offset given is kept."""
    assert norwegian_time(value, "TidspunktForHendelse") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Java's LocalDateTime.toString() (a MsgHead GenDate of navikt's builders): nanoseconds.
        ("2026-04-08T09:12:20.232947798", "2026-04-08T09:12:20.232947+02:00"),
        # .NET ticks (the Firely SDK's DateTimeOffset): 7 digits, cut, not rounded.
        ("2020-06-15T19:23:53.7247525+01:00", "2020-06-15T19:23:53.724752+01:00"),
        ("2020-06-15T19:23:53.9999999Z", "2020-06-15T19:23:53.999999+00:00"),
        ("2020-06-15T19:23:53.5", "2020-06-15T19:23:53.500000+02:00"),
    ],
)
def test_a_fraction_finer_than_a_microsecond_is_cut_to_microseconds(
    value: str, expected: str
) -> None:
    """XML Schema's dateTime has fractions of any length and FHIR R4's up to 9 digits: a valid
    time is never refused for its precision."""
    assert norwegian_time(value, "MsgHead/MsgInfo/GenDate") == expected


@pytest.mark.parametrize("value", ["29.01.2018", "2018-02-30", "tomorrow", "2018-01-29T25:00:00"])
def test_a_time_that_is_not_one_is_untranslatable_naming_where(value: str) -> None:
    """The error names the place in the message, never the value."""
    with pytest.raises(Untranslatable) as refused:
        norwegian_time(value, "PV1-44")
    assert refused.value.where == "PV1-44"
    assert value not in str(refused.value)


def test_a_nin_is_checked_and_never_repeated_in_the_error() -> None:
    """A valid nin passes; a wrong check digit is named by place only."""
    assert national_identity_number(f" {NIN} ", "PID-3") == NIN
    with pytest.raises(Untranslatable) as refused:
        national_identity_number("15076500566", "PID-3")
    assert "15076500566" not in str(refused.value)
    assert refused.value.where == "PID-3"


@pytest.mark.parametrize(
    ("codes", "reason"),
    [
        ([], "unknown"),
        (["Z03.9"], "other"),
        (["T40.1"], "overdose"),
        (["T401"], "overdose"),
        (["T40.1", "X62"], "suicide_attempt"),
        (["X62.0", "T40.1"], "suicide_attempt"),
        (["Y12"], "possible_suicide_attempt"),
        (["T40.1", "Y12.0"], "possible_suicide_attempt"),
        (["Y34"], "possible_suicide_attempt"),
        (["Y10", "X62"], "suicide_attempt"),
        (["Y09"], "other"),
        (["Y35.0"], "other"),
        (["Y20", "F20.0"], "possible_suicide_attempt"),
        (["F10.3"], "withdrawal"),
        (["F11.4"], "withdrawal"),
        (["F11.2"], "other"),
        (["F20.0"], "psychosis"),
        (["f25"], "psychosis"),
        (["not a code"], "other"),
    ],
)
def test_icd10_codes_give_the_reason_the_sources_single_out(codes: list[str], reason: str) -> None:
    """Self-harm outranks the poisoning it was done with, and an event of undetermined intent
    (Y10-Y34) comes right below it; no code is unknown, not other."""
    assert admission_reason(codes) == reason


def test_the_static_directory_finds_by_number_her_id_and_kommunenummer() -> None:
    """Only a municipality is found by kommunenummer."""
    alvdal = Party("940000001", "municipality", "99387", "3428")
    hospital = Party("974749025", "dps", "59", "5001")
    directory = StaticDirectory((alvdal, hospital))
    assert directory.by_her_id("59") == hospital
    assert directory.by_org_id("940000001") == alvdal
    assert directory.municipality("3428") == alvdal
    assert directory.municipality("5001") is None


def test_an_origin_is_found_for_the_field_or_its_nearest_parent() -> None:
    """A refusal of a nested field is named by the nearest mapped place in the message."""
    translation = Translation(
        events=({},), origins={"events[0].payload": "Content", "events[0].subject.nin": "PID-3"}
    )
    assert translation.origin_of("events[0].subject.nin") == "PID-3"
    assert translation.origin_of("events[0].payload.ward") == "Content"
    assert translation.origin_of("events[1].event_id") == "events[1].event_id"
