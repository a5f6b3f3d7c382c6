"""Tests for retractions: the contract, the gateway's rule, the router's memory and routing of
them (carebus.domain.retraction, services.router.retractions), and the SLA engine's withdrawal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from carebus.domain.deliveries import delivery_id, delivery_to_json, no_candidate_audit_id
from carebus.domain.events import RETRACTION_REASONS, parse_event
from carebus.domain.obligations import RETRACTED
from carebus.domain.records import DELIVERY, DISCLOSURE, Delivery, event_schema_name
from carebus.domain.retraction import (
    ACTION,
    BASIS,
    MAX_REMEMBERED,
    RULE_OWN_EVENT,
    RULE_REPEATED,
    RecipientMemory,
    Retracted,
    Standing,
    retraction_refusal,
    route_retraction,
)
from carebus.domain.routing import PersonState, apply
from carebus.domain.sla_limits import sizes
from carebus.wire.policy_files import load_authority
from consumers.event_store import retraction_mark
from services.router.retractions import RoutedRecipients, decode, encode
from tests.unit import test_routing as routing
from tests.unit import test_sla_rules as sla
from tests.unit.test_routing import CODEC, MEMBER, NOW, POLICY, SOURCE, consent, member, state_of

KEY = "5" * 64


def applied(record: dict[str, Any], state: PersonState) -> PersonState:
    """`state` with `record` folded in, as the router has it before it routes the record."""
    return apply(state, event_schema_name(record["event_type"]), record)


def retraction(retracted_event_id: str, **changes: Any) -> dict[str, Any]:
    """A retraction record from the DPS (as the router decodes it) of `retracted_event_id`."""
    return routing.event("retraction", retracted_event_id=retracted_event_id, **changes)


# --- the contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("reason", RETRACTION_REASONS)
def test_a_retraction_names_the_event_and_a_reason(reason: str) -> None:
    """A retraction carries the retracted event's id and one of the reason codes, nothing else."""
    raw = routing.FACTORY.event("retraction", retracted_event_id="dps-1", reason=reason)
    event, problems = parse_event(raw)
    assert problems == []
    assert event is not None
    assert event.payload == {"retracted_event_id": "dps-1", "reason": reason}


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"reason": "typo"}, "payload.reason", "must be one of: wrong_person"),
        ({"retracted_event_id": None}, "payload.retracted_event_id", "is required"),
        ({"retracted_event_id": "a b"}, "payload.retracted_event_id", "must be 1 to 200"),
        ({"retracted_event_id": f"x-{routing.NIN}"}, "payload.retracted_event_id", "identity"),
        ({"note": "Ola was not admitted"}, "payload.note", "not a field of retraction"),
    ],
)
def test_a_bad_retraction_is_refused_naming_the_field(
    changes: dict[str, Any], field: str, problem: str
) -> None:
    """An unknown reason, a missing or malformed event id, or free text is a 422 problem."""
    raw = routing.FACTORY.event("retraction", retracted_event_id="dps-1")
    for name, value in changes.items():
        if value is None:
            raw["payload"].pop(name)
        else:
            raw["payload"][name] = value
    event, problems = parse_event(raw)
    assert event is None
    assert [p.field for p in problems] == [field]
    assert problem in problems[0].problem


def test_a_retraction_cannot_be_an_emergency() -> None:
    """A retraction reaches only those who got the retracted event: no emergency recipients."""
    raw = routing.FACTORY.event(
        "retraction",
        retracted_event_id="dps-1",
        emergency={
            "justification": "j",
            "accountable": "a",
            "recipients": [{"agency": "police", "org_id": MEMBER["police"]}],
        },
    )
    event, problems = parse_event(raw)
    assert event is None
    assert [p.field for p in problems] == ["emergency"]


def test_every_agency_may_send_a_retraction_and_the_rules_are_explained() -> None:
    """policy/authority.yaml lets every agency retract (its own events) and explains the rules."""
    authority = load_authority()
    assert authority.senders["retraction"] == frozenset(
        {"dps", "municipality", "fastlege", "nav", "police", "housing", "corrections"}
    )


# --- the gateway's rule ---------------------------------------------------------------------


def judge(
    original: Retracted | None, standing: Standing | None = None, event_id: str = "r-1"
) -> tuple[str, int, str] | None:
    refusal = retraction_refusal(
        subject_key=KEY, retraction_event_id=event_id, original=original, standing=standing
    )
    return None if refusal is None else (refusal.rule_id, refusal.status, refusal.field)


def test_the_senders_own_event_about_the_person_may_be_retracted() -> None:
    """An event the sender sent about this person, not retracted yet, is retracted."""
    assert judge(Retracted(KEY, "admission")) is None


def test_unknown_other_persons_and_other_organisations_events_get_one_answer() -> None:
    """An unknown event (another organisation's is unknown under the sender's name) and one
    about another person are one 422 naming the field, so nothing tells them apart."""
    unknown = retraction_refusal(
        subject_key=KEY, retraction_event_id="r-1", original=None, standing=None
    )
    other_person = retraction_refusal(
        subject_key=KEY,
        retraction_event_id="r-1",
        original=Retracted("6" * 64, "admission"),
        standing=None,
    )
    assert unknown == other_person
    assert unknown is not None
    assert (unknown.rule_id, unknown.status, unknown.field) == (
        RULE_OWN_EVENT,
        422,
        "payload.retracted_event_id",
    )


def test_a_retraction_cannot_be_retracted() -> None:
    """Retracting a retraction would bring back a withdrawn event: 422."""
    assert judge(Retracted(KEY, "retraction")) == (
        RULE_OWN_EVENT,
        422,
        "payload.retracted_event_id",
    )


def test_a_second_retraction_of_the_same_event_conflicts() -> None:
    """Another retraction of an event already retracted is 409 naming the one that stands."""
    refusal = retraction_refusal(
        subject_key=KEY,
        retraction_event_id="r-2",
        original=Retracted(KEY, "admission"),
        standing=Standing("r-1", "wrong_person"),
    )
    assert refusal is not None
    assert (refusal.rule_id, refusal.status) == (RULE_REPEATED, 409)
    assert "r-1" in refusal.message


def test_the_same_retraction_again_passes_to_the_ledger() -> None:
    """The same retraction (same event_id) again is not refused here: the ledger makes it 202
    once when its content is the same, 409 when not."""
    assert judge(Retracted(KEY, "admission"), Standing("r-1", "wrong_person"), "r-1") is None


# --- the router's memory --------------------------------------------------------------------


def delivered(record: dict[str, Any], *org_ids: str) -> list[Delivery]:
    agency = {org_id: agency for agency, org_id in MEMBER.items()}
    return [
        {  # only the recipient matters to the memory
            "recipient": {"agency": agency[org_id], "org_id": org_id},
        }  # type: ignore[typeddict-item]
        for org_id in org_ids
    ]


def test_the_memory_keeps_who_got_each_event() -> None:
    """remember() records an event's recipients; recipients_of() finds them by sender and id."""
    admission = routing.event("admission")
    memory = RecipientMemory().remember(
        admission, delivered(admission, MEMBER["nav"], MEMBER["dps"])
    )
    event_type, recipients = memory.recipients_of(SOURCE["dps"], admission["event_id"])
    assert event_type == "admission"
    assert {r["org_id"] for r in recipients} == {MEMBER["nav"], MEMBER["dps"]}
    assert memory.recipients_of(SOURCE["municipality"], admission["event_id"]) == ("", [])


def test_routing_an_event_again_keeps_everyone_who_got_it_either_time() -> None:
    """A replay that reaches fewer (a consent expired meanwhile) forgets no earlier recipient;
    the same replay changes nothing."""
    admission = routing.event("admission")
    first = RecipientMemory().remember(admission, delivered(admission, MEMBER["nav"]))
    again = first.remember(admission, delivered(admission, MEMBER["dps"]))
    assert {r["org_id"] for r in again.recipients_of(SOURCE["dps"], admission["event_id"])[1]} == {
        MEMBER["nav"],
        MEMBER["dps"],
    }
    assert len(again.entries) == 1
    assert again.remember(admission, delivered(admission, MEMBER["nav"])) is again


def test_events_that_reached_nobody_and_retractions_are_not_remembered() -> None:
    """Only events with deliveries are kept; a retraction is never retracted, so never kept."""
    memory = RecipientMemory()
    assert memory.remember(routing.event("admission"), []) is memory
    notice = retraction("dps-1")
    assert memory.remember(notice, delivered(notice, MEMBER["nav"])) is memory


def test_the_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    """At most MAX_REMEMBERED events per person; the oldest goes first; JSON round trip."""
    memory = RecipientMemory()
    records = [routing.event("admission") for _ in range(MAX_REMEMBERED + 1)]
    for record in records:
        memory = memory.remember(record, delivered(record, MEMBER["nav"]))
    assert len(memory.entries) == MAX_REMEMBERED
    assert memory.recipients_of(SOURCE["dps"], records[0]["event_id"]) == ("", [])
    assert memory.recipients_of(SOURCE["dps"], records[-1]["event_id"])[1]
    assert RecipientMemory.from_json(json.loads(json.dumps(memory.to_json()))) == memory


# --- routing a retraction -------------------------------------------------------------------


def test_a_retraction_goes_to_exactly_those_who_got_the_event() -> None:
    """Each remembered recipient gets a delivery that says what to do, on basis retraction,
    audited as delivered with the same id; the records encode."""
    admission = routing.event("admission")
    memory = RecipientMemory().remember(
        admission, delivered(admission, MEMBER["nav"], MEMBER["municipality"])
    )
    notice = retraction(admission["event_id"], reason="wrong_person")
    result = route_retraction(notice, memory, POLICY.version, NOW)
    assert {d["recipient"]["org_id"] for d in result.deliveries} == {
        MEMBER["nav"],
        MEMBER["municipality"],
    }
    for delivery in result.deliveries:
        CODEC.encode(DELIVERY, delivery)
        assert delivery["delivery_id"] == delivery_id(
            SOURCE["dps"], notice["event_id"], delivery["recipient"]["org_id"]
        )
        assert delivery["basis"] == BASIS
        assert delivery_to_json(delivery)["payload"] == {
            "retracted_event_id": admission["event_id"],
            "reason": "wrong_person",
            "retracted_event_type": "admission",
            "action": ACTION,
        }
    assert {d["audit_id"] for d in result.disclosures} == {
        d["delivery_id"] for d in result.deliveries
    }
    for disclosure in result.disclosures:
        CODEC.encode(DISCLOSURE, disclosure)
        assert (disclosure["decision"], disclosure["basis"]) == ("delivered", BASIS)


def test_a_retraction_of_an_event_that_reached_nobody_is_audited_as_no_candidate() -> None:
    """Nothing remembered: no delivery, one `no_candidate` audit record."""
    notice = retraction("dps-unrouted")
    result = route_retraction(notice, RecipientMemory(), POLICY.version, NOW)
    assert result.deliveries == []
    assert [(d["decision"], d["audit_id"]) for d in result.disclosures] == [
        ("no_candidate", no_candidate_audit_id(SOURCE["dps"], notice["event_id"]))
    ]
    CODEC.encode(DISCLOSURE, result.disclosures[0])


def test_the_router_delivers_a_retraction_to_the_recipients_even_after_an_objection() -> None:
    """Routed through the router's memory: NAV got the admission under a consent; after the
    patient objects, NAV still gets the retraction (it holds the data), and a member who joined
    since the admission does not."""
    table: dict[bytes, bytes] = {}
    router = RoutedRecipients(table, POLICY)
    state = state_of(member("nav"), consent("nav"))
    admission = routing.event("admission")
    state = applied(admission, state)
    first = router.route(admission, state, KEY.encode())
    assert MEMBER["nav"] in {d["recipient"]["org_id"] for d in first.deliveries}
    later = state_of(member("police"), consent("nav", status="objection"), state=state)
    result = router.route(retraction(admission["event_id"]), later, KEY.encode())
    assert {d["recipient"]["org_id"] for d in result.deliveries} == {
        d["recipient"]["org_id"] for d in first.deliveries
    }
    assert MEMBER["police"] not in {d["recipient"]["org_id"] for d in result.deliveries}


def test_the_router_routes_ordinary_events_as_before() -> None:
    """Remembering changes no routing decision."""
    state = state_of(member("nav"), consent("nav"))
    admission = routing.event("admission")
    remembered = RoutedRecipients({}, POLICY).route(admission, applied(admission, state), b"k")
    plain = routing.routed(admission, state)

    def undated(records: list[Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "decided_at"} for r in records]

    assert undated(remembered.deliveries) == undated(plain.deliveries)
    assert undated(remembered.disclosures) == undated(plain.disclosures)


def test_the_routers_table_keeps_the_last_events_once_each() -> None:
    """Through the router's table: a replayed event is one entry, the table holds at most
    MAX_REMEMBERED events (the oldest forgotten), and what it stores reads back the same."""
    table: dict[bytes, bytes] = {}
    router = RoutedRecipients(table, POLICY)
    state = state_of(member("nav"), consent("nav"))
    admissions = [routing.event("admission") for _ in range(MAX_REMEMBERED + 2)]
    for record in admissions:
        router.route(record, applied(record, state), b"k")
    router.route(admissions[-1], applied(admissions[-1], state), b"k")  # a replay
    memory = decode(table[b"k"])
    assert len(memory.entries) == MAX_REMEMBERED
    assert [e[1] for e in memory.entries] == [a["event_id"] for a in admissions[2:]]
    assert encode(memory) == table[b"k"]
    forgotten = router.route(retraction(admissions[0]["event_id"]), state, b"k")
    assert [d["decision"] for d in forgotten.disclosures] == ["no_candidate"]


def test_another_senders_events_cannot_push_an_event_out_of_the_memory() -> None:
    """The memory is bounded per sender: the police sending MAX_REMEMBERED + 1 events about the
    person leave the DPS's admission remembered, so its retraction still reaches everyone who
    got it — through the domain's memory and through the router's stored lines alike."""
    table: dict[bytes, bytes] = {}
    router = RoutedRecipients(table, POLICY)
    state = state_of(member("nav"), consent("nav"))
    admitted = routing.event("admission")
    router.route(admitted, applied(admitted, state), b"k")
    police = {"agency": "police", "org_id": "974760673"}
    callouts = [
        {**admitted, "event_id": f"police-{n}", "source": police} for n in range(MAX_REMEMBERED + 1)
    ]
    memory = RecipientMemory().remember(admitted, router.route(admitted, state, b"x").deliveries)
    for record in callouts:
        router.route(record, applied(record, state), b"k")
        memory = memory.remember(record, router.route(record, state, b"x").deliveries)
    for held in (decode(table[b"k"]), memory):
        assert held.recipients_of(admitted["source"]["org_id"], admitted["event_id"])[1]
        assert sum(1 for e in held.entries if e[0] == police["org_id"]) == MAX_REMEMBERED
    retracted = router.route(retraction(admitted["event_id"]), state, b"k")
    assert {d["decision"] for d in retracted.disclosures} == {"delivered"}


# --- the SLA engine -------------------------------------------------------------------------


def sla_retraction(target: dict[str, Any], event_id: str = "r-1") -> dict[str, Any]:
    return sla.event(
        "retraction",
        event_id,
        sla._time(target["occurred_at"]) + sla.HOUR,
        source=(target["source"]["agency"], target["source"]["org_id"]),
        retracted_event_id=target["event_id"],
        reason="sent_in_error",
    )


@pytest.mark.parametrize("case", sla.CASES, ids=str)
def test_a_retracted_trigger_withdraws_its_open_obligation(case: sla.Case) -> None:
    """The obligation the retracted event opened is withdrawn: no alert now or at the deadline."""
    person, deadline = sla.triggered(case)
    trigger = case.trigger(sla.T0)
    assert sla.of(case.rule_id, person.see(sla_retraction(trigger))) == []
    opened = [o for o in person.state.obligations.values() if o["rule_id"] == case.rule_id]
    assert [o["status"] for o in opened] == [RETRACTED]
    assert person.deadlines(case.rule_id) == []
    assert sla.of(case.rule_id, person.scan(deadline + sla.DAY)) == []


@pytest.mark.parametrize("case", sla.CASES, ids=str)
def test_a_retracted_trigger_resolves_its_alerts_as_retracted(case: sla.Case) -> None:
    """Alerts a breach raised are re-published resolved, resolution `retracted`, naming the
    retraction; a replayed retraction raises nothing again."""
    person, _deadline, raised = sla.breached(case)
    trigger = case.trigger(sla.T0)
    notice = sla_retraction(trigger)
    resolved = sla.of(case.rule_id, person.see(notice, sla._time(notice["occurred_at"])))
    assert {a["alert_id"] for a in resolved} == {a["alert_id"] for a in raised}
    assert {(a["status"], a["resolution"]) for a in resolved} == {("resolved", RETRACTED)}
    assert all(a["event_ids"][-1] == "r-1" for a in resolved)
    assert person.see(notice) == []


def test_a_retraction_of_an_event_that_opened_nothing_only_forgets_it() -> None:
    """Retracting an event that opened nothing raises and resolves nothing; kept as an early
    fulfilment, it no longer waits to fulfil an obligation."""
    person = sla.Person()
    housing = sla.event("housing_work_started", "h-1", sla.T0, source=sla.MUNI)
    person.see(housing)
    assert [e["event_id"] for e in person.state.early] == ["h-1"]
    assert person.see(sla_retraction(housing)) == []
    assert person.state.obligations == {}
    assert person.state.early == []


def test_only_the_senders_own_event_is_withdrawn() -> None:
    """A retraction names an event of its own sender: another sender's event of the same id
    keeps its obligation."""
    case = next(c for c in sla.CASES if c.rule_id == "municipal_reply.discharge_ready")
    person, _ = sla.triggered(case)
    trigger = case.trigger(sla.T0)
    other = {**sla_retraction(trigger), "source": {"agency": "dps", "org_id": "974705800"}}
    person.see(other)
    assert [o["status"] for o in person.state.obligations.values()] == ["open"]


@pytest.mark.parametrize("retract", [False, True])
def test_a_retracted_incident_leaves_the_window_count(retract: bool) -> None:
    """Three police callouts within the window call a care-team meeting; with one retracted
    before the third, they do not."""
    police = ("police", "974760681")
    person = sla.Person()
    callouts = [
        sla.event("police_callout", f"p-{n}", sla.T0 + n * sla.DAY, source=police) for n in range(3)
    ]
    person.see(callouts[0])
    person.see(callouts[1])
    if retract:
        person.see(sla_retraction(callouts[0]))
    meetings = sla.of("care_team_meeting.repeated_incidents", person.see(callouts[2]))
    assert bool(meetings) is not retract


def test_another_senders_retraction_of_the_same_id_leaves_admissions_and_windows() -> None:
    """Event ids are unique per sender only: a municipality that retracts its own event under
    the id of the DPS's admission, or the police under the id of a housing incident, withdraws
    neither (else one organisation could lift another's statutory follow-up deadline)."""
    person = sla.Person()
    admission = sla.event("admission", "shared-id", sla.T0, source=sla.DPS)
    person.see(admission)
    housing = ("housing", "987654325")
    incident = sla.event("housing_incident", "incident-1", sla.T0, source=housing)
    person.see(incident)
    municipality = {
        **sla_retraction(admission),
        "source": {"agency": "municipality", "org_id": sla.MUNI[1]},
    }
    police = {
        **sla_retraction(incident, "r-2"),
        "source": {"agency": "police", "org_id": "974760673"},
    }
    person.see(municipality)
    person.see(police)
    assert "shared-id" in person.state.admissions
    assert any(
        entry[1] == "incident-1" for w in person.state.windows.values() for entry in w["events"]
    )
    person.see(sla_retraction(admission, "r-3"))  # the DPS's own retraction withdraws it
    assert "shared-id" not in person.state.admissions


def test_retracted_obligations_do_not_fill_the_persons_cap() -> None:
    """A retracted obligation is settled: retracting what one opened cannot fill the person's
    cap of open obligations and so silence every other organisation's deadlines."""
    case = next(c for c in sla.CASES if c.rule_id == "municipal_reply.discharge_ready")
    person, _ = sla.triggered(case)
    person.see(sla_retraction(case.trigger(sla.T0)))
    assert sizes(person.state)["open_obligations"] == 0


# --- the event store ------------------------------------------------------------------------


def test_the_event_store_marks_the_retracted_event_of_the_same_sender() -> None:
    """A retraction's row gives the UPDATE its sender, the retracted id, its own id, when
    carebus received it and the reason."""
    received = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    payload = '{"retracted_event_id": "dps-1", "reason": "sent_in_error"}'
    row = ("974705788", "dps-r-1", "retraction", received, received, "dps", None, KEY, payload)
    assert retraction_mark(row) == ("974705788", "dps-1", "dps-r-1", received, "sent_in_error")
