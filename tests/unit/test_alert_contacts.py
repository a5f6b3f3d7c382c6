"""Every alert says whom to contact, and never the recipient itself; the municipal coordinator,
not the lower organisation number, gets the coordinator's alerts (issue 17, items 4 and 7)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carebus.domain.alerts import AlertContext, build_alerts
from carebus.domain.events import EXAMPLE_PAYLOADS, rfc3339
from carebus.domain.routing import Member, PersonState
from carebus.domain.sla import Rule
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.policy_files import load_policy, load_rules

RULES = load_rules(PROJECT_ROOT / "policy" / "sla.yaml")
POLICY = load_policy(PROJECT_ROOT / "policy" / "routing.yaml")
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
NIN = "12345678901"
DPS = {"agency": "dps", "org_id": "974705788"}
HOME = {"agency": "municipality", "org_id": "940493021"}
# A DPS pathway coordinator whose organisation number is lower than the municipality's.
DPS_NORTH = {"agency": "dps", "org_id": "874705788"}


def rule(rule_id: str) -> Rule:
    found = RULES.rule(rule_id)
    assert found is not None, rule_id
    return found


def trigger(event_type: str, event_id: str = "dr-17", **payload: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": rfc3339(T0),
        "source": {**DPS, "system": "test"},
        "subject": {"nin": NIN},
        "subject_key": "7" * 64,
        "payload": {**EXAMPLE_PAYLOADS[event_type], **payload},
    }


def alerts_for(rule_id: str, event: dict[str, Any], routing: PersonState) -> list[Any]:
    context = AlertContext(T0 + timedelta(hours=5), routing, POLICY, RULES.version)
    return build_alerts(rule(rule_id), event, [event["event_id"]], rfc3339(T0), context)


def by_recipient(alerts: list[Any]) -> dict[str | None, Any]:
    return {(a["recipient"] or {}).get("org_id"): a for a in alerts}


def test_the_home_municipality_is_never_told_to_contact_itself() -> None:
    """The rule's contact is the home municipality; the home municipality's own alert names the
    DPS that sent the notice instead, and the DPS's alert names the municipality."""
    routing = PersonState(
        team={HOME["org_id"]: Member("municipality", {"registry:test": "coordinator"})},
        home_municipality=HOME["org_id"],
    )
    alerts = by_recipient(
        alerts_for("municipal_reply.discharge_ready", trigger("discharge_ready"), routing)
    )
    assert set(alerts) == {HOME["org_id"], DPS["org_id"]}
    assert alerts[HOME["org_id"]]["contact"] == DPS
    assert alerts[DPS["org_id"]]["contact"] == HOME
    for alert in alerts.values():
        assert alert["contact"]["org_id"] != alert["recipient"]["org_id"]
        assert "dr-17" in alert["summary"]  # which case: distinct alerts read differently


def test_an_alert_whose_contact_is_its_own_recipient_says_the_step_is_its_own() -> None:
    """A rule whose contact is the source, alerting the source: no contact, and the summary says
    the next step is the recipient's own rather than "contact" its own organisation."""
    routing = PersonState(home_municipality=HOME["org_id"])
    alerts = by_recipient(alerts_for("health_info.after_admission", trigger("admission"), routing))
    own = alerts[DPS["org_id"]]
    assert own["contact"] is None
    assert "The next step is yours." in own["summary"]
    assert f"Contact dps {DPS['org_id']}" not in own["summary"]


def test_a_recipient_that_may_not_know_the_person_gets_a_reference_and_what_to_do() -> None:
    """Routing withholds the person from an unassigned queue: the alert names no one, names an
    organisation that knows the person (never the recipient) and the event to quote."""
    routing = PersonState()  # no team, no home municipality: the coordinator chain is unassigned
    alerts = alerts_for("municipal_reply.discharge_ready", trigger("discharge_ready"), routing)
    unassigned = by_recipient(alerts)[None]
    assert unassigned["subject"] is None
    assert unassigned["contact"] == DPS
    assert "quote event dr-17" in unassigned["summary"]
    assert "consent" in unassigned["summary"]
    assert NIN not in unassigned["summary"]


def test_the_municipal_coordinator_gets_the_alert_whatever_the_organisation_numbers() -> None:
    """With a municipal coordinator and a DPS pathway coordinator of a lower organisation number,
    the coordinator's alert goes to the municipality; with the DPS's alone, to the DPS."""
    both = PersonState(
        team={
            DPS_NORTH["org_id"]: Member("dps", {"registry:test": "coordinator"}),
            HOME["org_id"]: Member("municipality", {"registry:test": "coordinator"}),
        },
    )
    assert DPS_NORTH["org_id"] < HOME["org_id"]
    # homeless admission: recipients [[coordinator, home_municipality, unassigned], [source]]
    event = trigger("admission", event_id="adm-17", housing_status="homeless")
    recipients = [
        a["recipient"] for a in alerts_for("housing_work.homeless_admission", event, both)
    ]
    assert HOME in recipients
    assert DPS_NORTH not in recipients

    only_dps = PersonState(
        team={DPS_NORTH["org_id"]: Member("dps", {"registry:test": "coordinator"})},
    )
    recipients = [
        a["recipient"] for a in alerts_for("housing_work.homeless_admission", event, only_dps)
    ]
    assert DPS_NORTH in recipients


# --- the two coordinator roles (issue 17, item 4) ---------------------------------------------

LOW, HIGH = "810000002", "990000003"


@pytest.mark.parametrize(("municipal", "pathway"), [(LOW, HIGH), (HIGH, LOW)])
def test_what_the_municipality_owes_goes_to_its_coordinator_what_the_dps_owes_to_the_pathway_one(
    municipal: str, pathway: str
) -> None:
    """A municipal coordinator and a DPS pathway coordinator, whichever has the lower
    organisation number: the homeless admission's housing work (the municipality's) alerts the
    municipal coordinator only; the epikrise (the DPS's) alerts the source and copies the
    pathway coordinator, each alert saying the role that chose it."""
    routing = PersonState(
        team={
            municipal: Member("municipality", {"registry:test": "coordinator"}),
            pathway: Member("dps", {"registry:test": "pathway_coordinator"}),
        },
    )
    homeless = trigger("admission", event_id="adm-4", housing_status="homeless")
    housing = alerts_for("housing_work.homeless_admission", homeless, routing)
    assert [(a["recipient"]["org_id"], a["recipient_role"]) for a in housing] == [
        (municipal, "municipal_coordinator")
    ]
    epikrise = alerts_for("epikrise.after_discharge", trigger("discharge", "dis-4"), routing)
    assert [(a["recipient"]["org_id"], a["recipient_role"]) for a in epikrise] == [
        (DPS["org_id"], "source"),
        (pathway, "pathway_coordinator"),
    ]


def test_a_pathway_coordinator_never_gets_what_the_municipality_owes() -> None:
    """With only a DPS pathway coordinator in the team, a municipal obligation goes to the home
    municipality (the chain's next role), not to the DPS."""
    routing = PersonState(
        team={DPS_NORTH["org_id"]: Member("dps", {"registry:test": "pathway_coordinator"})},
        home_municipality=HOME["org_id"],
    )
    homeless = trigger("admission", event_id="adm-5", housing_status="homeless")
    alerts = alerts_for("housing_work.homeless_admission", homeless, routing)
    assert [(a["recipient"], a["recipient_role"]) for a in alerts] == [(HOME, "home_municipality")]


@pytest.mark.parametrize(("home", "other"), [(LOW, HIGH), (HIGH, LOW)])
def test_of_two_municipal_coordinators_the_home_municipality_gets_the_alert(
    home: str, other: str
) -> None:
    """Two municipalities each name themselves coordinator (two plans): the home municipality's
    coordinator gets the alert, whatever the numbers and whichever joined first."""
    for first, second in ((home, other), (other, home)):
        routing = PersonState(
            team={
                first: Member("municipality", {"registry:test": "coordinator"}),
                second: Member("municipality", {"registry:test": "coordinator"}),
            },
            home_municipality=home,
        )
        homeless = trigger("admission", event_id="adm-6", housing_status="homeless")
        alerts = alerts_for("housing_work.homeless_admission", homeless, routing)
        assert [a["recipient"]["org_id"] for a in alerts] == [home]


def test_the_pathway_coordinator_of_the_dps_that_owes_the_step_comes_first() -> None:
    """Two DPSs each with a pathway coordinator: the copy goes to the one that owes the step
    (the trigger's source) - one alert then, as source - not to the lower number."""
    routing = PersonState(
        team={
            DPS_NORTH["org_id"]: Member("dps", {"registry:test": "pathway_coordinator"}),
            DPS["org_id"]: Member("dps", {"registry:test": "pathway_coordinator"}),
        },
    )
    assert DPS_NORTH["org_id"] < DPS["org_id"]
    epikrise = alerts_for("epikrise.after_discharge", trigger("discharge", "dis-7"), routing)
    assert [(a["recipient"]["org_id"], a["recipient_role"]) for a in epikrise] == [
        (DPS["org_id"], "source")
    ]


def test_the_coordinator_role_of_override_files_falls_back_to_the_pathway_coordinator() -> None:
    """`coordinator` (kept for override files) is the municipal coordinator, else the pathway
    coordinator; `municipal_coordinator` has no such fallback."""
    only_pathway = PersonState(
        team={DPS_NORTH["org_id"]: Member("dps", {"registry:test": "pathway_coordinator"})},
    )
    event = trigger("admission", event_id="adm-8", housing_status="homeless")
    override = replace(rule("housing_work.homeless_admission"), recipients=(("coordinator",),))
    context = AlertContext(T0, only_pathway, POLICY, RULES.version)
    built = build_alerts(override, event, ["adm-8"], rfc3339(T0), context)
    assert [(a["recipient"], a["recipient_role"]) for a in built] == [(DPS_NORTH, "coordinator")]
    municipal = replace(override, recipients=(("municipal_coordinator",),))
    assert build_alerts(municipal, event, ["adm-8"], rfc3339(T0), context) == []


def test_the_unassigned_queue_has_no_recipient_role() -> None:
    """An alert to the operator's queue names no role whose person could be named."""
    alerts = alerts_for(
        "municipal_reply.discharge_ready", trigger("discharge_ready"), PersonState()
    )
    unassigned = by_recipient(alerts)[None]
    assert unassigned["recipient_role"] is None


def test_a_member_named_pathway_coordinator_holds_that_role_over_participant_not_coordinator() -> (
    None
):
    """A DPS a plan lists as participant and the registry names pathway coordinator is the
    pathway coordinator; a coordinator statement outranks it (routing's role strength)."""
    named = Member(
        "dps", {"plan:940493021:IP-1": "participant", "registry:x": "pathway_coordinator"}
    )
    assert named.role == "pathway_coordinator"
    assert named.plus("registry:y", "coordinator").role == "coordinator"
    assert named.without("registry:x") == Member("dps", {"plan:940493021:IP-1": "participant"})
