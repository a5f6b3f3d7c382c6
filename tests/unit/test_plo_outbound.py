"""Deliveries as PLO (carebus.wire.plo_outbound): valid MsgHead + PLO 1.6 for the four logistics
messages, read back by carebus's own PLO adapter as the event they came from, and everything
else left to carebus JSON (consumers.webhooks.protocol.rendered_body)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from carebus.domain.events import EVENT_TYPES
from carebus.domain.identity import random_nin
from carebus.wire import plo, plo_outbound
from carebus.wire.outbound import (
    JSON_CONTENT_TYPE,
    Addressee,
    Format,
    RenderError,
    format_problem,
)
from carebus.wire.translation import Party, StaticDirectory
from consumers.webhooks.protocol import RENDERERS, rendered_body

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SENDER = Addressee("974749025", "dps", "St. Olavs hospital DPS", "59")
RECIPIENT = Addressee("939865942", "municipality", "Alvdal kommune", "99387")
DIRECTORY = StaticDirectory(
    (Party("974749025", "dps", "59"), Party("939865942", "municipality", "99387", "3428"))
)
NIN = random_nin(random.Random(7))
D_NUMBER = str(int(NIN[0]) + 4) + NIN[1:]  # check digits aside: only the kind is read here
PAYLOADS: dict[str, dict[str, Any]] = {
    "admission": {
        "reason": "overdose",
        "admission_kind": "involuntary",
        "housing_status": "homeless",
        "needs_municipal_services": True,
        "home_municipality_org": "939865942",
        "ward": "Akuttpost Øya",
    },
    "discharge_ready": {
        "admission_event_id": "dps-1",
        "needs_municipal_services": True,
        "housing_status": "unstable",
    },
    "discharge_ready_withdrawn": {"discharge_ready_event_id": "dps-2"},
    "discharge": {
        "admission_event_id": "dps-1",
        "destination": "homeless",
        "crisis_plan": False,
        "followup_at": "2026-12-09T08:00:00Z",
    },
}


def delivery(
    event_type: str, payload: dict[str, Any] | None = None, nin: str = NIN
) -> dict[str, Any]:
    return {
        "delivery_id": f"dlv-{event_type}",
        "event_id": f"evt-{event_type}",
        "event_type": event_type,
        "occurred_at": "2026-12-07T08:15:00Z",
        "subject": {"nin": nin},
        "basis": "consent",
        "categories": [],
        "payload": PAYLOADS.get(event_type, {}) if payload is None else payload,
    }


def rendered(event_type: str, **kwargs: Any) -> bytes:
    out = plo_outbound.render(delivery(event_type, **kwargs), SENDER, RECIPIENT, NOW)
    assert out is not None
    assert out.content_type == "application/xml"
    return out.body


@pytest.mark.parametrize("event_type", sorted(plo_outbound.MESSAGES))
def test_each_logistics_event_is_a_valid_plo_message_of_its_type(event_type: str) -> None:
    message = plo.read(rendered(event_type))  # validates against the XSDs, as inbound does
    assert message.msg_type == plo_outbound.MESSAGES[event_type][0]
    assert message.msg_id == f"dlv-{event_type}"  # a retry is the same message
    assert message.nin == NIN
    assert message.status == plo.NEW
    code = plo_outbound.MESSAGES[event_type][3]
    assert message.happenings[code] == "2026-12-07T09:15:00"  # Oslo time, as senders write it
    assert ("HER", "59") in message.sender.idents
    assert ("ENH", "974749025") in message.sender.idents
    assert ("HER", "99387") in message.receiver.idents


@pytest.mark.parametrize("event_type", ["admission", "discharge"])
def test_carebus_reads_its_own_message_back_as_the_same_event(event_type: str) -> None:
    message = plo.read(rendered(event_type))
    translation = plo.translate(message, plo.sender_of(message, DIRECTORY), DIRECTORY, b"s" * 32)
    (event,) = translation.events
    assert event["event_type"] == event_type
    assert event["subject"]["nin"] == NIN
    assert event["source"] == {"agency": "dps", "org_id": "974749025"}
    assert datetime.fromisoformat(event["occurred_at"]) == datetime(2026, 12, 7, 8, 15, tzinfo=UTC)
    if event_type == "admission":
        assert event["payload"]["home_municipality_org"] == "939865942"


def test_the_dangerous_transitions_are_spelled_out_in_the_remark() -> None:
    admission = rendered("admission").decode()
    assert "OBS: innlagt etter overdose" in admission
    assert "OBS: pasienten er uten fast bopel" in admission
    assert "Avdeling: Akuttpost Øya" in admission
    discharge = rendered("discharge").decode()
    assert "OBS: utskrevet uten fast bopel" in discharge
    temporary = rendered("discharge", payload={"destination": "temporary_housing"}).decode()
    assert "OBS: utskrevet til midlertidig bolig" in temporary
    assert "OBS: utskrevet uten fast bopel" not in temporary
    assert "Kriseplan: nei" in discharge
    assert "Oppfølging: 2026-12-09T09:00:00" in discharge
    suicide = rendered("admission", payload={"reason": "suicide_attempt"}).decode()
    assert "OBS: innlagt etter selvmordsforsøk" in suicide
    # Whom to call at the DPS, where the recipient was given it (the statutory notice is).
    contact = {"destination": "home", "dps_contact": "Kari Nordmann, sykepleier, 22 00 00 00"}
    with_contact = plo.read(rendered("discharge", payload=contact))
    assert with_contact.msg_type == plo_outbound.MESSAGES["discharge"][0]
    assert (
        "Kontakt ved DPS: Kari Nordmann, sykepleier, 22 00 00 00"
        in rendered("discharge", payload=contact).decode()
    )


def test_discharge_home_has_the_code_and_any_other_destination_only_its_text() -> None:
    ns = {"po": plo_outbound.PO_16}
    home = etree.fromstring(rendered("discharge", payload={"destination": "home"}))
    (to,) = home.xpath("//po:UtTil", namespaces=ns)
    assert (to.get("V"), to.get("S")) == ("1", plo_outbound.UTSKREVET_TIL)
    homeless = etree.fromstring(rendered("discharge"))
    (to,) = homeless.xpath("//po:UtTil", namespaces=ns)
    assert to.get("V") is None
    assert to.get("OT") == "uten fast bopel"
    unseen = etree.fromstring(rendered("discharge", payload={}))
    (to,) = unseen.xpath("//po:UtTil", namespaces=ns)
    assert to.get("OT") == "ikke oppgitt til mottaker"


def test_a_field_the_recipient_may_not_see_is_nowhere_in_the_message() -> None:
    body = rendered("admission", payload={"home_municipality_org": "939865942"}).decode()
    assert "overdose" not in body
    assert "bopel" not in body
    assert "Avdeling" not in body


def test_a_d_number_is_named_as_one() -> None:
    body = rendered("admission", nin=D_NUMBER).decode()
    assert 'V="DNR"' in body
    assert D_NUMBER in body


@pytest.mark.parametrize("event_type", sorted(set(EVENT_TYPES) - set(plo_outbound.MESSAGES)))
def test_events_plo_has_no_message_for_are_left_to_carebus_json(event_type: str) -> None:
    assert plo_outbound.render(delivery(event_type, payload={}), SENDER, RECIPIENT, NOW) is None


def test_an_erased_person_gets_no_plo_message() -> None:
    erased = delivery("admission")
    erased["subject"] = {"nin": None, "erased": True}
    assert plo_outbound.render(erased, SENDER, RECIPIENT, NOW) is None


def test_the_webhook_body_follows_the_format_and_falls_back_to_json() -> None:
    body = json.dumps(delivery("admission")).encode()
    as_plo = rendered_body(body, Format.PLO, SENDER, RECIPIENT, NOW)
    assert as_plo.content_type == "application/xml"
    assert as_plo.body.startswith(b"<?xml")
    as_json = rendered_body(body, Format.CAREBUS, SENDER, RECIPIENT, NOW)
    assert as_json.body == body
    assert as_json.content_type == JSON_CONTENT_TYPE
    police = json.dumps(delivery("police_callout", payload={})).encode()
    assert rendered_body(police, Format.PLO, SENDER, RECIPIENT, NOW).body == police
    # A row queued before carebus recorded senders: it cannot name one, so JSON.
    assert rendered_body(body, Format.PLO, None, RECIPIENT, NOW).body == body


_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    event_type=st.sampled_from(sorted(plo_outbound.MESSAGES)),
    payload=st.fixed_dictionaries(
        {},
        optional={
            "reason": st.sampled_from(
                ["overdose", "suicide_attempt", "psychosis", "other", "unknown"]
            ),
            "admission_kind": st.sampled_from(["voluntary", "involuntary", "unknown"]),
            "housing_status": st.sampled_from(["stable", "unstable", "homeless", "unknown"]),
            "needs_municipal_services": st.booleans(),
            "ward": _TEXT,
            "destination": st.sampled_from(
                [
                    "home",
                    "municipal_housing",
                    "institution",
                    "homeless",
                    "temporary_housing",
                    "unknown",
                ]
            ),
            "crisis_plan": st.booleans(),
            "followup_at": st.just("2026-12-09T08:00:00Z"),
        },
    ),
    sender_name=_TEXT,
)
def test_any_subset_of_the_fields_renders_a_valid_message(
    event_type: str, payload: dict[str, Any], sender_name: str
) -> None:
    sender = Addressee("974749025", "dps", sender_name, None)
    out = plo_outbound.render(delivery(event_type, payload=payload), sender, RECIPIENT, NOW)
    assert out is not None
    assert plo.read(out.body).msg_type == plo_outbound.MESSAGES[event_type][0]


def test_any_failure_while_rendering_is_a_render_error_naming_no_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A renderer bug about one delivery becomes RenderError (dead-lettered), never another
    exception that would fail every attempt and stall the person's line."""

    def broken(delivery: Any, *_args: Any) -> None:
        raise KeyError(delivery["subject"]["nin"])

    monkeypatch.setitem(RENDERERS, Format.PLO, broken)
    body = json.dumps(delivery("admission")).encode()
    with pytest.raises(RenderError) as raised:
        rendered_body(body, Format.PLO, SENDER, RECIPIENT, NOW)
    assert str(raised.value) == "KeyError while rendering"
    assert NIN not in str(raised.value)


def test_an_emergency_disclosure_is_left_to_json_which_carries_its_justification() -> None:
    emergency = delivery("admission")
    emergency["emergency"] = {"justification": "livsfare", "accountable": "lege på vakt"}
    assert plo_outbound.render(emergency, SENDER, RECIPIENT, NOW) is None


@pytest.mark.parametrize("agency", ["nav", "police", "housing"])
def test_nav_police_and_housing_get_json_whatever_was_registered(agency: str) -> None:
    """A standard format names the sending organisation, which their deliveries never do."""
    body = json.dumps(delivery("admission")).encode()
    recipient = Addressee("974760673", agency, "Mottaker")
    assert format_problem(Format.PLO, agency) is not None
    assert rendered_body(body, Format.PLO, SENDER, recipient, NOW).body == body


def test_values_xml_cannot_hold_or_the_last_hours_of_year_9999_still_render() -> None:
    """Noncharacters pass the gateway's input rule but not XML 1.0; a 9999-12-31 placeholder
    time has no Oslo time: both render (the first without the noncharacter, the second in
    UTC), so such a delivery is never dead-lettered for it."""
    ward = rendered("admission", payload={"ward": "Akutt\ufffe\uffffpost"}).decode()
    assert "Avdeling: Akuttpost" in ward
    late = delivery("discharge", payload={"followup_at": "9999-12-31T23:30:00Z"})
    late["occurred_at"] = "9999-12-31T23:59:59Z"
    out = plo_outbound.render(late, SENDER, RECIPIENT, NOW)
    assert out is not None
    assert b"9999-12-31T23:59:59" in out.body
