"""The demo scenario: a few persons moving through admission, discharge, police contact and
housing incidents, posted through the gateway exactly as agency systems would post them."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from carebus.domain.identity import random_nin


@dataclass(frozen=True)
class Stack:
    gateway: str
    registry: str
    postgres: str
    tokens: dict[str, str]
    orgs: dict[str, str]


def read_stack() -> Stack:
    """What `carebus status --json` says about the running local stack."""
    carebus = Path(sys.executable).with_name("carebus")
    status = json.loads(
        subprocess.run(
            [str(carebus), "status", "--json"], check=False, capture_output=True, text=True
        ).stdout
    )
    tokens = status["dev_tokens"]
    return Stack(
        status["services"]["gateway"],
        status["services"]["registry"],
        status["postgres"],
        {k: v for k, v in tokens.items() if isinstance(v, str)},
        tokens["orgs"],
    )


def _at(base: datetime, hours: float) -> str:
    return (base + timedelta(hours=hours)).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Journey:
    """One person's path: why they were admitted, how they live, and what the demo shows."""

    person: str
    reason: str
    housing: str
    destination: str
    # Hours before now at which the journey starts and ends. Each person's times differ, so no
    # two alerts read alike, and every deadline is still ahead when its trigger arrives except
    # the one breach a journey shows on purpose: a demo played in fast-forward, never
    # backdated wholesale (a backdated trigger breaches at once, as DESIGN says it must).
    starts_h: float
    ends_h: float
    kind: str  # of the discharge
    followup_agreed: bool  # the DPS agreed a follow-up time before discharge
    followed_up: bool  # the municipality reports the follow-up contact
    municipality_replies: bool  # to the discharge-ready notice, in time
    shows: str  # what the coordinator sees for this person, printed after the run


JOURNEYS: tuple[Journey, ...] = (
    Journey(
        person="a",
        reason="overdose",
        housing="homeless",
        destination="homeless",
        starts_h=4.0,
        ends_h=0.1,
        kind="planned",
        followup_agreed=True,
        followed_up=True,
        municipality_replies=True,
        shows="a notice at discharge (resolved by the follow-up contact), an open "
        "housing-work obligation due within a day of a discharge to homelessness (Brukerplan "
        "housing red), an open three-month obligation for the emergency shelter stay, and a "
        "release from prison announced for ten days ahead, told with the person's consent "
        "(justice), and the GP's somatic check (the next one due in a year) with its referral "
        "sent",
    ),
    Journey(
        person="b",
        reason="possible_suicide_attempt",
        housing="unstable",
        destination="home",
        starts_h=3.5,
        ends_h=0.3,
        kind="planned",
        followup_agreed=False,
        followed_up=False,
        municipality_replies=True,
        shows="an open notice: discharged after a possible suicide attempt, the follow-up "
        "time sent on its own, no follow-up contact yet, and a contact owed in the fifth week "
        "(follow-up for at least a month); a stay at a low-threshold place ended "
        "by the admission, and rent arrears reported: a follow-up owed within seven days",
    ),
    Journey(
        person="c",
        reason="psychosis",
        housing="stable",
        destination="municipal_housing",
        starts_h=7.0,
        ends_h=0.6,
        kind="self_discharge",
        followup_agreed=True,
        followed_up=True,
        municipality_replies=False,
        shows="a missed deadline: no reply to the discharge-ready notice within four hours; "
        "then the DPS reports the treatment broken off: a follow-up owed within 48 hours",
    ),
)


BRUKERPLAN_RED_HOUSING: dict[str, Any] = {
    "housing": "red",
    "meaningful_activity": "yellow",
    "finances": "red",
    "physical_health": "yellow",
    "mental_health": "yellow",
    "substance_use": "red",
    "social_functioning": "yellow",
    "network": "yellow",
    "assessment_year": "2026",
}


def person_journeys(
    orgs: dict[str, str], run: str, rng: random.Random
) -> list[tuple[str, dict[str, Any]]]:
    """(agency, event) pairs for the persons of JOURNEYS, in the order agencies post them."""
    now = datetime.now(UTC).astimezone().replace(microsecond=0)
    events: list[tuple[str, dict[str, Any]]] = []
    municipality = orgs["municipality"]
    for journey in JOURNEYS:
        nin = random_nin(rng)
        base = now - timedelta(hours=journey.starts_h)
        span = journey.starts_h - journey.ends_h
        person = journey.person

        def at(share: float, span: float = span) -> float:
            """Hours after the journey's start, `share` of the way through it."""
            return share * span

        def event(
            agency: str,
            n: int,
            event_type: str,
            hours: float,
            payload: dict[str, Any],
            person: str = person,
            nin: str = nin,
            base: datetime = base,
        ) -> str:
            event_id = f"{agency}-{orgs[agency]}-{run}-{person}-{n:03d}"
            source = {"agency": agency, "org_id": orgs[agency], "system": "carebus-demo"}
            events.append(
                (
                    agency,
                    {
                        "event_id": event_id,
                        "event_type": event_type,
                        "occurred_at": _at(base, hours),
                        "source": source,
                        "subject": {"nin": nin},
                        "payload": payload,
                    },
                )
            )
            return event_id

        admission = event(
            "dps",
            1,
            "admission",
            at(0.0),
            {
                "reason": journey.reason,
                "admission_kind": "voluntary",
                "housing_status": journey.housing,
                "needs_municipal_services": True,
                "home_municipality_org": municipality,
                "ward": "Akuttpost 2",
                "expected_discharge_at": _at(base, 72),
            },
        )
        event("dps", 2, "health_info_sent", at(0.1), {"admission_event_id": admission})
        if person == "a":
            # The person consents that the municipality learn of a release from prison (a
            # category of its own); the admitting DPS records it, so it takes effect at once.
            consent = {
                "nin": nin,
                "recipient": {"agency": "municipality", "org_id": municipality},
                "categories": ["justice", "social"],
                "status": "given",
                "valid_from": _at(base, 0),
                "recorded_by": "Demo DPS, Akuttpost 2",
            }
            events.append(("dps", {"consent": consent}))
        if journey.housing == "homeless":
            event(
                "municipality",
                3,
                "housing_work_started",
                at(0.2),
                {"admission_event_id": admission},
            )
        ready = event(
            "dps",
            4,
            "discharge_ready",
            at(0.3),
            {
                "admission_event_id": admission,
                "needs_municipal_services": True,
                "housing_status": journey.housing,
            },
        )
        if journey.municipality_replies:
            event(
                "municipality",
                5,
                "municipal_reply",
                at(0.35),
                {
                    "discharge_ready_event_id": ready,
                    "can_receive": True,
                    "expected_ready_at": _at(base, at(0.5)),
                },
            )
        if journey.housing == "homeless":
            # The municipality's Brukerplan survey: housing red, so a homeless discharge owes
            # housing work within a day rather than three.
            event("municipality", 13, "brukerplan_assessment", at(0.5), BRUKERPLAN_RED_HOUSING)
        discharge_payload: dict[str, Any] = {
            "admission_event_id": admission,
            "destination": journey.destination,
            "crisis_plan": True,
            "kind": journey.kind,
            "dps_contact": "Vakthavende sykepleier, Akuttpost 2, tlf. 22 00 00 00",
            "crisis_plan_id": f"KP-{run}-{person}",
        }
        if journey.followup_agreed:
            discharge_payload["followup_at"] = _at(now, 20)
        discharge = event("dps", 6, "discharge", at(0.6), discharge_payload)
        if not journey.followup_agreed:
            # The follow-up time is agreed after the discharge was sent, and sent on its own.
            event(
                "dps",
                12,
                "followup_scheduled",
                at(0.7),
                {
                    "related_event_id": discharge,
                    "followup_at": _at(now, 20),
                    "with_org": municipality,
                },
            )
        if journey.housing == "unstable":
            # Before the admission the person stayed at a low-threshold place, left for the
            # ward (the three-month obligation closes); the landlord of the flat they rent now
            # reports rent arrears: the municipality owes a follow-up within seven days.
            earlier = {"stay_id": f"LT-{run}-{person}", "housing_kind": "low_threshold"}
            event("municipality", 16, "temporary_housing_started", at(0.01), earlier)
            ended = {"stay_id": f"LT-{run}-{person}", "outcome": "institution"}
            event("municipality", 17, "temporary_housing_ended", at(0.02), ended)
            at_risk = {"cause": "rent_arrears", "housing_unit_id": f"unit-{person}-12"}
            event("housing", 18, "tenancy_at_risk", at(0.9), at_risk)
        if journey.destination == "homeless":
            stay = {"stay_id": f"TB-{run}-{person}", "housing_kind": "emergency_shelter"}
            event("municipality", 14, "temporary_housing_started", at(0.75), stay)
            waiting = {"application_id": f"APP-{run}-{person}", "housing_kind": "supported"}
            event("municipality", 15, "housing_waitlisted", at(0.78), waiting)
        event(
            "dps",
            7,
            "epikrise_sent",
            at(0.65),
            {"admission_event_id": admission, "recipient_org": orgs["fastlege"]},
        )
        if journey.followed_up:
            event(
                "municipality",
                8,
                "followup_contact",
                at(0.8),
                {"related_event_id": discharge, "kind": "home_visit"},
            )
        event(
            "police",
            9,
            "police_callout",
            at(0.85),
            {
                "kind": "welfare_check",
                "injuries": False,
                "location_type": "home",
                "housing_unit_id": f"unit-{person}-12",
                # a, b and c live at one housing site: three callouts there within a day
                # raise one place alert to its owner and one to the municipality.
                "housing_site_id": f"site-{run}",
            },
        )
        event(
            "housing",
            10,
            "housing_incident",
            at(0.9),
            {"kind": "noise", "severity": "low", "housing_unit_id": f"unit-{person}-12"},
        )
        event(
            "municipality",
            11,
            "ip_update",
            at(1.0),
            {
                "plan_id": f"ip-{run}-{person}",
                "status": "active",
                "coordinator": {"agency": "municipality", "org_id": municipality},
                "participants": [
                    {"agency": "dps", "org_id": orgs["dps"]},
                    {"agency": "fastlege", "org_id": orgs["fastlege"]},
                ],
                "next_review_at": _at(now, 24 * 90),
                "crisis_plan": True,
            },
        )
        if journey.kind == "self_discharge":
            # The outpatient treatment after the self-discharge is broken off too: the care
            # team (the plan's coordinator and GP) learns it and owes a follow-up in 48 hours.
            event(
                "dps",
                13,
                "treatment_interrupted",
                at(1.0),
                {"treatment_id": f"TI-{run}-{person}", "kind": "missed_appointments"},
            )
        if person == "a":
            release = {
                "release_at": _at(now, 24 * 10),
                "home_municipality_org": municipality,
                "needs_municipal_services": True,
                "housing_status": "homeless",
            }
            event("corrections", 14, "prison_release", at(1.0), release)
        if person == "a":
            # The GP checks person a's physical health after the plan was made and finds a
            # referral needed; the referral follows "a week later" (in fast-forward).
            check = event(
                "fastlege",
                15,
                "somatic_check_done",
                at(1.0) + 0.02,
                {"kind": "annual", "referral_needed": True},
            )
            event(
                "fastlege",
                16,
                "somatic_referral",
                at(1.0) + 0.05,
                {"referral_id": f"HV-{run}-{person}", "to": "dental", "related_event_id": check},
            )
    return events


async def play(stack: Stack, run: str, seed: int) -> list[str]:
    """Post every event of the scenario (and the consents, to the registry, in their place),
    then person a's contact persons; returns the accepted event ids."""
    accepted: list[str] = []
    journeys = person_journeys(stack.orgs, run, random.Random(seed))
    place = {"housing_site_id": f"site-{run}", "owner_org": stack.orgs["housing"]}
    place["municipality_org"] = stack.orgs["municipality"]
    async with httpx.AsyncClient(timeout=30) as client:  # the persons' housing site
        headers = {"Authorization": f"Bearer {stack.tokens['operator']}"}
        response = await client.post(
            f"{stack.registry}/v1/housing-places", json=place, headers=headers
        )
        if response.status_code != 201:
            raise SystemExit(f"registry refused the housing place: {response.text}")
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
        for agency, body in journeys:
            headers = {"Authorization": f"Bearer {stack.tokens[agency]}"}
            if "consent" in body:
                recorded = await client.post(
                    f"{stack.registry}/v1/consents", json=body["consent"], headers=headers
                )
                if recorded.status_code != 201:
                    raise SystemExit(f"registry refused a consent: {recorded.status_code}")
                continue
            response = await client.post("/v1/events", json=body, headers=headers)
            if response.status_code != 202:
                raise SystemExit(
                    f"gateway refused {body['event_id']}: {response.status_code} {response.text}"
                )
            accepted.append(body["event_id"])
    person_a = next(body for _, body in journeys if f"-{run}-a-" in str(body.get("event_id", "")))
    await name_contacts(stack, person_a["subject"]["nin"])
    return accepted


async def name_contacts(stack: Stack, nin: str) -> None:
    """Issue 17, item 4: for person a, the demo municipality (its coordinator) names the DPS the
    pathway coordinator, then its own coordinator and deputy; the DPS its pathway coordinator
    with an HPR number. The inbox names them on the alerts about person a."""
    dps, municipality = stack.orgs["dps"], stack.orgs["municipality"]
    team = {"nin": nin, "agency": "dps", "org_id": dps, "role": "pathway_coordinator"}
    named = {"nin": nin, "position": "accountable", "status": "active"}
    statements = [
        ("municipality", "/v1/care-teams", {**team, "status": "member"}),
        ("municipality", "/v1/care-teams/contacts", {**named, "org_id": municipality,
         "role": "coordinator", "name": "Kari Koordinator (demo)"}),
        ("municipality", "/v1/care-teams/contacts", {**named, "org_id": municipality,
         "role": "coordinator", "position": "deputy", "name": "Per Vara (demo)"}),
        ("dps", "/v1/care-teams/contacts", {**named, "org_id": dps, "role": "pathway_coordinator",
         "name": "Lege Forløp (demo)", "hpr_number": "9876543"}),
    ]  # fmt: skip
    async with httpx.AsyncClient(base_url=stack.registry, timeout=30) as client:
        for who, path, body in statements:
            headers = {"Authorization": f"Bearer {stack.tokens[who]}"}
            response = await client.post(path, json=body, headers=headers)
            if response.status_code != 201:
                raise SystemExit(f"registry refused {path}: {response.status_code} {response.text}")
    print("person a: the municipality named its coordinator and deputy, the DPS its pathway"
          " coordinator (HPR 9876543); the inbox names them on person a's alerts")  # fmt: skip


async def show_event_store(dsn: str, event_ids: list[str], timeout_s: float = 30.0) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        rows: list[asyncpg.Record] = []
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT event_id, event_type, source_agency, occurred_at,"
                " left(subject_key, 12) AS sk"
                " FROM events WHERE event_id = ANY($1) ORDER BY subject_key, occurred_at",
                event_ids,
            )
            if len(rows) == len(event_ids):
                break
            await asyncio.sleep(0.5)
        print(f"\nevent store: {len(rows)} of {len(event_ids)} scenario events stored")
        print(
            f"{'subject key':<14} {'occurred at (UTC)':<20} {'source':<13} {'event type':<22} "
            "event id"
        )
        for row in rows:
            print(
                f"{row['sk']:<14} {row['occurred_at']:%Y-%m-%d %H:%M}     "
                f"{row['source_agency']:<13} {row['event_type']:<22} {row['event_id']}"
            )
        if len(rows) != len(event_ids):
            raise SystemExit("not every scenario event reached the event store; see `carebus logs`")
        admission = next((r["event_id"] for r in rows if r["event_type"] == "admission"), None)
        if admission is not None:
            print(f"\nfollow one event through the bus: .venv/bin/carebus trace {admission}")
    finally:
        await conn.close()


async def show_authority(stack: Stack, seed: int) -> None:
    """Two statements no organisation may make, refused as the authority policy says: the
    police naming itself a person's coordinator, NAV granting itself consent."""
    nin = random_nin(random.Random(seed + 1))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    police = stack.orgs["police"]
    attempts = [
        (
            "police names itself coordinator in a plan",
            f"{stack.gateway}/v1/events",
            "police",
            {
                "event_id": f"police-demo-{seed}",
                "event_type": "ip_update",
                "occurred_at": now,
                "source": {"agency": "police", "org_id": police},
                "subject": {"nin": nin},
                "payload": {
                    "plan_id": "demo",
                    "status": "active",
                    "coordinator": {"agency": "police", "org_id": police},
                    "participants": [],
                    "next_review_at": now,
                    "crisis_plan": False,
                },
            },
        ),
        (
            "NAV records consent for itself",
            f"{stack.registry}/v1/consents",
            "nav",
            {
                "nin": nin,
                "recipient": {"agency": "nav", "org_id": stack.orgs["nav"]},
                "categories": ["health"],
                "status": "given",
                "valid_from": now,
                "recorded_by": "demo",
            },
        ),
    ]
    print("\nauthority (policy/authority.yaml): who may say what about a person")
    async with httpx.AsyncClient(timeout=30) as client:
        for what, url, who, body in attempts:
            headers = {"Authorization": f"Bearer {stack.tokens[who]}"}
            response = await client.post(url, json=body, headers=headers)
            if response.status_code != 403:
                raise SystemExit(f"{what}: expected 403, got {response.status_code}")
            print(f"  refused: {what}: {response.json()['error']['message']}")
    print(
        "  every refusal is audited on care.audit.refusals.v1 and counted in"
        " carebus_authority_refusals_total"
    )


def run_id(now: datetime) -> str:
    """This run's id, in every event id and site id of the demo: no run of 11 digits, so it can
    never embed a national identity number (carebus.domain.text.embeds_nin)."""
    return now.strftime("%Y%m%d-%H%M%S")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    stack = read_stack()
    # Date and time apart: 14 digits in a row held a valid fødselsnummer in 730 seconds of
    # 2026-12-07 (from 22:30:00, "…1207223000…"), and carebus refuses an id that embeds one.
    run = run_id(datetime.now(UTC))
    event_ids = asyncio.run(play(stack, run, args.seed))
    print(f"posted {len(event_ids)} events for {len(JOURNEYS)} persons through {stack.gateway}")
    print("what the demo municipality's coordinator sees in the inbox:")
    for journey in JOURNEYS:
        print(f"  person {journey.person}: {journey.shows}")
    print(
        f"  housing site site-{run}: one alert naming no one, three police callouts there"
        " within a day (the housing organisation gets its own)"
    )
    asyncio.run(show_event_store(stack.postgres, event_ids))
    asyncio.run(show_authority(stack, args.seed))


if __name__ == "__main__":
    main()
