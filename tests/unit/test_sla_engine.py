"""The SLA engine against an in-memory unit of work, a fake publisher and a fake broker.

No Kafka, no PostgreSQL: `FakeSlaStore` keeps the engine's state as the real store does (JSON,
committed only when the transaction ends without an error), so what the engine decides, saves,
publishes and dead-letters is checked in milliseconds. tests/integration/test_sla.py runs the
same engine against the real database and broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import orjson
import pytest

from carebus.adapters.deadletter import DeadLetterPolicy
from carebus.adapters.outages import OUTAGES
from carebus.adapters.publisher import Acknowledged, BrokerUnavailableError, OutgoingRecord
from carebus.domain.events import event_to_record, parse_event
from carebus.domain.identity import subject_key
from carebus.domain.obligations import SlaState
from carebus.domain.places import PlaceOwners, PlaceState, place_key
from carebus.domain.records import ALERT
from carebus.domain.routing import PersonState
from carebus.runtime import metrics
from carebus.runtime.config import PROJECT_ROOT
from carebus.runtime.retry import RetryPolicy
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus.wire.policy_files import load_policy, load_rules
from carebus_dev.testing import EventFactory
from services.sla import app as sla_app
from services.sla.app import SlaEngine
from services.sla.store import Persons, Place, Places

CODEC = Codec.default()
SECRET = "unit-test-secret"
RULES = load_rules(PROJECT_ROOT / "policy" / "sla.yaml")
POLICY = load_policy(PROJECT_ROOT / "policy" / "routing.yaml")
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
RULE = "municipal_reply.discharge_ready"  # 4 hours from discharge_ready to municipal_reply


@dataclass
class Stored:
    persons: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # routing, state JSON
    offsets: dict[Place, int] = field(default_factory=dict)
    deadlines: dict[str, dict[str, datetime]] = field(default_factory=dict)
    places: dict[str, bytes] = field(default_factory=dict)  # place key -> state JSON

    def copy(self) -> Stored:
        return Stored(
            dict(self.persons),
            dict(self.offsets),
            {key: dict(rows) for key, rows in self.deadlines.items()},
            dict(self.places),
        )


class FakeTransaction:
    def __init__(self, store: FakeSlaStore, working: Stored) -> None:
        self._store = store
        self._working = working

    async def claim_offsets(self, topics_: Sequence[str]) -> dict[Place, int]:
        return {place: o for place, o in self._working.offsets.items() if place[0] in topics_}

    async def save_offsets(self, latest: Mapping[Place, int]) -> None:
        self._working.offsets.update(latest)

    async def load(self, subject_keys: Sequence[str], *, skip_locked: bool = False) -> Persons:
        self._store.loads.append(list(subject_keys))
        return {
            key: (
                PersonState.from_json(orjson.loads(self._working.persons[key][0])),
                SlaState.from_json(orjson.loads(self._working.persons[key][1])),
            )
            for key in subject_keys
            if key in self._working.persons
        }

    async def save(self, persons: Persons) -> None:
        for key, (routing, state) in persons.items():
            if key in self._store.refuse:
                raise asyncpg.exceptions.CharacterNotInRepertoireError("refused")
            self._working.persons[key] = (
                orjson.dumps(routing.to_json()),
                orjson.dumps(state.to_json()),
            )
            self._working.deadlines[key] = state.deadlines()

    async def load_places(self, place_keys: Sequence[str]) -> Places:
        return {
            key: (
                PlaceState.from_json(orjson.loads(self._working.places.get(key, b"{}"))),
                self._store.owners.get(key),
            )
            for key in place_keys
        }

    async def places_counting(self, event_ids: Sequence[str]) -> list[str]:
        return [
            key
            for key, state in self._working.places.items()
            if any(orjson.dumps(event_id) in state for event_id in event_ids)
        ]

    async def save_places(self, places: Mapping[str, PlaceState]) -> None:
        for key, state in places.items():
            self._working.places[key] = orjson.dumps(state.to_json())

    async def due(self, now: datetime, limit: int) -> list[str]:
        first = {
            key: min(rows.values())
            for key, rows in self._working.deadlines.items()
            if rows and min(rows.values()) <= now
        }
        return sorted(first, key=first.__getitem__)[:limit]


class FakeSlaStore:
    """The engine's unit of work in memory: a transaction's changes exist only once it ends
    without an error; `outages` transactions fail first as an unreachable database does."""

    def __init__(self) -> None:
        self.committed = Stored()
        self.refuse: set[str] = set()
        self.outages = 0
        self.loads: list[list[str]] = []
        self.owners: dict[str, PlaceOwners] = {}  # the registry's housing places

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        if self.outages:
            self.outages -= 1
            raise ConnectionRefusedError("database down")
        working = self.committed.copy()
        yield FakeTransaction(self, working)
        self.committed = working

    async def open_obligations(self) -> dict[str, tuple[int, int]]:
        return {}

    def state(self, key: str) -> SlaState:
        return SlaState.from_json(orjson.loads(self.committed.persons[key][1]))


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[OutgoingRecord] = []
        self.failures = 0

    async def publish(self, records: Sequence[OutgoingRecord]) -> list[Acknowledged]:
        await self.publish_all(records)
        return [Acknowledged(r.topic, 0, n) for n, r in enumerate(records)]

    async def publish_all(self, records: Sequence[OutgoingRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailableError("broker down")
        self.published.extend(records)

    def alerts(self) -> list[dict[str, Any]]:
        return [CODEC.decode(r.value).record for r in self.published if r.topic == topics.ALERTS]


class FakeProducer:
    """A broker that acknowledges every dead letter when flushed."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self._reports: list[Any] = []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: Any = None,
    ) -> None:
        self.sent.append((topic, key, value))
        self._reports.append(on_delivery)

    def poll(self, timeout: float = 0.0) -> int:
        return self.flush(timeout)

    def flush(self, timeout: float = 0.0) -> int:
        reports, self._reports = self._reports, []
        for report in reports:
            report(None, None)
        return 0

    def letters(self) -> list[dict[str, Any]]:
        return [CODEC.decode(value or b"").record for _, _, value in self.sent]


class Engine:
    """The engine with its fakes and a clock the test moves."""

    def __init__(self) -> None:
        self.now = NOW
        self.store = FakeSlaStore()
        self.publisher = FakePublisher()
        self.broker = FakeProducer()
        self.engine = SlaEngine(
            RULES,
            POLICY,
            CODEC,
            store=self.store,
            publisher=self.publisher,
            dead_letters=DeadLetterPolicy(self.broker, CODEC, "sla"),
            clock=lambda: self.now,
            place_secret=SECRET.encode(),
        )
        self.offset = 0

    def message(self, value: bytes, key: bytes) -> Any:
        self.offset += 1
        return SimpleNamespace(
            key=key, value=value, topic=topics.EVENTS, partition=0, offset=self.offset
        )

    async def feed(self, *messages: Any) -> None:
        batch: list[Any] = [SimpleNamespace(message=m) for m in messages]
        await self.engine.handle_batch(batch)


FACTORY = EventFactory(seed=13)
NIN = FACTORY.nin()
KEY = subject_key(NIN, SECRET)


def encoded(event_type: str, *, at: datetime = NOW, nin: str = NIN, **payload: Any) -> bytes:
    event = FACTORY.event(event_type, nin=nin, occurred_at=at - timedelta(minutes=1), **payload)
    parsed, problems = parse_event(event)
    assert parsed is not None, problems
    return CODEC.encode_event(event_to_record(parsed, subject_key(nin, SECRET), at))


def event_id(value: bytes) -> str:
    return str(CODEC.decode(value).record["event_id"])


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sla_app, "BATCH_RETRY", RetryPolicy(OUTAGES, initial_s=0.001))


async def test_a_trigger_opens_an_obligation_and_records_its_offset() -> None:
    world = Engine()
    await world.feed(world.message(encoded("discharge_ready"), KEY.encode()))

    deadlines = world.store.committed.deadlines[KEY]
    assert [oid.split(":")[0] for oid in deadlines] == [RULE]
    assert list(deadlines.values()) == [NOW - timedelta(minutes=1) + timedelta(hours=4)]
    assert world.store.committed.offsets == {(topics.EVENTS, 0): 1}
    assert world.publisher.published == []


async def test_a_replayed_record_is_skipped() -> None:
    world = Engine()
    message = world.message(encoded("discharge_ready"), KEY.encode())
    await world.feed(message)
    before = world.store.committed.copy()

    await world.feed(message)  # faust delivers at least once

    assert world.store.loads[-1] == []  # nothing fresh: no person even loaded
    assert world.store.committed == before


async def test_the_scan_breaches_a_due_obligation_once() -> None:
    world = Engine()
    await world.feed(world.message(encoded("discharge_ready"), KEY.encode()))

    world.now = NOW + timedelta(hours=3)
    assert await world.engine.scan() == 0
    world.now = NOW + timedelta(hours=5)
    published = await world.engine.scan()

    alerts = world.publisher.alerts()
    assert published == len(alerts) > 0
    assert {(a["rule_id"], a["status"]) for a in alerts} == {(RULE, "open")}
    assert world.store.committed.deadlines[KEY] == {}  # breached: out of the index
    assert await world.engine.scan() == 0  # a second scan finds nothing due


async def test_a_fulfilment_in_time_raises_nothing() -> None:
    world = Engine()
    trigger = encoded("discharge_ready")
    reply = encoded(
        "municipal_reply", at=NOW + timedelta(hours=1), discharge_ready_event_id=event_id(trigger)
    )
    await world.feed(world.message(trigger, KEY.encode()), world.message(reply, KEY.encode()))

    world.now = NOW + timedelta(days=2)
    assert await world.engine.scan() == 0
    assert world.publisher.published == []


async def test_an_undecodable_record_is_dead_lettered_and_the_rest_applied() -> None:
    world = Engine()
    other = FACTORY.nin()
    await world.feed(
        world.message(b"\x00not avro", KEY.encode()),
        world.message(encoded("discharge_ready", nin=other), subject_key(other, SECRET).encode()),
    )

    [letter] = world.broker.letters()
    assert letter["consumer"] == "sla"
    assert letter["source_offset"] == 1
    assert subject_key(other, SECRET) in world.store.committed.persons
    assert world.store.committed.offsets == {(topics.EVENTS, 0): 2}


async def test_a_state_the_database_refuses_dead_letters_only_its_record() -> None:
    world = Engine()
    other = FACTORY.nin()
    other_key = subject_key(other, SECRET)
    world.store.refuse.add(KEY)

    await world.feed(
        world.message(encoded("discharge_ready"), KEY.encode()),
        world.message(encoded("discharge_ready", nin=other), other_key.encode()),
    )

    [letter] = world.broker.letters()
    assert letter["reason"] == "invalid_record"
    assert letter["detail"] == "sla state not storable: CharacterNotInRepertoireError"
    assert letter["original_key"] == KEY.encode()
    assert KEY not in world.store.committed.persons
    assert other_key in world.store.committed.persons


async def test_a_database_outage_is_waited_out() -> None:
    world = Engine()
    world.store.outages = 3

    await world.feed(world.message(encoded("discharge_ready"), KEY.encode()))

    assert world.store.outages == 0
    assert KEY in world.store.committed.persons
    assert world.broker.sent == []  # an outage is never a dead letter


async def test_alerts_are_out_before_the_state_that_raised_them_is_saved() -> None:
    """A backdated trigger alerts at once; while the broker refuses the alert, nothing is
    saved, so a crash meanwhile raises it again instead of losing it."""
    world = Engine()
    world.publisher.failures = 2
    late = encoded("discharge_ready", at=NOW - timedelta(hours=6))

    await world.feed(world.message(late, KEY.encode()))

    alerts = world.publisher.alerts()
    assert alerts
    assert {a["status"] for a in alerts} == {"open"}
    assert world.store.committed.offsets == {(topics.EVENTS, 0): 1}
    # Published once, after the two refusals: the failed attempts left nothing behind.
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
    assert all(r.key == KEY.encode() for r in world.publisher.published)
    assert {CODEC.decode(r.value).schema_name for r in world.publisher.published} == {ALERT}


PLACE = place_key("site:site-13", SECRET.encode())
PLACE_RULE = "place.repeated_incidents"


def callout(number: int) -> Any:
    nin = FACTORY.nin()
    return encoded(
        "police_callout",
        at=NOW + timedelta(minutes=number),
        nin=nin,
        housing_site_id="site-13",
    ), subject_key(nin, SECRET).encode()


async def test_callouts_of_three_persons_at_one_site_raise_one_alert_per_recipient() -> None:
    """Three persons' callouts at one registered site: one alert to its owner and one to its
    municipality, keyed by the place and naming no one; the state is saved per place."""
    engine = Engine()
    engine.store.owners[PLACE] = PlaceOwners("922222222", "940493021")
    counted = metrics.SLA_PLACE_EVENTS.labels("registered")._value.get()
    records = [callout(number) for number in (1, 2, 3)]
    for value, key in records:
        await engine.feed(engine.message(value, key))
    published = [
        (r.key, CODEC.decode(r.value).record)
        for r in engine.publisher.published
        if r.topic == topics.ALERTS
    ]
    places = [(key, alert) for key, alert in published if alert["rule_id"] == PLACE_RULE]
    assert [alert["recipient"]["org_id"] for _, alert in places] == ["922222222", "940493021"]
    assert {key for key, _ in places} == {f"place:{PLACE}".encode()}
    assert all(alert["subject"] is None for _, alert in places)
    stored = PlaceState.from_json(orjson.loads(engine.store.committed.places[PLACE]))
    assert len(stored.windows[PLACE_RULE]["events"]) == 3
    assert "site-13" not in PLACE
    assert metrics.SLA_PLACE_EVENTS.labels("registered")._value.get() == counted + 3


async def test_a_redelivered_callout_counts_once_at_its_place() -> None:
    """At-least-once: the same records again (offsets at or below the stored one) change
    neither the place's count nor raise its alert twice."""
    engine = Engine()
    messages = [engine.message(*callout(number)) for number in (1, 2)]
    await engine.feed(*messages)
    await engine.feed(*messages)
    stored = PlaceState.from_json(orjson.loads(engine.store.committed.places[PLACE]))
    assert len(stored.windows[PLACE_RULE]["events"]) == 2
    await engine.feed(engine.message(*callout(3)))
    await engine.feed(*messages)
    place_alerts = [a for a in engine.publisher.alerts() if a["rule_id"] == PLACE_RULE]
    # Unregistered, reported by the police only: the operator's queue, once.
    assert [a["recipient"] for a in place_alerts] == [None]


async def test_a_dead_lettered_callout_does_not_count_at_its_place() -> None:
    """A batch the database refuses is applied again record by record: the refused person's
    callout is dead-lettered and not counted; the others count once each."""
    engine = Engine()
    records = [callout(number) for number in (1, 2, 3)]
    engine.store.refuse.add(records[1][1].decode())
    before = metrics.SLA_PLACE_EVENTS.labels("unregistered")._value.get()
    await engine.feed(*(engine.message(value, key) for value, key in records))
    # The refused batch was rolled back: only the two committed callouts are counted.
    assert metrics.SLA_PLACE_EVENTS.labels("unregistered")._value.get() == before + 2
    stored = PlaceState.from_json(orjson.loads(engine.store.committed.places[PLACE]))
    counted = [entry[1] for entry in stored.windows[PLACE_RULE]["events"]]
    assert counted == [event_id(records[0][0]), event_id(records[2][0])]
    assert len(engine.broker.letters()) == 1


async def test_a_retracted_callout_no_longer_counts_at_its_place() -> None:
    """The police retract a callout sent in error: it leaves the place's count, in the batch
    that carries the retraction or a later one, so the next callout does not complete a
    pattern it would have completed with it."""
    engine = Engine()
    nin = FACTORY.nin()
    first = encoded("police_callout", nin=nin, housing_site_id="site-13")
    records = [(first, subject_key(nin, SECRET).encode()), callout(2)]
    await engine.feed(*(engine.message(value, key) for value, key in records))
    wrong = FACTORY.event(
        "retraction",
        nin=nin,
        agency="police",
        occurred_at=NOW,
        retracted_event_id=event_id(records[0][0]),
        reason="sent_in_error",
    )
    parsed, problems = parse_event(wrong)
    assert parsed is not None, problems
    retraction = CODEC.encode_event(event_to_record(parsed, subject_key(nin, SECRET), NOW))
    await engine.feed(engine.message(retraction, records[0][1]))
    stored = PlaceState.from_json(orjson.loads(engine.store.committed.places[PLACE]))
    assert [e[1] for e in stored.windows[PLACE_RULE]["events"]] == [event_id(records[1][0])]
    await engine.feed(engine.message(*callout(3)))
    assert [a for a in engine.publisher.alerts() if a["rule_id"] == PLACE_RULE] == []
