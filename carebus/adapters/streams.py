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
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT

from carebus.adapters.kafka import SCRAM_MECHANISM, client_security
from carebus.adapters.lag import LagReporter
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.telemetry import configure_logging
from carebus.runtime.worker import Readiness, serve_health

# faust's internal topic for electing the group leader: no stream records, nothing to re-read.
_LEADER_TOPIC_SUFFIX = "__assignor-__leader"


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


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await super().seek_to_committed()
        rewind = never_committed(committed, self.consumer.app.tables.changelog_topics)
        if rewind:
            self.log.info("Seeking never-committed partitions to their beginning: %r", rewind)
            await self.call_thread(self._ensure_consumer().seek_to_beginning, *rewind)
        return committed


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


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
