"""The patient's log in plain words: one sentence per row, naming each organisation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from carebus.domain.events import EVENT_TYPES
from carebus.domain.policy import CATEGORIES
from services.audit.patient_log import (
    BASIS_WORDS,
    CATEGORY_WORDS,
    EVENT_WORDS,
    REASON_WORDS,
    ConsentChange,
    Decision,
    Lookup,
    Party,
    Refusal,
    confirmation_row,
    consent_row,
    decision_row,
    lookup_row,
    patient_log,
    refusal_row,
)

AT = datetime(2026, 11, 23, 8, 15, tzinfo=UTC)
DPS = Party("dps", "974705788", "Demo DPS")
NAV = Party("nav", "889640782", "Demo NAV office")
GP = Party("fastlege", "912345678")  # not named in the directory
MUNICIPALITY = Party("municipality", "940493021", "Demo municipality")
OPERATOR = Party("operator", "918000008", "carebus operator")
POLICE = Party("police", "987654321", "Demo police district")
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "avro"


def decision(**changes: Any) -> Decision:
    fields: dict[str, Any] = {
        "event_id": "e-1",
        "event_type": "discharge",
        "source": DPS,
        "recipient": NAV,
        "decision": "delivered",
        "reason": None,
        "basis": "consent",
        "categories": ["logistics"],
        "decided_at": AT,
    }
    return Decision(**{**fields, **changes})


def consent(**changes: Any) -> ConsentChange:
    fields: dict[str, Any] = {
        "recipient": NAV,
        "categories": ["logistics"],
        "status": "given",
        "state": "effective",
        "recorded_by": DPS,
        "recorded_at": AT,
        "valid_from": AT,
        "valid_to": None,
        "confirmed_by": None,
        "confirmed_at": None,
    }
    return ConsentChange(**{**fields, **changes})


@pytest.mark.parametrize(
    ("record", "text"),
    [
        (
            decision(),
            "Demo NAV office (nav 889640782) was told about your discharge by Demo DPS "
            "(dps 974705788): practical details, because you consented.",
        ),
        (
            decision(
                event_type="admission",
                recipient=MUNICIPALITY,
                basis="statutory",
                categories=["logistics", "health"],
            ),
            "Demo municipality (municipality 940493021) was told about your admission by Demo "
            "DPS (dps 974705788): practical details and health information, because the law "
            "requires it.",
        ),
        (
            decision(recipient=GP, basis="presumed"),
            "The fastlege organisation 912345678 was told about your discharge by Demo DPS "
            "(dps 974705788): practical details, because you had not objected.",
        ),
        (
            decision(recipient=POLICE, basis="emergency", categories=["logistics", "health"]),
            "Demo police district (police 987654321) was told about your discharge by Demo DPS "
            "(dps 974705788): practical details and health information, because of an "
            "emergency.",
        ),
        (
            decision(event_type="admission", decision="withheld", reason="objection", basis=None),
            "Demo NAV office (nav 889640782) was not told about your admission: you objected.",
        ),
        (
            decision(decision="withheld", reason="no_consent", basis=None, recipient=GP),
            "The fastlege organisation 912345678 was not told about your discharge: you had not "
            "consented.",
        ),
        (
            decision(decision="withheld", reason="consent_expired", basis=None),
            "Demo NAV office (nav 889640782) was not told about your discharge: your consent "
            "had run out.",
        ),
        (
            decision(event_type="new_type", decision="withheld", reason="unknown", basis=None),
            "Demo NAV office (nav 889640782) was not told about something that happened to "
            "you: the rules do not allow it.",
        ),
    ],
)
def test_decisions_read_as_one_plain_sentence(record: Decision, text: str) -> None:
    """Who was (not) told what, by whom, and why, in the patient's words."""
    assert decision_row(record)["text"] == text


@pytest.mark.parametrize(
    ("record", "text"),
    [
        (
            consent(),
            "Demo DPS (dps 974705788) recorded that you consent to Demo NAV office "
            "(nav 889640782) getting practical details.",
        ),
        (
            consent(recipient=Party("nav", ""), categories=["health", "social"]),
            "Demo DPS (dps 974705788) recorded that you consent to every nav organisation "
            "getting health information and social and welfare information.",
        ),
        (
            consent(status="withdrawn"),
            "Demo DPS (dps 974705788) recorded that you withdrew your consent for Demo NAV "
            "office (nav 889640782) to get practical details.",
        ),
        (
            consent(status="objection", recipient=GP, recorded_by=MUNICIPALITY),
            "Demo municipality (municipality 940493021) recorded that you object to the "
            "fastlege organisation 912345678 getting practical details.",
        ),
        (
            consent(state="pending", recorded_by=NAV),
            "Demo NAV office (nav 889640782) recorded that you consent to Demo NAV office "
            "(nav 889640782) getting practical details; it takes effect only when a health "
            "service or you confirm it.",
        ),
    ],
)
def test_consent_changes_read_as_one_plain_sentence(record: ConsentChange, text: str) -> None:
    """Who recorded which consent, withdrawal or objection, and whether it waits."""
    assert consent_row(record)["text"] == text


def test_a_confirmed_consent_is_two_rows_recorded_then_confirmed() -> None:
    """A consent recorded as pending and confirmed later shows both moments, in order."""
    later = AT + timedelta(days=1)
    record = consent(state="confirmed", recorded_by=NAV, confirmed_by=DPS, confirmed_at=later)
    rows = patient_log([], [record], [], [])
    assert [(row["kind"], row["at"]) for row in rows] == [
        ("consent", "2026-11-23T08:15:00Z"),
        ("consent_confirmed", "2026-11-24T08:15:00Z"),
    ]
    assert "takes effect only when" in rows[0]["text"]
    assert rows[1]["text"] == (
        "Your consent for Demo NAV office (nav 889640782) to get practical details was "
        "confirmed by Demo DPS (dps 974705788) and took effect."
    )
    assert confirmation_row(consent(confirmed_by=None), later)["text"] == (
        "Your consent for Demo NAV office (nav 889640782) to get practical details was "
        "confirmed and took effect."
    )


@pytest.mark.parametrize(
    ("record", "text"),
    [
        (
            Lookup(MUNICIPALITY, "privacy_officer", "Patient asked for a copy", AT),
            "The privacy officer of Demo municipality (municipality 940493021) looked up who "
            'received information about you, giving the reason "Patient asked for a copy".',
        ),
        (
            Lookup(OPERATOR, "privacy_officer", None, AT),
            "The data protection officer of carebus operator (operator 918000008) looked up who "
            "received information about you without giving a reason.",
        ),
    ],
)
def test_lookups_say_who_looked_and_why(record: Lookup, text: str) -> None:
    """A lookup names the organisation and repeats the purpose it gave, as written."""
    row = lookup_row(record)
    assert row["text"] == text
    assert row["purpose"] == record.purpose


@pytest.mark.parametrize(
    ("statement", "text"),
    [
        (
            "event:ip_update",
            "Demo police district (police 987654321) tried to report your individual plan; "
            "carebus refused, because it is not entitled to.",
        ),
        (
            "care_team_change",
            "Demo police district (police 987654321) tried to change who is in your care "
            "team; carebus refused, because it is not entitled to.",
        ),
        (
            "consent",
            "Demo police district (police 987654321) tried to record a consent or an objection "
            "for you; carebus refused, because it is not entitled to.",
        ),
        (
            "person_view",
            "Demo police district (police 987654321) tried to open your page in the "
            "coordinators' inbox; carebus refused, because it is not entitled to.",
        ),
        (
            "something_new",
            "Demo police district (police 987654321) tried to say something about you; carebus "
            "refused, because it is not entitled to.",
        ),
    ],
)
def test_refusals_say_who_tried_what(statement: str, text: str) -> None:
    """A refusal names the organisation that tried and what it tried, not the rule's id."""
    row = refusal_row(Refusal(POLICE, statement, "care_team.self_add", AT))
    assert row["text"] == text
    assert (row["statement"], row["rule_id"]) == (statement, "care_team.self_add")


def test_rows_are_oldest_first_with_their_structured_fields() -> None:
    """Rows of every kind are merged by time; each has `at`, `kind`, `text` and its fields."""
    rows = patient_log(
        [decision(decided_at=AT + timedelta(minutes=3))],
        [consent(recorded_at=AT + timedelta(minutes=1))],
        [Lookup(MUNICIPALITY, "privacy_officer", None, AT + timedelta(minutes=4))],
        [Refusal(POLICE, "consent", "consent.recorder", AT)],
    )
    assert [row["kind"] for row in rows] == ["refusal", "consent", "delivered", "lookup"]
    delivered = rows[2]
    assert delivered == {
        "at": "2026-11-23T08:18:00Z",
        "kind": "delivered",
        "text": delivered["text"],
        "event_id": "e-1",
        "event_type": "discharge",
        "source": {"agency": "dps", "org_id": "974705788", "name": "Demo DPS"},
        "recipient": {"agency": "nav", "org_id": "889640782", "name": "Demo NAV office"},
        "basis": "consent",
        "categories": ["logistics"],
    }
    assert rows[1]["recipient"] == {
        "agency": "nav",
        "org_id": "889640782",
        "name": "Demo NAV office",
    }
    assert consent_row(consent(recipient=Party("nav", "")))["recipient"] == {
        "agency": "nav",
        "org_id": None,
        "name": None,
    }


def test_every_known_value_has_plain_words() -> None:
    """Every event type, category, basis and withheld reason carebus can record has words."""
    disclosure = json.loads((SCHEMAS / "disclosure.avsc").read_text())
    reason_type = next(f for f in disclosure["fields"] if f["name"] == "reason")["type"][1]
    reasons = set(reason_type["symbols"]) - {"unknown"}
    assert set(EVENT_TYPES) <= set(EVENT_WORDS)
    assert set(CATEGORIES) <= set(CATEGORY_WORDS)
    assert {"statutory", "presumed", "consent", "emergency"} <= set(BASIS_WORDS)
    assert reasons <= set(REASON_WORDS)
    # Sentences stay plain: no identifier of the code leaks into the words.
    for words in (EVENT_WORDS, CATEGORY_WORDS, BASIS_WORDS, REASON_WORDS):
        assert all("_" not in text for text in words.values())


def test_a_retracted_event_stays_in_the_log_marked_as_withdrawn() -> None:
    """A delivery of an event its sender retracted since stays, says it was withdrawn, and names
    the retraction; the retraction's own delivery says what it was."""
    row = decision_row(decision(retracted_by="dps-retraction-1"))
    assert row["retracted_by"] == "dps-retraction-1"
    assert "later withdrawn by the sender as a mistake" in row["text"]
    assert "retracted_by" not in decision_row(decision())
    notice = decision_row(decision(event_type="retraction", basis="retraction"))
    assert notice["text"] == (
        "Demo NAV office (nav 889640782) was told about a correction withdrawing an earlier "
        "message about you by Demo DPS (dps 974705788): practical details, because it had "
        "received the message withdrawn."
    )


def test_a_look_at_the_person_view_says_who_looked_and_at_what() -> None:
    """pasientjournalloven §18: the patient learns that a coordinator of an organisation looked
    at their page in the coordinators' inbox, not a disclosure query it never ran."""
    row = lookup_row(Lookup(MUNICIPALITY, "coordinator", None, AT, "person_timeline"))
    assert row["what"] == "person_timeline"
    assert row["text"] == (
        "A coordinator of Demo municipality (municipality 940493021) looked at your page in the"
        " coordinators' inbox: your care team, the deadlines between the services and what that"
        " organisation sent or received about you."
    )
    query = lookup_row(Lookup(MUNICIPALITY, "privacy_officer", None, AT))
    assert query["what"] == "disclosure_query"
    assert query["text"].startswith("The privacy officer of Demo municipality")
