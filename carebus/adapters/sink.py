"""The batch loop every store sink runs: consume, decode, write in one transaction, commit offsets.

One batch goes through these steps, and offsets move only at the end, so a crash anywhere
replays the batch and idempotent writes make the replay harmless:

1. consume up to `batch_size` messages;
2. decode each; undecodable ones go to the dead-letter policy, records of a type the sink does
   not store are skipped;
3. write the rest in ONE database transaction; if the database rejects the batch because of a
   row's content, write it again row by row (a savepoint each) and dead-letter the poison rows;
4. wait for the broker to acknowledge every dead letter;
5. commit, synchronously, the batch's last offset + 1 for each partition.

Transient database or broker failures are retried with backoff on the same batch and never
dead-letter anything: a dead letter is for a message that can never be stored, not for an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from carebus.adapters import resources
from carebus.adapters.deadletter import DeadLetterPolicy, Reason
from carebus.adapters.resources import TRANSIENT_ERRORS, count_retry
from carebus.runtime import metrics
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.retry import RetryPolicy, StopRequestedError
from carebus.runtime.telemetry import get_logger
from carebus.runtime.worker import WorkerContext, run_worker
from carebus.wire.codec import Codec, Decoded, DecodeError

log = get_logger(__name__)

Connection = asyncpg.Connection | PoolConnectionProxy
Row = tuple[Any, ...]

# SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation): the row's
# content is at fault, so writing it again can never succeed.
_DATA_ERRORS: Final = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
)
# Commit failures that mean the partitions now belong to another member, which will replay
# the batch; retrying the commit cannot succeed.
_OWNERSHIP_LOST: Final = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._ASSIGNMENT_LOST,
    }
)


class InvalidRecordError(Exception):
    """A decoded record this sink can never store; `detail` is a fixed text, no personal data."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RowWriter(Protocol):
    """What a store sink knows about its table; the loop does everything else."""

    async def prepare(self, conn: Connection) -> None:
        """Per-connection setup (temporary tables, codecs), run once for each new connection."""

    def row(self, decoded: Decoded, message: Message) -> Row | None:
        """The row for a decoded record, or None for a record type this sink does not store.

        Raises InvalidRecordError when the record can never be stored.
        """

    async def write(self, conn: Connection, rows: Sequence[Row]) -> None:
        """Write `rows` idempotently inside the caller's transaction."""


def sink_retry(initial_s: float = 0.2, maximum_s: float = 30.0) -> RetryPolicy:
    """The retry policy of every store sink (and the webhook dispatcher)."""
    return RetryPolicy(TRANSIENT_ERRORS, initial_s=initial_s, maximum_s=maximum_s)


@dataclass(frozen=True, slots=True)
class _Pending:
    message: Message
    row: Row


@dataclass
class _Batch:
    """One consumed batch, decoded: the rows to write and what was set aside."""

    messages: Sequence[Message]
    started: float
    pending: list[_Pending] = field(default_factory=list)
    skipped: int = 0
    undecodable: list[tuple[Message, str]] = field(default_factory=list)  # with decoder's code
    invalid: list[tuple[Message, str]] = field(default_factory=list)  # with a fixed detail


class BatchSink:
    """Runs the batch loop for one consumer group and one RowWriter."""

    def __init__(
        self,
        *,
        name: str,
        group_id: str,
        consumer: Consumer,
        pool: asyncpg.Pool,
        codec: Codec,
        writer: RowWriter,
        dead_letters: DeadLetterPolicy,
        batch_size: int = 1000,
        poll_timeout_s: float = 0.5,
        flush_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        """`on_committed` is called after each batch is written and its offsets committed."""
        self.name = name
        self._group_id = group_id
        self._consumer = consumer
        self._pool = pool
        self._codec = codec
        self._writer = writer
        self._dead_letters = dead_letters
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._flush_timeout_s = flush_timeout_s
        self._retry = retry or sink_retry()
        self._on_committed = on_committed
        self._on_retry = count_retry(name)
        self._last_progress = time.monotonic()

    def healthy(self, stale_after_s: float = 60.0) -> bool:
        """Whether the loop finished a poll or batch recently (not stuck retrying an outage)."""
        return time.monotonic() - self._last_progress < stale_after_s

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until `stop` is set; the batch in hand is finished and committed.

        Two batches are in flight: while one is written and committed, the next is consumed
        and decoded, so Python's decoding overlaps PostgreSQL's work. Offsets still move only
        after a batch is written, in order, so a crash replays at most the two batches.
        """
        log.info("sink.started", group=self._group_id, batch_size=self._batch_size)
        ahead: asyncio.Task[_Batch] = asyncio.create_task(self._next_batch())
        try:
            while not stop.is_set():
                batch = await ahead
                ahead = asyncio.create_task(self._next_batch())
                if batch.messages:
                    try:
                        await self._store(batch, stop)
                    except StopRequestedError as exc:
                        log.warning(
                            "sink.batch_abandoned", step=str(exc), messages=len(batch.messages)
                        )
                        break
                self._last_progress = time.monotonic()
                self._update_lag()
        finally:
            # The consumer is used by the thread of the batch read ahead: let it finish; its
            # offsets are not committed, so it is read again after a restart.
            with contextlib.suppress(Exception):
                await ahead
        log.info("sink.stopped")

    async def process(self, messages: Sequence[Message], stop: asyncio.Event) -> None:
        """Store one batch and commit its offsets; see the module docstring for the steps."""
        await self._store(self._prepare(messages), stop)

    async def _next_batch(self) -> _Batch:
        messages = await asyncio.to_thread(
            self._consumer.consume, self._batch_size, self._poll_timeout_s
        )
        return self._prepare(messages)

    def _prepare(self, messages: Sequence[Message]) -> _Batch:
        """Steps 1–2: decode the batch into rows; note what can never be stored."""
        batch = _Batch(messages=messages, started=time.perf_counter())
        for message in messages:
            if _consumer_error(message):
                continue
            try:
                decoded = self._codec.decode(message.value() or b"")
            except DecodeError as exc:
                batch.undecodable.append((message, exc.reason))
                continue
            try:
                row = self._writer.row(decoded, message)
            except InvalidRecordError as exc:
                batch.invalid.append((message, exc.detail))
                continue
            if row is None:
                batch.skipped += 1
                metrics.SINK_SKIPPED.labels(self.name, decoded.schema_name).inc()
                continue
            batch.pending.append(_Pending(message, row))
        return batch

    async def _store(self, batch: _Batch, stop: asyncio.Event) -> None:
        """Steps 3–5: write the rows, wait for the dead letters, commit the offsets."""
        pending, messages = batch.pending, batch.messages
        # Dead letters are handed over here, not while decoding: the batch read ahead must not
        # add letters while this batch's flush (in a thread) waits for its own.
        for message, decode_reason in batch.undecodable:
            self._log_dead_letter(
                message, self._dead_letters.send_undecodable(message, decode_reason)
            )
        for message, detail in batch.invalid:
            self._dead_letters.send(message, Reason.INVALID_RECORD, detail)
            self._log_dead_letter(message, Reason.INVALID_RECORD)
        rejected: list[tuple[Message, str]] = []

        async def write() -> None:
            rejected[:] = await self._write(pending)

        await self._retry.call("database", write, stop=stop, on_retry=self._on_retry)
        for message, detail in rejected:
            self._dead_letters.send(message, Reason.INVALID_RECORD, detail)
            self._log_dead_letter(message, Reason.INVALID_RECORD)

        await self._retry.call(
            "dead_letters",
            lambda: self._dead_letters.acknowledged(self._flush_timeout_s),
            stop=stop,
            on_retry=self._on_retry,
        )

        async def commit() -> None:
            await self._commit(messages)

        await self._retry.call("commit", commit, stop=stop, on_retry=self._on_retry)
        if self._on_committed is not None:
            self._on_committed()

        written = len(pending) - len(rejected)
        metrics.SINK_ROWS.labels(self.name).inc(written)
        metrics.SINK_BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - batch.started)
        log.info(
            "sink.batch_committed",
            messages=len(messages),
            rows=written,
            skipped=batch.skipped,
            dead_lettered=len(batch.undecodable) + len(batch.invalid) + len(rejected),
        )

    async def _write(self, pending: Sequence[_Pending]) -> list[tuple[Message, str]]:
        """Write the batch in one transaction; on a content error, isolate the poison rows.

        Returns the rejected messages with a fixed detail text each; they are dead-lettered
        only after the transaction that skipped them has committed.
        """
        if not pending:
            return []
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await self._writer.write(conn, [p.row for p in pending])
                return []
            except _DATA_ERRORS as exc:
                log.warning("sink.batch_rejected", sqlstate=exc.sqlstate, rows=len(pending))
            rejected: list[tuple[Message, str]] = []
            async with conn.transaction():
                for item in pending:
                    try:
                        async with conn.transaction():  # a savepoint per row
                            await self._writer.write(conn, [item.row])
                    except _DATA_ERRORS as exc:
                        rejected.append((item.message, _rejection_detail(exc)))
            return rejected

    async def _commit(self, messages: Iterable[Message]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None or offset < 0:
                continue
            key = (topic, partition)
            next_offsets[key] = max(next_offsets.get(key, 0), offset + 1)
        if not next_offsets:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(next_offsets.items())]
        try:
            results = await asyncio.to_thread(
                self._consumer.commit, offsets=offsets, asynchronous=False
            )
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() in _OWNERSHIP_LOST:
                # Another member owns these partitions now and will replay from the last
                # committed offset; the writes are idempotent, so nothing is lost or doubled.
                log.warning("sink.commit_skipped", reason=error.name())
                return
            raise
        failed = [r for r in results if r.error is not None]
        if failed:
            raise KafkaException(failed[0].error)

    def _log_dead_letter(self, message: Message, reason: Reason) -> None:
        log.warning(
            "sink.dead_lettered",
            reason=reason.value,
            partition=message.partition(),
            offset=message.offset(),
            subject_key=_subject_key(message.key()),
        )

    def _update_lag(self) -> None:
        """Lag per assigned partition: the high watermark minus this consumer's position."""
        try:
            positions = self._consumer.position(self._consumer.assignment())
        except KafkaException:
            return
        for tp in positions:
            if tp.offset < 0:
                continue  # nothing consumed from it yet in this session: position unknown
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0:
                metrics.CONSUMER_LAG.labels(self._group_id, tp.topic, str(tp.partition)).set(
                    max(0, high - tp.offset)
                )


def _consumer_error(message: Message) -> bool:
    error = message.error()
    if error is None:
        return False
    if error.fatal():
        raise KafkaException(error)
    log.warning("sink.consumer_error", error=error.name())
    return True


def _rejection_detail(exc: asyncpg.PostgresError) -> str:
    """What the database objected to, by SQLSTATE and schema names only, never by value."""
    parts = [f"rejected by the database (SQLSTATE {exc.sqlstate}"]
    column = getattr(exc, "column_name", None)
    constraint = getattr(exc, "constraint_name", None)
    if column:
        parts.append(f", column {column}")
    if constraint:
        parts.append(f", constraint {constraint}")
    return "".join(parts) + ")"


def _subject_key(key: bytes | None) -> str | None:
    """The message key if it looks like a subject key (hex); an arbitrary key is not logged."""
    if key is None or len(key) != 64:
        return None
    text = key.decode("ascii", errors="replace")
    return text if all(c in "0123456789abcdef" for c in text) else None


@dataclass(frozen=True)
class SinkSpec:
    """One store sink: its name (metrics label and dead-letter `consumer`), group and table."""

    name: str
    group_id: str
    topics: Sequence[str]
    writer: RowWriter
    batch_size: int = 1000


async def run_sink(spec: SinkSpec, settings: Settings) -> None:
    """Run a store sink on the real broker and database until SIGTERM or SIGINT.

    /healthz is ready while the database and the broker answer, the consumer has its
    partitions and the loop finished a batch or a poll within the last minute.
    """

    async def body(context: WorkerContext) -> None:
        pool = await resources.database(context, init=spec.writer.prepare)
        codec = Codec.default()
        dead_letters = resources.producer(context, f"{spec.name}-deadletters")
        sink = BatchSink(
            name=spec.name,
            group_id=spec.group_id,
            consumer=resources.consumer(context, spec.group_id, spec.topics),
            pool=pool,
            codec=codec,
            writer=spec.writer,
            dead_letters=DeadLetterPolicy(dead_letters, codec, spec.name),
            batch_size=spec.batch_size,
        )
        context.readiness.add("progress", sink.healthy)
        await sink.run(context.stop)

    await run_worker(spec.name, settings, body, metrics_port=settings.metrics_port)


def serve_sink(spec: SinkSpec) -> None:
    """`python -m consumers.<sink>`: run `spec` with this process's settings until SIGTERM."""
    asyncio.run(run_sink(spec, get_settings()))
