"""`carebus trace` without a database: the timeline, the JSON document, the SLA and alert roles."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from carebus.domain.alerts import AlertContext, alert_id
from carebus.domain.events import EXAMPLE_PAYLOADS, rfc3339
from carebus.domain.obligations import SlaState, observe
from carebus.domain.routing import PersonState
from carebus.ops.trace import (
    Accepted,
    Alert,
    Decision,
    Delivery,
    EventTrace,
    Sla,
    SlaEffect,
    Stored,
    Webhook,
    alert_role,
    hops,
    render,
    sla_effects,
    trace_json,
)
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.policy_files import load_policy, load_rules

RULES = load_rules(PROJECT_ROOT / "policy" / "sla.yaml")
POLICY = load_policy(PROJECT_ROOT / "policy" / "routing.yaml")
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
EVENT_ID = "dps-974705788-2026-000123"
DPS = "974705788"
HOME = "940493021"
POLICE = "974760673"
SUBJECT_KEY = "5" * 64
NIN = "12345678901"


def decision(agency: str | None, org: str | None, verdict: str, **changes: Any) -> Decision:
    fields: dict[str, Any] = {
        "decided_at": T0 + 2 * SECOND,
        "decision": verdict,
        "recipient_agency": agency,
        "recipient_org": org,
        "reason": None,
        "basis": None,
        "rule_id": None,
        "policy_version": "2026.1",
        "categories": (),
        "fields": (),
        "delivery_id": None,
        "emergency": False,
    }
    return Decision(**{**fields, **changes})


def delivered_to_home(webhook: Webhook | None = None, *, registered: bool = True) -> Delivery:
    return Delivery(
        delivery_id="d-home",
        recipient_agency="municipality",
        recipient_org=HOME,
        delivered_at=T0 + 3 * SECOND,
        emergency=False,
        webhook_registered=registered,
        webhook=webhook,
    )


def webhook(status: str, **changes: Any) -> Webhook:
    fields: dict[str, Any] = {
        "status": status,
        "attempts": 1,
        "last_status": 200,
        "last_error": None,
        "enqueued_at": T0 + 4 * SECOND,
        "next_attempt_at": T0 + 4 * SECOND,
        "finished_at": T0 + 5 * SECOND,
    }
    return Webhook(**{**fields, **changes})


def alert(**changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": "alert-1",
        "rule_id": "health_info.after_admission",
        "kind": "deadline_missed",
        "role": "raised",
        "status": "open",
        "resolution": None,
        "recipient_agency": "municipality",
        "recipient_org": HOME,
        "audience": "coordinator",
        "deadline": T0 + 24 * 3600 * SECOND,
        "breached_at": T0 + 86_401 * SECOND,
        "escalated": False,
        "escalated_at": None,
        "acknowledged_at": None,
        "resolved_at": None,
    }
    return Alert(**{**fields, **changes})


def full_trace(**changes: Any) -> EventTrace:
    fields: dict[str, Any] = {
        "event_id": EVENT_ID,
        "source_org": DPS,
        "subject_key": SUBJECT_KEY,
        "accepted": Accepted(T0, "admission", SUBJECT_KEY),
        "stored": Stored(
            event_type="admission",
            occurred_at=T0 - 60 * SECOND,
            received_at=T0,
            source_agency="dps",
            source_system="DIPS",
            subject_key=SUBJECT_KEY,
            kafka_partition=2,
            kafka_offset=17,
            stored_at=T0 + SECOND,
        ),
        "decisions": (
            decision(
                "municipality",
                HOME,
                "delivered",
                basis="statutory",
                rule_id="admission.home_municipality",
                categories=("logistics",),
                fields=("needs_municipal_services", "home_municipality_org"),
                delivery_id="d-home",
            ),
            decision("police", POLICE, "withheld", reason="not_permitted"),
        ),
        "deliveries": (delivered_to_home(webhook("delivered")),),
        "sla": Sla(
            applied=True,
            effects=(
                SlaEffect(
                    effect="opened",
                    rule_id="health_info.after_admission",
                    obligation_id="health_info.after_admission:abc",
                    status="open",
                    trigger_event_id=EVENT_ID,
                    deadline=T0 + 24 * 3600 * SECOND,
                    breached_at=None,
                    closed_at=None,
                ),
            ),
        ),
        "alerts": (alert(acknowledged_at=T0 + 90_000 * SECOND),),
    }
    return EventTrace(**{**fields, **changes})


def stages(trace: EventTrace) -> list[str]:
    return [hop.stage for hop in hops(trace)]


def test_every_hop_is_one_line_in_pipeline_order() -> None:
    """A full trace lists received, stored, routed, delivered, webhook, sla, alerted, acked."""
    assert stages(full_trace()) == [
        "received",
        "stored",
        "routed",
        "routed",
        "delivered",
        "webhook",
        "sla",
        "alerted",
        "acknowledged",
    ]


def test_render_shows_times_in_utc_and_the_values_of_each_hop() -> None:
    """Each line starts with the hop's UTC time (blank where none is kept) and names the values."""
    text = render(full_trace())
    lines = text.splitlines()
    assert lines[0] == f"event {EVENT_ID} from {DPS}: admission, subject_key {SUBJECT_KEY}"
    assert lines[1].startswith("2026-11-23T08:00:00.000Z  received")
    assert "partition 2 offset 17" in lines[2]
    assert "occurred 2026-11-23T07:59:00.000Z" in lines[2]
    assert "(DIPS)" in lines[2]
    assert (
        f"municipality {HOME}: delivered on statutory basis, rule admission.home_municipality, "
        "policy 2026.1; categories logistics; fields needs_municipal_services, "
        "home_municipality_org"
    ) in lines[3]
    assert f"police {POLICE}: withheld (not_permitted), rule -, policy 2026.1" in lines[4]
    assert f"municipality {HOME}: delivery d-home in the audit store" in lines[5]
    assert lines[6].startswith("2026-11-23T08:00:05.000Z  webhook")
    assert "delivered (HTTP 200) after 1 attempt" in lines[6]
    assert lines[7].startswith(" " * 24 + "  sla ")
    assert "opened obligation health_info.after_admission:abc" in lines[7]
    assert "deadline 2026-11-24T08:00:00.000Z: open" in lines[7]
    assert (
        f"alert-1 (health_info.after_admission, deadline_missed) to municipality {HOME}"
        in (lines[8])
    )
    assert "[coordinator]" in lines[8]
    assert lines[9].endswith("acknowledged alert-1")


def test_an_event_only_the_gateway_has_says_what_is_missing() -> None:
    """Accepted but not stored: every later hop says it is not there (or not known)."""
    trace = full_trace(stored=None, decisions=(), deliveries=(), sla=Sla(None, ()), alerts=())
    text = render(trace)
    assert "gateway accepted admission from 974705788" in text
    assert "not in the event store" in text
    assert "no routing decision stored" in text
    assert "not known whether the SLA engine applied it" in text
    assert text.splitlines()[0].endswith(f"admission, subject_key {SUBJECT_KEY}")


def test_an_event_published_around_the_gateway_says_so() -> None:
    """Stored but not in the ledger: the received line says the gateway has no row."""
    assert "not in the gateway's ledger" in render(full_trace(accepted=None))


def test_no_candidate_is_one_routing_line() -> None:
    """An event with no candidate recipient shows that, with the policy version."""
    trace = full_trace(decisions=(decision(None, None, "no_candidate"),), deliveries=())
    assert "no candidate recipient (policy 2026.1)" in render(trace)


def test_a_delivered_decision_without_its_delivery_row_is_shown_missing() -> None:
    """The router decided to deliver but the audit store has no delivery row (yet)."""
    trace = full_trace(deliveries=())
    assert f"municipality {HOME}: delivery d-home not in the audit store" in render(trace)


def test_webhook_hand_off_states() -> None:
    """Each state of the webhook queue, and no webhook at all, reads as what it means."""

    def line(delivery: Delivery) -> str:
        [hop] = [h for h in hops(full_trace(deliveries=(delivery,))) if h.stage == "webhook"]
        return hop.detail

    assert line(delivered_to_home(None, registered=False)).endswith(
        "no webhook; available via GET /v1/deliveries"
    )
    assert line(delivered_to_home(None, registered=True)).endswith("not in the webhook queue")
    dead = webhook("dead", attempts=7, last_status=410, last_error="webhook_rejected: HTTP 410")
    assert line(delivered_to_home(dead)).endswith(
        "dead after 7 attempts: webhook_rejected: HTTP 410"
    )
    pending = webhook(
        "pending",
        attempts=2,
        last_status=503,
        last_error="HTTP 503 (text/plain)",
        next_attempt_at=T0 + 60 * SECOND,
        finished_at=None,
    )
    assert line(delivered_to_home(pending)).endswith(
        "pending after 2 attempts, last HTTP 503 (text/plain); "
        "next attempt 2026-11-23T08:01:00.000Z"
    )
    behind = webhook("pending", attempts=0, next_attempt_at=None, finished_at=None)
    assert line(delivered_to_home(behind)).endswith(
        "queued behind an earlier delivery about the person"
    )


def test_sla_lines_for_each_effect_and_state() -> None:
    """Not applied, applied with nothing, answered (closed) and counted read differently."""
    assert "not applied by the SLA engine yet" in render(full_trace(sla=Sla(False, ())))
    assert "applied; it opened, answered and counted in no rule" in render(
        full_trace(sla=Sla(True, ()))
    )
    fulfils = SlaEffect(
        "fulfils",
        "health_info.after_admission",
        "health_info.after_admission:abc",
        "closed",
        "dps-1",
        None,
        None,
        T0 + 7 * SECOND,
    )
    counted = SlaEffect(
        "counted", "care_team_meeting.repeated_incidents", None, None, None, None, None, None
    )
    breached_then_closed = SlaEffect(
        "opened",
        "health_info.after_admission",
        "health_info.after_admission:abc",
        "closed",
        EVENT_ID,
        T0 + 3 * SECOND,
        T0 + 4 * SECOND,
        T0 + 7 * SECOND,
    )
    effects = (breached_then_closed, fulfils, counted)
    sla_hops = [h for h in hops(full_trace(sla=Sla(True, effects))) if h.stage == "sla"]
    assert [(h.at, h.detail) for h in sla_hops] == [
        (
            None,
            "opened obligation health_info.after_admission:abc, deadline "
            "2026-11-23T08:00:03.000Z: breached 2026-11-23T08:00:04.000Z, "
            "closed 2026-11-23T08:00:07.000Z",
        ),
        (
            T0 + 7 * SECOND,
            "fulfils obligation health_info.after_admission:abc of dps-1: "
            "closed 2026-11-23T08:00:07.000Z",
        ),
        (None, "counted in window rule care_team_meeting.repeated_incidents"),
    ]


def test_alert_lines_follow_its_life() -> None:
    """Raised, escalated, acknowledged and resolved each get a line at their own time."""
    lived = alert(
        escalated=True,
        escalated_at=T0 + 10 * SECOND,
        acknowledged_at=T0 + 20 * SECOND,
        status="resolved",
        resolution="resolved_by_recipient",
        resolved_at=T0 + 30 * SECOND,
        recipient_agency=None,
        recipient_org=None,
    )
    alert_hops = [h for h in hops(full_trace(alerts=(lived,))) if h.at and h.at > T0 + 9 * SECOND]
    assert [h.stage for h in alert_hops] == ["alerted", "escalated", "acknowledged", "resolved"]
    assert "to the unassigned queue" in alert_hops[0].detail
    assert alert_hops[0].detail.endswith(": resolved, escalated")
    assert alert_hops[3].detail == "alert-1 (resolved_by_recipient)"


def test_an_alert_resolved_by_the_event_is_one_resolved_line() -> None:
    """A late fulfilment's trace shows the alert it resolved, not the alert's whole life."""
    resolved = alert(
        role="resolved", status="resolved", resolution="fulfilled_late", resolved_at=T0
    )
    [hop] = [h for h in hops(full_trace(alerts=(resolved,))) if h.stage in {"alerted", "resolved"}]
    assert hop.stage == "resolved"
    assert hop.detail.endswith("resolved by this event (fulfilled_late)")


def test_json_is_the_structured_trace_with_utc_times() -> None:
    """The JSON document has every field of the trace, times as RFC 3339 UTC strings."""
    document = json.loads(json.dumps(trace_json(full_trace())))
    assert document["event_id"] == EVENT_ID
    assert document["accepted"]["accepted_at"] == "2026-11-23T08:00:00.000Z"
    assert document["stored"]["kafka_offset"] == 17
    assert [d["decision"] for d in document["decisions"]] == ["delivered", "withheld"]
    assert document["decisions"][0]["fields"] == [
        "needs_municipal_services",
        "home_municipality_org",
    ]
    assert document["deliveries"][0]["webhook"]["status"] == "delivered"
    assert document["sla"]["effects"][0]["effect"] == "opened"
    assert document["alerts"][0]["acknowledged_at"] == "2026-11-24T09:00:00.000Z"
    assert set(document) == {f.name for f in dataclasses.fields(EventTrace)}


# --- SLA state and alert roles ----------------------------------------------------------------


def sla_event(event_type: str, event_id: str, occurred: datetime, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": rfc3339(occurred),
        "source": {"agency": "dps", "org_id": DPS, "system": "test"},
        "subject": {"nin": NIN},
        "subject_key": SUBJECT_KEY,
        "payload": {**EXAMPLE_PAYLOADS[event_type], **payload},
    }


def engine_state(*events: dict[str, Any]) -> dict[str, Any]:
    """The JSON state the SLA engine keeps after `events` (the real `observe`)."""
    routing = PersonState(home_municipality=HOME)
    state = SlaState()
    for event in events:
        context = AlertContext(T0 + SECOND, routing, POLICY, RULES.version)
        observe(state, event, RULES, context)
    return state.to_json()


def as_stored(event: dict[str, Any]) -> dict[str, Any]:
    """The event as the trace reads it from the event store (no source, no subject)."""
    return {key: event[key] for key in ("event_id", "event_type", "occurred_at", "payload")}


ADMISSION = sla_event(
    "admission", "dps-1", T0, needs_municipal_services=True, housing_status="stable"
)
HEALTH_INFO = sla_event("health_info_sent", "dps-2", T0 + SECOND, admission_event_id="dps-1")


def test_sla_effects_of_a_trigger_are_the_obligations_it_opened() -> None:
    """The admission opened the health-information obligation; its deadline comes from the
    due scan's index when the obligation is in it."""
    state = engine_state(ADMISSION)
    [oid] = state["obligations"]
    indexed = T0 + 5 * SECOND
    [effect] = sla_effects(state, "dps-1", DPS, as_stored(ADMISSION), RULES, {oid: indexed})
    assert (effect.effect, effect.rule_id, effect.status) == (
        "opened",
        "health_info.after_admission",
        "open",
    )
    assert effect.obligation_id == oid
    assert effect.deadline == indexed
    [unindexed] = sla_effects(state, "dps-1", DPS, as_stored(ADMISSION), RULES, {})
    assert unindexed.deadline == T0 + timedelta(hours=24)


def test_the_same_event_id_from_another_source_opened_nothing() -> None:
    """event_id is unique per source organisation: another source's id is another event."""
    state = engine_state(ADMISSION)
    assert sla_effects(state, "dps-1", "999999999", None, RULES, {}) == []


def test_sla_effects_of_a_fulfilment_are_the_obligations_it_answers() -> None:
    """health_info_sent fulfils the admission's obligation, which the engine closed."""
    state = engine_state(ADMISSION, HEALTH_INFO)
    [effect] = sla_effects(state, "dps-2", DPS, as_stored(HEALTH_INFO), RULES, {})
    assert (effect.effect, effect.status, effect.trigger_event_id) == ("fulfils", "closed", "dps-1")
    assert effect.closed_at is not None


def test_an_event_before_the_trigger_answers_nothing() -> None:
    """A linking event that occurred before the trigger does not answer it (as in the engine)."""
    state = engine_state(ADMISSION)
    earlier = {**as_stored(HEALTH_INFO), "occurred_at": rfc3339(T0 - SECOND)}
    assert sla_effects(state, "dps-2", DPS, earlier, RULES, {}) == []


def test_a_cancellation_and_a_window_count_are_effects() -> None:
    """A withdrawn discharge-ready notice cancels its obligation; a callout is counted."""
    ready = sla_event("discharge_ready", "dps-3", T0 + SECOND, admission_event_id="dps-1")
    withdrawn = sla_event(
        "discharge_ready_withdrawn", "dps-4", T0 + 2 * SECOND, discharge_ready_event_id="dps-3"
    )
    callout = {
        **sla_event("police_callout", "police-1", T0 + 3 * SECOND),
        "source": {"agency": "police", "org_id": POLICE},
    }
    state = engine_state(ADMISSION, ready, withdrawn, callout)
    [cancels] = sla_effects(state, "dps-4", DPS, as_stored(withdrawn), RULES, {})
    assert (cancels.effect, cancels.rule_id, cancels.status) == (
        "cancels",
        "municipal_reply.discharge_ready",
        "closed",
    )
    [counted] = sla_effects(state, "police-1", POLICE, as_stored(callout), RULES, {})
    assert (counted.effect, counted.rule_id) == ("counted", "care_team_meeting.repeated_incidents")


def test_alert_roles() -> None:
    """Raised by its trigger, resolved by the event appended last, otherwise involved."""
    trigger = {"event_id": "dps-1", "source": {"org_id": DPS}}
    raised = {
        "alert_id": alert_id("health_info.after_admission", trigger, HOME),
        "rule_id": "health_info.after_admission",
        "recipient_org": HOME,
        "status": "resolved",
    }
    assert alert_role(raised, ["dps-1", "dps-2"], "dps-1", DPS) == "raised"
    assert alert_role(raised, ["dps-1", "dps-2"], "dps-2", DPS) == "resolved"
    assert alert_role(raised, ["dps-1"], "dps-1", "999999999") == "involved"
    window = {**raised, "alert_id": "alert-window", "status": "open"}
    assert alert_role(window, ["police-1", "police-2"], "police-2", POLICE) == "involved"
