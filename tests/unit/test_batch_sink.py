"""The store sinks' batch loop against a fake consumer, an in-memory database and a fake broker.

No Kafka, no PostgreSQL: `BatchSink` consumes from `FakeConsumer`, writes through a RowWriter
that keeps an events table in `FakeDatabase` (whose transactions and savepoints undo their
writes on an error, as PostgreSQL's do) and dead-letters through a real `DeadLetterPolicy` on
a fake producer. tests/integration/test_sink_contract.py runs the same loop with every real
RowWriter against the real broker and database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import REGISTRY

from carebus.adapters.deadletter import DECODE_DETAILS, DeadLetterPolicy, Reason
from carebus.adapters.sink import BatchSink, InvalidRecordError, Row, sink_retry
from carebus.domain.events import event_to_record, parse_event
from carebus.domain.identity import subject_key
from carebus.domain.records import CARE_TEAM_CHANGE
from carebus.runtime.retry import StopRequestedError
from carebus.wire import topics
from carebus.wire.codec import Decoded
from carebus_dev.testing import EventFactory
from tests.unit.fakes import (
    CODEC,
    DeadLetterBroker,
    FakeConnection,
    FakeConsumer,
    FakeDatabase,
    FakeMessage,
    FakePool,
    eventually,
    kafka_error,
)

# A regression that retries for ever fails here in seconds, not at the 300 s session limit.
pytestmark = pytest.mark.timeout(10)

FACTORY = EventFactory(seed=5)
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
KEY = subject_key(FACTORY.nin(), "sink-unit-secret")
EVENTS = "events"


def event_value() -> tuple[str, bytes]:
    """A fresh event's id and its bytes on care.events.v1."""
    parsed, problems = parse_event(
        FACTORY.event("discharge_ready", occurred_at=NOW - timedelta(minutes=5))
    )
    assert parsed is not None, problems
    return parsed.event_id, CODEC.encode_event(event_to_record(parsed, KEY, NOW))


def care_team_value() -> bytes:
    """A record on the events topic that an events store does not keep."""
    return CODEC.encode(
        CARE_TEAM_CHANGE,
        {
            "change_id": str(uuid.uuid4()),
            "subject_key": KEY,
            "member": {"agency": "nav", "org_id": "889640790"},
            "role": "participant",
            "status": "member",
            "recorded_by_org": "940493021",
            "recorded_at": NOW,
        },
    )


@dataclass
class EventRows:
    """A RowWriter keeping events by event_id: `poison` rows make `write` raise their error,
    `invalid` events are refused by `row`, and `outages` writes fail first as a dropped
    connection does."""

    poison: dict[str, Exception] = field(default_factory=dict)
    invalid: set[str] = field(default_factory=set)
    outages: int = 0
    writes: list[list[str]] = field(default_factory=list)

    async def prepare(self, conn: FakeConnection) -> None:
        pass

    def row(self, decoded: Decoded, message: Message) -> Row | None:
        if "event_type" not in decoded.record:
            return None
        event_id = str(decoded.record["event_id"])
        if event_id in self.invalid:
            raise InvalidRecordError("the event names no recipient")
        return (event_id, message.partition(), message.offset())

    async def write(self, conn: FakeConnection, rows: Sequence[Row]) -> None:
        self.writes.append([row[0] for row in rows])
        if self.outages:
            self.outages -= 1
            raise ConnectionResetError("connection lost")
        for row in rows:
            conn.db.table(EVENTS)[row[0]] = row  # a partial write: the transaction undoes it
            if row[0] in self.poison:
                raise self.poison[row[0]]


class Sink:
    """A BatchSink on fakes; `messages` places values on partitions with their offsets."""

    def __init__(self, *, high: dict[tuple[str, int], int] | None = None) -> None:
        self.name = f"unit-{uuid.uuid4().hex[:8]}"
        self.journal: list[str] = []
        self.hooks: list[int] = []
        self.db = FakeDatabase()
        self.pool = FakePool(FakeConnection(self.db))
        self.consumer = FakeConsumer(
            high=high or {(topics.EVENTS, 0): 0, (topics.EVENTS, 1): 0}, journal=self.journal
        )
        self.writer = EventRows()
        self.broker = DeadLetterBroker(journal=self.journal)
        self.sink = BatchSink(
            name=self.name,
            group_id=f"{self.name}-group",
            consumer=self.consumer,  # type: ignore[arg-type]  # wants confluent's Consumer
            pool=self.pool,  # type: ignore[arg-type]  # wants an asyncpg.Pool
            codec=CODEC,
            writer=self.writer,  # type: ignore[arg-type]  # its connection is a FakeConnection
            dead_letters=DeadLetterPolicy(self.broker, CODEC, self.name),
            batch_size=10,
            poll_timeout_s=0.01,
            retry=sink_retry(initial_s=0.001, maximum_s=0.01),
            # The number of commits made when the hook ran.
            on_committed=lambda: self.hooks.append(len(self.consumer.commits)),
        )

    async def process(self, *messages: FakeMessage) -> None:
        await self.sink.process(messages, asyncio.Event())  # type: ignore[arg-type]

    def stored(self) -> set[str]:
        return set(self.db.table(EVENTS))

    def retries(self, step: str) -> float:
        value = REGISTRY.get_sample_value(
            "carebus_sink_retries_total", {"sink": self.name, "step": step}
        )
        return value or 0.0


def at(partition: int, offset: int, value: bytes) -> FakeMessage:
    return FakeMessage(topics.EVENTS, partition, offset, value, KEY.encode())


async def test_rows_are_written_in_one_transaction_and_offsets_committed_past_the_batch() -> None:
    """Every stored record is written in one transaction; each partition's offset is committed
    as its highest offset + 1, skipped records included."""
    world = Sink()
    (a, value_a), (b, value_b), (c, value_c) = event_value(), event_value(), event_value()
    await world.process(
        at(0, 10, value_a),
        at(1, 5, value_b),
        at(0, 11, value_c),
        at(1, 6, care_team_value()),
    )

    assert world.writer.writes == [[a, b, c]]
    assert world.stored() == {a, b, c}
    assert world.db.commits == 1
    assert world.consumer.commits == [[(topics.EVENTS, 0, 12), (topics.EVENTS, 1, 7)]]
    assert world.broker.produced == []


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (
            asyncpg.exceptions.UniqueViolationError("duplicate key"),
            "rejected by the database (SQLSTATE 23505, constraint events_pkey)",
        ),
        (
            asyncpg.exceptions.NotNullViolationError("null value"),
            "rejected by the database (SQLSTATE 23502, column body)",
        ),
        (
            asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"),
            "rejected by the database (SQLSTATE 22021)",
        ),
    ],
)
async def test_a_row_the_database_rejects_is_dead_lettered_and_the_rest_is_written(
    error: asyncpg.PostgresError, detail: str
) -> None:
    """A data or integrity error isolates the row (a savepoint each): it is dead-lettered with
    its SQLSTATE and the schema names, never the value, and the others are stored."""
    if isinstance(error, asyncpg.exceptions.UniqueViolationError):
        error.constraint_name = "events_pkey"
    if isinstance(error, asyncpg.exceptions.NotNullViolationError):
        error.column_name = "body"
    world = Sink()
    (good, good_value), (bad, bad_value), (last, last_value) = (
        event_value(),
        event_value(),
        event_value(),
    )
    world.writer.poison[bad] = error
    await world.process(at(0, 1, good_value), at(0, 2, bad_value), at(0, 3, last_value))

    assert world.stored() == {good, last}
    assert world.writer.writes == [[good, bad, last], [good], [bad], [last]]
    [letter] = world.broker.letters()
    assert letter["reason"] == Reason.INVALID_RECORD
    assert letter["detail"] == detail
    assert (letter["source_partition"], letter["source_offset"]) == (0, 2)
    assert letter["original_value"] == bad_value
    assert world.consumer.commits == [[(topics.EVENTS, 0, 4)]]
    # The dead letter is on the broker before the offsets move past its record.
    assert world.journal == ["dead_letter_acknowledged", "commit"]


async def test_undecodable_bytes_are_dead_lettered_with_the_decoders_reason() -> None:
    """Bytes that are not a carebus record never block the partition: dead-lettered with the
    decoder's reason and fixed text, the rest stored, the offset committed past them."""
    world = Sink()
    (stored, value) = event_value()
    await world.process(at(1, 7, b"plain text"), at(1, 8, value))

    [letter] = world.broker.letters()
    assert letter["reason"] == Reason.NOT_SINGLE_OBJECT
    assert letter["detail"] == DECODE_DETAILS[Reason.NOT_SINGLE_OBJECT]
    assert letter["original_value"] == b"plain text"
    assert world.stored() == {stored}
    assert world.consumer.commits == [[(topics.EVENTS, 1, 9)]]


async def test_a_record_the_writer_refuses_is_dead_lettered_with_its_detail() -> None:
    """InvalidRecordError from the RowWriter dead-letters that record with its fixed detail."""
    world = Sink()
    (refused, refused_value), (kept, kept_value) = event_value(), event_value()
    world.writer.invalid.add(refused)
    await world.process(at(0, 1, refused_value), at(0, 2, kept_value))

    [letter] = world.broker.letters()
    assert (letter["reason"], letter["detail"]) == (
        Reason.INVALID_RECORD,
        "the event names no recipient",
    )
    assert world.stored() == {kept}
    assert world.writer.writes == [[kept]]


async def test_a_database_outage_is_retried_on_the_same_batch_and_nothing_is_dead_lettered() -> (
    None
):
    """An unreachable database (refused, then a dropped connection) is waited out; the batch
    is then written once and committed, and nothing is dead-lettered for an outage."""
    world = Sink()
    (a, value_a), (b, value_b) = event_value(), event_value()
    world.pool.outages = 1
    world.writer.outages = 1
    await world.process(at(0, 1, value_a), at(0, 2, value_b))

    assert world.stored() == {a, b}
    assert world.writer.writes == [[a, b], [a, b]]
    assert world.db.rollbacks == 1
    assert world.broker.produced == []
    assert world.consumer.commits == [[(topics.EVENTS, 0, 3)]]
    assert world.retries("database") == 2


async def test_unacknowledged_dead_letters_are_sent_again_before_the_commit() -> None:
    """Offsets move only once the broker has every dead letter of the batch."""
    world = Sink()
    world.broker.failures = [KafkaError(KafkaError._MSG_TIMED_OUT)]
    await world.process(at(0, 1, b"junk"))

    assert world.journal == ["dead_letter_failed", "dead_letter_acknowledged", "commit"]
    assert len(world.broker.produced) == 2
    assert world.retries("dead_letters") == 1


async def test_a_failed_commit_is_retried() -> None:
    """A broker error on commit is an outage: the commit is tried again."""
    world = Sink()
    world.consumer.commit_failures = [kafka_error(KafkaError._TRANSPORT)]
    await world.process(at(0, 1, event_value()[1]))

    assert world.journal == ["commit_failed", "commit"]
    assert world.consumer.commits == [[(topics.EVENTS, 0, 2)]]


async def test_a_commit_after_losing_the_partitions_is_given_up() -> None:
    """When the partitions now belong to another member, the commit is skipped, not retried:
    that member replays the batch, and the writes are idempotent."""
    world = Sink()
    world.consumer.commit_failures = [kafka_error(KafkaError.REBALANCE_IN_PROGRESS)]
    await world.process(at(0, 1, event_value()[1]))

    assert world.journal == ["commit_failed"]
    assert world.consumer.commits == []
    assert world.retries("commit") == 0


async def test_a_consumer_error_is_skipped_and_a_fatal_one_raised() -> None:
    """A transient consumer error message is not a record (no row, no dead letter); a fatal
    one stops the sink."""
    world = Sink()
    (kept, value) = event_value()
    transient = FakeMessage(
        topics.EVENTS, 0, -1001, None, error=KafkaError(KafkaError._PARTITION_EOF)
    )
    await world.process(transient, at(0, 4, value))
    assert world.stored() == {kept}
    assert world.broker.produced == []
    assert world.consumer.commits == [[(topics.EVENTS, 0, 5)]]

    fatal = FakeMessage(
        topics.EVENTS, 0, -1001, None, error=KafkaError(KafkaError._FATAL, fatal=True)
    )
    with pytest.raises(KafkaException):
        await world.process(fatal)


async def test_stop_during_an_outage_abandons_the_batch_without_committing() -> None:
    """Shutdown while the database is down ends the loop; the batch's offsets stay where they
    were, so it is read again after a restart."""
    world = Sink()
    world.consumer.batches.append([at(0, 1, event_value()[1])])
    world.pool.outages = 10**6
    stop = asyncio.Event()
    running = asyncio.create_task(world.sink.run(stop))
    await eventually(lambda: world.retries("database") >= 3)
    stop.set()
    await asyncio.wait_for(running, 2.0)

    assert world.consumer.commits == []
    assert world.stored() == set()
    assert world.broker.produced == []


async def test_process_raises_when_stopped_during_an_outage() -> None:
    """A single batch processed during shutdown reports that it did not complete."""
    world = Sink()
    world.pool.outages = 10**6
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(StopRequestedError, match="database"):
        await world.sink.process([at(0, 1, event_value()[1])], stop)  # type: ignore[list-item]
    assert world.consumer.commits == []


async def test_run_stores_batches_in_order_and_reports_lag() -> None:
    """The loop stores and commits batch after batch and sets the lag gauge to the high
    watermark minus its position."""
    world = Sink(high={(topics.EVENTS, 0): 50, (topics.EVENTS, 1): 0})
    (a, value_a), (b, value_b) = event_value(), event_value()
    world.consumer.batches.extend([[at(0, 1, value_a)], [at(0, 2, value_b)]])
    stop = asyncio.Event()
    running = asyncio.create_task(world.sink.run(stop))
    labels = {"group": f"{world.name}-group", "topic": topics.EVENTS, "partition": "0"}

    def lag() -> float | None:
        return REGISTRY.get_sample_value("carebus_consumer_lag_records", labels)

    await eventually(lambda: lag() == 50 - 3)  # reported after the second batch's commit
    stop.set()
    await asyncio.wait_for(running, 2.0)

    assert world.consumer.commits == [[(topics.EVENTS, 0, 2)], [(topics.EVENTS, 0, 3)]]
    assert world.stored() == {a, b}
    assert world.sink.healthy()


async def test_the_committed_hook_runs_after_each_committed_batch_of_the_loop() -> None:
    """`on_committed` (webhook delivery wakes its dispatcher with it) follows each commit of
    the running loop, never a batch abandoned at shutdown."""
    world = Sink()
    world.consumer.batches.extend([[at(0, 1, event_value()[1])], [at(0, 2, event_value()[1])]])
    stop = asyncio.Event()
    running = asyncio.create_task(world.sink.run(stop))
    await eventually(lambda: len(world.hooks) == 2)
    world.pool.outages = 10**6
    world.consumer.batches.append([at(0, 3, event_value()[1])])
    await eventually(lambda: world.retries("database") >= 1)
    stop.set()
    await asyncio.wait_for(running, 2.0)

    assert world.hooks == [1, 2]  # each after its batch's commit; none for the abandoned one
    assert len(world.consumer.commits) == 2
