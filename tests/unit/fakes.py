"""In-memory stand-ins for the broker, the database and the publisher, for fast unit tests.

Each fake keeps what the class under test did to it (records produced, offsets committed,
rows written, transactions rolled back), so a test asserts on behaviour, not on calls. They
model what the real thing promises and nothing more: a producer acknowledges a record only
when it is polled or flushed, a transaction's writes exist only once it ends without an
error, a consumer's position is one past what it handed out.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar, cast

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from carebus.adapters.publisher import Acknowledged, BrokerUnavailableError, OutgoingRecord
from carebus.wire.codec import Codec

CODEC: Final = Codec.default()

# --- messages -------------------------------------------------------------------------------


class FakeMessage:
    """A consumed confluent-kafka message (also what a producer hands its delivery report)."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None = None,
        *,
        error: KafkaError | None = None,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._value = value
        self._key = key
        self._error = error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> KafkaError | None:
        return self._error

    def __repr__(self) -> str:
        return f"FakeMessage({self._topic}[{self._partition}]@{self._offset})"


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """A faust message: the attributes the router, the SLA engine and FaustMessage read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A faust event, as `take_events` hands a batch of them to an agent."""

    message: StreamRecord


# --- the broker -----------------------------------------------------------------------------


@dataclass
class DeadLetterBroker:
    """A confluent-kafka producer for `DeadLetterPolicy`: keeps every dead letter produced and
    serves their delivery reports on flush; `failures` are the outcomes of the next reports
    (a KafkaError each), the rest are acknowledged."""

    failures: list[KafkaError] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)
    produced: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)
    _reports: list[Callable[[Any, Any], None]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        assert on_delivery is not None, "a dead letter without a delivery report is fire-and-forget"
        self.produced.append((topic, key, value))
        self._reports.append(on_delivery)

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def flush(self, timeout: float = 0.0) -> int:
        reports, self._reports = self._reports, []
        for report in reports:
            failure = self.failures.pop(0) if self.failures else None
            report(failure, None)
            self.journal.append("dead_letter_failed" if failure else "dead_letter_acknowledged")
        return 0

    def letters(self) -> list[dict[str, Any]]:
        """Every dead letter produced (re-sends included), decoded."""
        return [CODEC.decode(value or b"").record for _, _, value in self.produced]


Never = Literal["never"]
NEVER: Final[Never] = "never"
Outcome = KafkaError | None | Never


class FakeProducer:
    """A confluent-kafka producer for `Publisher`: thread-safe like the real one, it serves
    delivery reports from `poll` (the publisher's poll thread) and `flush`.

    Records are acknowledged in order with consecutive offsets per topic; `outcomes` decides
    the next records' reports (a KafkaError, or NEVER for a record the broker never
    acknowledges); `refuse` is raised by `produce` once `refuse_after` records are in
    (BufferError: the local queue is full).
    """

    def __init__(self) -> None:
        self.outcomes: deque[Outcome] = deque()
        self.refuse: BaseException | None = None
        self.refuse_after = 0
        self.paused = False  # while True, the broker answers nothing (reports wait)
        self.produced: list[OutgoingRecord] = []
        self.flushes: list[float] = []
        self.brokers: dict[int, object] | None = {1: object()}
        self._offsets: dict[str, int] = {}
        self._ready: list[tuple[Callable[[KafkaError | None, Message], None], Outcome, Message]]
        self._ready = []
        self._held = 0
        self._changed = threading.Condition()

    def produce(
        self,
        topic: str,
        *,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        if self.refuse is not None and len(self.produced) >= self.refuse_after:
            raise self.refuse
        with self._changed:
            outcome = self.outcomes.popleft() if self.outcomes else None
            offset = self._offsets.get(topic, 0)
            self._offsets[topic] = offset + 1
            byte_headers = tuple(
                (name, v.encode() if isinstance(v, str) else v or b"") for name, v in headers
            )
            self.produced.append(OutgoingRecord(topic, key, value, byte_headers))
            if isinstance(outcome, str):  # NEVER (KafkaError cannot be compared with ==)
                self._held += 1
                return
            message = cast(Message, FakeMessage(topic, 0, offset, value, key))
            self._ready.append((on_delivery, outcome, message))
            self._changed.notify_all()

    def poll(self, timeout: float) -> int:
        with self._changed:
            if not self._ready or self.paused:
                self._changed.wait(timeout)
            if self.paused:
                return 0
            ready, self._ready = self._ready, []
        for on_delivery, outcome, message in ready:
            on_delivery(outcome if isinstance(outcome, KafkaError) else None, message)
        return len(ready)

    def resume(self) -> None:
        """The broker answers again: the waiting reports are served."""
        with self._changed:
            self.paused = False
            self._changed.notify_all()

    def flush(self, timeout: float) -> int:
        self.flushes.append(timeout)
        self.poll(0.0)
        return self._held + len(self._ready)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return ClusterMetadata(self.brokers)


@dataclass(frozen=True)
class ClusterMetadata:
    """The one field of confluent-kafka's ClusterMetadata that readiness reads."""

    brokers: dict[int, object] | None


class FakeConsumer:
    """A confluent-kafka consumer for `BatchSink`: hands out `batches` one per `consume`, then
    waits out the poll timeout with nothing; keeps every commit. Its position on a partition
    is one past the last message it handed out; `high` holds each partition's high watermark.
    `commit_failures` are raised by the next commits."""

    def __init__(
        self,
        batches: Sequence[Sequence[FakeMessage]] = (),
        *,
        high: dict[tuple[str, int], int],
        journal: list[str] | None = None,
    ) -> None:
        self.batches: deque[list[FakeMessage]] = deque(list(b) for b in batches)
        self.high = high
        self.journal = journal if journal is not None else []
        self.commits: list[list[tuple[str, int, int]]] = []
        self.commit_failures: list[BaseException] = []
        self._positions: dict[tuple[str, int], int] = {}
        self._idle = threading.Event()

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if not self.batches:
            self._idle.wait(min(timeout, 0.05))  # like the real one: nothing before the timeout
            return []
        batch = self.batches.popleft()
        assert len(batch) <= num_messages
        for message in batch:
            place = (message.topic(), message.partition())
            self._positions[place] = max(self._positions.get(place, 0), message.offset() + 1)
        return cast(list[Message], batch)

    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: bool = True
    ) -> list[TopicPartition]:
        assert not asynchronous, "offsets must be committed synchronously"
        if self.commit_failures:
            self.journal.append("commit_failed")
            raise self.commit_failures.pop(0)
        self.journal.append("commit")
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        return offsets

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in sorted(self.high)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic, tp.partition, self._positions.get((tp.topic, tp.partition), -1001)
            )
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        return 0, self.high[(partition.topic, partition.partition)]


def kafka_error(code: int) -> KafkaException:
    """A KafkaException as confluent-kafka raises it, wrapping a KafkaError of `code`."""
    return KafkaException(KafkaError(code))


# --- the publisher --------------------------------------------------------------------------


class FakePublisher:
    """`carebus.adapters.publisher.Publisher` in memory: every attempt is kept in `attempts`,
    what the broker acknowledged in `published`. `failures` are raised by the next attempts;
    while `gate` is set to an unset event, an attempt waits for it (a slow broker)."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.attempts: list[list[OutgoingRecord]] = []
        self.published: list[OutgoingRecord] = []
        self.failures: list[BaseException] = []
        self.gate: asyncio.Event | None = None
        self.journal = journal if journal is not None else []
        self._offsets: dict[str, int] = {}

    async def publish(self, records: Sequence[OutgoingRecord]) -> list[Acknowledged]:
        await self._attempt(records)
        acknowledged = []
        for record in records:
            offset = self._offsets.get(record.topic, 0)
            self._offsets[record.topic] = offset + 1
            acknowledged.append(Acknowledged(record.topic, 0, offset))
        return acknowledged

    async def publish_all(self, records: Sequence[OutgoingRecord]) -> None:
        await self.publish(records)

    async def _attempt(self, records: Sequence[OutgoingRecord]) -> None:
        self.attempts.append(list(records))
        self.journal.append("publish")
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.journal.append("publish_failed")
            raise self.failures.pop(0)
        self.published.extend(records)
        self.journal.append("published")

    def on(self, topic: str) -> list[dict[str, Any]]:
        """The records acknowledged on `topic`, decoded."""
        return [CODEC.decode(r.value).record for r in self.published if r.topic == topic]


def broker_down() -> BrokerUnavailableError:
    return BrokerUnavailableError("the broker did not acknowledge in time")


# --- the database ---------------------------------------------------------------------------


class FakeDatabase:
    """Tables in memory (name -> key -> row) with PostgreSQL's transaction rule: a
    transaction's (or savepoint's) writes are undone when it ends with an error."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, Any]] = {}
        self.commits = 0
        self.rollbacks = 0

    def table(self, name: str) -> dict[Any, Any]:
        return self.tables.setdefault(name, {})


class FakeConnection:
    """A pooled connection to a FakeDatabase; `transaction()` nests as savepoints do."""

    def __init__(self, db: FakeDatabase) -> None:
        self.db = db
        self._depth = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        saved = copy.deepcopy(self.db.tables)
        self._depth += 1
        try:
            yield
        except BaseException:
            self.db.tables = saved
            if self._depth == 1:
                self.db.rollbacks += 1
            raise
        else:
            if self._depth == 1:
                self.db.commits += 1
        finally:
            self._depth -= 1


ConnectionT = TypeVar("ConnectionT", bound=FakeConnection)


class FakePool(Generic[ConnectionT]):
    """An asyncpg pool of one connection; `outages` acquisitions fail first, as they do while
    PostgreSQL is unreachable."""

    def __init__(self, connection: ConnectionT) -> None:
        self.connection = connection
        self.outages = 0

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[ConnectionT]:
        if self.outages:
            self.outages -= 1
            raise ConnectionRefusedError("database unreachable")
        yield self.connection


# --- waiting --------------------------------------------------------------------------------


async def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Wait until `condition()` holds, failing the test after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.001)
