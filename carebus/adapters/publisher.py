"""An asyncio face on the confluent-kafka producer: `await` a record until the broker has it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from carebus.adapters.kafka import producer_config
from carebus.adapters.unavailable import DependencyUnavailableError
from carebus.runtime import metrics
from carebus.runtime.config import Settings


class BrokerUnavailableError(DependencyUnavailableError):
    """The broker did not acknowledge a record in time; nothing may be reported as accepted."""


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True, slots=True)
class Acknowledged:
    topic: str
    partition: int
    offset: int


LINGER_MS: Final = 1


class ProducerLike(Protocol):
    """What a Publisher needs of confluent-kafka's Producer (a fake in unit tests)."""

    def produce(
        self,
        topic: str,
        *,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...


class RecordPublisher(Protocol):
    """What the services need of a Publisher (a fake in unit tests)."""

    async def publish(self, records: Sequence[OutgoingRecord]) -> list[Acknowledged]: ...

    async def publish_all(self, records: Sequence[OutgoingRecord]) -> None: ...


class Publisher:
    """One idempotent producer per process; a background thread serves its delivery reports."""

    def __init__(
        self, producer: ProducerLike, *, timeout_s: float, name: str = "publisher"
    ) -> None:
        """Publish through `producer` (a real one from `connect`, or a fake in unit tests);
        a record not acknowledged within `timeout_s` is reported as BrokerUnavailableError."""
        self._producer = producer
        self._timeout_s = timeout_s
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name=f"{name}-poll", daemon=True)
        self._poller.start()

    @classmethod
    def connect(cls, settings: Settings, client_id: str, **overrides: Any) -> Publisher:
        """A publisher on a real producer configured for `settings`' broker."""
        # Every caller produces what it has and then waits for the acknowledgement (a 202, a
        # faust commit), so lingering only delays it: records queued together still share a
        # request, and under load the in-flight requests make the batches.
        config = producer_config(settings, client_id, **{"linger.ms": LINGER_MS, **overrides})
        return cls(Producer(config), timeout_s=settings.produce_timeout_s, name=client_id)

    def _poll(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.05)

    async def publish(self, records: Sequence[OutgoingRecord]) -> list[Acknowledged]:
        """Send `records` in order and return once the broker acknowledged every one of them.

        Raises BrokerUnavailableError if any record is not acknowledged within the produce timeout.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Acknowledged]] = []
        started = time.perf_counter()

        def reporter(future: asyncio.Future[Acknowledged]) -> Any:
            def on_delivery(error: KafkaError | None, message: Message) -> None:
                loop.call_soon_threadsafe(_settle, future, error, message)

            return on_delivery

        for record in records:
            future: asyncio.Future[Acknowledged] = loop.create_future()
            futures.append(future)
            try:
                self._producer.produce(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    on_delivery=reporter(future),
                )
            except (BufferError, KafkaException) as error:
                for pending in futures[:-1]:
                    pending.cancel()
                raise BrokerUnavailableError("the producer queue is full or closed") from error
        try:
            acknowledged = await asyncio.wait_for(
                asyncio.gather(*futures), timeout=self._timeout_s + 1.0
            )
        except (TimeoutError, KafkaException) as error:
            raise BrokerUnavailableError("the broker did not acknowledge in time") from error
        if records:
            metrics.PRODUCE_LATENCY.labels(records[0].topic).observe(time.perf_counter() - started)
        return list(acknowledged)

    async def publish_all(self, records: Sequence[OutgoingRecord]) -> None:
        """Send `records` in order and return once the broker acknowledged all of them.

        For batches whose records' offsets nobody needs: one wake-up of the event loop per call
        instead of one per record. Raises BrokerUnavailableError like `publish`.
        """
        if not records:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        countdown = _Countdown(len(records), loop, done)
        started = time.perf_counter()
        for record in records:
            try:
                self._producer.produce(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    on_delivery=countdown.report,
                )
            except (BufferError, KafkaException) as error:
                raise BrokerUnavailableError("the producer queue is full or closed") from error
        try:
            await asyncio.wait_for(done, timeout=self._timeout_s + 1.0)
        except (TimeoutError, KafkaException) as error:
            raise BrokerUnavailableError("the broker did not acknowledge in time") from error
        metrics.PRODUCE_LATENCY.labels(records[0].topic).observe(time.perf_counter() - started)

    def answers(self) -> bool:
        """Readiness: whether the broker answers a metadata request within 2 s."""
        return self._producer.list_topics(timeout=2.0).brokers is not None

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
        self._closing.set()
        self._poller.join(timeout=2.0)


def _settle(
    future: asyncio.Future[Acknowledged], error: KafkaError | None, message: Message
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(KafkaException(error))
        return
    partition, offset = int(message.partition() or 0), int(message.offset() or 0)
    future.set_result(Acknowledged(str(message.topic()), partition, offset))


class _Countdown:
    """Counts a batch's delivery reports on the producer's poll thread; settles `done` once."""

    def __init__(self, records: int, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]):
        self._left = records
        self._error: KafkaError | None = None
        self._loop = loop
        self._done = done

    def report(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None and self._error is None:
            self._error = error
        self._left -= 1
        if self._left == 0:
            self._loop.call_soon_threadsafe(_finish, self._done, self._error)


def _finish(done: asyncio.Future[None], error: KafkaError | None) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(KafkaException(error))
    else:
        done.set_result(None)
