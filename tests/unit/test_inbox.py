"""The inbox's pure parts: visibility, alert JSON, filters, cursors, record checks, fan-out."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carebus.adapters.auth import Principal
from carebus.adapters.http import ApiError
from carebus.adapters.sink import InvalidRecordError
from carebus.domain.alerts import operator_action_alert
from carebus.runtime.config import Settings
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus.wire.cursor import Cursor, CursorError
from carebus.wire.sealing import DataKey, Keyring, new_data_key, seal
from consumers.alert_store import AlertStoreWriter, alert_row
from services.inbox.alerts import (
    AlertFilter,
    ContactPerson,
    FilterError,
    alert_json,
    can_see,
    parse_filter,
)
from services.inbox.app import admit_stream
from services.inbox.live import RESYNC_FRAME, AlertFeed, Subscriber, alert_frame
from services.inbox.store import opened, visible_to

ORG = "940493021"
OTHER = "974705788"
MOMENT = datetime(2026, 11, 23, 7, 15, 0, 250000, tzinfo=UTC)


KEY = "ab" * 32


def test_an_alert_that_does_not_name_the_person_has_no_way_to_the_person_view() -> None:
    """`subject_key` and `person_url` come only with `subject`: an alert that may not name the
    person does not lead to them either (nor does one about a person erased since)."""
    for nameless in (row(nin=None), row(nin=None, erased=True)):
        alert = alert_json(nameless)
        assert "subject_key" not in alert
        assert "person_url" not in alert


def row(**changes: Any) -> dict[str, Any]:
    """A row of `alerts` as the store selects it."""
    base: dict[str, Any] = {
        "alert_id": "alert-1",
        "rule_id": "discharge-ready-reply",
        "title": "Reply to a discharge-ready notice",
        "kind": "deadline_missed",
        "status": "open",
        "resolution": None,
        "escalated": False,
        "nin": "12345678901",
        "subject_key": KEY,
        "recipient_agency": "municipality",
        "recipient_org": ORG,
        "audience": "coordinator",
        "contact_agency": "dps",
        "contact_org": OTHER,
        "deadline": MOMENT,
        "breached_at": MOMENT + timedelta(hours=1),
        "escalate_at": MOMENT + timedelta(hours=2),
        "summary": "No reply.",
        "event_ids": ["dps-1"],
        "acknowledged_at": None,
        "resolved_at": None,
    }
    base.update(changes)
    return base


def record(**changes: Any) -> dict[str, Any]:
    """A decoded no.carebus.v1.Alert record."""
    base: dict[str, Any] = {
        "alert_id": "alert-1",
        "rule_id": "discharge-ready-reply",
        "title": "Reply to a discharge-ready notice",
        "kind": "deadline_missed",
        "status": "open",
        "resolution": None,
        "subject_key": "ab" * 32,
        "subject": {"nin": "12345678901"},
        "recipient": {"agency": "municipality", "org_id": ORG},
        "audience": "coordinator",
        "contact": None,
        "deadline": None,
        "breached_at": MOMENT,
        "escalate_at": MOMENT,
        "summary": "No reply.",
        "event_ids": ["dps-1"],
        "rules_version": "1",
        "changed_at": MOMENT,
    }
    base.update(changes)
    return base


# --- who sees what --------------------------------------------------------------------------

OPERATOR_ORG = "918000008"


def principal(role: str, org_id: str = ORG, agency: str = "municipality") -> Principal:
    return Principal(uuid.uuid4(), org_id, agency, role)


def operator(role: str) -> Principal:
    return principal(role, OPERATOR_ORG, "operator")


CALLERS = {
    "coordinator": principal("coordinator"),
    "privacy_officer": principal("privacy_officer"),
    "system": principal("system"),
    "admin": principal("admin"),
    "operator": operator("operator"),
    "operator_privacy_officer": operator("privacy_officer"),
    "operator_patient": Principal(uuid.uuid4(), OPERATOR_ORG, "operator", "patient", "ab" * 32),
}


@pytest.mark.parametrize(
    ("caller", "recipient_org", "audience", "visible"),
    [
        ("coordinator", ORG, "coordinator", True),
        ("coordinator", ORG, "privacy_officer", False),
        ("coordinator", OTHER, "coordinator", False),
        ("coordinator", None, "coordinator", False),
        ("privacy_officer", ORG, "privacy_officer", True),
        ("privacy_officer", ORG, "coordinator", False),
        ("privacy_officer", OTHER, "privacy_officer", False),
        # The unassigned queue is the operator's, not every privacy officer's.
        ("privacy_officer", None, "coordinator", False),
        ("system", ORG, "coordinator", False),
        ("system", None, "coordinator", False),
        ("admin", ORG, "privacy_officer", False),
        ("admin", None, "coordinator", False),
        ("operator", None, "coordinator", True),
        ("operator", ORG, "coordinator", False),
        ("operator", ORG, "privacy_officer", False),
        ("operator", OPERATOR_ORG, "coordinator", True),
        ("operator", OPERATOR_ORG, "privacy_officer", False),
        ("operator_privacy_officer", None, "coordinator", True),
        ("operator_privacy_officer", ORG, "privacy_officer", False),
        ("operator_privacy_officer", OPERATOR_ORG, "privacy_officer", True),
        ("operator_privacy_officer", OPERATOR_ORG, "coordinator", False),
        ("operator_patient", None, "coordinator", False),
    ],
)
def test_visibility_follows_realm_role_organisation_and_audience(
    caller: str, recipient_org: str | None, audience: str, visible: bool
) -> None:
    """Each role sees its organisation's alerts of its audience; only the operator the queue."""
    assert can_see(CALLERS[caller], recipient_org, audience) is visible


@pytest.mark.parametrize(
    ("caller", "condition"),
    [
        ("coordinator", "((recipient_org = $1 AND audience = 'coordinator'))"),
        ("privacy_officer", "((recipient_org = $1 AND audience = 'privacy_officer'))"),
        (
            "operator",
            "((recipient_org = $1 AND audience = 'coordinator') OR recipient_org IS NULL)",
        ),
        (
            "operator_privacy_officer",
            "((recipient_org = $1 AND audience = 'privacy_officer') OR recipient_org IS NULL)",
        ),
        ("system", "false AND $1::text IS NULL"),
    ],
)
def test_the_list_query_asks_for_what_can_see_allows(caller: str, condition: str) -> None:
    """The SQL condition is can_see's: the queue only for the operator realm."""
    assert visible_to(CALLERS[caller]) == condition


# --- the alert JSON -------------------------------------------------------------------------


def test_alert_json_has_the_contract_fields_in_utc() -> None:
    """Times are RFC 3339 UTC with Z, organisations are objects, the nin is the subject."""
    alert = alert_json(row())
    assert alert == {
        "alert_id": "alert-1",
        "rule_id": "discharge-ready-reply",
        "title": "Reply to a discharge-ready notice",
        "kind": "deadline_missed",
        "status": "open",
        "resolution": None,
        "escalated": False,
        "deadline": "2026-11-23T07:15:00.250000Z",
        "breached_at": "2026-11-23T08:15:00.250000Z",
        "escalate_at": "2026-11-23T09:15:00.250000Z",
        "recipient": {"agency": "municipality", "org_id": ORG},
        "recipient_role": None,
        "subject": {"nin": "12345678901"},
        "subject_key": KEY,
        "person_url": f"/persons/{KEY}",
        "accountable": None,
        "deputy": None,
        "contact": {"agency": "dps", "org_id": OTHER},
        "summary": "No reply.",
        "event_ids": ["dps-1"],
        "acknowledged_at": None,
        "resolved_at": None,
        "acknowledged_by": None,
        "resolved_by": None,
    }


def contact(role: str, position: str, name: str, hpr: str | None = None) -> ContactPerson:
    return ContactPerson(ORG, role, position, name, hpr, None)


def test_an_alert_names_the_accountable_person_and_deputy_of_the_role_it_was_routed_by() -> None:
    """A municipal coordinator's alert names the municipality's coordinator and deputy, not its
    other contacts; an alert to the source names the organisation's first role that has any."""
    contacts = [
        contact("contact", "accountable", "Ola Kontakt"),
        contact("coordinator", "deputy", "Per Vara"),
        contact("coordinator", "accountable", "Kari Koordinator"),
    ]
    alert = alert_json(row(recipient_role="municipal_coordinator", contacts=contacts))
    assert alert["recipient_role"] == "municipal_coordinator"
    assert alert["accountable"] == {
        "name": "Kari Koordinator",
        "role": "coordinator",
        "hpr_number": None,
        "phone": None,
    }
    assert alert["deputy"]["name"] == "Per Vara"
    as_source = alert_json(row(recipient_role="source", contacts=contacts[:1]))
    assert as_source["accountable"]["name"] == "Ola Kontakt"
    assert as_source["deputy"] is None


def test_a_pathway_coordinators_alert_names_the_pathway_coordinator_with_hpr_number() -> None:
    """At a DPS with a pathway coordinator and another contact, the pathway coordinator's copy
    names the pathway coordinator; with none of that role, the organisation's first role."""
    pathway = contact("pathway_coordinator", "accountable", "Lege Forløp", "1234567")
    other = contact("contact", "accountable", "Ola Kontakt")
    alert = alert_json(row(recipient_role="pathway_coordinator", contacts=[other, pathway]))
    assert alert["accountable"]["hpr_number"] == "1234567"
    alert = alert_json(row(recipient_role="pathway_coordinator", contacts=[other]))
    assert alert["accountable"]["name"] == "Ola Kontakt"


def test_an_alert_that_may_not_name_the_person_names_no_staff_either() -> None:
    """No accountable person or deputy on an alert without the person (nor null): it would say
    that the organisation has someone responsible for a person it was not told of."""
    alert = alert_json(row(nin=None, contacts=[contact("coordinator", "accountable", "Kari")]))
    assert "accountable" not in alert
    assert "deputy" not in alert
    assert "Kari" not in str(alert)


def test_alert_json_names_the_person_who_acted_never_the_token() -> None:
    """A person's acknowledgement or resolution shows their `sub` and issuer; a system
    token's (person columns NULL) shows null."""
    alert = alert_json(
        row(
            status="resolved",
            acknowledged_by_subject="sub-1",
            acknowledged_by_issuer="https://issuer.example",
            resolved_by_subject=None,
            resolved_by_issuer=None,
        )
    )
    assert alert["acknowledged_by"] == {"sub": "sub-1", "issuer": "https://issuer.example"}
    assert alert["resolved_by"] is None


def test_alert_json_omits_the_subject_the_recipient_may_not_know() -> None:
    """Without a nin the `subject` key is absent; no recipient or contact is null."""
    alert = alert_json(
        row(nin=None, recipient_agency=None, recipient_org=None, contact_org=None, deadline=None)
    )
    assert "subject" not in alert
    assert alert["recipient"] is None
    assert alert["contact"] is None
    assert alert["deadline"] is None


# --- filters and cursors --------------------------------------------------------------------


def test_filters_parse_each_allowed_value() -> None:
    """Absent parameters mean any; status, rule and escalated narrow the list."""
    assert parse_filter(None, None, None) == AlertFilter()
    assert parse_filter("acknowledged", "r", "true") == AlertFilter("acknowledged", "r", True)
    assert parse_filter("open", None, "false").escalated is False


@pytest.mark.parametrize(
    ("status", "rule_id", "escalated", "field"),
    [
        ("closed", None, None, "status"),
        ("OPEN", None, None, "status"),
        (None, "", None, "rule_id"),
        (None, "x" * 201, None, "rule_id"),
        (None, None, "yes", "escalated"),
        (None, None, "1", "escalated"),
    ],
)
def test_bad_filters_name_their_parameter(
    status: str | None, rule_id: str | None, escalated: str | None, field: str
) -> None:
    """Every unusable value is refused with the parameter it came in."""
    with pytest.raises(FilterError) as caught:
        parse_filter(status, rule_id, escalated)
    assert caught.value.field == field


def test_a_cursor_survives_its_round_trip() -> None:
    """Decoding an encoded cursor gives the same position, in UTC."""
    cursor = Cursor(MOMENT, "alert-9")
    token = cursor.encode()
    assert "=" not in token
    assert Cursor.decode(token) == cursor


@pytest.mark.parametrize("token", ["", "not-a-cursor", "WzEsMiwzXQ", "WyIyMDI2LTExLTIzIiwgMV0"])
def test_foreign_cursors_are_refused(token: str) -> None:
    """Anything `encode` did not produce is a CursorError."""
    with pytest.raises(CursorError):
        Cursor.decode(token)


# --- the alert store's record checks --------------------------------------------------------


def test_an_alert_record_becomes_its_row() -> None:
    """The row carries the nin, the recipient and the change time for resolved_at."""
    values = alert_row(record(status="resolved", resolution="cancelled"))
    assert values[0] == "alert-1"
    assert values[4:6] == ("resolved", "cancelled")
    assert values[7] == "12345678901"
    assert values[8:11] == ("municipality", ORG, "coordinator")
    assert values[19] == MOMENT
    assert values[20] is None  # an alert raised before recipient_role existed


@pytest.mark.parametrize(
    ("recipient_role", "recipient", "stored"),
    [
        ("pathway_coordinator", {"agency": "dps", "org_id": ORG}, "pathway_coordinator"),
        (
            "municipal_coordinator",
            {"agency": "municipality", "org_id": ORG},
            "municipal_coordinator",
        ),
        ("a_newer_engines_role", {"agency": "municipality", "org_id": ORG}, None),
        ("source", None, None),
    ],
)
def test_the_recipient_role_is_stored_when_known_and_for_an_organisation(
    recipient_role: str, recipient: dict[str, str] | None, stored: str | None
) -> None:
    """The chain role that chose the recipient is kept for the inbox to name its person; an
    unknown role or one without a recipient organisation is stored as none."""
    values = alert_row(record(recipient_role=recipient_role, recipient=recipient))
    assert values[20] == stored


def test_the_unassigned_queue_has_no_recipient() -> None:
    """A coordinator alert without recipient is stored with recipient NULL, no nin if none."""
    values = alert_row(record(recipient=None, subject=None))
    assert values[7:10] == (None, None, None)


def test_an_operator_action_alert_is_stored_for_the_target_privacy_officer() -> None:
    """The store keeps it as a privacy-officer alert of the target organisation, with no nin."""
    record = operator_action_alert(
        "webhook_changed", OPERATOR_ORG, ORG, "municipality", MOMENT, "action-1"
    )
    values = alert_row(record)
    assert values[3:5] == ("operator_action", "open")
    assert values[6] == f"organisation:{ORG}"
    assert values[7:11] == (None, "municipality", ORG, "privacy_officer")


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "unknown"},
        {"audience": "unknown"},
        {"audience": "privacy_officer", "recipient": None},
        {"alert_id": ""},
        {"subject_key": ""},
    ],
)
def test_self_contradicting_records_are_invalid(changes: dict[str, Any]) -> None:
    """Unknown status or audience and an officer alert to nobody can never be stored."""
    with pytest.raises(InvalidRecordError) as caught:
        alert_row(record(**changes))
    assert "12345678901" not in caught.value.detail


def _on(topic: str) -> Any:
    class Message:  # the one method of confluent_kafka.Message the writer reads
        def topic(self) -> str:
            return topic

    return Message()


def _stored(alert: dict[str, Any], topic: str) -> Any:
    codec = Codec.default()
    decoded = codec.decode(codec.encode("no.carebus.v1.Alert", alert))
    return AlertStoreWriter().row(decoded, _on(topic))


def test_each_alert_topic_takes_only_its_writers_kind() -> None:
    """The SLA engine cannot raise an operator-action alert, nor the registry a deadline alert:
    each is dead-lettered from the other's topic (review M1)."""
    operator_alert = operator_action_alert(
        "webhook_changed", OPERATOR_ORG, ORG, "municipality", MOMENT, "action-1"
    )
    assert _stored(operator_alert, topics.OPERATOR_ALERTS)[3] == "operator_action"
    assert _stored(record(), topics.ALERTS)[3] == "deadline_missed"
    with pytest.raises(InvalidRecordError, match=r"belongs on care\.alerts\.operator\.v1"):
        _stored(operator_alert, topics.ALERTS)
    with pytest.raises(InvalidRecordError, match=r"belong on care\.alerts\.operator\.v1"):
        _stored(record(), topics.OPERATOR_ALERTS)


@pytest.mark.parametrize(
    "changes",
    [
        # Another alert's id: storing it first would keep that (deadline) alert out.
        {"alert_id": "alert-" + "0f" * 16},
        {"event_ids": ["action-1", "action-2"]},
        {"rule_id": "discharge-ready-reply"},
    ],
    ids=["foreign-id", "two-actions", "other-rule"],
)
def test_an_operator_alert_carries_its_actions_own_id(changes: dict[str, Any]) -> None:
    operator_alert = operator_action_alert(
        "webhook_changed", OPERATOR_ORG, ORG, "municipality", MOMENT, "action-1"
    )
    with pytest.raises(InvalidRecordError, match="operator-action alert"):
        _stored({**operator_alert, **changes}, topics.OPERATOR_ALERTS)


# --- fan-out --------------------------------------------------------------------------------


async def _unused_loader(_ids: Any) -> list[Any]:
    return []


async def test_a_change_reaches_only_the_streams_that_may_see_it() -> None:
    """One alert frame per stream allowed to see it; the queue goes to the operator's only."""
    feed = AlertFeed("postgresql://unused/x", _unused_loader)
    mine = feed.subscribe(principal("coordinator", ORG))
    officer = feed.subscribe(principal("privacy_officer", ORG))
    other = feed.subscribe(principal("coordinator", OTHER))
    queue = feed.subscribe(operator("operator"))
    feed.publish([row(), row(alert_id="queued", recipient_org=None, recipient_agency=None)])

    frame = mine.frames.get_nowait()
    assert frame is not None
    assert frame == alert_frame(alert_json(row()))
    assert mine.frames.empty()
    queued = queue.frames.get_nowait()
    assert queued is not None
    assert json.loads(queued.split("data: ", 1)[1])["alert_id"] == "queued"
    assert queue.frames.empty()
    assert officer.frames.empty()
    assert other.frames.empty()

    feed.unsubscribe(mine)
    feed.publish([row()])
    assert mine.frames.empty()


async def test_a_stream_that_falls_behind_is_told_to_close() -> None:
    """When its queue is full the stream's pending frames are replaced by the close marker."""
    subscriber = Subscriber(principal("coordinator", ORG))
    for _ in range(subscriber.frames.maxsize):
        subscriber.offer(RESYNC_FRAME)
    subscriber.offer(RESYNC_FRAME)
    assert subscriber.frames.qsize() == 1
    assert subscriber.frames.get_nowait() is None


async def test_live_streams_are_capped_per_organisation_and_per_process() -> None:
    """Past its organisation's share a caller gets 429, past the process's total 503, each
    with Retry-After; a closed stream makes room again."""
    feed = AlertFeed("postgresql://unused/x", _unused_loader)
    settings = Settings(inbox_max_streams=3, inbox_max_streams_per_org=2)
    mine = principal("coordinator", ORG)
    held = [feed.subscribe(mine) for _ in range(2)]
    with pytest.raises(ApiError) as refused:
        admit_stream(feed, mine, settings)
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "30"}
    other = principal("coordinator", OTHER)
    admit_stream(feed, other, settings)  # another organisation still has its share
    feed.subscribe(other)
    with pytest.raises(ApiError) as full:
        admit_stream(feed, principal("privacy_officer", OTHER), settings)
    assert full.value.status == 503
    feed.unsubscribe(held[0])
    admit_stream(feed, mine, settings)


def test_an_alert_frame_is_one_sse_event() -> None:
    """`event: alert`, one `data:` line of JSON, and a blank line."""
    frame = alert_frame({"summary": "two\nlines"})
    assert frame == 'event: alert\ndata: {"summary":"two\\nlines"}\n\n'


def test_an_alert_reads_its_sealed_nin_and_quoted_text_in_clear_or_as_erased() -> None:
    """The inbox opens the nin and the justification its summary quotes: exactly the alert it
    showed before sealing; once the person's key is erased, `subject` null and `erased` true."""
    person = "cd" * 32
    key = DataKey(person, 1, new_data_key())
    sealed_text = seal(key, "emergency.justification", "Fare for liv")
    sealed = row(
        subject_key=person,
        nin=seal(key, "subject.nin", "12345678901"),
        summary=f"Emergency. Justification: {sealed_text}.",
    )
    clear = alert_json(row(subject_key=person, summary="Emergency. Justification: Fare for liv."))

    assert alert_json(opened(sealed, Keyring.of([key]))) == clear
    erased = alert_json(opened(sealed, Keyring.of([DataKey(person, 1, None)])))
    assert (erased["subject"], erased["erased"]) == (None, True)
    assert erased["summary"] == "Emergency. Justification: (erased)."
    assert "erased" not in alert_json(opened(row(), Keyring({})))  # stored before sealing
