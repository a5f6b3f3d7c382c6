"""Deadline alerts end to end: gateway → care.events.v1 → SLA engine → care.alerts.v1 → inbox.

Durations are overridden to seconds (a rule file of the same format, as `carebus up
--sla-rules FILE` passes it), so every obligation here is due within a few seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer

from carebus.adapters.auth import create_token
from carebus.adapters.kafka import producer_config
from carebus.domain.events import event_to_record, parse_event, rfc3339
from carebus.domain.identity import random_nin, subject_key
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.testing import (
    ServiceClients,
    ServiceProcess,
    TestStack,
    dead_letters,
    unsealed,
)

pytestmark = pytest.mark.integration

ORGS = {
    "dps": "974705788",
    "municipality": "940493021",
    "fastlege": "912345675",
    "nav": "889640782",
    "police": "974760673",
    "housing": "987654325",
    "corrections": "971278374",
}
DEADLINE_S = 3
WAIT_S = 60.0
OVERRIDE = f"""
version: "test"
rules:
  - {{id: health_info.after_admission, deadline: PT{DEADLINE_S}S}}
  - {{id: municipal_reply.discharge_ready, deadline: PT{DEADLINE_S}S}}
  - {{id: followup.discharge_48h, deadline: PT{DEADLINE_S}S}}
  - {{id: followup.discharge_7d, deadline: PT{DEADLINE_S}S}}
  - {{id: epikrise.after_discharge, deadline: PT{DEADLINE_S}S}}
  - {{id: housing_work.discharge_homeless, deadline: PT{DEADLINE_S + 1}S}}
  - {{id: housing_work.discharge_1d, deadline: PT{DEADLINE_S}S}}
"""


class Bus(ServiceClients):
    """The running services' clients, tokens and a database connection for looking at alerts."""

    async def publish(
        self,
        agency: str,
        event_type: str,
        nin: str,
        payload: dict[str, Any],
        *,
        occurred_at: datetime | None = None,
    ) -> str:
        source = {"agency": agency, "org_id": ORGS[agency]}
        return await self.post_event(
            source, event_type, nin, payload, token=agency, occurred_at=occurred_at
        )

    async def coordinator(self, nin: str) -> None:
        """The demo municipality becomes the person's coordinator: the operator registers it as
        home municipality, and the home municipality may name itself coordinator."""
        home = await self.registry.post(
            "/v1/population-register",
            json={"nin": nin, "home_municipality_org": ORGS["municipality"]},
            headers=self.auth("operator"),
        )
        assert home.status_code == 201, home.text
        body = {
            "nin": nin,
            "agency": "municipality",
            "org_id": ORGS["municipality"],
            "role": "coordinator",
            "status": "member",
        }
        response = await self.registry.post(
            "/v1/care-teams", json=body, headers=self.auth("municipality")
        )
        assert response.status_code == 201, response.text

    async def member(self, nin: str, agency: str, role: str) -> None:
        """The home municipality (see `coordinator`) adds the demo `agency` organisation to the
        person's care team."""
        body = {
            "nin": nin,
            "agency": agency,
            "org_id": ORGS[agency],
            "role": role,
            "status": "member",
        }
        response = await self.registry.post(
            "/v1/care-teams", json=body, headers=self.auth("municipality")
        )
        assert response.status_code == 201, response.text

    async def alerts(self, event_id: str, rule_id: str | None = None) -> list[dict[str, Any]]:
        """Every stored alert whose events include `event_id` (any recipient)."""
        rows = await self.conn.fetch(
            "SELECT alert_id, rule_id, status, resolution, recipient_org, nin, audience, "
            "event_ids, subject_key FROM alerts "
            "WHERE $1 = ANY(event_ids) AND ($2::text IS NULL OR rule_id = $2)",
            event_id,
            rule_id,
        )
        # The nin is stored sealed under the person's data key: read it as the inbox shows it.
        return [
            {
                **dict(row),
                "nin": await unsealed(
                    self.conn, self.settings, row["subject_key"], "subject.nin", row["nin"]
                ),
            }
            for row in rows
        ]

    async def alerts_eventually(
        self, event_id: str, rule_id: str, count: int, timeout_s: float = WAIT_S
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = await self.alerts(event_id, rule_id)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.25)
        raise AssertionError(f"expected {count} alerts of {rule_id}, found {found}")

    async def tracked(self, nin_event_id: str, timeout_s: float = WAIT_S) -> None:
        """Wait until the SLA engine has applied the event (its person row holds it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = await self.conn.fetchval(
                "SELECT count(*) FROM sla_persons WHERE state::text LIKE $1",
                f"%{nin_event_id}%",
            )
            if found:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the SLA engine never applied {nin_event_id}")


@pytest.fixture(scope="module")
def rules_override(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sla") / "sla-seconds.yaml"
    path.write_text(OVERRIDE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def services(stack: TestStack, rules_override: Path) -> Iterator[dict[str, ServiceProcess]]:
    started = {
        name: stack.start_service(name, env={"CAREBUS_SLA_RULES_OVERRIDE": str(rules_override)})
        for name in ("gateway", "registry", "sla", "alert_store", "audit_store", "inbox")
    }
    yield started
    for service in reversed(list(started.values())):
        service.stop()


@pytest.fixture(scope="module")
async def bus(stack: TestStack, services: dict[str, ServiceProcess]) -> AsyncIterator[Bus]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    tokens = {
        agency: await create_token(conn, agency=agency, org_id=org, role="system")
        for agency, org in ORGS.items()
    }
    tokens["coordinator"] = await create_token(
        conn, agency="municipality", org_id=ORGS["municipality"], role="coordinator"
    )
    tokens["operator"] = await create_token(
        conn, agency="operator", org_id=OPERATOR_ORG, role="operator"
    )
    bus = Bus(stack, tokens=tokens, conn=conn)
    # A freshly started faust worker joins its group and catches up with what earlier tests
    # left on the stream before it applies anything new: wait for one event.
    warmup = await bus.publish("police", "police_callout", random_nin(bus.rng), callout())
    await bus.tracked(warmup, timeout_s=180)
    yield bus
    await bus.close()
    await conn.close()


def admission(**changes: Any) -> dict[str, Any]:
    return {
        "reason": "psychosis",
        "admission_kind": "voluntary",
        "housing_status": "stable",
        "needs_municipal_services": True,
        "home_municipality_org": ORGS["municipality"],
        **changes,
    }


def callout() -> dict[str, Any]:
    return {"kind": "welfare_check", "injuries": False, "location_type": "home"}


def discharge_ready(admission_event_id: str) -> dict[str, Any]:
    return {
        "admission_event_id": admission_event_id,
        "needs_municipal_services": True,
        "housing_status": "homeless",
    }


async def settle() -> None:
    """Long enough for a deadline of DEADLINE_S to pass and a few scans to run."""
    await asyncio.sleep(DEADLINE_S + 4)


async def test_admission_without_health_information_alerts_once(bus: Bus) -> None:
    """No health_info_sent after an admission: one alert to DPS and one to the municipality."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission())
    alerts = await bus.alerts_eventually(admitted, "health_info.after_admission", 2)
    await settle()
    alerts = await bus.alerts(admitted, "health_info.after_admission")
    assert sorted(a["recipient_org"] for a in alerts) == sorted([ORGS["dps"], ORGS["municipality"]])
    assert all(a["status"] == "open" and a["nin"] == nin for a in alerts)
    response = await bus.inbox.get(
        "/v1/alerts", params={"status": "open"}, headers=bus.auth("coordinator")
    )
    assert response.status_code == 200, response.text
    mine = [i for i in response.json()["items"] if admitted in i["event_ids"]]
    assert len(mine) == 1
    assert mine[0]["subject"] == {"nin": nin}
    assert mine[0]["recipient"] == {"agency": "municipality", "org_id": ORGS["municipality"]}
    audited = await bus.conn.fetchval(
        "SELECT count(*) FROM disclosures WHERE event_type = 'alert' AND event_id = $1", admitted
    )
    assert audited == 1  # the municipality's; DPS's alert is about its own event


async def test_health_information_in_time_raises_nothing(bus: Bus) -> None:
    """health_info_sent before the deadline closes the obligation: no alert, ever."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission())
    await bus.publish("dps", "health_info_sent", nin, {"admission_event_id": admitted})
    await settle()
    assert await bus.alerts(admitted, "health_info.after_admission") == []


async def test_late_health_information_resolves_the_alert(bus: Bus) -> None:
    """health_info_sent that occurred after the deadline resolves the alerts as fulfilled_late."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission())
    await bus.alerts_eventually(admitted, "health_info.after_admission", 2)
    sent = await bus.publish("dps", "health_info_sent", nin, {"admission_event_id": admitted})
    deadline = time.monotonic() + WAIT_S
    alerts = await bus.alerts(admitted, "health_info.after_admission")
    while time.monotonic() < deadline and any(a["status"] != "resolved" for a in alerts):
        await asyncio.sleep(0.25)
        alerts = await bus.alerts(admitted, "health_info.after_admission")
    assert [(a["status"], a["resolution"]) for a in alerts] == [("resolved", "fulfilled_late")] * 2
    assert all(sent in a["event_ids"] for a in alerts)


async def test_overdose_discharge_without_followup_alerts_the_coordinator(bus: Bus) -> None:
    """A discharge after an overdose admission with no followup_contact: one coordinator alert."""
    nin = random_nin(bus.rng)
    await bus.coordinator(nin)
    admitted = await bus.publish(
        "dps", "admission", nin, admission(reason="overdose", needs_municipal_services=False)
    )
    discharged = await bus.publish(
        "dps",
        "discharge",
        nin,
        {"admission_event_id": admitted, "destination": "home", "crisis_plan": True},
    )
    await bus.alerts_eventually(discharged, "followup.discharge_48h", 1)
    await settle()
    alerts = await bus.alerts(discharged, "followup.discharge_48h")
    assert [(a["recipient_org"], a["audience"], a["nin"]) for a in alerts] == [
        (ORGS["municipality"], "coordinator", nin)
    ]
    assert await bus.alerts(discharged, "followup.discharge_7d") == []


async def test_a_risk_discharge_notifies_the_home_municipality_at_once(bus: Bus) -> None:
    """Issue 17, item 1: a discharge after a possible suicide attempt sends the home municipality
    (outside any care team) a notice at once, naming the person but not the reason; the
    follow-up contact resolves it."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish(
        "dps",
        "admission",
        nin,
        admission(reason="possible_suicide_attempt", needs_municipal_services=False),
    )
    discharged = await bus.publish(
        "dps",
        "discharge",
        nin,
        {"admission_event_id": admitted, "destination": "home", "crisis_plan": True},
    )
    [notice] = await bus.alerts_eventually(discharged, "followup_notice.discharge", 1)
    assert (notice["recipient_org"], notice["nin"], notice["status"]) == (
        ORGS["municipality"],
        nin,
        "open",
    )
    row = await bus.conn.fetchrow(
        "SELECT kind, summary FROM alerts WHERE alert_id = $1", notice["alert_id"]
    )
    assert row is not None
    assert row["kind"] == "notice"
    # Outside the care team it learns what to do and whom to ask, never why (routing).
    assert "high-risk period" not in row["summary"]
    assert "suicide" not in row["summary"]
    await bus.publish(
        "municipality",
        "followup_contact",
        nin,
        {"related_event_id": discharged, "kind": "home_visit"},
    )
    await bus.alerts_eventually(discharged, "followup_notice.discharge", 1)
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        [notice] = await bus.alerts(discharged, "followup_notice.discharge")
        if notice["status"] == "resolved":
            break
        await asyncio.sleep(0.2)
    assert (notice["status"], notice["resolution"]) == ("resolved", "fulfilled")


async def test_a_release_no_municipality_was_told_of_alerts_the_correctional_service(
    bus: Bus,
) -> None:
    """A release from prison two days and more ago with no follow-up breaches at once. No
    consent names the coordinator for `justice`, so routing told no municipality of it: the
    alert goes to the correctional service, naming the person and whom to contact; the
    coordinator's inbox holds no alert about it at all, not even a neutral one (which would
    say that someone it does not know was released)."""
    nin = random_nin(bus.rng)
    await bus.coordinator(nin)
    release_at = datetime.now(UTC) - timedelta(hours=49)
    released = await bus.publish(
        "corrections",
        "prison_release",
        nin,
        {
            "release_at": rfc3339(release_at),
            "needs_municipal_services": True,
            "housing_status": "unstable",
        },
        occurred_at=release_at - timedelta(days=1),
    )
    [alert] = await bus.alerts_eventually(released, "followup.prison_release", 1)
    assert (alert["recipient_org"], alert["nin"]) == (ORGS["corrections"], nin)
    response = await bus.inbox.get(
        "/v1/alerts", params={"status": "open"}, headers=bus.auth("coordinator")
    )
    assert response.status_code == 200, response.text
    assert [i for i in response.json()["items"] if released in i["event_ids"]] == []


async def test_discharge_ready_without_reply_alerts_and_withdrawal_cancels(bus: Bus) -> None:
    """No municipal_reply to a discharge-ready notice: one alert; withdrawn in time: none."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission())
    unanswered = await bus.publish("dps", "discharge_ready", nin, discharge_ready(admitted))
    # The second notice is dated 10 s ahead and withdrawn a second after it: "in time" by the
    # events' own times, whatever a loaded box makes of the three requests (with both dated now,
    # a withdrawal posted more than DEADLINE_S later was, rightly, late).
    ahead = datetime.now(UTC) + timedelta(seconds=10)
    withdrawn = await bus.publish(
        "dps", "discharge_ready", nin, discharge_ready(admitted), occurred_at=ahead
    )
    await bus.publish(
        "dps",
        "discharge_ready_withdrawn",
        nin,
        {"discharge_ready_event_id": withdrawn},
        occurred_at=ahead + timedelta(seconds=1),
    )
    alerts = await bus.alerts_eventually(unanswered, "municipal_reply.discharge_ready", 2)
    await settle()
    alerts = await bus.alerts(unanswered, "municipal_reply.discharge_ready")
    assert sorted(a["recipient_org"] for a in alerts) == sorted([ORGS["municipality"], ORGS["dps"]])
    # Past the withdrawn notice's own deadline, and a few scans more, it has raised nothing.
    past_due = ahead + timedelta(seconds=DEADLINE_S) - datetime.now(UTC)
    await asyncio.sleep(max(0.0, past_due.total_seconds()))
    await settle()
    assert await bus.alerts(withdrawn, "municipal_reply.discharge_ready") == []


async def test_homeless_admission_without_housing_work_alerts(bus: Bus) -> None:
    """A homeless admission, then discharge_ready with no housing_work_started: one alert."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish(
        "dps",
        "admission",
        nin,
        admission(housing_status="homeless", needs_municipal_services=False),
    )
    housed = await bus.publish(
        "dps",
        "admission",
        nin,
        admission(housing_status="homeless", needs_municipal_services=False),
    )
    await bus.publish("municipality", "housing_work_started", nin, {"admission_event_id": housed})
    await bus.publish("dps", "discharge_ready", nin, discharge_ready(admitted))
    await bus.publish("dps", "discharge_ready", nin, discharge_ready(housed))
    alerts = await bus.alerts_eventually(admitted, "housing_work.homeless_admission", 1)
    await settle()
    alerts = await bus.alerts(admitted, "housing_work.homeless_admission")
    assert [a["recipient_org"] for a in alerts] == [ORGS["municipality"]]
    assert await bus.alerts(housed, "housing_work.homeless_admission") == []


async def test_a_homeless_discharge_with_brukerplan_housing_red_alerts_once(bus: Bus) -> None:
    """Issue 17, items 2 and 8: the municipality's Brukerplan assessment says housing red; the
    discharge to homelessness opens the shorter housing rule only (one group), whose breach
    alerts the coordinator naming the person."""
    nin = random_nin(bus.rng)
    await bus.coordinator(nin)
    scores = {
        "housing": "red",
        "meaningful_activity": "yellow",
        "finances": "red",
        "physical_health": "yellow",
        "mental_health": "yellow",
        "substance_use": "red",
        "social_functioning": "yellow",
        "network": "green",
        "assessment_year": "2026",
    }
    assessed = await bus.publish("municipality", "brukerplan_assessment", nin, scores)
    await bus.tracked(assessed)
    admitted = await bus.publish(
        "dps", "admission", nin, admission(reason="psychosis", needs_municipal_services=False)
    )
    discharged = await bus.publish(
        "dps",
        "discharge",
        nin,
        {"admission_event_id": admitted, "destination": "homeless", "crisis_plan": False},
    )
    alerts = await bus.alerts_eventually(discharged, "housing_work.discharge_1d", 1)
    await settle()  # past the (shortened) three-day rule's deadline too: it never opened
    assert [(a["recipient_org"], a["nin"]) for a in alerts] == [(ORGS["municipality"], nin)]
    assert await bus.alerts(discharged, "housing_work.discharge_homeless") == []


async def test_five_police_callouts_raise_one_meeting_alert(bus: Bus) -> None:
    """Five callouts for one person within the window: exactly one care-team-meeting alert."""
    nin = random_nin(bus.rng)
    await bus.coordinator(nin)
    start = datetime.now(UTC) - timedelta(days=5)
    callouts = [
        await bus.publish(
            "police", "police_callout", nin, callout(), occurred_at=start + timedelta(days=day)
        )
        for day in range(5)
    ]
    await bus.alerts_eventually(callouts[2], "care_team_meeting.repeated_incidents", 1)
    await settle()
    rows = await bus.conn.fetch(
        "SELECT alert_id, recipient_org FROM alerts WHERE rule_id = $1 AND event_ids && $2",
        "care_team_meeting.repeated_incidents",
        callouts,
    )
    assert [row["recipient_org"] for row in rows] == [ORGS["municipality"]]


async def test_sla_worker_killed_between_trigger_and_deadline(
    bus: Bus, stack: TestStack, services: dict[str, ServiceProcess]
) -> None:
    """SIGKILL after the trigger is applied, restart after the deadline: the alert comes, once."""
    nin = random_nin(bus.rng)
    admitted = await bus.publish("dps", "admission", nin, admission())
    await bus.tracked(admitted)
    sla = services["sla"]
    sla.kill()
    await asyncio.sleep(DEADLINE_S + 1)
    assert await bus.alerts(admitted, "health_info.after_admission") == []
    sla.restart()
    await bus.alerts_eventually(admitted, "health_info.after_admission", 2, timeout_s=180)
    await settle()
    alerts = await bus.alerts(admitted, "health_info.after_admission")
    assert len(alerts) == 2
    assert len({a["alert_id"] for a in alerts}) == 2


def admission_record(bus: Bus, stack: TestStack, **payload: Any) -> tuple[str, str, dict[str, Any]]:
    """(event_id, nin, Avro record) of an admission as the gateway would publish it."""
    nin = random_nin(bus.rng)
    event_id = f"dps-{uuid.uuid4().hex[:16]}"
    event = {
        "event_id": event_id,
        "event_type": "admission",
        "occurred_at": rfc3339(datetime.now(UTC)),
        "source": {"agency": "dps", "org_id": ORGS["dps"]},
        "subject": {"nin": nin},
        "payload": admission(**payload),
    }
    parsed, problems = parse_event(event)
    assert parsed is not None, problems
    secret = stack.settings.subject_key_secret.get_secret_value()
    return (
        event_id,
        nin,
        event_to_record(parsed, subject_key(nin, secret), datetime.now(UTC)),
    )


def produce_records(stack: TestStack, records: list[dict[str, Any] | tuple[bytes, bytes]]) -> None:
    """Straight onto care.events.v1 (past the gateway's checks), in one flush; a (key, value)
    pair is produced as it is."""
    producer = Producer(producer_config(stack.settings, f"test-sla-{uuid.uuid4().hex}"))
    for record in records:
        if isinstance(record, tuple):
            producer.produce(topics.EVENTS, key=record[0], value=record[1])
            continue
        producer.produce(
            topics.EVENTS,
            key=record["subject_key"].encode(),
            value=Codec.default().encode_event(record),
        )
    assert producer.flush(30) == 0


async def test_a_text_postgresql_jsonb_refuses_does_not_stop_the_engine(
    bus: Bus, stack: TestStack
) -> None:
    """An admission whose ward holds U+0000 (valid Avro) is tracked and alerts like any other."""
    event_id, _, record = admission_record(bus, stack, ward="ward 7")
    record["payload"]["ward"] = "ward\x00 7"
    produce_records(stack, [record])
    await bus.alerts_eventually(event_id, "health_info.after_admission", 2)
    later = await bus.publish("dps", "admission", random_nin(bus.rng), admission())
    await bus.tracked(later)


async def test_a_record_the_engine_cannot_apply_is_dead_lettered_and_its_batch_goes_on(
    bus: Bus, stack: TestStack
) -> None:
    """An admission dated 9999-12-31 (valid Avro, but its deadline overflows) and bytes that are
    no Avro between two good admissions, produced together so they share a batch: each bad one
    is dead-lettered exactly once, the others alert."""
    good, poison, also_good = (admission_record(bus, stack) for _ in range(3))
    poison[2]["occurred_at"] = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    garbage_key = f"{uuid.uuid4().hex}{uuid.uuid4().hex}".encode()
    produce_records(stack, [good[2], (garbage_key, b"not avro"), poison[2], also_good[2]])
    for event_id, _, _ in (good, also_good):
        await bus.alerts_eventually(event_id, "health_info.after_admission", 2)
    poison_id, poison_nin, poison_record = poison
    assert await bus.alerts(poison_id) == []
    letters = dead_letters(stack.settings, poison_record["subject_key"].encode(), consumer="sla")
    assert [(letter["reason"], letter["consumer"]) for letter in letters] == [
        ("invalid_record", "sla")
    ]
    assert "OverflowError" in letters[0]["detail"]
    assert poison_nin not in letters[0]["detail"]
    stored = await bus.conn.fetchval(
        "SELECT count(*) FROM sla_persons WHERE subject_key = $1", poison_record["subject_key"]
    )
    assert stored == 0  # its half-applied state was dropped, not written
    garbage = dead_letters(stack.settings, garbage_key, consumer="sla")
    assert [letter["reason"] for letter in garbage] == ["not_single_object"]


async def test_an_emergency_alerts_the_privacy_officer_of_every_party(
    bus: Bus, stack: TestStack
) -> None:
    """A DPS admission disclosed in an emergency to the police and NAV reaches the whole care
    team and the home municipality too: one privacy-officer alert each to the DPS, the police,
    NAV, the municipality (home municipality and coordinator) and the GP in the care team; the
    recipients' alerts name the person and are audited as emergency disclosures; nobody else is
    alerted."""
    event_id, nin, record = admission_record(bus, stack)
    await bus.coordinator(nin)
    await bus.member(nin, "fastlege", "gp")
    named = [{"agency": agency, "org_id": ORGS[agency]} for agency in ("police", "nav")]
    record["emergency"] = {
        "justification": "Risk to life",
        "accountable": "Overlege",
        "recipients": named,
    }
    produce_records(stack, [record])
    parties = ("dps", "police", "nav", "municipality", "fastlege")
    recipients = parties[1:]
    await bus.alerts_eventually(event_id, "emergency_disclosure", len(parties))
    await settle()
    alerts = {a["recipient_org"]: a for a in await bus.alerts(event_id, "emergency_disclosure")}
    assert sorted(alerts) == sorted(ORGS[agency] for agency in parties)
    assert {a["audience"] for a in alerts.values()} == {"privacy_officer"}
    assert [alerts[ORGS[agency]]["nin"] for agency in parties] == [nin] * len(parties)

    audited = await bus.conn.fetch(
        "SELECT recipient_org, basis, emergency FROM disclosures "
        "WHERE event_type = 'alert' AND event_id = $1 AND rule_id = 'sla:emergency_disclosure'",
        event_id,
    )
    assert sorted((row["recipient_org"], row["basis"], row["emergency"]) for row in audited) == (
        sorted((ORGS[agency], "emergency", True) for agency in recipients)
    )

    police_officer = await create_token(
        bus.conn, agency="police", org_id=ORGS["police"], role="privacy_officer"
    )
    response = await bus.inbox.get(
        "/v1/alerts",
        params={"rule_id": "emergency_disclosure"},
        headers={"Authorization": f"Bearer {police_officer}"},
    )
    assert response.status_code == 200, response.text
    (shown,) = [i for i in response.json()["items"] if event_id in i["event_ids"]]
    assert shown["subject"] == {"nin": nin}
    assert shown["recipient"] == {"agency": "police", "org_id": ORGS["police"]}
    assert shown["contact"] == {"agency": "dps", "org_id": ORGS["dps"]}
    coordinator = await bus.inbox.get(
        "/v1/alerts", params={"rule_id": "emergency_disclosure"}, headers=bus.auth("coordinator")
    )
    assert [i for i in coordinator.json()["items"] if event_id in i["event_ids"]] == []
