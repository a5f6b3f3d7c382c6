"""The dead-letter policy, against a fake producer and the real codec."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from carebus.adapters.deadletter import (
    DECODE_DETAILS,
    DeadLetterPolicy,
    DeadLettersUnacknowledgedError,
    Reason,
)
from carebus.wire import topics
from carebus.wire.codec import Codec

NOW = datetime(2026, 11, 23, 8, 15, tzinfo=UTC)


@dataclass
class Original:
    """A consumed message as the policy sees it."""

    _value: bytes | None = b"\xc3\x01not really avro"
    _key: bytes | None = b"a" * 64
    _topic: str = topics.EVENTS
    _partition: int = 2
    _offset: int = 41

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


@dataclass
class FakeProducer:
    """Keeps produced records; `outcomes` decides each delivery report served by flush."""

    outcomes: list[KafkaError | None] = field(default_factory=list)
    produced: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)
    queue_full: int = 0
    polls: int = 0
    _reports: list[Callable[[Any, Any], None]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        if self.queue_full:
            self.queue_full -= 1
            raise BufferError("queue full")
        assert value is not None
        assert on_delivery is not None
        self.produced.append((topic, value, key))
        self._reports.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0

    def flush(self, timeout: float = 0) -> int:
        reports, self._reports = self._reports, []
        for report in reports:
            report(self.outcomes.pop(0) if self.outcomes else None, None)
        return 0


def counted(consumer: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "carebus_dead_letters_total", {"consumer": consumer, "reason": reason}
    )
    return value or 0.0


@pytest.fixture
def consumer() -> str:
    """A consumer name of its own, so counters start at zero in every test."""
    return f"test-{uuid.uuid4().hex[:8]}"


def policy(producer: FakeProducer, consumer: str) -> DeadLetterPolicy:
    return DeadLetterPolicy(producer, Codec.default(), consumer, clock=lambda: NOW)


def test_dead_letter_keeps_the_original_and_where_it_came_from(consumer: str) -> None:
    """A DeadLetter record on the dead-letter topic, keyed by the original key, keeping it all."""
    producer = FakeProducer()
    original = Original()
    policy(producer, consumer).send(original, Reason.INVALID_RECORD, "fixed text")

    [(topic, value, key)] = producer.produced
    assert topic == topics.DEADLETTER
    assert key == original.key()
    decoded = Codec.default().decode(value)
    assert decoded.schema_name == "no.carebus.v1.DeadLetter"
    assert decoded.record == {
        "reason": "invalid_record",
        "detail": "fixed text",
        "source_topic": topics.EVENTS,
        "source_partition": 2,
        "source_offset": 41,
        "consumer": consumer,
        "original_key": original.key(),
        "original_value": original.value(),
        "dead_lettered_at": NOW,
    }


def test_a_message_without_key_or_value_can_be_dead_lettered(consumer: str) -> None:
    """A tombstone (no value) or unkeyed message still becomes a dead letter."""
    producer = FakeProducer()
    policy(producer, consumer).send(Original(_value=None, _key=None), Reason.OTHER, "empty")

    record = Codec.default().decode(producer.produced[0][1]).record
    assert record["original_key"] is None
    assert record["original_value"] == b""


def test_flush_returns_only_when_the_broker_acknowledged_and_counts_then(consumer: str) -> None:
    """Nothing is counted before the acknowledgement; after flush nothing is outstanding."""
    producer = FakeProducer()
    dead_letters = policy(producer, consumer)
    dead_letters.send(Original(), Reason.INVALID_RECORD, "x")
    assert dead_letters.outstanding == 1
    assert counted(consumer, "invalid_record") == 0

    dead_letters.flush(1.0)

    assert dead_letters.outstanding == 0
    assert counted(consumer, "invalid_record") == 1


def test_a_failed_delivery_raises_and_is_sent_again_on_the_next_flush(consumer: str) -> None:
    """A dead letter the broker did not take is never dropped: flush raises, then re-sends it."""
    producer = FakeProducer(outcomes=[KafkaError(KafkaError._MSG_TIMED_OUT)])
    dead_letters = policy(producer, consumer)
    dead_letters.send(Original(), Reason.UNKNOWN_SCHEMA, "x")

    with pytest.raises(DeadLettersUnacknowledgedError):
        dead_letters.flush(1.0)
    assert counted(consumer, "unknown_schema") == 0

    dead_letters.flush(1.0)
    assert len(producer.produced) == 2
    assert producer.produced[0] == producer.produced[1]
    assert counted(consumer, "unknown_schema") == 1


def test_decoder_failures_get_fixed_texts(consumer: str) -> None:
    """The detail is the fixed text for the decoder's reason; an unknown code becomes `other`."""
    producer = FakeProducer()
    dead_letters = policy(producer, consumer)

    assert dead_letters.send_undecodable(Original(), "unknown_schema") is Reason.UNKNOWN_SCHEMA
    assert dead_letters.send_undecodable(Original(), "something_new") is Reason.OTHER

    first, second = (Codec.default().decode(value).record for _, value, _ in producer.produced)
    assert first["reason"] == "unknown_schema"
    assert first["detail"] == DECODE_DETAILS[Reason.UNKNOWN_SCHEMA]
    assert second["reason"] == "other"


def test_an_original_too_large_to_wrap_is_replaced_by_a_pointer(consumer: str) -> None:
    """A dead letter the broker refuses as too large is re-sent without the original value."""
    producer = FakeProducer(outcomes=[KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)])
    dead_letters = policy(producer, consumer)
    dead_letters.send(Original(), Reason.INVALID_RECORD, "fixed text")

    with pytest.raises(DeadLettersUnacknowledgedError):
        dead_letters.flush(1.0)
    dead_letters.flush(1.0)

    record = Codec.default().decode(producer.produced[-1][1]).record
    assert record["original_value"] == b""
    assert record["detail"].startswith("fixed text (original value too large")
    assert record["source_offset"] == 41


def test_a_full_local_queue_waits_instead_of_failing(consumer: str) -> None:
    """BufferError from produce serves delivery reports and tries again."""
    producer = FakeProducer(queue_full=2)
    policy(producer, consumer).send(Original(), Reason.OTHER, "x")

    assert producer.polls == 2
    assert len(producer.produced) == 1


def test_a_synchronous_size_refusal_is_also_replaced_by_a_pointer(consumer: str) -> None:
    """librdkafka may refuse an oversized message in produce() itself, not in the report."""

    class RefusesLarge(FakeProducer):
        def produce(self, topic: str, value: bytes | None = None, *args: Any, **kw: Any) -> None:
            if value is not None and len(value) > 1000:
                raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            super().produce(topic, value, *args, **kw)

    producer = RefusesLarge()
    policy(producer, consumer).send(Original(_value=b"x" * 5000), Reason.OTHER, "x")

    record = Codec.default().decode(producer.produced[0][1]).record
    assert record["original_value"] == b""


async def test_acknowledged_waits_for_the_broker_off_the_event_loop(consumer: str) -> None:
    """The asyncio face of flush: nothing handed over costs no broker round trip; otherwise it
    returns once the broker acknowledged, and raises while a letter is not acknowledged."""
    producer = FakeProducer()
    dead_letters = policy(producer, consumer)
    await dead_letters.acknowledged(timeout_s=1.0)
    assert producer.produced == []

    dead_letters.send(Original(), Reason.INVALID_RECORD, "x")
    await dead_letters.acknowledged(timeout_s=1.0)
    assert dead_letters.outstanding == 0
    assert counted(consumer, "invalid_record") == 1

    failing = FakeProducer(outcomes=[KafkaError(KafkaError._MSG_TIMED_OUT)])
    stuck = policy(failing, consumer)
    stuck.send(Original(), Reason.OTHER, "y")
    with pytest.raises(DeadLettersUnacknowledgedError):
        await stuck.acknowledged(timeout_s=1.0)
