"""Router memory: resident set size idle, and with `rss_persons` persons' routing state.

Each person gets what the registry publishes for a typical care team (a municipal
coordinator and a GP; consents for NAV and the housing office) and one admission, which sets
the home municipality. The router keeps one `PersonState` per person in its faust table
(`memory://` store, so in the process's heap; the changelog topic is its backup). RSS is read
once the router's group has committed every record.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

from bench.harness import Bench, Goal, Row, end_offsets, private_stack, produce_all, rss_mib
from bench.replay import CHUNK, GroupProgress, Records, Worker, distinct_persons, produce_built
from bench.workload import Workload
from carebus.domain.records import CARE_TEAM_CHANGE, CONSENT_CHANGE
from carebus.domain.routing import PersonState, apply
from carebus.wire import topics
from carebus_dev.stack.devdata import DEV_ORGANISATIONS
from services.registry.changes import CareTeamChange, Consent, care_team_record, consent_record

SECTION: Final = "memory"
GROUP: Final = "carebus-router"
RECORDS_PER_PERSON: Final = 5  # 2 care-team members, 2 consents, 1 admission
SETTLE_S: Final = 5.0  # after the group is stable / caught up, before RSS is read
MIN_RATE: Final = 200.0  # records/s below which the router is given up as stuck

_workload: Workload | None = None
_persons: list[int] = []


def _start_builder(secret: str, persons: int) -> None:
    global _workload, _persons
    _workload, _persons = distinct_persons(secret, persons)


def _people(start: int) -> Records:
    """The records of persons start/RECORDS_PER_PERSON … for CHUNK records' worth of persons."""
    assert _workload is not None
    first = start // RECORDS_PER_PERSON
    last = min(len(_persons), (start + CHUNK) // RECORDS_PER_PERSON)
    records: Records = []
    for person in _persons[first:last]:
        records += person_records(_workload, person)
    return records


def person_records(workload: Workload, person: int) -> Records:
    """One person's care team and consents as the registry publishes them, then an admission."""
    codec = workload.codec
    orgs = DEV_ORGANISATIONS
    nin, key = workload.nins[person], workload.keys[person]
    since = datetime.now(UTC) - timedelta(days=30)
    records: Records = []
    for step, (agency, role) in enumerate((("municipality", "coordinator"), ("fastlege", "gp"))):
        change = care_team_record(
            CareTeamChange(nin, agency, orgs[agency], role, "member"),
            change_id=str(uuid.uuid4()),
            subject_key=key.decode(),
            recorded_by_org=orgs["municipality"],
            recorded_at=since + timedelta(seconds=step),
        )
        records.append((key, codec.encode(CARE_TEAM_CHANGE, change)))
    for step, agency in enumerate(("nav", "housing"), start=2):
        consent = consent_record(
            Consent(
                nin=nin,
                recipient_agency=agency,
                recipient_org=orgs[agency],
                categories=("logistics", "social"),
                status="given",
                valid_from=since,
                valid_to=None,
                recorded_by="bench",
            ),
            consent_id=str(uuid.uuid4()),
            subject_key=key.decode(),
            recorded_by_org=orgs["municipality"],
            recorded_at=since + timedelta(seconds=step),
        )
        records.append((key, codec.encode(CONSENT_CHANGE, consent)))
    records.append(workload.record(person))  # index < persons: the workload's admission
    return records


def state_bytes(workload: Workload) -> int:
    """The size of one person's state as the router's table stores it (JSON bytes)."""
    state = PersonState()
    for _key, value in person_records(workload, 0):
        decoded = workload.codec.decode(value)
        state = apply(state, decoded.schema_name, decoded.record)
    return len(json.dumps(state.to_json(), separators=(",", ":")).encode())


def run(bench: Bench) -> None:
    persons = bench.scale.rss_persons
    count = persons * RECORDS_PER_PERSON
    with private_stack() as stack:
        secret = stack.settings.subject_key_secret.get_secret_value()
        router = Worker(stack, "router")
        # One admission of a person outside the measured ones: once the router has committed
        # it, it holds its partitions and is consuming.
        produce_all(stack, [Workload(secret, 1, seed=7).record(0)])
        progress = GroupProgress(stack, GROUP, topics.EVENTS)
        progress.wait_for(1, 120, router)
        time.sleep(SETTLE_S)
        idle = rss_mib(router.process.pid)
        bench.add(
            Row(
                SECTION,
                "router RSS, idle",
                idle,
                "MiB",
                key="router.rss_idle",
                note="started, holding its partitions, one person",
            )
        )
        produced_s = produce_built(stack, _people, count, _start_builder, (secret, persons))
        end = end_offsets(stack, topics.EVENTS)
        if end != count + 1:
            raise RuntimeError(f"{end:,} records on {topics.EVENTS}, expected {count + 1:,}")
        bench.echo(f"   {count:,} records built and produced in {produced_s:.0f} s")
        produced = time.perf_counter()
        progress.wait_for(count + 1, 120 + count / MIN_RATE, router)
        caught_up_s = time.perf_counter() - produced
        progress.close()
        time.sleep(SETTLE_S)
        loaded = rss_mib(router.process.pid)
        per_person = state_bytes(Workload(secret, 1))
        bench.add(
            Row(
                SECTION,
                f"router RSS with {persons:,} persons",
                loaded,
                "MiB",
                baseline="router.rss_idle",
                goal=Goal("<=", 500),
                note=(
                    f"{(loaded - idle) * 1024 * 1024 / persons:,.0f} B per person over idle; "
                    f"state per person: 2 care-team members, 2 consents, home municipality "
                    f"= {per_person} B of JSON under a 64-byte subject key; "
                    f"{count:,} records applied, caught up {caught_up_s:.0f} s after the last "
                    f"was produced{router.note()}"
                ),
            )
        )
