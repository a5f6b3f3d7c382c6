"""carebus.domain.text: the one rule for text and client-chosen identifiers, wherever it is used."""

from __future__ import annotations

import random
import unicodedata
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carebus.domain.events import EXAMPLE_PAYLOADS, parse_event
from carebus.domain.identity import make_nin, random_nin
from carebus.domain.text import (
    CONTROL_PROBLEM,
    NIN_IN_ID_PROBLEM,
    REFUSED_CATEGORIES,
    UNSHOWN_FIELD_PROBLEM,
    embeds_nin,
    has_control,
    identifier_problem,
    text_problem,
)
from carebus.domain.webhook_targets import TargetPolicy
from carebus.wire.requests import parse
from services.registry.requests import ConsentRequest, TokenRequest

RNG = random.Random(15)
NINS = [random_nin(RNG) for _ in range(20)] + [
    random_nin(RNG, d_number=True),
    random_nin(RNG, synthetic=True),
    make_nin(date(1990, 1, 1), 120),
]

refused_characters = st.characters(categories=tuple(REFUSED_CATEGORIES))  # type: ignore[arg-type]
allowed_text = st.text(
    st.characters(
        exclude_categories=tuple(REFUSED_CATEGORIES),  # type: ignore[arg-type]
    ),
    max_size=40,
)
ascii_id = st.text(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"),
    max_size=40,
)


@given(allowed_text, refused_characters, allowed_text)
def test_any_string_with_a_refused_character_is_refused(
    before: str, refused: str, after: str
) -> None:
    """A control, format, surrogate or separator character anywhere makes the text refused."""
    assert has_control(before + refused + after)
    assert text_problem(before + refused + after) == CONTROL_PROBLEM
    assert identifier_problem(before + refused + after) == CONTROL_PROBLEM


@given(allowed_text)
def test_text_without_refused_characters_passes(value: str) -> None:
    """Norwegian letters, emoji, combining marks and spaces of every kind are text."""
    assert not has_control(value)
    assert text_problem(value) is None


@pytest.mark.parametrize(
    "value",
    ["Akuttpost 2", "Bjørnstjerne Bjørnson på Ålesund", "🙂 ok", "e\u0301", "a\u00a0b", ""],
)
def test_ordinary_text_passes(value: str) -> None:
    """The text people write passes."""
    assert text_problem(value) is None


@pytest.mark.parametrize(
    "character", ["\x00", "\t", "\n", "\x7f", "\x85", "\u202e", "\u200b", "\ufeff", "\ud800"]
)
def test_named_refused_characters(character: str) -> None:
    """NUL, tab, newline, DEL, NEL, an RTL override, zero-width space, BOM, a lone surrogate."""
    assert unicodedata.category(character) in REFUSED_CATEGORIES
    assert text_problem(f"a{character}b") == CONTROL_PROBLEM


@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
def test_line_and_paragraph_separators_are_refused(separator: str) -> None:
    """Zl and Zp start a new line where text is shown, as a newline would."""
    assert text_problem(f"a{separator}b") == CONTROL_PROBLEM


@given(ascii_id, st.sampled_from(NINS), ascii_id)
def test_an_identifier_with_a_nin_inside_is_refused(before: str, nin: str, after: str) -> None:
    """A valid nin anywhere in an identifier, even inside a longer run of digits, is refused."""
    assert embeds_nin(before + nin + after)
    assert identifier_problem(before + nin + after) == NIN_IN_ID_PROBLEM


@given(st.lists(st.from_regex(r"[0-9]{9}", fullmatch=True), min_size=1, max_size=4))
def test_organisation_numbers_pass(org_ids: list[str]) -> None:
    """Nine-digit organisation numbers, alone or joined by separators, are not nins."""
    assert identifier_problem("-".join(org_ids)) is None
    assert identifier_problem("dps-" + "-".join(org_ids) + "-2026-000123") is None


@given(
    st.from_regex(
        r"[A-Za-z._:-]{0,5}[0-9]{0,10}([A-Za-z._:-]{1,5}[0-9]{0,10}){0,5}", fullmatch=True
    )
)
def test_identifiers_with_no_eleven_digit_run_pass(value: str) -> None:
    """Digit runs shorter than 11 never hold a nin."""
    assert not embeds_nin(value)


@pytest.mark.parametrize(
    "value",
    [
        "dps-974705788-2026-000123",
        "APP-2026-0099",
        "IP-2026-17",
        "KB-0042",
        "12345678901",  # 11 digits, check digits wrong
        "01019012345",
        "9" * 30,
    ],
)
def test_ordinary_identifiers_pass(value: str) -> None:
    """The identifiers systems use, and 11-digit runs that are no valid nin, pass."""
    assert identifier_problem(value) is None


def test_a_nin_split_by_a_separator_is_not_one_run() -> None:
    """Only consecutive digits form a run (documented: `010190-12345` is two runs)."""
    nin = NINS[0]
    assert not embeds_nin(nin[:6] + "-" + nin[6:])


def _event(**changes: Any) -> dict[str, Any]:
    payload = dict(EXAMPLE_PAYLOADS["application_received"])
    raw: dict[str, Any] = {
        "event_id": "dps-974705788-2026-000200",
        "event_type": "application_received",
        "occurred_at": "2026-11-23T08:15:00+01:00",
        "source": {"agency": "nav", "org_id": "974760673", "system": "Modia"},
        "subject": {"nin": NINS[0]},
        "payload": payload,
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = raw
        for parent in parents:
            node = node[parent]
        node[last] = value
    return raw


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"event_id": f"dps-{NINS[1]}"}, "event_id", NIN_IN_ID_PROBLEM),
        ({"event_id": "dps-1\x00"}, "event_id", None),
        ({"source__system": f"sys{NINS[2]}"}, "source.system", NIN_IN_ID_PROBLEM),
        ({"source__system": "DIPS\u202e"}, "source.system", CONTROL_PROBLEM),
        (
            {"payload__application_id": f"APP-{NINS[3]}"},
            "payload.application_id",
            NIN_IN_ID_PROBLEM,
        ),
        ({"payload__application_id": "APP\x00"}, "payload.application_id", CONTROL_PROBLEM),
        ({"payload__service": "bo\u200blig"}, "payload.service", CONTROL_PROBLEM),
        ({"payload__" + NINS[4]: "x"}, "payload", UNSHOWN_FIELD_PROBLEM),
        ({"payload__x\u202e": "x"}, "payload", UNSHOWN_FIELD_PROBLEM),
        ({"a\x00": "x"}, "", UNSHOWN_FIELD_PROBLEM),
    ],
)
def test_events_refuse_by_the_rule(change: dict[str, Any], field: str, problem: str | None) -> None:
    """The event contract refuses refused characters and nins in ids, naming the field only."""
    event, problems = parse_event(_event(**change))
    assert event is None
    assert [p.field for p in problems] == [field]
    if problem is not None:
        assert problems[0].problem == problem
    shown = repr(problems)
    assert not any(nin in shown for nin in NINS)


def test_a_nin_is_still_free_text() -> None:
    """Free text (not an identifier) is not searched for numbers: only identifiers are."""
    event, problems = parse_event(_event(payload__service="bolig " + NINS[0]))
    assert problems == []
    assert event is not None


def test_registry_bodies_refuse_by_the_rule() -> None:
    """A consent's statement reference is an identifier; a token label is text; an unknown field
    whose name holds a nin is refused without quoting it."""
    consent = {
        "nin": NINS[0],
        "recipient": {"agency": "nav"},
        "status": "given",
        "categories": ["social"],
        "valid_from": "2026-11-23T08:15:00+01:00",
        "recorded_by": "Kari Nordmann",
        "statement_ref": f"journal-{NINS[1]}",
    }
    _, found = parse(ConsentRequest, consent)
    assert [(p.field, p.problem) for p in found] == [("statement_ref", NIN_IN_ID_PROBLEM)]
    _, found = parse(ConsentRequest, {**consent, "statement_ref": "J-1", "recorded_by": "K\x00"})
    assert [(p.field, p.problem) for p in found] == [("recorded_by", CONTROL_PROBLEM)]
    token = {"agency": "nav", "org_id": "974760673", "role": "system", "label": "ok"}
    _, found = parse(TokenRequest, {**token, "label": "a\u2029b"})
    assert [(p.field, p.problem) for p in found] == [("label", CONTROL_PROBLEM)]
    _, found = parse(TokenRequest, {**token, NINS[2]: 1})
    assert [(p.field, p.problem) for p in found] == [("body", UNSHOWN_FIELD_PROBLEM)]


def test_webhook_urls_refuse_by_the_rule() -> None:
    """A webhook URL is an identifier: no refused characters, no nin."""
    targets = TargetPolicy(allow_http=True, allow_private=True)
    assert targets.url_problem(f"https://example.no/hooks/{NINS[0]}") == NIN_IN_ID_PROBLEM
    assert targets.url_problem("https://example.no/ho\u202eoks") == CONTROL_PROBLEM
    assert targets.url_problem("https://example.no/hooks/974705788") is None
