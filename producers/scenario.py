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


def person_journeys(
    orgs: dict[str, str], run: str, rng: random.Random
) -> list[tuple[str, dict[str, Any]]]:
    """(agency, event) pairs for three persons, in the order the agencies would post them."""
    oslo = datetime.now(UTC).astimezone().replace(microsecond=0) - timedelta(days=3)
    events: list[tuple[str, dict[str, Any]]] = []

    def event(
        agency: str,
        person: str,
        n: int,
        event_type: str,
        hours: float,
        payload: dict[str, Any],
        nin: str,
    ) -> str:
        event_id = f"{agency}-{orgs[agency]}-{run}-{person}-{n:03d}"
        events.append(
            (
                agency,
                {
                    "event_id": event_id,
                    "event_type": event_type,
                    "occurred_at": _at(oslo, hours),
                    "source": {"agency": agency, "org_id": orgs[agency], "system": "carebus-demo"},
                    "subject": {"nin": nin},
                    "payload": payload,
                },
            )
        )
        return event_id

    municipality = orgs["municipality"]
    for person, reason, housing in (
        ("a", "overdose", "homeless"),
        ("b", "suicide_attempt", "unstable"),
        ("c", "psychosis", "stable"),
    ):
        nin = random_nin(rng)
        admission = event(
            "dps",
            person,
            1,
            "admission",
            0,
            {
                "reason": reason,
                "admission_kind": "voluntary",
                "housing_status": housing,
                "needs_municipal_services": True,
                "home_municipality_org": municipality,
                "ward": "Akuttpost 2",
                "expected_discharge_at": _at(oslo, 72),
            },
            nin,
        )
        event("dps", person, 2, "health_info_sent", 6, {"admission_event_id": admission}, nin)
        if housing == "homeless":
            event(
                "municipality",
                person,
                3,
                "housing_work_started",
                20,
                {"admission_event_id": admission},
                nin,
            )
        ready = event(
            "dps",
            person,
            4,
            "discharge_ready",
            40,
            {
                "admission_event_id": admission,
                "needs_municipal_services": True,
                "housing_status": housing,
            },
            nin,
        )
        event(
            "municipality",
            person,
            5,
            "municipal_reply",
            42,
            {
                "discharge_ready_event_id": ready,
                "can_receive": True,
                "expected_ready_at": _at(oslo, 48),
            },
            nin,
        )
        discharge_payload: dict[str, Any] = {
            "admission_event_id": admission,
            "destination": "municipal_housing",
            "followup_at": _at(oslo, 70),
            "crisis_plan": True,
            "kind": "planned",
            "dps_contact": "Vakthavende sykepleier, Akuttpost 2",
            "crisis_plan_id": f"KP-{run}-{person}",
        }
        if person == "b":
            # The follow-up time is agreed after the discharge was sent, and sent on its own.
            del discharge_payload["followup_at"]
        discharge = event("dps", person, 6, "discharge", 50, discharge_payload, nin)
        if person == "b":
            event(
                "dps",
                person,
                12,
                "followup_scheduled",
                52,
                {
                    "related_event_id": discharge,
                    "followup_at": _at(oslo, 70),
                    "with_org": municipality,
                },
                nin,
            )
        event(
            "dps",
            person,
            7,
            "epikrise_sent",
            52,
            {"admission_event_id": admission, "recipient_org": orgs["fastlege"]},
            nin,
        )
        event(
            "municipality",
            person,
            8,
            "followup_contact",
            60,
            {"related_event_id": discharge, "kind": "home_visit"},
            nin,
        )
        event(
            "police",
            person,
            9,
            "police_callout",
            62,
            {
                "kind": "welfare_check",
                "injuries": False,
                "location_type": "home",
                "housing_unit_id": f"unit-{person}-12",
            },
            nin,
        )
        event(
            "housing",
            person,
            10,
            "housing_incident",
            63,
            {"kind": "noise", "severity": "low", "housing_unit_id": f"unit-{person}-12"},
            nin,
        )
        event(
            "municipality",
            person,
            11,
            "ip_update",
            66,
            {
                "plan_id": f"ip-{run}-{person}",
                "status": "active",
                "coordinator": {"agency": "municipality", "org_id": municipality},
                "participants": [
                    {"agency": "dps", "org_id": orgs["dps"]},
                    {"agency": "fastlege", "org_id": orgs["fastlege"]},
                ],
                "next_review_at": _at(oslo, 24 * 90),
                "crisis_plan": True,
            },
            nin,
        )
    return events


async def play(stack: Stack, run: str, seed: int) -> list[str]:
    """Post every event of the scenario; returns the accepted event ids."""
    accepted: list[str] = []
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
        for agency, body in person_journeys(stack.orgs, run, random.Random(seed)):
            response = await client.post(
                "/v1/events", json=body, headers={"Authorization": f"Bearer {stack.tokens[agency]}"}
            )
            if response.status_code != 202:
                raise SystemExit(
                    f"gateway refused {body['event_id']}: {response.status_code} {response.text}"
                )
            accepted.append(body["event_id"])
    return accepted


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    stack = read_stack()
    run = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    event_ids = asyncio.run(play(stack, run, args.seed))
    print(f"posted {len(event_ids)} events for 3 persons through {stack.gateway}")
    asyncio.run(show_event_store(stack.postgres, event_ids))
    asyncio.run(show_authority(stack, args.seed))


if __name__ == "__main__":
    main()
