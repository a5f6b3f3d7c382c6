"""The faust app the stream processors (router, SLA engine) run on, with one fix to faust.

faust can leave a partition assigned and never processed after a rebalance (faust-streaming
#629, open): found in carebus's router benchmark, where 4 workers starting together left one
events partition with no committed offset and no record ever handed to the agent, for good.
The mechanism, seen in the stalled worker's consumer state: aiokafka fetched the partition's
records while faust had not yet made it active (during the start-up rebalance and table
recovery), faust dropped them, and aiokafka's position stayed past them. After recovery faust
"seeks to committed offsets", but aiokafka's `seek_to_committed` moves only partitions with a
committed offset above 0 — a partition never committed keeps the position past the dropped
records, and nothing reads them again.

`StreamApp` seeks such partitions of the consumed topics to their beginning (what
`auto_offset_reset=earliest` means for a partition nobody has committed), so the records are
read again. At-least-once with deterministic ids makes a second read harmless.

The same dropping loses records for good on a partition that HAS a committed offset (found by
the fault test that SIGKILLs routers under load, tests/faults/test_workers_killed.py: 69
events skipped after one rebalance). faust drops the records aiokafka fetched for a partition
that is not active (or the rest of a fetch when the generation changes), aiokafka's position
stays past them, and when the next record arrives faust takes the hole for a "gap" (meant for
compacted or transactional topics) and counts it as acknowledged, so the commit jumps past
records no agent ever saw. carebus's consumed topics are neither compacted nor transactional:
their offsets are contiguous, so a hole is always a skip. `_Consumer.getmany` seeks such a
partition back to the first skipped record and withholds the rest of that fetch, so the
records are read again, in order, before anything after them. Where each partition must resume
it learns from `NextOffsets` (the committed offset, or the log's start for a partition never
committed, then one past each record handed on), not from faust's read offset, which could not
tell a skip at a never-committed partition's start (a router SIGKILLed before its first commit
on a partition lost 132 records that way in tests/integration/test_router_recovery.py).
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, cast

import faust
from aiokafka.partitioner import murmur2
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT

from carebus.adapters.kafka import SCRAM_MECHANISM, client_security
from carebus.adapters.lag import LagReporter
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.telemetry import configure_logging
from carebus.runtime.worker import Readiness, serve_health

# faust's internal topic for electing the group leader: no stream records, nothing to re-read.
_LEADER_TOPIC_SUFFIX = "__assignor-__leader"
# Rewinds to one offset of a partition before the hole is left to faust: a hole that comes back
# every time is below the log's start (retention deleted it), not a skip that reading again cures.
MAX_REWINDS = 3


def never_committed(
    committed: Mapping[Any, int | None], changelog_topics: Collection[str]
) -> list[Any]:
    """The partitions of consumed topics that `seek_to_committed` left where they were."""
    return [
        tp
        for tp, offset in committed.items()
        if not offset
        and tp.topic not in changelog_topics
        and not tp.topic.endswith(_LEADER_TOPIC_SUFFIX)
    ]


class NextOffsets:
    """Per partition, the next offset the agent must be handed: the committed offset after a
    seek to it (or the log's start for a partition never committed, which is read from its
    beginning), then one past each record handed on.

    A record that arrives past it means records were skipped. faust's own read offset cannot
    tell: right after a seek to the committed offsets it holds the next record to read, and
    after that record is handed on it holds the same number as the last record read, so the
    two cases look alike; and a partition never committed has no read offset at all, so a hole
    at its start went unseen (a router killed before its first commit on a partition lost the
    records its successor dropped during recovery).
    """

    def __init__(self) -> None:
        self._next: dict[Any, int] = {}

    def expect(self, tp: Any, offset: int) -> None:
        """`tp` is read from `offset` on (a seek)."""
        self._next[tp] = offset

    def forget(self, tps: Collection[Any]) -> None:
        for tp in tps:
            self._next.pop(tp, None)

    def skipped(self, tp: Any, offset: int) -> int | None:
        """The first record skipped before `offset` of `tp`, or None."""
        expected = self._next.get(tp)
        return expected if expected is not None and offset > expected else None

    def handed_on(self, tp: Any, offset: int) -> None:
        """The record at `offset` goes to the agent (a record read again moves nothing back)."""
        if offset >= self._next.get(tp, offset):
            self._next[tp] = offset + 1


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await super().seek_to_committed()
        rewind = never_committed(committed, self.consumer.app.tables.changelog_topics)
        starts: Mapping[Any, int] = {}
        if rewind:
            self.log.info("Seeking never-committed partitions to their beginning: %r", rewind)
            await self.call_thread(self._ensure_consumer().seek_to_beginning, *rewind)
            starts = await self.call_thread(self._ensure_consumer().beginning_offsets, rewind)
        # Often before the first fetch (a restarted worker seeks first): made here if need be.
        consumer = cast("_Consumer", self.consumer)
        if consumer.next_offsets is None:
            consumer.next_offsets = NextOffsets()
        next_offsets = consumer.next_offsets
        for tp, offset in committed.items():
            if offset:
                next_offsets.expect(TP(tp.topic, tp.partition), offset)
        for tp, offset in starts.items():
            next_offsets.expect(TP(tp.topic, tp.partition), offset)
        return committed


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    next_offsets: NextOffsets | None = None
    # Rewinds so far by (partition, offset), to give up on a hole reading cannot fill.
    _rewinds: Counter[tuple[TP, int]] | None = None

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        if self.next_offsets is not None:
            self.next_offsets.forget(revoked)
        await super().on_partitions_revoked(revoked)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109  # faust's signature
        """faust's fetch, with a partition that skipped records sought back (see above)."""
        if self._rewinds is None:
            self._rewinds = Counter()
        if self.next_offsets is None:
            self.next_offsets = NextOffsets()
        rewinds, next_offsets = self._rewinds, self.next_offsets
        rewound: set[TP] = set()
        async for tp, message in super().getmany(timeout):
            if tp in rewound:
                continue  # the rest of this fetch comes again after the skipped records
            start = next_offsets.skipped(tp, message.offset)
            if (
                start is not None
                and self.app.topics.acks_enabled_for(message.topic)
                and rewinds[(tp, start)] < MAX_REWINDS
            ):
                rewinds[(tp, start)] += 1
                self.log.warning(
                    "Records %d..%d of %r were skipped; seeking back to read them",
                    start,
                    message.offset - 1,
                    tp,
                )
                rewound.add(tp)
                try:
                    # In the consumer's own thread, waiting for the new position: faust's
                    # `_seek` calls aiokafka from this thread, racing the fetcher's update of
                    # the position (a partition once stalled after a rewind that way).
                    await self.seek_wait({tp: start})
                except Exception as error:  # the next fetch finds the skip again
                    self.log.warning("Seeking %r back failed: %s", tp, type(error).__name__)
                continue
            next_offsets.handed_on(tp, message.offset)
            yield tp, message


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class StreamApp(faust.App):
    """faust.App whose consumer re-reads partitions that were never committed (see above)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def broker_credentials(settings: Settings) -> faust.SASLCredentials | None:
    """faust's form of `carebus.adapters.kafka.client_security`: the same principal and CA.

    An `ssl_context` makes faust (aiokafka) speak SASL_SSL rather than SASL_PLAINTEXT.
    """
    if settings.kafka_security_protocol != "SASL_SSL":
        return None
    client_security(settings)  # refuses missing credentials, naming them
    assert settings.kafka_password is not None
    return faust.SASLCredentials(
        username=settings.kafka_username,
        password=settings.kafka_password.get_secret_value(),
        mechanism=SCRAM_MECHANISM,
        ssl_context=ssl.create_default_context(cafile=str(settings.kafka_ca_file)),
    )


class KeyPartitionedTable(faust.Table[bytes, bytes]):
    """A table whose `use_partitioner` writes (made outside faust's per-event context, while a
    batch is handled) go to changelog partition murmur2(key) over the table's partitions: what
    aiokafka's default partitioner picks, and the partition the person's events are on, but
    computed here rather than from the producer's metadata. faust asks the producer, and a
    producer whose metadata does not (yet, or after the changelog was re-created) hold the
    changelog topic made aiokafka raise TypeError for the write: whole batches of a router
    started under load were dead-lettered as "routing failed: TypeError"."""

    def partition_for_key(self, key: Any) -> int | None:
        if not self.use_partitioner or not isinstance(key, bytes):
            return super().partition_for_key(key)
        partitions = int(self.partitions or self.app.conf.topic_partitions)
        return int(murmur2(key) & 0x7FFFFFFF) % partitions


def stream_app(name: str, settings: Settings) -> StreamApp:
    """A carebus stream processor's faust app: keys and values are bytes carebus encodes itself
    (subject keys, Avro, JSON state), at-least-once (faust commits only acknowledged records;
    ids are deterministic and every sink idempotent), state in memory recovered from changelog
    topics, no faust web server (carebus serves /metrics and /healthz itself)."""
    return StreamApp(
        f"carebus-{name}",
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=broker_credentials(settings),
        store="memory://",
        Table=KeyPartitionedTable,
        key_serializer="raw",
        value_serializer="raw",
        datadir=str(settings.state_dir / name),
        topic_partitions=settings.person_partitions,
        topic_replication_factor=settings.kafka_replication,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_compression_type="lz4",
        web_enabled=False,
        stream_wait_empty=False,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
    )


def batch_agent(
    app: faust.App,
    topic: str,
    handle: Callable[[Sequence[EventT[bytes]]], Awaitable[None]],
    *,
    size: int,
    within_s: float,
) -> None:
    """Feed `topic`'s records to `handle` in batches of up to `size`, cut after `within_s`.

    A batch is acknowledged to faust only once `handle` returned, so faust never commits an
    offset whose output the broker does not have.
    """
    source = app.topic(
        topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )

    async def consume(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        # faust-streaming has take_events on Stream but not on its StreamT protocol.
        batches = stream.take_events(size, within=within_s)  # type: ignore[attr-defined]
        async for batch in batches:
            await handle(batch)
            yield None

    app.agent(source, name=f"{app.conf.id}.{topic}")(consume)


def run_stream(
    name: str,
    create_app: Callable[[Settings, Readiness], faust.App],
    consumed: Sequence[str],
) -> None:
    """Run a stream processor on faust's worker (which owns the event loop and the signals),
    with the rest every carebus worker has: JSON logging, /metrics and /healthz, lag.

    /healthz is ready when the app's own checks pass (the broker, the database if it has one)
    and faust's consumer holds partitions and is not in the middle of a rebalance.
    """
    settings = get_settings()
    configure_logging(name, settings)
    readiness = Readiness()
    app = create_app(settings, readiness)
    readiness.add("consumer", lambda: _assigned(app))
    serve_health(name, settings.http_host, settings.metrics_port, readiness)
    LagReporter(settings, app.conf.id, list(consumed)).start()
    worker = faust.Worker(app, loglevel="INFO", quiet=True, override_logging=False)
    worker.execute_from_commandline()


def _assigned(app: faust.App) -> bool:
    return bool(app.consumer.assignment()) and not app.rebalancing
