"""The event store sink against the real broker and database: stored once, dead letters, crashes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from carebus.adapters.kafka import consumer_config, producer_config
from carebus.domain.events import event_to_record, parse_event
from carebus.domain.identity import subject_key
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.testing import EventFactory, ServiceProcess, TestStack

pytestmark = pytest.mark.integration

CODEC = Codec.default()


@pytest.fixture(scope="module")
def stack() -> Iterator[TestStack]:
    """A broker and database of this module's own: it puts 50,000 events on care.events.v1,
    which every SLA engine a later module starts on the shared stack would first have to work
    through (minutes on this box, while those modules' deadlines run in seconds)."""
    with TestStack() as own:
        yield own


@pytest.fixture(scope="module")
def event_store(stack: TestStack) -> Iterator[ServiceProcess]:
    """The sink as its own process; /healthz on a free port tells when it is up."""
    service = stack.start_service("event_store")  # /metrics and /healthz on a free port
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


def wire_record(stack: TestStack, event: dict[str, Any]) -> dict[str, Any]:
    """The Avro record the gateway would publish for an HTTP event."""
    parsed, problems = parse_event(event)
    assert parsed is not None, problems
    secret = stack.settings.subject_key_secret.get_secret_value()
    return event_to_record(parsed, subject_key(parsed.nin, secret), datetime.now(UTC))


def produce(stack: TestStack, messages: Sequence[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """Produce (key, value) pairs in order and return each one's (partition, offset)."""
    producer = Producer(producer_config(stack.settings, f"test-event-store-{uuid.uuid4().hex}"))
    placed: list[tuple[int, int] | None] = [None] * len(messages)

    def report(index: int) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            assert err is None, err
            placed[index] = (msg.partition(), msg.offset())

        return on_delivery

    for index, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topics.EVENTS, value=value, key=key, on_delivery=report(index))
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(30) == 0
    assert all(p is not None for p in placed)
    return [p for p in placed if p is not None]


async def stored(db: asyncpg.Connection, event_ids: Sequence[str]) -> int:
    count = await db.fetchval(
        "SELECT count(*) FROM events WHERE event_id = ANY($1::text[])", list(event_ids)
    )
    return int(count)


async def wait_for_rows(
    db: asyncpg.Connection,
    event_ids: Sequence[str],
    *,
    at_least: int | None = None,
    timeout_s: float = 30.0,
    poll_s: float = 0.1,
) -> int:
    """How many of `event_ids` are stored once `at_least` (default: all) are, or at timeout."""
    wanted = len(event_ids) if at_least is None else at_least
    deadline = time.monotonic() + timeout_s
    count = await stored(db, event_ids)
    while count < wanted and time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
        count = await stored(db, event_ids)
    return count


def dead_letters_for(
    stack: TestStack, expected: set[tuple[int, int]], timeout_s: float = 20.0
) -> dict[tuple[int, int], dict[str, Any]]:
    """Dead letters of `care.events.v1` messages, by their (partition, offset) there.

    Reads until the dead letters of every `expected` message are found, then to the end of the
    topic, so a missing dead letter is also visible.
    """
    consumer = Consumer(consumer_config(stack.settings, f"test-dlq-{uuid.uuid4().hex}"))
    partitions = consumer.list_topics(topics.DEADLETTER, timeout=10).topics[topics.DEADLETTER]
    consumer.assign(
        [TopicPartition(topics.DEADLETTER, p, OFFSET_BEGINNING) for p in partitions.partitions]
    )
    found: dict[tuple[int, int], dict[str, Any]] = {}
    ends: dict[int, int] | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if ends is None and expected <= set(found):
                ends = {
                    p: consumer.get_watermark_offsets(
                        TopicPartition(topics.DEADLETTER, p), timeout=5
                    )[1]
                    for p in partitions.partitions
                }
            if ends is not None and all(
                tp.offset >= ends[tp.partition] or ends[tp.partition] == 0
                for tp in consumer.position(consumer.assignment())
            ):
                break
            for message in consumer.consume(100, 0.2):
                if message.error():
                    continue
                record = CODEC.decode(message.value() or b"").record
                where = (record["source_partition"], record["source_offset"])
                if record["source_topic"] == topics.EVENTS:
                    found[where] = {**record, "key": message.key()}
    finally:
        consumer.close()
    return found


async def test_events_are_stored_once_without_the_nin(
    stack: TestStack, event_store: ServiceProcess, db: asyncpg.Connection
) -> None:
    """Each event is one row (also when published twice), with a JSON payload and no nin."""
    factory = EventFactory()
    events = factory.every_type() + factory.every_type()
    records = [wire_record(stack, event) for event in events]
    messages = [(r["subject_key"].encode(), CODEC.encode_event(r)) for r in records]
    placed = produce(stack, [*messages, messages[0]])  # the first one twice

    event_ids = [r["event_id"] for r in records]
    assert await wait_for_rows(db, event_ids) == len(event_ids)
    await asyncio.sleep(1.0)  # time for the duplicate to be (not) stored too

    rows = await db.fetch(
        "SELECT *, row_to_json(events)::text AS everything FROM events "
        "WHERE event_id = ANY($1::text[])",
        event_ids,
    )
    assert len(rows) == len(records)
    by_id = {row["event_id"]: row for row in rows}
    for record, (_key, value), (partition, offset) in zip(records, messages, placed, strict=False):
        row = by_id[record["event_id"]]
        assert record["subject"]["nin"] not in row["everything"]
        assert row["subject_key"] == record["subject_key"]
        assert row["source_org"] == record["source"]["org_id"]
        assert row["event_type"] == record["event_type"]
        assert row["occurred_at"] == record["occurred_at"]
        assert (row["kafka_partition"], row["kafka_offset"]) == (partition, offset)
        assert row["schema_fingerprint"] == CODEC.decode(value).fingerprint
        payload = json.loads(row["payload"])
        assert set(payload) == set(record["payload"])

    ip_update = next(r for r in records if r["event_type"] == "ip_update")
    payload = json.loads(by_id[ip_update["event_id"]]["payload"])
    assert payload["next_review_at"].endswith("Z")  # RFC 3339, not a number of microseconds

    assert event_store.url is not None
    async with httpx.AsyncClient(timeout=5) as client:
        exposition = (await client.get(f"{event_store.url}/metrics")).text
    assert 'carebus_sink_rows_total{sink="event-store"}' in exposition
    assert 'carebus_consumer_lag_records{group="carebus-event-store"' in exposition


async def test_a_known_record_that_is_not_an_event_is_skipped(
    stack: TestStack, event_store: ServiceProcess, db: asyncpg.Connection
) -> None:
    """A record of a known schema that is not an event is skipped, not dead-lettered.

    Undecodable bytes and rows the database refuses: the contract of every sink,
    tests/integration/test_sink_contract.py.
    """
    factory = EventFactory()
    nin = factory.nin()
    before, after = (wire_record(stack, factory.event("admission", nin=nin)) for _ in range(2))
    key = before["subject_key"].encode()
    not_an_event = CODEC.encode(
        "no.carebus.v1.DeadLetter",
        {
            "reason": "other",
            "detail": "a known schema that is not an event",
            "source_topic": "elsewhere",
            "source_partition": 0,
            "source_offset": 0,
            "consumer": "test",
            "original_key": None,
            "original_value": b"",
            "dead_lettered_at": datetime.now(UTC),
        },
    )
    placed = produce(
        stack,
        [(key, CODEC.encode_event(before)), (key, not_an_event), (key, CODEC.encode_event(after))],
    )
    assert len({partition for partition, _ in placed}) == 1  # one person, one partition

    assert await wait_for_rows(db, [before["event_id"], after["event_id"]]) == 2
    assert placed[1] not in dead_letters_for(stack, set())  # skipped, not dead-lettered


async def test_every_event_is_stored_exactly_once_across_a_kill(
    stack: TestStack, event_store: ServiceProcess, db: asyncpg.Connection
) -> None:
    """SIGKILL in the middle of 50,000 events (ten batches), then a restart: every row, once."""
    assert event_store.stop() == 0  # SIGTERM: finishes its batch, commits, exits cleanly
    # Ten of the sink's 5,000-row batches, so the kill lands between two of them.
    events = 50_000

    factory = EventFactory()
    nins = [factory.nin() for _ in range(100)]
    template = wire_record(stack, factory.event("police_callout"))
    secret = stack.settings.subject_key_secret.get_secret_value()
    keys = [subject_key(nin, secret) for nin in nins]
    run = uuid.uuid4().hex[:8]
    event_ids = [f"police-{run}-{n:05d}" for n in range(events)]
    messages = []
    for n, event_id in enumerate(event_ids):
        record = {
            **template,
            "event_id": event_id,
            "subject": {"nin": nins[n % 100]},
            "subject_key": keys[n % 100],
        }
        messages.append((keys[n % 100].encode(), CODEC.encode_event(record)))
    produce(stack, messages)

    # Not waiting for readiness: by the time /healthz says ready, the sink may have stored all.
    event_store.start(wait=False)
    await wait_for_rows(db, event_ids, at_least=1, timeout_s=30, poll_s=0.01)
    event_store.kill(signal.SIGKILL)
    stored_at_kill = await stored(db, event_ids)
    assert 0 < stored_at_kill < events, "the kill should land in the middle of the stream"

    event_store.start()
    assert await wait_for_rows(db, event_ids, timeout_s=60) == events
    assert (
        await db.fetchval(
            "SELECT count(DISTINCT event_id) FROM events WHERE event_id = ANY($1::text[])",
            event_ids,
        )
        == events
    )
