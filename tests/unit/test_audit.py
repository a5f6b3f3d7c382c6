"""The audit sink's row building and the audit service's paging, without broker or database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carebus.adapters.sink import InvalidRecordError
from carebus.domain.deliveries import delivery_id
from carebus.domain.text import CONTROL_PROBLEM
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus.wire.cursor import Cursor, CursorError
from consumers.audit_store import AuditStoreWriter, delivery_row, disclosure_row, refusal_row
from services.audit.app import MAX_PURPOSE, purpose_problem_of
from services.audit.paging import PagingError, looks_like_cursor, parse_since
from services.audit.store import disclosure_json, lookup_json, refusal_json

NOW = datetime(2026, 11, 23, 8, 15, 30, 123456, tzinfo=UTC)
NIN = "01010050053"
DPS = "974705788"
MUNICIPALITY = "940493021"


def disclosure(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "audit_id": delivery_id(DPS, "e-1", MUNICIPALITY),
        "event_id": "e-1",
        "event_type": "admission",
        "source_org": DPS,
        "subject_key": "ab" * 32,
        "recipient": {"agency": "municipality", "org_id": MUNICIPALITY},
        "decision": "delivered",
        "reason": None,
        "basis": "statutory",
        "categories": ["logistics"],
        "fields": ["needs_municipal_services"],
        "rule_id": "admission-home-municipality",
        "policy_version": "2026-1",
        "decided_at": NOW,
        "delivery_id": delivery_id(DPS, "e-1", MUNICIPALITY),
        "emergency": False,
    }
    record.update(changes)
    return record


def delivery(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "delivery_id": delivery_id(DPS, "e-1", MUNICIPALITY),
        "event_id": "e-1",
        "event_type": "admission",
        "occurred_at": NOW - timedelta(hours=1),
        "decided_at": NOW,
        "source": {"agency": "dps", "org_id": DPS, "system": "DIPS"},
        "recipient": {"agency": "municipality", "org_id": MUNICIPALITY},
        "subject": {"nin": NIN},
        "subject_key": "ab" * 32,
        "basis": "statutory",
        "categories": ["logistics"],
        "fields": ["needs_municipal_services"],
        "payload_json": '{"needs_municipal_services":true}',
        "emergency": None,
        "rule_id": "admission-home-municipality",
        "policy_version": "2026-1",
    }
    record.update(changes)
    return record


def on(topic: str) -> Any:
    """A stand-in for the confluent_kafka.Message the writer reads: only its topic."""

    class Message:
        def topic(self) -> str:
            return topic

    return Message()


def alert_disclosure(**changes: Any) -> dict[str, Any]:
    """The SLA engine's disclosure of an alert (carebus.domain.alerts._audit's shape)."""
    return disclosure(
        audit_id="alert-" + "0f" * 16,
        event_type="alert",
        basis="statutory",
        categories=["logistics"],
        fields=["subject.nin", "event_type", "occurred_at"],
        rule_id="sla:discharge-notice",
        delivery_id=None,
        **changes,
    )


class TestRows:
    def test_records_round_trip_the_codec_into_rows(self) -> None:
        """Records written with the real schemas decode into rows tagged with their table."""
        codec = Codec.default()
        writer = AuditStoreWriter()
        audit_row = writer.row(
            codec.decode(codec.encode("no.carebus.v1.Disclosure", disclosure())),
            on(topics.AUDIT),
        )
        delivery_row_ = writer.row(
            codec.decode(codec.encode("no.carebus.v1.Delivery", delivery())),
            on(topics.deliveries("municipality")),
        )
        assert audit_row is not None
        assert audit_row[0] == "disclosure"
        assert delivery_row_ is not None
        assert delivery_row_[0] == "delivery"
        body = json.loads(delivery_row_[-1])
        assert body == {
            "delivery_id": delivery_id(DPS, "e-1", MUNICIPALITY),
            "event_id": "e-1",
            "event_type": "admission",
            "occurred_at": "2026-11-23T07:15:30.123456Z",
            "subject": {"nin": NIN},
            "basis": "statutory",
            "categories": ["logistics"],
            "payload": {"needs_municipal_services": True},
        }

    def test_other_schemas_are_skipped(self) -> None:
        """A dead letter (or any other record type) on these topics is not stored."""
        codec = Codec.default()
        dead_letter = codec.encode(
            "no.carebus.v1.DeadLetter",
            {
                "reason": "other",
                "detail": "x",
                "source_topic": "t",
                "source_partition": 0,
                "source_offset": 0,
                "consumer": "c",
                "original_key": None,
                "original_value": b"",
                "dead_lettered_at": NOW,
            },
        )
        assert AuditStoreWriter().row(codec.decode(dead_letter), on(topics.AUDIT)) is None

    def test_no_candidate_has_no_recipient(self) -> None:
        """`no_candidate` rows have null recipient columns."""
        row = disclosure_row(
            disclosure(decision="no_candidate", recipient=None, basis=None, delivery_id=None)
        )
        assert row[5:8] == (None, None, "no_candidate")

    @pytest.mark.parametrize(
        "changes",
        [
            {"recipient": None},
            {"decision": "no_candidate"},
            {"decision": "unknown"},
            {"decision": "withheld", "reason": None, "basis": None},
            {"basis": None},
            {"audit_id": ""},
        ],
    )
    def test_contradictory_disclosures_are_invalid(self, changes: dict[str, Any]) -> None:
        """A decision that contradicts itself is dead-lettered, with a text naming no value."""
        with pytest.raises(InvalidRecordError) as caught:
            disclosure_row(disclosure(**changes))
        assert NIN not in caught.value.detail

    @pytest.mark.parametrize(
        ("changes", "topic"),
        [
            ({}, topics.deliveries("nav")),
            ({"payload_json": "not json"}, topics.deliveries("municipality")),
            ({"payload_json": "[1, 2]"}, topics.deliveries("municipality")),
            ({"payload_json": '{"x": NaN}'}, topics.deliveries("municipality")),
            (
                {"recipient": {"agency": "unknown", "org_id": MUNICIPALITY}},
                topics.deliveries("municipality"),
            ),
        ],
    )
    def test_bad_deliveries_are_invalid(self, changes: dict[str, Any], topic: str) -> None:
        """A delivery on another agency's topic or with a payload that is no JSON object."""
        with pytest.raises(InvalidRecordError):
            delivery_row(delivery(**changes), topic)

    def test_emergency_deliveries_carry_the_notice(self) -> None:
        """The stored body has `emergency` only for emergency disclosures."""
        notice = {"justification": "risk of harm", "accountable": "Dr. A"}
        row = delivery_row(delivery(basis="emergency", emergency=notice), None)
        assert json.loads(row[-1])["emergency"] == notice


def refusal(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "audit_id": "5b0f0c52-7c1e-4a59-9d0e-0d1f7b0c2a11",
        "subject_key": "ab" * 32,
        "actor_org": "987654321",
        "actor_agency": "police",
        "actor_role": "system",
        "statement": "event:ip_update",
        "rule_id": "sender.event_type",
        "field": "event_type",
        "policy_version": "2026.1",
        "decided_at": NOW,
    }
    record.update(changes)
    return record


class TestRefusalRows:
    def test_refusals_round_trip_the_codec_into_rows(self) -> None:
        """An AuthorityRefusal written with the real schema becomes an `authority_refusals` row."""
        codec = Codec.default()
        row = AuditStoreWriter().row(
            codec.decode(codec.encode("no.carebus.v1.AuthorityRefusal", refusal())),
            on(topics.REFUSALS),
        )
        assert row == (
            "refusal",
            "5b0f0c52-7c1e-4a59-9d0e-0d1f7b0c2a11",
            "ab" * 32,
            "987654321",
            "police",
            "system",
            "event:ip_update",
            "sender.event_type",
            "event_type",
            "2026.1",
            NOW,
        )

    def test_a_refusal_about_no_person_has_no_subject_key(self) -> None:
        """A refused token or webhook change names no person: the subject key column is null."""
        row = refusal_row(refusal(subject_key=None, field=None, statement="token"))
        assert (row[1], row[7]) == (None, None)

    @pytest.mark.parametrize("name", ["audit_id", "actor_org", "statement", "rule_id"])
    def test_refusals_without_who_or_what_are_invalid(self, name: str) -> None:
        """A refusal that does not say who tried what, under which rule, is dead-lettered."""
        with pytest.raises(InvalidRecordError):
            refusal_row(refusal(**{name: ""}))


class TestReportJson:
    def test_lookups_and_refusals_have_the_documented_keys(self) -> None:
        """Lookups say who looked, when and why; refusals who tried what and the rule."""
        lookup = lookup_json(
            {
                "org_id": MUNICIPALITY,
                "agency": "municipality",
                "role": "privacy_officer",
                "purpose": None,
                "looked_at": NOW,
                "what": "disclosure_query",
            }
        )
        assert lookup == {
            "org_id": MUNICIPALITY,
            "agency": "municipality",
            "role": "privacy_officer",
            "purpose": None,
            "looked_at": "2026-11-23T08:15:30.123456Z",
            "what": "disclosure_query",
        }
        assert refusal_json(refusal()) == {
            "actor": {"agency": "police", "org_id": "987654321"},
            "statement": "event:ip_update",
            "rule_id": "sender.event_type",
            "field": "event_type",
            "decided_at": "2026-11-23T08:15:30.123456Z",
        }


class TestPurpose:
    @pytest.mark.parametrize(
        "purpose", [None, "", "Patient asked for a copy (§18)", "Innsyn – «klage»", "x" * 200]
    )
    def test_plain_text_up_to_the_limit_is_accepted(self, purpose: str | None) -> None:
        """Any printable text, letters of any script and punctuation, up to the limit."""
        assert purpose_problem_of(purpose) is None

    @pytest.mark.parametrize(
        ("purpose", "problem"),
        [
            (12, "must be a string"),
            (["why"], "must be a string"),
            ("x" * (MAX_PURPOSE + 1), f"must be at most {MAX_PURPOSE} characters"),
            ("why\nnot", CONTROL_PROBLEM),
            ("tab\there", CONTROL_PROBLEM),
            ("\u202eevil", CONTROL_PROBLEM),  # RTL override
            ("zero\u200bwidth", CONTROL_PROBLEM),
            ("\ud800", CONTROL_PROBLEM),  # lone surrogate
            ("line\u2028break", CONTROL_PROBLEM),
        ],
    )
    def test_control_and_format_characters_are_refused(self, purpose: object, problem: str) -> None:
        """Characters that could forge or hide text in the patient's log are refused."""
        assert purpose_problem_of(purpose) == problem


class TestDisclosureJson:
    def test_withheld_has_reason_and_no_basis(self) -> None:
        """Withheld items carry `reason`; delivered ones `basis` and `fields`."""
        row: dict[str, Any] = {
            "event_id": "e-1",
            "event_type": "admission",
            "recipient_agency": "nav",
            "recipient_org": "889640782",
            "decision": "withheld",
            "reason": "no_consent",
            "basis": None,
            "fields": [],
            "rule_id": "admission-nav",
            "policy_version": "2026-1",
            "decided_at": NOW,
        }
        assert disclosure_json(row) == {
            "event_id": "e-1",
            "event_type": "admission",
            "recipient": {"agency": "nav", "org_id": "889640782"},
            "decision": "withheld",
            "reason": "no_consent",
            "rule_id": "admission-nav",
            "policy_version": "2026-1",
            "decided_at": "2026-11-23T08:15:30.123456Z",
        }
        delivered = disclosure_json(
            {**row, "decision": "delivered", "basis": "consent", "fields": ["ward"]}
        )
        assert set(delivered) == {
            "event_id",
            "event_type",
            "recipient",
            "decision",
            "basis",
            "fields",
            "rule_id",
            "policy_version",
            "decided_at",
        }
        assert (delivered["basis"], delivered["fields"]) == ("consent", ["ward"])


class TestPaging:
    def test_cursor_round_trips_and_is_url_safe(self) -> None:
        """A cursor decodes to the exact (time, id) it was made from, in URL-safe characters."""
        cursor = Cursor(NOW, "d/1+2")
        token = cursor.encode()
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert Cursor.decode(token) == cursor
        assert looks_like_cursor(token)

    @pytest.mark.parametrize("token", ["", "!!!", "eyJ4IjoxfQ", "WyJ4IiwxXQ", "WzEsMl0"])
    def test_foreign_cursors_are_refused(self, token: str) -> None:
        """Anything the service did not issue is a CursorError, not a crash."""
        with pytest.raises(CursorError):
            Cursor.decode(token)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-11-23T08:15:00+01:00", datetime(2026, 11, 23, 7, 15, tzinfo=UTC)),
            ("2026-11-23T08:15:00 01:00", datetime(2026, 11, 23, 7, 15, tzinfo=UTC)),
            ("2026-11-23t07:15:00z", datetime(2026, 11, 23, 7, 15, tzinfo=UTC)),
            ("2026-11-23T07:15:00.5Z", datetime(2026, 11, 23, 7, 15, 0, 500000, tzinfo=UTC)),
            (
                "2026-11-23T07:15:00.0000001Z",
                datetime(2026, 11, 23, 7, 15, 0, 1, tzinfo=UTC),
            ),
        ],
    )
    def test_since_is_rfc3339_with_offset(self, text: str, expected: datetime) -> None:
        """Offsets are honoured; sub-microsecond digits round up so `>= since` stays true."""
        assert parse_since(text) == expected

    @pytest.mark.parametrize(
        "text", ["2026-11-23", "2026-11-23T08:15:00", "yesterday", "2026-13-01T00:00:00Z"]
    )
    def test_bad_since_is_refused(self, text: str) -> None:
        """Dates, naive times and impossible times are refused."""
        with pytest.raises(PagingError):
            parse_since(text)


class TestOneKindPerTopic:
    """Each audit topic has one writer (the broker's ACLs) and carries one kind of record: a
    writer that sends another kind on its own topic is dead-lettered, not stored (review M1)."""

    CODEC = Codec.default()

    def row(self, schema: str, record: dict[str, Any], topic: str) -> Any:
        return AuditStoreWriter().row(
            self.CODEC.decode(self.CODEC.encode(schema, record)), on(topic)
        )

    @pytest.mark.parametrize(
        ("schema", "record", "topic"),
        [
            ("no.carebus.v1.Disclosure", disclosure(), topics.REFUSALS),
            ("no.carebus.v1.Disclosure", disclosure(), topics.deliveries("municipality")),
            ("no.carebus.v1.AuthorityRefusal", refusal(), topics.AUDIT),
            ("no.carebus.v1.AuthorityRefusal", refusal(), topics.ALERT_DISCLOSURES),
            ("no.carebus.v1.Delivery", delivery(), topics.AUDIT),
            ("no.carebus.v1.Delivery", delivery(), topics.REFUSALS),
        ],
        ids=[
            "disclosure-on-refusals",
            "disclosure-on-deliveries",
            "refusal-on-audit",
            "refusal-on-alert-audit",
            "delivery-on-audit",
            "delivery-on-refusals",
        ],
    )
    def test_a_kind_off_its_topic_is_dead_lettered(
        self, schema: str, record: dict[str, Any], topic: str
    ) -> None:
        with pytest.raises(InvalidRecordError, match="does not belong on"):
            self.row(schema, record, topic)

    def test_the_router_topic_takes_no_alert_disclosure(self) -> None:
        """The SLA engine's kind of disclosure, even with a router-shaped id, is refused on the
        router's topic: the router never discloses alerts."""
        with pytest.raises(InvalidRecordError, match="alert"):
            self.row("no.carebus.v1.Disclosure", disclosure(event_type="alert"), topics.AUDIT)

    def test_the_router_topic_takes_only_uuid_ids(self) -> None:
        with pytest.raises(InvalidRecordError, match="UUID"):
            self.row(
                "no.carebus.v1.Disclosure", disclosure(audit_id="alert-" + "0f" * 16), topics.AUDIT
            )

    def test_an_alert_disclosure_is_stored_from_its_own_topic(self) -> None:
        row = self.row("no.carebus.v1.Disclosure", alert_disclosure(), topics.ALERT_DISCLOSURES)
        assert row[0] == "disclosure"
        assert row[1] == "alert-" + "0f" * 16

    @pytest.mark.parametrize(
        "changes",
        [
            # The router's id: an SLA engine taking it first would hide the router's record.
            {"audit_id": delivery_id(DPS, "e-1", MUNICIPALITY)},
            {"event_type": "admission"},
            {"decision": "withheld", "reason": "no_consent"},
            {"delivery_id": delivery_id(DPS, "e-1", MUNICIPALITY)},
            {"rule_id": "admission-home-municipality"},
        ],
        ids=["router-id", "event-type", "withheld", "delivery", "routing-rule"],
    )
    def test_the_alert_topic_takes_only_alert_disclosures(self, changes: dict[str, Any]) -> None:
        record = {**alert_disclosure(), **changes}
        with pytest.raises(InvalidRecordError):
            self.row("no.carebus.v1.Disclosure", record, topics.ALERT_DISCLOSURES)
