"""The asyncio publisher against a fake confluent-kafka producer.

No broker: `FakeProducer` acknowledges records (or fails them, or never answers) from `poll`,
which the publisher's own poll thread calls, so delivery reports cross threads as they do in
production. tests/integration/test_gateway.py publishes through a real broker.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from carebus.adapters.publisher import (
    Acknowledged,
    BrokerUnavailableError,
    OutgoingRecord,
    Publisher,
)
from tests.unit.fakes import NEVER, FakeProducer

pytestmark = pytest.mark.timeout(10)

Make = Callable[..., tuple[Publisher, FakeProducer]]


@pytest.fixture
def make() -> Iterator[Make]:
    """Publishers on fake producers, closed (their poll threads stopped) after the test."""
    made: list[Publisher] = []

    def build(timeout_s: float = 5.0) -> tuple[Publisher, FakeProducer]:
        producer = FakeProducer()
        publisher = Publisher(producer, timeout_s=timeout_s, name="unit-publisher")
        made.append(publisher)
        return publisher, producer

    yield build
    for publisher in made:
        publisher.close(timeout_s=0.1)


def records(count: int, topic: str = "care.events.v1") -> list[OutgoingRecord]:
    return [
        OutgoingRecord(topic, f"key-{n}".encode(), f"value-{n}".encode(), (("h", b"v"),))
        for n in range(count)
    ]


async def test_publish_returns_each_records_acknowledgement_in_order(make: Make) -> None:
    """publish hands every record to the producer as given and returns once the broker
    acknowledged each, with its partition and offset."""
    publisher, producer = make()
    sent = records(2) + records(1, topic="care.audit.v1")

    acknowledged = await publisher.publish(sent)

    assert producer.produced == sent
    assert acknowledged == [
        Acknowledged("care.events.v1", 0, 0),
        Acknowledged("care.events.v1", 0, 1),
        Acknowledged("care.audit.v1", 0, 0),
    ]


async def test_publish_all_returns_once_every_record_is_acknowledged(make: Make) -> None:
    """publish_all hands over the whole batch and returns only after the broker acknowledged
    all of it."""
    publisher, producer = make()
    producer.paused = True
    sent = records(50)

    publishing = asyncio.create_task(publisher.publish_all(sent))
    await asyncio.sleep(0.1)
    assert producer.produced == sent
    assert not publishing.done()

    producer.resume()
    await asyncio.wait_for(publishing, 1.0)


async def test_nothing_to_publish_produces_nothing(make: Make) -> None:
    """An empty batch returns at once (the router publishes one per batch, often empty)."""
    publisher, producer = make()
    await publisher.publish_all([])
    assert await publisher.publish([]) == []
    assert producer.produced == []


@pytest.mark.parametrize("method", ["publish", "publish_all"])
async def test_a_delivery_error_is_broker_unavailable_carrying_the_kafka_error(
    make: Make, method: str
) -> None:
    """A record the broker failed (a delivery report with an error) fails the whole call with
    BrokerUnavailableError, caused by the KafkaException of that error."""
    publisher, producer = make()
    producer.outcomes.extend([None, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None])

    with pytest.raises(BrokerUnavailableError) as raised:
        await getattr(publisher, method)(records(3))

    cause = raised.value.__cause__
    assert isinstance(cause, KafkaException)
    assert cause.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE


@pytest.mark.parametrize("method", ["publish", "publish_all"])
@pytest.mark.parametrize(
    "refusal",
    [BufferError("Local: Queue full"), KafkaException(KafkaError(KafkaError._FATAL))],
    ids=["queue_full", "producer_closed"],
)
async def test_a_producer_that_refuses_the_record_is_broker_unavailable(
    make: Make, method: str, refusal: BaseException
) -> None:
    """A full local queue or a failed producer is reported at once as BrokerUnavailableError."""
    publisher, producer = make()
    producer.refuse = refusal

    with pytest.raises(BrokerUnavailableError, match="queue is full or closed") as raised:
        await getattr(publisher, method)(records(2))
    assert raised.value.__cause__ is refusal


async def test_a_refusal_midway_fails_the_call_and_the_next_call_goes_through(
    make: Make,
) -> None:
    """When the queue fills up midway, the call fails at once; the record already handed
    over settles later without disturbing anything, and the next call is published."""
    publisher, producer = make()
    producer.outcomes.append(NEVER)  # the first record is still in flight when the queue fills
    producer.refuse, producer.refuse_after = BufferError("Local: Queue full"), 1

    with pytest.raises(BrokerUnavailableError):
        await publisher.publish(records(2))
    producer.refuse = None
    assert await publisher.publish(records(1)) == [Acknowledged("care.events.v1", 0, 1)]


async def test_a_record_never_acknowledged_is_broker_unavailable_after_the_timeout(
    make: Make,
) -> None:
    """A broker that never answers fails publish and publish_all after the produce timeout
    (plus the publisher's one second of grace), not never."""
    publisher, producer = make(timeout_s=0.0)
    producer.outcomes.extend([NEVER, NEVER])
    started = time.monotonic()

    one, batch = await asyncio.gather(
        publisher.publish(records(1)),
        publisher.publish_all(records(1)),
        return_exceptions=True,
    )

    assert isinstance(one, BrokerUnavailableError)
    assert isinstance(batch, BrokerUnavailableError)
    assert str(one) == "the broker did not acknowledge in time"
    assert 1.0 <= time.monotonic() - started < 3.0


async def test_produce_latency_is_observed_per_topic(make: Make) -> None:
    """Each acknowledged call adds one observation to the produce latency of its topic."""
    publisher, _ = make()
    topic = f"unit.publisher.{uuid.uuid4().hex[:8]}"

    await publisher.publish(records(2, topic=topic))
    await publisher.publish_all(records(3, topic=topic))

    count = REGISTRY.get_sample_value("carebus_produce_duration_seconds_count", {"topic": topic})
    assert count == 2


def test_answers_when_the_broker_returns_metadata() -> None:
    """Readiness is whether a metadata request names brokers."""
    producer = FakeProducer()
    publisher = Publisher(producer, timeout_s=1.0)
    try:
        assert publisher.answers()
        producer.brokers = None
        assert not publisher.answers()
    finally:
        publisher.close(timeout_s=0.1)


def test_close_flushes_and_stops_the_poll_thread() -> None:
    """close waits for the producer's queue (up to its timeout) and ends the poll thread."""
    producer = FakeProducer()
    publisher = Publisher(producer, timeout_s=1.0, name="unit-close")
    poller = next(t for t in threading.enumerate() if t.name == "unit-close-poll")

    publisher.close(timeout_s=0.25)

    assert producer.flushes == [0.25]
    assert not poller.is_alive()
