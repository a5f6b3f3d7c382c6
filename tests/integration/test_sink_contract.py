"""One contract for every store sink, run against the real broker and database.

arroyo's backend mixins are the model: `SinkContract` holds the tests once, and each sink's
adapter says only what differs between the sinks — the topics it reads, a record it stores, a
record the database refuses, and the table its rows land in. For every sink:

1. a replay (records produced twice, then the group's offsets set back) leaves one row each;
2. a row the database refuses is dead-lettered (`invalid_record`, its SQLSTATE, no personal
   data), and the rest of its batch and the records after it on the partition are stored;
3. undecodable bytes are dead-lettered with the decoder's reason: never blocking, never lost;
4. offsets are committed past everything handled, so a restart redoes none of it.

Each sink runs as the real `BatchSink` with its real `RowWriter`, in this process (no service
to start), in a fresh consumer group that begins at the end of the sink's topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import asyncpg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from carebus.adapters.auth import ensure_organisation
from carebus.adapters.deadletter import DECODE_DETAILS, DeadLetterPolicy
from carebus.adapters.kafka import consumer_config, producer_config
from carebus.adapters.sink import BatchSink, RowWriter
from carebus.adapters.webhook_registrations import set_webhook
from carebus.domain.deliveries import delivery_id
from carebus.domain.events import event_to_record, parse_event
from carebus.domain.identity import random_nin, subject_key
from carebus.domain.records import ALERT, DELIVERY, DISCLOSURE
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.testing import EventFactory, TestStack
from consumers import alert_store, audit_store, event_store
from consumers.webhooks import app as webhooks_app
from consumers.webhooks.dispatcher import NAME as WEBHOOKS_NAME
from consumers.webhooks.queue import QueueWriter

pytestmark = pytest.mark.integration

CODEC = Codec.default()
RNG = random.Random()
HANDLED_WITHIN_S = 30.0

Partition = tuple[str, int]  # topic, partition
Placed = tuple[str, int, int]  # topic, partition, offset

# Bytes the decoder refuses; the third failure, an Avro body with a byte left over, is made
# from a stored record in the test.
NOT_SINGLE_OBJECT = b'{"note": "JSON, not Avro"}'
UNKNOWN_SCHEMA = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + b"\x02\x04body"


@dataclass(frozen=True)
class Person:
    """Whom a test's records are about; one subject key, so one partition per topic."""

    nin: str
    key: str

    @classmethod
    def new(cls, stack: TestStack) -> Person:
        nin = random_nin(RNG)
        return cls(nin, subject_key(nin, stack.settings.subject_key_secret.get_secret_value()))


@dataclass(frozen=True)
class Produced:
    """A message a test produces, and the id of the row it should become (None: no row)."""

    topic: str
    key: bytes
    value: bytes
    row_id: str | None = None


def new_org() -> str:
    """A fresh 9-digit organisation number, so no two tests share an organisation's rows."""
    return f"7{RNG.randrange(10**8):08d}"


# --- one adapter per sink ----------------------------------------------------------------------


class SinkAdapter(ABC):
    """What the contract needs to know about one sink; everything else is the same for all."""

    name: ClassVar[str]  # the sink's name, which its dead letters carry as `consumer`
    group_id: ClassVar[str]  # the deployable's group; each test runs in a fresh one beside it
    reads: ClassVar[Sequence[str]]  # the topics it consumes
    batch_size: ClassVar[int]
    table: ClassVar[str]
    id_column: ClassVar[str]
    refused_sqlstate: ClassVar[str]  # what PostgreSQL answers to `refused_record`

    @abstractmethod
    def writer(self) -> RowWriter: ...

    @abstractmethod
    def stored_record(self, person: Person) -> Produced:
        """A record the sink stores as one row."""

    @abstractmethod
    def refused_record(self, person: Person) -> Produced:
        """A record that decodes and passes the sink's own checks, but the database refuses."""

    # Optional hooks, empty on purpose: only the webhook queue needs one.
    async def arrange(self, db: asyncpg.Connection) -> None:  # noqa: B027
        """Whatever the database must hold before the sink stores anything."""

    async def clean_up(self, db: asyncpg.Connection) -> None:  # noqa: B027
        """Undo what the test left that would change later tests."""


class EventStore(SinkAdapter):
    name = event_store.NAME
    group_id = event_store.GROUP_ID
    reads = (topics.EVENTS,)
    batch_size = event_store.BATCH_SIZE
    table, id_column = "events", "event_id"
    refused_sqlstate = "22P05"  # jsonb holds no U+0000

    def __init__(self) -> None:
        self.factory = EventFactory()

    def writer(self) -> RowWriter:
        return event_store.EventStoreWriter()

    def stored_record(self, person: Person, **payload: Any) -> Produced:
        parsed, problems = parse_event(self.factory.event("admission", nin=person.nin))
        assert parsed is not None, problems
        record = event_to_record(parsed, person.key, datetime.now(UTC))
        record["payload"].update(payload)
        value = CODEC.encode_event(record)
        return Produced(topics.EVENTS, person.key.encode(), value, record["event_id"])

    def refused_record(self, person: Person) -> Produced:
        return self.stored_record(person, ward="ward\x00 7")


class AuditStore(SinkAdapter):
    """The audit store: one sink, one group, a table per record type."""

    name = audit_store.NAME
    group_id = audit_store.GROUP_ID
    reads = audit_store.TOPICS
    batch_size = audit_store.BATCH_SIZE

    def writer(self) -> RowWriter:
        return audit_store.AuditStoreWriter()


class AuditStoreDisclosures(AuditStore):
    table, id_column = "disclosures", "audit_id"
    refused_sqlstate = "22021"  # text holds no U+0000

    def stored_record(self, person: Person, rule_id: str = "admission-rule") -> Produced:
        source_org, event_id, recipient = "974705788", f"dps-{uuid.uuid4().hex[:12]}", new_org()
        audit_id = delivery_id(source_org, event_id, recipient)
        record = {
            "audit_id": audit_id,
            "event_id": event_id,
            "event_type": "admission",
            "source_org": source_org,
            "subject_key": person.key,
            "recipient": {"agency": "nav", "org_id": recipient},
            "decision": "delivered",
            "reason": None,
            "basis": "presumed",
            "categories": ["logistics"],
            "fields": ["ward"],
            "rule_id": rule_id,
            "policy_version": "test-1",
            "decided_at": datetime.now(UTC),
            "delivery_id": audit_id,
            "emergency": False,
        }
        value = CODEC.encode(DISCLOSURE, record)
        return Produced(topics.AUDIT, person.key.encode(), value, audit_id)

    def refused_record(self, person: Person) -> Produced:
        return self.stored_record(person, rule_id="admission\x00rule")


def delivery_record(
    person: Person, agency: str, org_id: str, *, payload_json: str = '{"destination":"home"}'
) -> dict[str, Any]:
    """A Delivery record (delivery.avsc) as the router produces it."""
    event_id = f"dps-974705788-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC).replace(microsecond=0)
    return {
        "delivery_id": delivery_id("974705788", event_id, org_id),
        "event_id": event_id,
        "event_type": "discharge",
        "occurred_at": now,
        "decided_at": now,
        "source": {"agency": "dps", "org_id": "974705788", "system": "DIPS"},
        "recipient": {"agency": agency, "org_id": org_id},
        "subject": {"nin": person.nin},
        "subject_key": person.key,
        "basis": "statutory",
        "categories": ["logistics"],
        "fields": ["destination"],
        "payload_json": payload_json,
        "emergency": None,
        "rule_id": "discharge-rule",
        "policy_version": "test-1",
    }


def delivery_message(person: Person, record: Mapping[str, Any]) -> Produced:
    return Produced(
        topics.deliveries(record["recipient"]["agency"]),
        person.key.encode(),
        CODEC.encode(DELIVERY, record),
        record["delivery_id"],
    )


class AuditStoreDeliveries(AuditStore):
    """The audit store's other write path: deliveries, staged in order under an advisory lock."""

    table, id_column = "deliveries", "delivery_id"
    refused_sqlstate = "22P05"  # the body is jsonb, which holds no U+0000

    def stored_record(self, person: Person) -> Produced:
        return delivery_message(person, delivery_record(person, "nav", new_org()))

    def refused_record(self, person: Person) -> Produced:
        payload_json = json.dumps({"destination": "home\x00"})  # valid JSON: "home\\u0000"
        record = delivery_record(person, "nav", new_org(), payload_json=payload_json)
        return delivery_message(person, record)


class AlertStore(SinkAdapter):
    name = alert_store.NAME
    group_id = alert_store.GROUP_ID
    reads = alert_store.TOPICS
    batch_size = alert_store.BATCH_SIZE
    table, id_column = "alerts", "alert_id"
    refused_sqlstate = "22021"  # text holds no U+0000

    def writer(self) -> RowWriter:
        return alert_store.AlertStoreWriter()

    def stored_record(
        self, person: Person, summary: str = "No reply to the discharge-ready notice."
    ) -> Produced:
        now = datetime.now(UTC).replace(microsecond=0)
        record: dict[str, Any] = {
            "alert_id": f"alert-{uuid.uuid4().hex}",
            "rule_id": "discharge-ready-reply",
            "title": "Reply to a discharge-ready notice",
            "kind": "deadline_missed",
            "status": "open",
            "resolution": None,
            "subject_key": person.key,
            "subject": {"nin": person.nin},
            "recipient": {"agency": "municipality", "org_id": new_org()},
            "audience": "coordinator",
            "contact": {"agency": "dps", "org_id": "974705788"},
            "deadline": now - timedelta(hours=3),
            "breached_at": now - timedelta(hours=1),
            "escalate_at": now + timedelta(days=1),
            "summary": summary,
            "event_ids": ["dps-974705788-1"],
            "rules_version": "test-1",
            "changed_at": now,
        }
        value = CODEC.encode(ALERT, record)
        return Produced(topics.ALERTS, person.key.encode(), value, record["alert_id"])

    def refused_record(self, person: Person) -> Produced:
        return self.stored_record(person, summary="No reply\x00 to the notice.")


class WebhookQueue(SinkAdapter):
    """The webhook intake: Delivery records of an organisation with a webhook become queue rows.

    The deployable runs `IntakeSink`, the batch loop plus a nudge to its dispatcher; the
    contract runs the batch loop with the same `QueueWriter`.
    """

    name = WEBHOOKS_NAME
    group_id = webhooks_app.GROUP_ID
    reads = topics.DELIVERIES
    batch_size = webhooks_app.BATCH_SIZE
    table, id_column = "webhook_queue", "delivery_id"
    refused_sqlstate = "22021"  # text holds no U+0000
    agency = "municipality"

    def __init__(self) -> None:
        self.org_id = new_org()

    def writer(self) -> RowWriter:
        return QueueWriter()

    async def arrange(self, db: asyncpg.Connection) -> None:
        # Nothing dispatches in these tests: the URL is never called.
        await ensure_organisation(db, agency=self.agency, org_id=self.org_id)
        await set_webhook(db, self.org_id, f"http://127.0.0.1:9/hooks/{self.org_id}")

    async def clean_up(self, db: asyncpg.Connection) -> None:
        # A webhooks service started by a later test would otherwise try to send these rows.
        await db.execute("DELETE FROM webhook_queue WHERE org_id = $1", self.org_id)
        await db.execute("DELETE FROM webhooks WHERE org_id = $1", self.org_id)

    def stored_record(self, person: Person) -> Produced:
        return delivery_message(person, delivery_record(person, self.agency, self.org_id))

    def refused_record(self, person: Person) -> Produced:
        # The body is bytea and every text column is the bus's own: only a corrupt record can
        # bring PostgreSQL a value it refuses, here a subject key with U+0000 in it.
        record = delivery_record(person, self.agency, self.org_id)
        record["subject_key"] = person.key[:32] + "\x00" + person.key[33:]
        return delivery_message(person, record)


# --- running a sink in this process ------------------------------------------------------------


def build_sink(
    adapter: SinkAdapter,
    *,
    group_id: str,
    consumer: Consumer,
    pool: asyncpg.Pool,
    writer: RowWriter,
    dead_letters: DeadLetterPolicy,
) -> BatchSink:
    """The sink as its deployable builds it (`run_sink`, the webhook intake), minus the process."""
    return BatchSink(
        name=adapter.name,
        group_id=group_id,
        consumer=consumer,
        pool=pool,
        codec=CODEC,
        writer=writer,
        dead_letters=dead_letters,
        batch_size=adapter.batch_size,
        # The deployables poll for 0.5 s; a short poll starts and stops a test's sink at once.
        poll_timeout_s=0.1,
    )


def offsets_past(placed: Iterable[Placed]) -> dict[Partition, int]:
    """Per partition, the offset after the last of `placed`: where a sink that handled them
    all has committed."""
    offsets: dict[Partition, int] = {}
    for topic, partition, offset in placed:
        offsets[(topic, partition)] = max(offsets.get((topic, partition), 0), offset + 1)
    return offsets


def offsets_of_first(placed: Iterable[Placed]) -> dict[Partition, int]:
    """Per partition, the offset of the first of `placed`."""
    offsets: dict[Partition, int] = {}
    for topic, partition, offset in placed:
        offsets[(topic, partition)] = min(offsets.get((topic, partition), offset), offset)
    return offsets


class SinkHarness:
    """One test's sink: a fresh group at the end of its topics, runs of it, and what it left.

    `_group` reads and sets the group's committed offsets; it never subscribes, so it is no
    member of the group and never takes a partition from the sink.
    """

    def __init__(self, stack: TestStack, db: asyncpg.Connection, adapter: SinkAdapter) -> None:
        self.stack, self.db, self.adapter = stack, db, adapter
        self.group_id = f"{adapter.group_id}-contract-{uuid.uuid4().hex[:12]}"
        settings = stack.settings
        self._group = Consumer(consumer_config(settings, self.group_id))
        self._producer = Producer(producer_config(settings, f"test-contract-{uuid.uuid4().hex}"))
        self._letters_from = self._ends([topics.DEADLETTER])
        self._set_offsets(self._ends(adapter.reads))
        self._run: asyncio.Task[None] | None = None

    def close(self) -> None:
        self._producer.flush(10)
        self._group.close()

    # -- the broker --

    def _ends(self, names: Iterable[str]) -> dict[Partition, int]:
        """The high watermark of every partition of the topics `names`."""
        ends: dict[Partition, int] = {}
        for name in names:
            metadata = self._group.list_topics(name, timeout=10).topics[name]
            for partition in metadata.partitions:
                ends[(name, partition)] = self._high_watermark(TopicPartition(name, partition))
        return ends

    def _high_watermark(self, tp: TopicPartition) -> int:
        # Right after the session's broker created its topics, leaders are still being settled.
        deadline = time.monotonic() + 10
        while True:
            try:
                _low, high = self._group.get_watermark_offsets(tp, timeout=10)
                return int(high)
            except KafkaException:  # e.g. NOT_LEADER_FOR_PARTITION, which says not retriable
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _set_offsets(self, offsets: Mapping[Partition, int]) -> None:
        self._group.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )

    def committed(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The group's committed offsets of `partitions` (-1001: none)."""
        found = self._group.committed([TopicPartition(t, p) for t, p in partitions], timeout=10)
        return {(tp.topic, tp.partition): tp.offset for tp in found}

    async def produce(self, messages: Sequence[Produced]) -> list[Placed]:
        """Produce `messages` in order, acknowledged; each one's (topic, partition, offset)."""

        def produce_all() -> list[Placed]:
            placed: list[Placed | None] = [None] * len(messages)

            def report(index: int) -> Any:
                def on_delivery(err: Any, msg: Any) -> None:
                    assert err is None, err
                    placed[index] = (msg.topic(), msg.partition(), msg.offset())

                return on_delivery

            for index, message in enumerate(messages):
                self._producer.produce(
                    message.topic, value=message.value, key=message.key, on_delivery=report(index)
                )
            assert self._producer.flush(30) == 0
            return [p for p in placed if p is not None]

        placed = await asyncio.to_thread(produce_all)
        assert len(placed) == len(messages)
        return placed

    def rewind(self, placed: Sequence[Placed]) -> None:
        """Set the group back to the first of `placed`, as if it had crashed before committing."""
        assert self._run is None, "the group's offsets move only while no sink runs"
        self._set_offsets(offsets_of_first(placed))

    async def dead_letters(self) -> dict[Placed, list[dict[str, Any]]]:
        """This sink's dead letters since the test began, by the message each one names."""
        return await asyncio.to_thread(self._read_dead_letters)

    def _read_dead_letters(self) -> dict[Placed, list[dict[str, Any]]]:
        ends = self._ends([topics.DEADLETTER])
        reading = {tp: self._letters_from.get(tp, 0) for tp in ends}  # the next offset of each
        reader = Consumer(consumer_config(self.stack.settings, f"test-dlq-{uuid.uuid4().hex}"))
        reader.assign([TopicPartition(t, p, o) for (t, p), o in reading.items()])
        found: dict[Placed, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 20
        try:
            while any(reading[tp] < end for tp, end in ends.items()):
                assert time.monotonic() < deadline, f"read {reading} of the letters, not {ends}"
                for message in reader.consume(100, 0.2):
                    topic, partition, offset = (
                        message.topic(),
                        message.partition(),
                        message.offset(),
                    )
                    if message.error() or topic is None or partition is None or offset is None:
                        continue
                    reading[(topic, partition)] = offset + 1
                    letter = CODEC.decode(message.value() or b"").record
                    if letter["consumer"] == self.adapter.name:
                        source = (
                            letter["source_topic"],
                            letter["source_partition"],
                            letter["source_offset"],
                        )
                        found.setdefault(source, []).append({**letter, "key": message.key()})
        finally:
            reader.close()
        return found

    # -- the database --

    async def rows(self, messages: Iterable[Produced]) -> dict[str, int]:
        """How many rows the sink's table holds for each message's row id."""
        ids = [m.row_id for m in messages if m.row_id is not None]
        query = (
            f"SELECT {self.adapter.id_column} AS id, count(*) AS n FROM {self.adapter.table}"  # noqa: S608
            f" WHERE {self.adapter.id_column} = ANY($1::text[]) GROUP BY 1"
        )
        counts = {row["id"]: row["n"] for row in await self.db.fetch(query, ids)}
        return {row_id: counts.get(row_id, 0) for row_id in ids}

    # -- the sink --

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The real sink on the real broker and database, until the block ends."""
        settings = self.stack.settings
        writer = self.adapter.writer()
        pool = await asyncpg.create_pool(
            settings.postgres_dsn, min_size=1, max_size=2, init=writer.prepare
        )
        consumer = Consumer(
            consumer_config(settings, self.group_id, **{"client.id": self.adapter.name})
        )
        consumer.subscribe(list(self.adapter.reads))
        letters = Producer(producer_config(settings, f"{self.adapter.name}-deadletters"))
        sink = build_sink(
            self.adapter,
            group_id=self.group_id,
            consumer=consumer,
            pool=pool,
            writer=writer,
            dead_letters=DeadLetterPolicy(letters, CODEC, self.adapter.name),
        )
        stop = asyncio.Event()
        self._run = asyncio.create_task(sink.run(stop))
        try:
            yield
        finally:
            stop.set()
            try:
                await asyncio.wait_for(self._run, 30)
            finally:
                self._run = None
                await asyncio.to_thread(consumer.close)
                await asyncio.to_thread(letters.flush, 10)
                await pool.close()

    async def handled(self, placed: Sequence[Placed]) -> None:
        """Until the running sink has committed past every message of `placed`."""
        wanted = offsets_past(placed)
        deadline = time.monotonic() + HANDLED_WITHIN_S
        while True:
            if self._run is not None and self._run.done():
                self._run.result()  # raises what ended the sink
                raise AssertionError("the sink stopped on its own")
            committed = await asyncio.to_thread(self.committed, wanted)
            if all(committed[tp] >= offset for tp, offset in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"committed {committed}, not past {wanted}")
            await asyncio.sleep(0.05)


# --- the contract ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


class SinkContract:
    """What every sink must do, whatever it stores; a subclass names the sink's adapter."""

    adapter: ClassVar[type[SinkAdapter]]

    @pytest.fixture
    async def sink(self, stack: TestStack, db: asyncpg.Connection) -> AsyncIterator[SinkHarness]:
        adapter = self.adapter()
        await adapter.arrange(db)
        harness = await asyncio.to_thread(SinkHarness, stack, db, adapter)
        try:
            yield harness
        finally:
            await asyncio.to_thread(harness.close)
            await adapter.clean_up(db)

    async def test_a_replay_leaves_one_row_per_record(self, sink: SinkHarness) -> None:
        """Records read twice in one batch, then again after a rewind: one row each, no letter."""
        person = Person.new(sink.stack)
        records = [sink.adapter.stored_record(person) for _ in range(3)]
        placed = await sink.produce([*records, *records])
        async with sink.running():
            await sink.handled(placed)
        assert await sink.rows(records) == {r.row_id: 1 for r in records}

        sink.rewind(placed)
        async with sink.running():
            await sink.handled(placed)
        assert await sink.rows(records) == {r.row_id: 1 for r in records}
        assert await sink.dead_letters() == {}

    async def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_stored(
        self, sink: SinkHarness
    ) -> None:
        """The refused record's dead letter names the SQLSTATE, not the value; its batch and
        the records after it on its partition are stored."""
        person = Person.new(sink.stack)
        adapter = sink.adapter
        before = [adapter.stored_record(person) for _ in range(2)]
        refused = adapter.refused_record(person)
        after = [adapter.stored_record(person) for _ in range(2)]
        placed = await sink.produce([*before, refused, *after])
        assert len({(t, p) for t, p, _ in placed}) == 1  # one partition, in this order
        async with sink.running():
            await sink.handled(placed)
            later = adapter.stored_record(person)  # a later batch on the same partition
            placed += await sink.produce([later])
            await sink.handled(placed)

        stored = [*before, *after, later]
        assert await sink.rows(stored) == {r.row_id: 1 for r in stored}
        assert await sink.rows([refused]) == {refused.row_id: 0}
        letters = await sink.dead_letters()
        assert list(letters) == [placed[2]]
        [letter] = letters[placed[2]]
        assert letter["reason"] == "invalid_record"
        assert f"SQLSTATE {adapter.refused_sqlstate}" in letter["detail"]
        assert person.nin not in letter["detail"]
        assert person.key[:16] not in letter["detail"]
        assert (letter["key"], letter["original_value"]) == (refused.key, refused.value)

    async def test_undecodable_bytes_are_dead_lettered_with_the_decoders_reason(
        self, sink: SinkHarness
    ) -> None:
        """Each decoder failure is one dead letter holding the bytes; the partition goes on."""
        person = Person.new(sink.stack)
        first, last = (sink.adapter.stored_record(person) for _ in range(2))
        undecodable = {
            "not_single_object": NOT_SINGLE_OBJECT,
            "unknown_schema": UNKNOWN_SCHEMA,
            "undecodable_body": first.value + b"\x00",  # a byte after a whole record
        }
        garbage = [Produced(first.topic, first.key, value) for value in undecodable.values()]
        placed = await sink.produce([first, *garbage, last])
        async with sink.running():
            await sink.handled(placed)

        assert await sink.rows([first, last]) == {first.row_id: 1, last.row_id: 1}
        letters = await sink.dead_letters()
        assert list(letters) == placed[1:-1]
        for where, (reason, value) in zip(placed[1:-1], undecodable.items(), strict=True):
            [letter] = letters[where]
            assert (letter["reason"], letter["detail"]) == (reason, DECODE_DETAILS[reason])
            assert (letter["key"], letter["original_value"]) == (first.key, value)

    async def test_a_restart_resumes_after_the_committed_offsets(self, sink: SinkHarness) -> None:
        """The group's offsets are past everything handled; a restart handles none of it again."""
        person = Person.new(sink.stack)
        record = sink.adapter.stored_record(person)
        garbage = Produced(record.topic, record.key, NOT_SINGLE_OBJECT)
        placed = await sink.produce([garbage, record])
        async with sink.running():
            await sink.handled(placed)
        (topic, partition, last) = placed[-1]
        assert sink.committed([(topic, partition)]) == {(topic, partition): last + 1}

        async with sink.running():  # the restart
            marker = sink.adapter.stored_record(person)
            placed += await sink.produce([marker])
            await sink.handled(placed)
        letters = await sink.dead_letters()
        assert {where: len(found) for where, found in letters.items()} == {placed[0]: 1}
        assert await sink.rows([record, marker]) == {record.row_id: 1, marker.row_id: 1}


class TestEventStore(SinkContract):
    adapter = EventStore


class TestAuditStoreDisclosures(SinkContract):
    adapter = AuditStoreDisclosures


class TestAuditStoreDeliveries(SinkContract):
    adapter = AuditStoreDeliveries


class TestAlertStore(SinkContract):
    adapter = AlertStore


class TestWebhookQueue(SinkContract):
    adapter = WebhookQueue
