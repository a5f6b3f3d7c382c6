"""State that can be rebuilt (issue 15, item 4): the router's person state survives the loss of
its changelog and of the expired consent records on care.events.v1, restored from the
registry's compacted snapshots (care.persons.v1) and from `carebus rebuild-state`, which folds
the registry's history and the event store.

Real broker and database: Kafka "loses" care.events.v1 by DeleteRecords up to its end (what
retention does after 90 days) and the router's changelog topic is deleted while it is stopped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from carebus.adapters.auth import create_token
from carebus.adapters.kafka import consumer_config, producer_config
from carebus.adapters.topic_admin import admin_client
from carebus.domain.identity import subject_key
from carebus.domain.records import CONSENT_CHANGE
from carebus.domain.routing import PersonState
from carebus.domain.snapshots import PERSON_SNAPSHOT, snapshot_state
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.stack.postgres import with_user
from carebus_dev.testing import ServiceProcess, TestStack, at_least, routing_failures, run_cli
from tests.integration.test_authority import ORGS, Agencies, admission, plan

pytestmark = pytest.mark.integration

CHANGELOG = "carebus-router-persons-changelog"
GP = ORGS["fastlege"]
YEAR = timedelta(days=365)
CODEC = Codec.default()


@pytest.fixture(scope="module")
def stack() -> Iterator[TestStack]:
    """A broker and database of this module's own: it deletes the records of care.events.v1 and
    the router's changelog, which every other module's readers of the shared stack would see
    (a reader from offset 0 then waits for records that are gone)."""
    with TestStack() as own:
        yield own
        if failed := routing_failures(own.settings):
            pytest.fail(f"the router failed to route records: {failed}")


@pytest.fixture(scope="module")
def services(stack: TestStack) -> Iterator[None]:
    started = [
        stack.start_service(name) for name in ("gateway", "registry", "audit_store", "event_store")
    ]
    yield
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="module")
async def bus(stack: TestStack, services: None) -> AsyncIterator[Agencies]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    tokens = {
        agency: await create_token(conn, agency=agency, org_id=org, role="system")
        for agency, org in ORGS.items()
    }
    tokens["operator"] = await create_token(
        conn, agency="operator", org_id=OPERATOR_ORG, role="operator"
    )
    agencies = Agencies(stack, tokens, conn)
    yield agencies
    await agencies.close()
    await conn.close()


class Router:
    """The router process, started and stopped by the test; stopped at the end."""

    def __init__(self, stack: TestStack) -> None:
        self._stack = stack
        self.process: ServiceProcess | None = None

    def start(self) -> None:
        if self.process is None:
            self.process = self._stack.start_service("router")
        else:
            self.process.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log(self) -> str:
        return "" if self.process is None else self.process.log_text()


@pytest.fixture
def router(stack: TestStack) -> Iterator[Router]:
    running = Router(stack)
    yield running
    running.stop()


def key_of(stack: TestStack, nin: str) -> str:
    return subject_key(nin, stack.settings.subject_key_secret.get_secret_value())


async def with_gp_in_care_team(bus: Agencies) -> str:
    """A person whose GP is in the care team (a municipality's plan names it); their nin."""
    nin = bus.nin()
    await bus.register("/v1/gp-list", {"nin": nin, "org_id": GP})
    await bus.accepted("dps", "admission", nin, admission())
    await bus.accepted(
        "municipality",
        "ip_update",
        nin,
        plan(
            coordinator=("municipality", ORGS["municipality"]),
            participants=(("fastlege", GP),),
        ),
    )
    return nin


async def discharge_ready(bus: Agencies, nin: str) -> str:
    payload = {"admission_event_id": "x", "needs_municipal_services": True}
    return await bus.accepted(
        "dps", "discharge_ready", nin, {**payload, "housing_status": "stable"}
    )


async def gp_decision(bus: Agencies, event_id: str) -> dict[str, Any]:
    """The GP's stored routing decision about `event_id` (once the audit store has it)."""
    decisions = await bus.decisions(event_id, 2)
    assert GP in decisions, decisions
    return decisions[GP]


async def gp_deliveries(bus: Agencies, event_id: str) -> int:
    """How many deliveries of `event_id` to the GP the audit store holds."""
    count = await bus.conn.fetchval(
        "SELECT count(*) FROM deliveries WHERE event_id = $1 AND recipient_org = $2", event_id, GP
    )
    return int(count)


async def objection_a_year_ago(bus: Agencies, stack: TestStack, nin: str) -> None:
    """The patient's objection to the GP as the registry recorded it a year ago: its history
    row, and its ConsentChange on care.events.v1 (written as the registry wrote it then)."""
    key = key_of(stack, nin)
    consent_id = uuid.uuid4()
    recorded_at = datetime.now(UTC) - YEAR
    await bus.conn.execute(
        """
        INSERT INTO consents (consent_id, subject_key, recipient_agency, recipient_org,
            categories, status, valid_from, valid_to, recorded_by, recorded_by_org, recorded_at,
            state, recorded_by_role)
        VALUES ($1, $2, 'fastlege', $3, '{}', 'objection', $4, NULL, 'the patient', $5, $4,
            'effective', 'patient')
        """,
        consent_id,
        key,
        GP,
        recorded_at,
        OPERATOR_ORG,
    )
    record = {
        "change_id": str(consent_id),
        "subject_key": key,
        "recipient": {"agency": "fastlege", "org_id": GP},
        "categories": [],
        "status": "objection",
        "valid_from": recorded_at,
        "valid_to": None,
        "recorded_by": "the patient",
        "recorded_by_org": OPERATOR_ORG,
        "recorded_at": recorded_at,
    }
    producer = Producer(producer_config(stack.settings, "test-registry-a-year-ago"))
    producer.produce(topics.EVENTS, CODEC.encode(CONSENT_CHANGE, record), key.encode())
    assert producer.flush(10) == 0


def lose_kafka_state(stack: TestStack) -> None:
    """What a year does and what a lost changelog does: care.events.v1 emptied up to its end
    (retention), the router's changelog topic deleted (the router must be stopped)."""
    admin = admin_client(stack.settings)
    partitions = admin.list_topics(topics.EVENTS, timeout=10).topics[topics.EVENTS].partitions
    deleted = admin.delete_records(
        [TopicPartition(topics.EVENTS, p, -1) for p in partitions]  # -1: up to the end
    )
    for future in deleted.values():
        future.result(timeout=30)
    for future in admin.delete_topics([CHANGELOG], operation_timeout=30).values():
        future.result(timeout=30)
    _wait_until_gone(admin, CHANGELOG)


def _wait_until_gone(admin: AdminClient, topic: str) -> None:
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{topic} was not deleted"
        time.sleep(0.2)


def latest_snapshots(stack: TestStack, keys: set[str]) -> dict[str, bytes]:
    """The last snapshot on care.persons.v1 of each of `keys`, as the bytes on the topic."""
    consumer = Consumer(consumer_config(stack.settings, f"test-{uuid.uuid4().hex}"))
    try:
        partitions = consumer.list_topics(topics.PERSONS, timeout=10).topics[topics.PERSONS]
        assigned = [
            TopicPartition(topics.PERSONS, p, OFFSET_BEGINNING) for p in partitions.partitions
        ]
        ends = {}
        for tp in assigned:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > low:  # an empty partition has nothing to read
                ends[tp.partition] = high
        consumer.assign(assigned)
        found: dict[str, bytes] = {}
        deadline = time.monotonic() + 30
        while any(
            tp.offset < ends[tp.partition]
            for tp in consumer.position([TopicPartition(topics.PERSONS, p) for p in ends])
        ):
            assert time.monotonic() < deadline, "care.persons.v1 was not read to its end"
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            key, value = message.key(), message.value()
            if key is not None and value is not None and key.decode() in keys:
                found[key.decode()] = value
        return found
    finally:
        consumer.close()


def rebuild_state(stack: TestStack) -> str:
    """`carebus rebuild-state` as the operator runs it, with the operator's database role."""
    env = stack.env(CAREBUS_POSTGRES_DSN=with_user(stack.settings.postgres_dsn, "carebus_operator"))
    done = run_cli(env, "rebuild-state", "--wait", "60")
    assert done.returncode == 0, done.stderr
    return done.stdout


async def stored_events(bus: Agencies, key: str, count: int) -> None:
    """Wait until the event store holds `count` events of the person (rebuild reads them)."""

    async def probe() -> list[dict[str, Any]]:
        rows = await bus.conn.fetch("SELECT event_id FROM events WHERE subject_key = $1", key)
        return [dict(row) for row in rows]

    await at_least(probe, count)


async def test_a_year_old_objection_is_honoured_after_the_changelog_and_its_record_are_lost(
    bus: Agencies, stack: TestStack, router: Router
) -> None:
    """The objection's record expired from Kafka and the router's changelog is gone; after
    `carebus rebuild-state` the restarted router withholds the GP's notice for the objection,
    and the withholding is audited."""
    nin = await with_gp_in_care_team(bus)
    await objection_a_year_ago(bus, stack, nin)
    router.start()
    before = await gp_decision(bus, await discharge_ready(bus, nin))
    assert (before["decision"], before["reason"]) == ("withheld", "objection")
    router.stop()

    lose_kafka_state(stack)
    await stored_events(bus, key_of(stack, nin), 2)
    assert "person snapshots published" in rebuild_state(stack)
    router.start()

    event_id = await discharge_ready(bus, nin)
    after = await gp_decision(bus, event_id)
    assert (after["decision"], after["reason"], after["basis"]) == ("withheld", "objection", None)
    assert await gp_deliveries(bus, event_id) == 0


async def test_a_router_starting_with_an_empty_changelog_reconciles_from_the_snapshots(
    bus: Agencies, stack: TestStack, router: Router
) -> None:
    """No rebuild: the snapshot the registry published with the objection restores it and the
    care team, after care.events.v1 and the changelog are both lost."""
    nin = await with_gp_in_care_team(bus)
    objection = {
        "nin": nin,
        "recipient": {"agency": "fastlege", "org_id": GP},
        "categories": [],
        "status": "objection",
        "valid_from": "2026-01-01T00:00:00+01:00",
        "recorded_by": "lege",
    }
    recorded = await bus.registry.post("/v1/consents", json=objection, headers=bus.auth("dps"))
    assert recorded.status_code == 201, recorded.text
    router.start()
    before = await gp_decision(bus, await discharge_ready(bus, nin))
    assert before["reason"] == "objection"
    router.stop()

    lose_kafka_state(stack)
    router.start()
    event_id = await discharge_ready(bus, nin)
    after = await gp_decision(bus, event_id)
    assert (after["decision"], after["reason"]) == ("withheld", "objection")
    assert await gp_deliveries(bus, event_id) == 0
    assert "person_snapshots_loaded" in router.log()


async def test_rebuild_state_is_idempotent_and_agrees_with_the_registry(
    bus: Agencies, stack: TestStack
) -> None:
    """Two runs publish the same snapshot per person; it is the state the registry judges by
    (person_facts), folded independently from the history and the event store."""
    nin = await with_gp_in_care_team(bus)
    key = key_of(stack, nin)
    await stored_events(bus, key, 2)
    rebuild_state(stack)
    first = latest_snapshots(stack, {key})
    rebuild_state(stack)
    second = latest_snapshots(stack, {key})
    assert first[key] == second[key]

    decoded = CODEC.decode(second[key])
    assert decoded.schema_name == PERSON_SNAPSHOT
    assert decoded.record["origin"] == "rebuild"
    rebuilt = snapshot_state(decoded.record)
    facts = await bus.conn.fetchval("SELECT state FROM person_facts WHERE subject_key = $1", key)
    assert rebuilt == PersonState.from_json(orjson.loads(facts))
    assert rebuilt.gp == GP
    assert GP in rebuilt.team
