"""The one dead-letter mechanism of every carebus consumer: park a message on care.deadletter.v1.

A consumer hands over the original message, a reason code and a fixed detail text; the policy
wraps them in a `no.carebus.v1.DeadLetter` record keyed by the original key and produces it.
`flush()` returns only when the broker has acknowledged every dead letter handed over so far,
so a consumer that flushes before committing its offsets never loses a message and never stops
its partition for one bad record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Protocol

from confluent_kafka import KafkaError, KafkaException

from carebus.domain.records import DEAD_LETTER
from carebus.runtime import metrics
from carebus.wire import topics


class Reason(StrEnum):
    """Why a message was dead-lettered; the symbols of the DeadLetter schema's `reason` enum."""

    NOT_SINGLE_OBJECT = "not_single_object"
    UNKNOWN_SCHEMA = "unknown_schema"
    UNDECODABLE_BODY = "undecodable_body"
    INVALID_RECORD = "invalid_record"
    WEBHOOK_REJECTED = "webhook_rejected"
    WEBHOOK_RETRIES_EXHAUSTED = "webhook_retries_exhausted"
    OTHER = "other"


# Fixed texts for decoder failures: a decoder's own message may quote the bytes it choked on,
# and those bytes can hold a nin, so it never reaches a dead letter.
DECODE_DETAILS: Final[dict[str, str]] = {
    Reason.NOT_SINGLE_OBJECT: "value is not Avro single-object encoded (marker C3 01 missing)",
    Reason.UNKNOWN_SCHEMA: "schema fingerprint is not in the registry of known schemas",
    Reason.UNDECODABLE_BODY: "Avro body does not decode with the writer schema it names",
}

_TOO_LARGE_NOTE: Final = " (original value too large to copy; read it at the source offset)"


class SourceMessage(Protocol):
    """The parts of a consumed message a dead letter keeps (confluent_kafka.Message has them)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class Producer(Protocol):
    """The part of confluent_kafka.Producer the policy needs."""

    def produce(
        self,
        topic: str,
        value: bytes | None = ...,
        key: bytes | None = ...,
        *,
        on_delivery: Callable[[Any, Any], None] | None = ...,
    ) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...


class Encoder(Protocol):
    """The part of carebus.wire.codec.Codec the policy needs."""

    def encode(self, schema_name: str, record: dict[str, Any]) -> bytes: ...


class DeadLettersUnacknowledgedError(Exception):
    """Some dead letters are not yet on the broker; the caller must not commit its offsets."""

    def __init__(self, outstanding: int) -> None:
        super().__init__(f"{outstanding} dead letter(s) not acknowledged by the broker")
        self.outstanding = outstanding


@dataclass
class _Letter:
    reason: Reason
    key: bytes | None
    record: dict[str, Any]
    state: str = "pending"  # pending -> acknowledged | failed (re-sent on the next flush)
    error: KafkaError | None = field(default=None, repr=False)


class DeadLetterPolicy:
    """Dead-letters messages for one consumer and confirms them before that consumer commits."""

    def __init__(
        self,
        producer: Producer,
        codec: Encoder,
        consumer: str,
        *,
        topic: str = topics.DEADLETTER,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._producer = producer
        self._codec = codec
        self._consumer = consumer
        for reason in Reason:  # every series from the start, so increase() sees the first one
            metrics.DEAD_LETTERS.labels(consumer, reason.value)
        self._topic = topic
        self._clock = clock
        self._letters: list[_Letter] = []

    @property
    def outstanding(self) -> int:
        """Dead letters handed over and not yet acknowledged by the broker."""
        return sum(1 for letter in self._letters if letter.state != "acknowledged")

    def send(self, message: SourceMessage, reason: Reason, detail: str) -> None:
        """Produce a dead letter for `message`; `detail` is a fixed text with no personal data."""
        record = {
            "reason": reason.value,
            "detail": detail,
            "source_topic": message.topic() or "",
            "source_partition": message.partition() or 0,
            "source_offset": message.offset() or 0,
            "consumer": self._consumer,
            "original_key": message.key(),
            "original_value": message.value() or b"",
            "dead_lettered_at": self._clock(),
        }
        letter = _Letter(reason=reason, key=message.key(), record=record)
        self._letters.append(letter)
        self._produce(letter)

    def send_undecodable(self, message: SourceMessage, decode_reason: str) -> Reason:
        """Dead-letter a message the codec refused, with the fixed text for the decoder's code.

        Returns the reason recorded (`other` for a code this schema version does not know).
        """
        try:
            reason = Reason(decode_reason)
        except ValueError:
            reason = Reason.OTHER
        self.send(message, reason, DECODE_DETAILS.get(reason, "value could not be decoded"))
        return reason

    def flush(self, timeout: float) -> None:
        """Wait up to `timeout` s for the broker to acknowledge every dead letter handed over.

        Letters whose delivery failed are produced again, so calling `flush` until it returns
        is how a caller retries. Raises DeadLettersUnacknowledgedError while any is outstanding.
        """
        deadline = time.monotonic() + timeout
        for letter in self._letters:
            if letter.state == "failed":
                self._produce(letter)
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        outstanding = self.outstanding
        if outstanding:
            raise DeadLettersUnacknowledgedError(outstanding)
        self._letters.clear()

    async def acknowledged(self, timeout_s: float) -> None:
        """`flush` for asyncio code: at once when nothing was handed over, else in a thread, so
        the wait for the broker never blocks the event loop. Not to be called concurrently with
        `send` (one consumer loop owns a policy)."""
        if self._letters:
            await asyncio.to_thread(self.flush, timeout_s)

    def _produce(self, letter: _Letter) -> None:
        letter.state = "pending"

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is None:
                letter.state = "acknowledged"
                metrics.DEAD_LETTERS.labels(self._consumer, letter.reason.value).inc()
                return
            letter.state, letter.error = "failed", err
            if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                self._drop_original(letter)

        while True:
            value = self._codec.encode(DEAD_LETTER, letter.record)
            try:
                self._producer.produce(
                    self._topic, value=value, key=letter.key, on_delivery=on_delivery
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports to make room, then retry.
                self._producer.poll(0.1)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                too_large = isinstance(error, KafkaError) and (
                    error.code() == KafkaError.MSG_SIZE_TOO_LARGE
                )
                if not too_large or not self._drop_original(letter):
                    raise

    @staticmethod
    def _drop_original(letter: _Letter) -> bool:
        """Replace a too-large original by a pointer to its offset; False if already done.

        A dead letter wraps the original, so a near-limit original can never fit; retrying
        forever would block the partition behind it.
        """
        if not letter.record["original_value"]:
            return False
        letter.record = {
            **letter.record,
            "original_value": b"",
            "detail": letter.record["detail"] + _TOO_LARGE_NOTE,
        }
        return True


__all__ = [
    "DEAD_LETTER",
    "DECODE_DETAILS",
    "DeadLetterPolicy",
    "DeadLettersUnacknowledgedError",
    "FaustMessage",
    "Reason",
    "SourceMessage",
]


@dataclass(frozen=True, slots=True)
class FaustMessage:
    """A consumed faust message in the shape the dead-letter policy reads."""

    message: Any

    def topic(self) -> str:
        return str(self.message.topic)

    def partition(self) -> int:
        return int(self.message.partition)

    def offset(self) -> int:
        return int(self.message.offset)

    def key(self) -> bytes | None:
        key = self.message.key
        return key if key is None or isinstance(key, bytes) else str(key).encode()

    def value(self) -> bytes | None:
        value = self.message.value
        return value if value is None or isinstance(value, bytes) else bytes(value)
