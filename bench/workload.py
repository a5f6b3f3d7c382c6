"""Realistic carebus traffic for the benchmarks: events of every type over many persons.

A person's journey is the mix agencies really send (admission, discharge-ready, municipal reply,
discharge, health information, police callout, housing incident, plan update …). Records are
built once as the gateway would publish them (Avro single-object encoding, keyed by subject
key) and can then be produced at any rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from carebus.domain.events import EVENT_TYPES, event_to_record, parse_event
from carebus.domain.identity import subject_key
from carebus.wire.codec import Codec
from carebus_dev.testing import EventFactory

# Event types in the proportions a municipality sees them (heavier on police and housing).
MIX: tuple[str, ...] = (
    "admission",
    "discharge_ready",
    "municipal_reply",
    "discharge",
    "health_info_sent",
    "police_callout",
    "police_callout",
    "housing_incident",
    "housing_incident",
    "ip_update",
)


class Workload:
    """Encoded events for `persons` persons, generated deterministically from `seed`."""

    def __init__(self, secret: str, persons: int = 1_000, seed: int = 6) -> None:
        self.secret = secret
        self.factory = EventFactory(seed)
        self.codec = Codec.default()
        nins: dict[str, None] = {}  # random nins can repeat: draw until `persons` distinct
        while len(nins) < persons:
            nins[self.factory.nin()] = None
        self.nins = list(nins)
        self.keys = [subject_key(nin, secret).encode() for nin in self.nins]
        assert set(MIX) <= set(EVENT_TYPES)

    def event(self, index: int) -> dict[str, object]:
        """The HTTP JSON of the `index`-th event (person round-robin, type from MIX)."""
        person = index % len(self.nins)
        return self.factory.event(MIX[(index // len(self.nins)) % len(MIX)], nin=self.nins[person])

    def record(self, index: int) -> tuple[bytes, bytes]:
        """(Kafka key, Avro value) of the `index`-th event, as the gateway publishes it."""
        parsed, problems = parse_event(self.event(index))
        if parsed is None:
            raise ValueError(f"workload produced an invalid event: {problems}")
        record = event_to_record(parsed, subject_key(parsed.nin, self.secret), datetime.now(UTC))
        return self.keys[index % len(self.nins)], self.codec.encode_event(record)

    def records(self, count: int, start: int = 0) -> Iterator[tuple[bytes, bytes]]:
        for index in range(start, start + count):
            yield self.record(index)

    def message_size(self, sample: int = 200) -> int:
        """Mean encoded size of an event in bytes: the record size the baselines use."""
        return round(sum(len(self.record(i)[1]) for i in range(sample)) / sample)
