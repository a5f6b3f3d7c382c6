"""Alerts the authority rules call for: every party to an emergency, and operator actions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carebus.alerts import (
    OPERATOR_ACTION_ESCALATION,
    OPERATOR_ACTIONS,
    AlertContext,
    build_alerts,
    operator_action_alert,
)
from carebus.codec import Codec
from carebus.config import PROJECT_ROOT
from carebus.events import EXAMPLE_PAYLOADS, rfc3339
from carebus.obligations import SlaState, observe
from carebus.policy import Policy, load_policy
from carebus.routing import Member, PersonState
from carebus.sla import load_rules
from services.sla.app import alert_record

RULES = load_rules(PROJECT_ROOT / "policy" / "sla.yaml")
POLICY = load_policy(PROJECT_ROOT / "policy" / "routing.yaml")
CODEC = Codec.default()
ALERT = "no.carebus.v1.Alert"
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
NIN = "12345678901"
SUBJECT_KEY = "7" * 64
DPS = {"agency": "dps", "org_id": "974705788"}
POLICE = {"agency": "police", "org_id": "974760673"}
NAV = {"agency": "nav", "org_id": "889640790"}
COORDINATOR = "940493047"
HOME = "940493021"
OPERATOR_ORG = "918000008"
ROUTING = PersonState(
    team={COORDINATOR: Member("municipality", "coordinator", frozenset({"registry"}))},
    home_municipality=HOME,
)


def emergency_event(
    event_type: str = "discharge", recipients: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """An event from the DPS that requests an emergency disclosure to `recipients`."""
    return {
        "event_id": "dis-9",
        "event_type": event_type,
        "occurred_at": rfc3339(T0),
        "source": {**DPS, "system": "test"},
        "subject": {"nin": NIN},
        "subject_key": SUBJECT_KEY,
        "payload": dict(EXAMPLE_PAYLOADS[event_type]),
        "emergency": {
            "justification": "Risk to life",
            "accountable": "Overlege",
            "recipients": [POLICE] if recipients is None else recipients,
        },
    }


def emergency_alerts(record: dict[str, Any], policy: Policy = POLICY) -> list[dict[str, Any]]:
    context = AlertContext(T0 + timedelta(minutes=1), ROUTING, policy, RULES.version)
    _, alerts = observe(SlaState(), record, RULES, context)
    return [alert for alert in alerts if alert["rule_id"] == "emergency_disclosure"]


def by_recipient(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {alert["recipient"]["org_id"]: alert for alert in alerts}


# --- emergency: the source and every named recipient ----------------------------------------


def test_an_emergency_alerts_the_privacy_officer_of_the_source_and_of_each_recipient() -> None:
    """One privacy-officer alert per organisation: the source first, then each one named."""
    alerts = emergency_alerts(emergency_event(recipients=[POLICE, NAV]))
    assert [a["recipient"] for a in alerts] == [DPS, POLICE, NAV]
    assert {a["audience"] for a in alerts} == {"privacy_officer"}
    assert {a["kind"] for a in alerts} == {"emergency_disclosure"}
    assert all(a["event_ids"] == ["dis-9"] for a in alerts)
    assert all(a["contact"] == DPS for a in alerts)
    assert len({a["alert_id"] for a in alerts}) == 3


def test_emergency_alert_ids_are_deterministic_and_the_sources_is_unchanged() -> None:
    """The same event gives the same ids; adding a recipient leaves the others' ids alone."""
    first = by_recipient(emergency_alerts(emergency_event(recipients=[POLICE])))
    again = by_recipient(emergency_alerts(emergency_event(recipients=[POLICE, NAV])))
    assert first[DPS["org_id"]]["alert_id"] == again[DPS["org_id"]]["alert_id"]
    assert first[POLICE["org_id"]]["alert_id"] == again[POLICE["org_id"]]["alert_id"]
    assert again[NAV["org_id"]]["alert_id"] not in {a["alert_id"] for a in first.values()}


def test_a_recipient_named_twice_or_the_source_named_is_alerted_once() -> None:
    """Each organisation gets one alert however often the emergency names it."""
    alerts = emergency_alerts(emergency_event(recipients=[POLICE, POLICE, DPS]))
    assert [a["recipient"] for a in alerts] == [DPS, POLICE]


def test_a_recipient_alert_is_audited_as_an_emergency_disclosure() -> None:
    """The recipient learns the person from its alert: a Disclosure on basis emergency."""
    alerts = by_recipient(emergency_alerts(emergency_event()))
    police = alerts[POLICE["org_id"]]
    assert police["subject"] == {"nin": NIN}
    audit = police["disclosure"]
    assert audit["audit_id"] == police["alert_id"]
    assert (audit["basis"], audit["emergency"], audit["decision"]) == (
        "emergency",
        True,
        "delivered",
    )
    assert audit["recipient"] == POLICE
    assert audit["rule_id"] == "sla:emergency_disclosure"
    # The source's own event tells it nothing new: not a disclosure.
    assert "disclosure" not in alerts[DPS["org_id"]]


def test_a_recipient_routing_gives_nothing_gets_a_neutral_alert() -> None:
    """Without an emergency grant for the event type the recipient is alerted without the nin."""
    withholding = Policy(POLICY.version, POLICY.rules, emergency={})
    police = by_recipient(emergency_alerts(emergency_event(), withholding))[POLICE["org_id"]]
    assert police["subject"] is None
    assert "disclosure" not in police
    assert NIN not in json.dumps(police)
    assert "not disclosed" in police["summary"]


def test_every_emergency_alert_encodes_as_an_alert_record() -> None:
    """The engine's records for all parties are valid no.carebus.v1.Alert."""
    for alert in emergency_alerts(emergency_event(recipients=[POLICE, NAV])):
        CODEC.encode(ALERT, alert_record(alert))


def test_a_rule_without_emergency_does_not_alert_the_named_recipients() -> None:
    """Only the emergency rule reads the emergency's recipients; deadline rules keep theirs."""
    rule = RULES.rule("health_info.after_admission")
    assert rule is not None
    record = emergency_event("admission")
    context = AlertContext(T0, ROUTING, POLICY, RULES.version)
    alerts = build_alerts(rule, record, ["dis-9"], rfc3339(T0), context)
    assert POLICE not in [a["recipient"] for a in alerts]


# --- operator actions -----------------------------------------------------------------------


def action_alert(**changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "action": "token_issued",
        "operator_org": OPERATOR_ORG,
        "target_org": HOME,
        "target_agency": "municipality",
        "at": T0,
        "action_id": "5f0c8a52-7d8c-4f3e-9a57-0d6a1c3e2b10",
    }
    arguments.update(changes)
    return operator_action_alert(**arguments)


def test_an_operator_action_alert_is_a_valid_alert_record() -> None:
    """It encodes as no.carebus.v1.Alert and decodes to the same record."""
    record = action_alert()
    encoded = CODEC.encode(ALERT, record)
    decoded = CODEC.decode(encoded)
    assert decoded.schema_name == ALERT
    assert decoded.record["alert_id"] == record["alert_id"]
    assert decoded.record["kind"] == "operator_action"


def test_an_operator_action_alerts_the_target_organisations_privacy_officer() -> None:
    """Addressed to the target organisation's privacy officer, open, naming no person."""
    record = action_alert()
    assert record["recipient"] == {"agency": "municipality", "org_id": HOME}
    assert (record["audience"], record["status"], record["rule_id"]) == (
        "privacy_officer",
        "open",
        "operator_action",
    )
    assert record["subject"] is None
    assert record["subject_key"] == f"organisation:{HOME}"
    assert record["event_ids"] == ["5f0c8a52-7d8c-4f3e-9a57-0d6a1c3e2b10"]
    assert record["breached_at"] == record["changed_at"] == T0
    assert record["escalate_at"] == T0 + OPERATOR_ACTION_ESCALATION
    assert record["summary"].startswith(
        f"The carebus operator (organisation {OPERATOR_ORG}) issued an API token for your "
        "organisation at 2026-11-23 09:00 (Oslo)."
    )


def test_the_alert_id_comes_from_the_action_and_the_target() -> None:
    """The same action gives the same id; another action or another target another id."""
    assert action_alert()["alert_id"] == action_alert(at=T0 + timedelta(hours=1))["alert_id"]
    assert action_alert()["alert_id"] != action_alert(action_id="other")["alert_id"]
    assert action_alert()["alert_id"] != action_alert(target_org="974705788")["alert_id"]


def test_an_action_about_a_person_is_keyed_by_the_person() -> None:
    """A register entry's alert carries the subject key, still no nin."""
    record = action_alert(action="gp_list_changed", subject_key=SUBJECT_KEY)
    assert record["subject_key"] == SUBJECT_KEY
    assert record["subject"] is None
    CODEC.encode(ALERT, record)


@pytest.mark.parametrize("action", [*OPERATOR_ACTIONS, "token_rotated"])
def test_every_action_has_plain_words(action: str) -> None:
    """Known actions have their sentence; an unknown one is still alerted, by its name."""
    summary = action_alert(action=action)["summary"]
    assert summary.startswith(f"The carebus operator (organisation {OPERATOR_ORG}) ")
    assert OPERATOR_ACTIONS.get(action, action) in summary


@pytest.mark.parametrize(
    ("changes", "argument"),
    [
        ({"action": ""}, "action"),
        ({"action": "Token Issued"}, "action"),
        ({"operator_org": "12345"}, "operator_org"),
        ({"target_org": "abcdefghi"}, "target_org"),
        ({"target_agency": "operator"}, "target_agency"),
        ({"target_agency": "hospital"}, "target_agency"),
        ({"target_org": OPERATOR_ORG}, "target_org"),
        ({"action_id": ""}, "action_id"),
        ({"at": datetime(2026, 11, 23, 8, 0)}, "at"),  # naive: refused
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(
    changes: dict[str, Any], argument: str
) -> None:
    """Anything that could not be stored or shown is a ValueError that names the argument."""
    with pytest.raises(ValueError, match=f"^{argument}:"):
        action_alert(**changes)
