"""Consumer lag read from Kafka for a consumer group whose client does not report it itself.

The store sinks set `carebus_consumer_lag_records` from their own consumer's position. The
faust workers (router, SLA engine) commit through aiokafka, so a reporter thread asks the broker
instead: the group's committed offset per partition against the partition's end. That is the
lag that matters for at-least-once processing — what a restarted worker would read again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

from confluent_kafka import Consumer, KafkaException, TopicPartition

from carebus.adapters.kafka import client_security
from carebus.runtime import metrics
from carebus.runtime.config import Settings
from carebus.runtime.telemetry import get_logger

log = get_logger(__name__)

INTERVAL_S: Final = 10.0
_TIMEOUT_S: Final = 10.0


class LagReporter:
    """Sets the lag gauge of one group on `topics` every `interval_s` seconds."""

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        topics: Sequence[str],
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._group_id = group_id
        self._topics = tuple(topics)
        self._interval_s = interval_s
        # A member of the group that never subscribes: it reads the group's committed offsets
        # (OffsetFetch) without joining it. Not the AdminClient's list_consumer_group_offsets,
        # which crashes librdkafka when a fresh broker answers NOT_COORDINATOR (librdkafka #5040).
        self._reader = Consumer(
            {
                **client_security(settings),
                "group.id": group_id,
                "client.id": f"{group_id}-lag",
                "enable.auto.commit": False,
            }
        )
        self._stop = threading.Event()
        self._reported: set[tuple[str, int]] = set()
        self._thread = threading.Thread(target=self._run, name=f"lag-{group_id}", daemon=True)

    def start(self) -> LagReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=_TIMEOUT_S)
        self._reader.close()

    def report(self) -> int:
        """Read the group's lag once and set the gauge; the number of partitions reported."""
        partitions = [
            TopicPartition(topic, partition)
            for topic in self._topics
            for partition in self._reader.list_topics(topic, timeout=_TIMEOUT_S)
            .topics[topic]
            .partitions
        ]
        current: set[tuple[str, int]] = set()
        for tp in self._reader.committed(partitions, timeout=_TIMEOUT_S):
            if tp.offset < 0:
                continue  # no commit on this partition yet
            _low, high = self._reader.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=_TIMEOUT_S
            )
            metrics.CONSUMER_LAG.labels(self._group_id, tp.topic, str(tp.partition)).set(
                max(0, high - tp.offset)
            )
            current.add((tp.topic, tp.partition))
        for topic, partition in self._reported - current:
            metrics.CONSUMER_LAG.remove(self._group_id, topic, str(partition))
        self._reported = current
        return len(current)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.report()
            except (KafkaException, RuntimeError, KeyError) as exc:  # broker away: next round
                log.warning("lag.read_failed", group=self._group_id, error=type(exc).__name__)
            self._stop.wait(self._interval_s)
