"""Alerts the authority rules call for: every party to an emergency, and operator actions."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carebus.domain.alerts import (
    OPERATOR_ACTION_ESCALATION,
    OPERATOR_ACTIONS,
    AlertContext,
    build_alerts,
    operator_action_alert,
)
from carebus.domain.events import EXAMPLE_PAYLOADS, rfc3339
from carebus.domain.obligations import SlaState, observe
from carebus.domain.policy import Policy
from carebus.domain.records import AlertJson
from carebus.domain.routing import Member, PersonState, route
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.codec import Codec
from carebus.wire.policy_files import load_policy, load_rules
from services.registry.operator import REGISTER_ACTIONS
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
    team={COORDINATOR: Member("municipality", {"registry:test": "coordinator"})},
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


def emergency_alerts(record: dict[str, Any], policy: Policy = POLICY) -> list[AlertJson]:
    context = AlertContext(T0 + timedelta(minutes=1), ROUTING, policy, RULES.version)
    alerts = observe(SlaState(), record, RULES, context)
    return [alert for alert in alerts if alert["rule_id"] == "emergency_disclosure"]


def by_recipient(alerts: list[AlertJson]) -> dict[str, AlertJson]:
    return {alert["recipient"]["org_id"]: alert for alert in alerts if alert["recipient"]}


# --- emergency: the source and every organisation routing delivered it to --------------------

CARE_TEAM = {"agency": "municipality", "org_id": COORDINATOR}
HOME_MUNICIPALITY = {"agency": "municipality", "org_id": HOME}


def test_an_emergency_alerts_every_organisation_it_reached() -> None:
    """One privacy-officer alert per organisation: the source first, then by org_id everyone
    routing delivered the emergency to: the named recipients, the care team and the home
    municipality."""
    alerts = emergency_alerts(emergency_event(recipients=[POLICE, NAV]))
    assert [a["recipient"] for a in alerts] == [DPS, NAV, HOME_MUNICIPALITY, CARE_TEAM, POLICE]
    assert {a["audience"] for a in alerts} == {"privacy_officer"}
    assert {a["kind"] for a in alerts} == {"emergency_disclosure"}
    assert all(a["event_ids"] == ["dis-9"] for a in alerts)
    # Everyone contacts the DPS, which made the disclosure; its own privacy officer no one.
    assert [a["contact"] for a in alerts] == [None, DPS, DPS, DPS, DPS]
    assert len({a["alert_id"] for a in alerts}) == 5


@pytest.mark.parametrize(
    "routing",
    [
        ROUTING,
        PersonState(),
        PersonState(home_municipality=HOME),
        PersonState(team={NAV["org_id"]: Member("nav", {"registry:test": "participant"})}),
        PersonState(team={DPS["org_id"]: Member("dps", {"registry:test": "participant"})}),
    ],
)
def test_the_alerted_organisations_are_routings_emergency_recipients(
    routing: PersonState,
) -> None:
    """Besides the source, exactly the recipients of routing's emergency deliveries are alerted."""
    record = emergency_event(recipients=[POLICE])
    context = AlertContext(T0, routing, POLICY, RULES.version)
    alerts = observe(SlaState(), record, RULES, context)
    alerted = [a["recipient"] for a in alerts if a["rule_id"] == "emergency_disclosure"]
    delivered = [
        d["recipient"]
        for d in route(record, routing, POLICY, T0).deliveries
        if d["basis"] == "emergency"
    ]
    assert alerted == [DPS, *sorted(delivered, key=lambda r: r["org_id"])]


def test_emergency_alert_ids_are_deterministic_and_the_sources_is_unchanged() -> None:
    """The same event gives the same ids; adding a recipient leaves the others' ids alone."""
    first = by_recipient(emergency_alerts(emergency_event(recipients=[POLICE])))
    again = by_recipient(emergency_alerts(emergency_event(recipients=[POLICE, NAV])))
    for org_id in (DPS["org_id"], POLICE["org_id"], HOME, COORDINATOR):
        assert first[org_id]["alert_id"] == again[org_id]["alert_id"]
    assert again[NAV["org_id"]]["alert_id"] not in {a["alert_id"] for a in first.values()}
    assert emergency_alerts(emergency_event()) == emergency_alerts(emergency_event())


def test_a_recipient_named_twice_or_the_source_named_is_alerted_once() -> None:
    """Each organisation gets one alert however often the emergency names it."""
    alerts = emergency_alerts(emergency_event(recipients=[POLICE, POLICE, DPS, CARE_TEAM]))
    assert [a["recipient"] for a in alerts] == [DPS, HOME_MUNICIPALITY, CARE_TEAM, POLICE]


def test_every_recipient_alert_is_audited_as_an_emergency_disclosure() -> None:
    """Each recipient learns the person from its alert: a Disclosure on basis emergency."""
    alerts = by_recipient(emergency_alerts(emergency_event()))
    for recipient in (POLICE, CARE_TEAM, HOME_MUNICIPALITY):
        alert = alerts[recipient["org_id"]]
        assert alert["subject"] == {"nin": NIN}
        audit = alert["disclosure"]
        assert audit["audit_id"] == alert["alert_id"]
        assert (audit["basis"], audit["emergency"], audit["decision"]) == (
            "emergency",
            True,
            "delivered",
        )
        assert audit["recipient"] == recipient
        assert audit["rule_id"] == "sla:emergency_disclosure"
    # The source's own event tells it nothing new: not a disclosure.
    assert "disclosure" not in alerts[DPS["org_id"]]


def test_the_source_reads_every_recipient_and_a_recipient_only_itself() -> None:
    """The source's privacy officer reviews the whole disclosure; a recipient's is not told who
    else cares for the person."""
    alerts = by_recipient(emergency_alerts(emergency_event()))
    source = alerts[DPS["org_id"]]["summary"]
    for org_id in (POLICE["org_id"], HOME, COORDINATOR):
        assert org_id in source
    police = alerts[POLICE["org_id"]]["summary"]
    assert "disclosed in an emergency to your organisation." in police
    assert COORDINATOR not in police
    assert HOME not in police
    assert "Risk to life" in police


def test_an_emergency_routing_withholds_alerts_the_source_only() -> None:
    """Without an emergency grant for the event type routing delivers nothing: no recipient
    received data to review, and the source's alert says the disclosure reached nobody."""
    withholding = Policy(POLICY.version, POLICY.rules, emergency={})
    (source,) = emergency_alerts(emergency_event(), withholding)
    assert source["recipient"] == DPS
    assert "disclosure" not in source
    assert "disclosed in an emergency to no organisation" in source["summary"]


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
    record = action_alert(action="gp_set", subject_key=SUBJECT_KEY)
    assert record["subject_key"] == SUBJECT_KEY
    assert record["subject"] is None
    CODEC.encode(ALERT, record)


@pytest.mark.parametrize("action", [*OPERATOR_ACTIONS, "token_rotated"])
def test_every_action_has_plain_words(action: str) -> None:
    """Known actions have their sentence; an unknown one is still alerted, by its name."""
    summary = action_alert(action=action)["summary"]
    assert summary.startswith(f"The carebus operator (organisation {OPERATOR_ORG}) ")
    assert OPERATOR_ACTIONS.get(action, action) in summary


def registry_calls(name: str) -> list[ast.Call]:
    """Every call of `name` (a function or a method) in services/registry/app.py."""
    tree = ast.parse((PROJECT_ROOT / "services" / "registry" / "app.py").read_text())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and name in (getattr(node.func, "id", None), getattr(node.func, "attr", None))
    ]


def registry_action_names() -> set[str]:
    """The action names the registry records: each `operator.touched` call's literal action,
    and the register actions `operator.register_changed` records for the registers `_register`
    is called with (set and cleared)."""
    literal: set[str] = set()
    for call in registry_calls("touched"):
        action = call.args[1]
        assert isinstance(action, ast.Constant), f"line {call.lineno}: name the action literally"
        assert isinstance(action.value, str), f"line {call.lineno}: an action is a name"
        literal.add(action.value)
    registers: set[str] = set()
    for call in registry_calls("_register"):
        register = call.args[3]
        assert isinstance(register, ast.Constant), f"line {call.lineno}: name the register"
        assert isinstance(register.value, str), f"line {call.lineno}: a register is a name"
        registers.add(register.value)
    assert registers, "no _register call found"
    assert registers <= {register for register, _ in REGISTER_ACTIONS}, "a register without names"
    return literal | {
        REGISTER_ACTIONS[register, named] for register in registers for named in (True, False)
    }


def test_every_action_the_registry_records_has_its_own_sentence() -> None:
    """Each action name the registry records is worded in OPERATOR_ACTIONS, each differently,
    and nothing is worded that the registry never records."""
    names = registry_action_names()
    assert names >= {"token_issued", "organisation_registered", "webhook_registered"}
    assert names == set(OPERATOR_ACTIONS)
    assert len(set(OPERATOR_ACTIONS.values())) == len(OPERATOR_ACTIONS)
    for name in names:
        assert f"took the action {name}" not in action_alert(action=name)["summary"]


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
