"""The registry's person snapshots (care.persons.v1), held for the router to restore from.

The compacted topic keeps every person's latest snapshot for good. At start a reader thread
reads it from the beginning up to the end offsets the broker reported then; until it has, the
router routes nothing (`caught_up`), so it never decides with a state that has lost what the
registry knows. It then follows the topic. The router takes a person's snapshot (`take`) before
their next record and folds it in with `carebus.domain.snapshots.restore`; a taken snapshot is
dropped, as the router's own table (and changelog) now holds what it said.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from carebus.adapters.kafka import consumer_config
from carebus.domain.routing import PersonState
from carebus.domain.snapshots import PERSON_SNAPSHOT, snapshot_problem, snapshot_state
from carebus.runtime.config import Settings
from carebus.runtime.telemetry import get_logger
from carebus.wire import topics
from carebus.wire.codec import Codec, DecodeError

log = get_logger(__name__)

_POLL_S: Final = 0.5
_WAIT_STEP_S: Final = 1.0


class Snapshots(Protocol):
    """Where the router's core gets the registry's snapshots from."""

    async def caught_up(self) -> None:
        """Return once every snapshot published before the router started is held."""

    def take(self, subject_key: str) -> PersonState | None:
        """The person's latest snapshot not yet taken (None: none), and forget it."""


class PersonSnapshots:
    """care.persons.v1 read by a thread of its own; `take` and `caught_up` for the router."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        # No group: partitions are assigned by hand and nothing is committed, so every start
        # reads the whole compacted topic again.
        self._consumer = Consumer(
            consumer_config(settings, "carebus-router", **{"enable.partition.eof": False})
        )
        self._codec = codec
        self._held: dict[str, bytes] = {}  # subject key -> the encoded snapshot
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="person-snapshots", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def is_caught_up(self) -> bool:
        return self._ready.is_set()

    async def caught_up(self) -> None:
        if self._ready.is_set():
            return
        log.info("routing_waits_for_person_snapshots")
        # A bounded wait per thread hop, so a router stopped while it waits leaves no thread.
        while not await asyncio.to_thread(self._ready.wait, _WAIT_STEP_S):
            pass

    def take(self, subject_key: str) -> PersonState | None:
        value = self._held.pop(subject_key, None)
        return None if value is None else trusted_state(self._codec, value, subject_key)

    def _run(self) -> None:
        try:
            ends = self._assign()
            while not self._stopping.is_set():
                message = self._consumer.poll(_POLL_S)
                if message is not None:
                    self._hold(message)
                if not self._ready.is_set() and self._reached(ends):
                    self._ready.set()
                    log.info("person_snapshots_loaded", persons=len(self._held))
        except KafkaException as error:
            # /healthz stays unready and the router routes nothing: a supervisor restarts it.
            log.error("person_snapshots_failed", error=str(error.args[0]))
        finally:
            self._consumer.close()

    def _assign(self) -> dict[int, int]:
        """Assign every partition from its beginning; the end offset of each, as of now."""
        metadata = self._consumer.list_topics(topics.PERSONS, timeout=30.0)
        partitions = sorted(metadata.topics[topics.PERSONS].partitions)
        self._consumer.assign(
            [TopicPartition(topics.PERSONS, p, OFFSET_BEGINNING) for p in partitions]
        )
        ends: dict[int, int] = {}
        for partition in partitions:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topics.PERSONS, partition), timeout=30.0
            )
            if high > low:
                ends[partition] = high
        return ends

    def _hold(self, message: Any) -> None:
        if message.error():
            log.warning("person_snapshots_read_error", error=message.error().str())
            return
        key = message.key()
        if key is not None and message.value() is not None:
            self._held[key.decode()] = message.value()

    def _reached(self, ends: dict[int, int]) -> bool:
        """Whether the reader's position is at or past `ends` on every partition (compaction
        leaves gaps in offsets, so positions, not the last offset seen, are compared)."""
        if not ends:
            return True
        positions = self._consumer.position(
            [TopicPartition(topics.PERSONS, partition) for partition in ends]
        )
        return all(tp.offset >= ends[tp.partition] for tp in positions)


def trusted_state(codec: Codec, value: bytes, subject_key: str) -> PersonState | None:
    """The state of a snapshot read under `subject_key`, or None if it cannot be trusted: a bad
    snapshot is logged and skipped, never a reason to fail the record being routed."""
    try:
        decoded = codec.decode(value)
        if decoded.schema_name != PERSON_SNAPSHOT:
            log.error("person_snapshot_unexpected", subject_key=subject_key)
            return None
        state = snapshot_state(decoded.record)
        problem = snapshot_problem(decoded.record, subject_key, state, datetime.now(UTC))
    except DecodeError as error:
        log.error("person_snapshot_undecodable", subject_key=subject_key, reason=error.reason)
        return None
    except Exception as error:  # a snapshot the router cannot read is no snapshot
        log.error("person_snapshot_unreadable", subject_key=subject_key, error=type(error).__name__)
        return None
    if problem is not None:
        log.error("person_snapshot_refused", subject_key=subject_key, reason=problem)
        return None
    return state
