"""The router's core against a dict for its table, a fake publisher and a fake broker.

No Kafka: `Router` gets the reviewed routing policy, the real codec, a plain dict as its
persons table, a publisher that keeps what it was given and a dead-letter policy on a fake
producer. tests/integration/test_router_recovery.py runs the same class on the real broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError

from carebus.adapters.deadletter import DECODE_DETAILS, DeadLetterPolicy, Reason
from carebus.adapters.publisher import OutgoingRecord
from carebus.domain.events import event_to_record, parse_event
from carebus.domain.identity import subject_key
from carebus.domain.policy import CATEGORIES
from carebus.domain.records import CARE_TEAM_CHANGE, CONSENT_CHANGE, DELIVERY, DISCLOSURE
from carebus.domain.routing import PersonState
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire import topics
from carebus.wire.policy_files import load_policy
from carebus_dev.testing import EventFactory
from services.router import app as router_app
from services.router.app import Router
from tests.unit.fakes import (
    CODEC,
    DeadLetterBroker,
    FakePublisher,
    StreamEvent,
    StreamRecord,
    broker_down,
    kafka_error,
)

# A regression that retries for ever fails here in seconds, not at the 300 s session limit.
pytestmark = pytest.mark.timeout(10)

POLICY = load_policy(PROJECT_ROOT / "policy" / "routing.yaml")
SECRET = "router-unit-secret"
FACTORY = EventFactory(seed=21)
NIN = FACTORY.nin()
KEY = subject_key(NIN, SECRET)
# The router decides at the wall clock's now, so consents are dated from it.
NOW = datetime.now(UTC)
DAY = timedelta(days=1)
# Care-team organisations: not the dev organisations the factory sends from.
MUNICIPALITY = "940493039"
NAV = "889640790"
HOUSING = "987654333"
AGENCY_OF = {MUNICIPALITY: "municipality", NAV: "nav", HOUSING: "housing"}


def care_team(org_id: str, *, key: str = KEY, status: str = "member") -> bytes:
    """A CareTeamChange as the registry publishes it."""
    return CODEC.encode(
        CARE_TEAM_CHANGE,
        {
            "change_id": str(uuid.uuid4()),
            "subject_key": key,
            "member": {"agency": AGENCY_OF[org_id], "org_id": org_id},
            "role": "participant",
            "status": status,
            "recorded_by_org": MUNICIPALITY,
            "recorded_at": NOW - DAY,
        },
    )


def consent(org_id: str, *, key: str = KEY) -> bytes:
    """A ConsentChange giving `org_id` every category, valid since yesterday."""
    return CODEC.encode(
        CONSENT_CHANGE,
        {
            "change_id": str(uuid.uuid4()),
            "subject_key": key,
            "recipient": {"agency": AGENCY_OF[org_id], "org_id": org_id},
            "categories": list(CATEGORIES),
            "status": "given",
            "valid_from": NOW - DAY,
            "valid_to": None,
            "recorded_by": "unit test",
            "recorded_by_org": MUNICIPALITY,
            "recorded_at": NOW - DAY,
        },
    )


def event(event_type: str = "discharge_ready", *, nin: str = NIN) -> bytes:
    """An event as the gateway publishes it (a DPS's discharge-ready notice by default)."""
    raw = FACTORY.event(event_type, nin=nin, occurred_at=NOW - timedelta(hours=1))
    parsed, problems = parse_event(raw)
    assert parsed is not None, problems
    return CODEC.encode_event(event_to_record(parsed, subject_key(nin, SECRET), NOW))


def event_id(value: bytes) -> str:
    return str(CODEC.decode(value).record["event_id"])


class CountingTable(dict[bytes, bytes]):
    """The persons table; counts writes (each one is a changelog record in faust)."""

    writes = 0

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes += 1
        super().__setitem__(key, value)


class World:
    """A router with its fakes; `feed` hands it one batch, as faust's take_events does."""

    def __init__(self) -> None:
        self.journal: list[str] = []
        self.persons = CountingTable()
        self.publisher = FakePublisher(self.journal)
        self.broker = DeadLetterBroker(journal=self.journal)
        self.router = Router(
            POLICY,
            CODEC,
            self.persons,
            self.publisher,
            DeadLetterPolicy(self.broker, CODEC, "router"),
        )
        self.offset = 0

    def batch(self, *values: bytes, key: str = KEY) -> list[StreamEvent]:
        events = []
        for value in values:
            self.offset += 1
            record = StreamRecord(topics.EVENTS, 3, self.offset, key.encode(), value)
            events.append(StreamEvent(record))
        return events

    async def feed(self, *values: bytes, key: str = KEY) -> None:
        await self.router.handle_batch(self.batch(*values, key=key))  # type: ignore[arg-type]

    def state(self, key: str = KEY) -> PersonState:
        return PersonState.from_json(orjson.loads(self.persons[key.encode()]))

    def last_attempt(self) -> list[OutgoingRecord]:
        return self.publisher.attempts[-1]


def disclosures_by_org(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["recipient"]["org_id"]: d for d in records if d["recipient"]}


@pytest.fixture(autouse=True)
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The router's own publish retry policy on a clock that does not wait; the waits it asked
    for are kept."""
    asked: list[float] = []

    async def sleep(seconds: float, stop: asyncio.Event | None) -> bool:
        asked.append(seconds)
        return False

    retry = dataclasses.replace(router_app.PUBLISH_RETRY, sleep=sleep)
    monkeypatch.setattr(router_app, "PUBLISH_RETRY", retry)
    return asked


async def test_an_event_goes_to_the_consenting_care_team_with_a_disclosure_per_candidate() -> None:
    """Deliveries go to each recipient agency's topic, one disclosure per candidate to the
    audit topic, all keyed by the subject key; a consent-based member without consent is
    withheld."""
    world = World()
    await world.feed(care_team(MUNICIPALITY), care_team(NAV), care_team(HOUSING), consent(NAV))
    value = event()
    await world.feed(value)

    outgoing = world.last_attempt()
    assert {record.key for record in outgoing} == {KEY.encode()}
    by_topic = {record.topic for record in outgoing}
    assert by_topic == {
        topics.deliveries("municipality"),
        topics.deliveries("nav"),
        topics.AUDIT,
    }
    for record in outgoing:
        schema = DISCLOSURE if record.topic == topics.AUDIT else DELIVERY
        assert CODEC.decode(record.value).schema_name == schema
    deliveries = {
        agency: world.publisher.on(topics.deliveries(agency)) for agency in ("municipality", "nav")
    }
    assert [d["recipient"]["org_id"] for d in deliveries["municipality"]] == [MUNICIPALITY]
    assert [d["recipient"]["org_id"] for d in deliveries["nav"]] == [NAV]
    assert {d["event_id"] for ds in deliveries.values() for d in ds} == {event_id(value)}

    disclosures = disclosures_by_org(world.publisher.on(topics.AUDIT))
    assert set(disclosures) == {MUNICIPALITY, NAV, HOUSING}
    assert disclosures[MUNICIPALITY]["decision"] == "delivered"
    assert disclosures[NAV]["decision"] == "delivered"
    assert disclosures[NAV]["basis"] == "consent"
    assert (disclosures[HOUSING]["decision"], disclosures[HOUSING]["reason"]) == (
        "withheld",
        "no_consent",
    )
    assert {d["delivery_id"] for ds in deliveries.values() for d in ds} == {
        disclosures[MUNICIPALITY]["audit_id"],
        disclosures[NAV]["audit_id"],
    }
    assert world.broker.produced == []


async def test_consent_and_care_team_changes_fold_into_state_and_route_nothing() -> None:
    """Registry changes update the person's row in the table and produce no record."""
    world = World()
    await world.feed(care_team(NAV), consent(NAV))

    assert world.publisher.attempts == [[]]
    state = world.state()
    assert set(state.team) == {NAV}
    assert [(c.org_id, c.status) for c in state.consents] == [(NAV, "given")]
    assert world.broker.produced == []


async def test_a_person_without_candidates_gets_one_no_candidate_disclosure() -> None:
    """An event nobody may receive is still audited, once, and delivered to no one."""
    world = World()
    await world.feed(event())

    [record] = world.last_attempt()
    assert record.topic == topics.AUDIT
    disclosure = CODEC.decode(record.value).record
    assert (disclosure["decision"], disclosure["recipient"]) == ("no_candidate", None)


async def test_records_are_routed_in_stream_order_within_a_batch() -> None:
    """Each event is routed against the state its predecessors in the batch left: a consent
    that arrives after an event does not reach back to it."""
    world = World()
    before, after = event(), event()
    await world.feed(care_team(NAV), before, consent(NAV), after)

    decisions = {
        d["event_id"]: d["decision"] for d in world.publisher.on(topics.AUDIT) if d["recipient"]
    }
    assert decisions == {event_id(before): "withheld", event_id(after): "delivered"}
    delivered = world.publisher.on(topics.deliveries("nav"))
    assert [d["event_id"] for d in delivered] == [event_id(after)]


async def test_an_undecodable_record_is_dead_lettered_and_the_rest_of_the_batch_goes_out() -> None:
    """Bytes that are not a carebus record are dead-lettered with the decoder's reason and
    where they came from; the events around them are routed and published."""
    world = World()
    await world.feed(care_team(MUNICIPALITY))
    first, second = event(), event()
    batch = world.batch(first, b"not avro at all", second)
    await world.router.handle_batch(batch)  # type: ignore[arg-type]

    [letter] = world.broker.letters()
    assert letter["reason"] == Reason.NOT_SINGLE_OBJECT
    assert letter["detail"] == DECODE_DETAILS[Reason.NOT_SINGLE_OBJECT]
    assert letter["consumer"] == "router"
    place = (letter["source_topic"], letter["source_partition"], letter["source_offset"])
    assert place == (topics.EVENTS, 3, batch[1].message.offset)
    assert letter["original_value"] == b"not avro at all"
    assert letter["original_key"] == KEY.encode()
    routed = {d["event_id"] for d in world.publisher.on(topics.deliveries("municipality"))}
    assert routed == {event_id(first), event_id(second)}
    # The dead letter is on the broker before the batch's output, so faust may then commit.
    assert world.journal[-3:] == ["dead_letter_acknowledged", "publish", "published"]


async def test_a_record_that_cannot_be_routed_is_dead_lettered_and_others_still_route() -> None:
    """A failure routing one person's record (here: a corrupt table row) dead-letters that
    record as invalid, naming only the error type; another person's event still goes out."""
    world = World()
    other_nin = FACTORY.nin()
    other_key = subject_key(other_nin, SECRET)
    world.persons[KEY.encode()] = b"{corrupt"
    await world.feed(event(), key=KEY)
    await world.feed(event(nin=other_nin), key=other_key)

    [letter] = world.broker.letters()
    assert letter["reason"] == Reason.INVALID_RECORD
    assert letter["detail"] == "routing failed: JSONDecodeError"
    assert letter["original_key"] == KEY.encode()
    assert world.publisher.attempts[0] == []
    [record] = world.publisher.attempts[1]
    assert record.key == other_key.encode()


async def test_a_failing_publish_is_retried_with_backoff_until_the_broker_has_it(
    waits: list[float],
) -> None:
    """A broker outage is waited out (0.5 s, doubling) and the same records are sent again."""
    world = World()
    await world.feed(care_team(MUNICIPALITY))
    world.publisher.failures = [broker_down(), kafka_error(KafkaError._TRANSPORT)]
    await world.feed(event())

    first, second, third = world.publisher.attempts[-3:]
    assert first == second == third != []
    assert world.publisher.published == third
    assert waits == [0.5, 1.0]


async def test_the_batch_is_not_acknowledged_until_the_broker_has_its_records() -> None:
    """handle_batch returns (and faust may commit the batch's offsets) only once published."""
    world = World()
    world.publisher.gate = asyncio.Event()
    handling = asyncio.create_task(world.feed(care_team(MUNICIPALITY), event()))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not handling.done()
    assert world.publisher.published == []

    world.publisher.gate.set()
    await asyncio.wait_for(handling, 1.0)
    assert len(world.publisher.published) == 2  # a delivery and its disclosure


async def test_an_error_that_is_not_an_outage_is_raised_not_retried() -> None:
    """Only outages are retried; a bug surfaces at once and the batch is not acknowledged."""
    world = World()
    world.publisher.failures = [ValueError("a bug")]
    with pytest.raises(ValueError, match="a bug"):
        await world.feed(event())
    assert len(world.publisher.attempts) == 1


async def test_unacknowledged_dead_letters_hold_the_batch_back_until_they_are_on_the_broker(
    waits: list[float],
) -> None:
    """A dead letter the broker failed is sent again before the batch's records go out."""
    world = World()
    world.broker.failures = [KafkaError(KafkaError._MSG_TIMED_OUT)]
    await world.feed(b"\xc3\x01" + b"\x00" * 8 + b"unknown schema", event())

    assert world.journal == [
        "dead_letter_failed",
        "dead_letter_acknowledged",
        "publish",
        "published",
    ]
    assert [letter["reason"] for letter in world.broker.letters()] == ["unknown_schema"] * 2
    assert waits == [0.5]


async def test_a_record_that_changes_nothing_does_not_write_the_table() -> None:
    """The table (and its changelog) is written only for a real change of state."""
    world = World()
    await world.feed(care_team(NAV))
    assert world.persons.writes == 1
    stored = world.persons[KEY.encode()]

    await world.feed(care_team(NAV), event())  # the same membership again; no state sender
    assert world.persons.writes == 1
    assert world.persons[KEY.encode()] == stored


async def test_a_removed_member_no_longer_receives() -> None:
    """A care-team removal folds out the member: the next event has no candidate."""
    world = World()
    await world.feed(care_team(MUNICIPALITY), care_team(MUNICIPALITY, status="removed"), event())

    assert world.state().team == {}
    [disclosure] = world.publisher.on(topics.AUDIT)
    assert disclosure["decision"] == "no_candidate"
