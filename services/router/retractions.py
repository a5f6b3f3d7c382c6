"""The router's memory of who got each person's recent events, and the routing of retractions.

A retraction must reach exactly the organisations that got the retracted event, whatever
consent says now. The router is the one component that knows that the moment it decides it, in
the person's stream order, so it remembers it: a faust table `recipients` (subject key -> the
person's `carebus.domain.retraction.RecipientMemory`, one JSON line per event: the last
MAX_REMEMBERED routed events per sender of the person that reached anyone), changelogged and
partitioned like the person table, so it is recovered with it. The retracted event always comes
before its retraction on the person's partition (the gateway accepts a retraction only of an
event it accepted before), so the memory holds it when the retraction is routed; a replay routes
the same deliveries again (same ids).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson

from carebus.domain.events import RETRACTION
from carebus.domain.policy import Policy
from carebus.domain.retraction import (
    MAX_REMEMBERED,
    MAX_REMEMBERED_TOTAL,
    RecipientMemory,
    route_retraction,
)
from carebus.domain.routing import PersonState, Routing, route


class RoutedRecipients:
    """Routes an event and remembers its recipients; routes a retraction to those remembered.

    A person's memory is stored as one JSON line per event, oldest first, so remembering a new
    event appends a line without reading the others (a person with a full memory costs no more
    than one without); only a replayed event (its line is there already) and a retraction read
    the whole memory.
    """

    def __init__(self, table: MutableMapping[bytes, bytes], policy: Policy) -> None:
        self._table = table
        self._policy = policy

    def route(self, record: Mapping[str, Any], state: PersonState, key: bytes) -> Routing:
        """The routing of one event record of the person keyed `key` (see the module)."""
        now = datetime.now(UTC)
        stored = self._table.get(key) or b""
        if record["event_type"] == RETRACTION:
            return route_retraction(record, decode(stored), self._policy.version, now)
        routing = route(record, state, self._policy, now)
        if routing.deliveries:
            remembered = _remembered(stored, record, routing)
            if remembered != stored:
                self._table[key] = remembered
        return routing


def decode(stored: bytes) -> RecipientMemory:
    """The memory of a stored value (one JSON line per event)."""
    return RecipientMemory.from_json([orjson.loads(line) for line in stored.splitlines()])


def encode(memory: RecipientMemory) -> bytes:
    return b"".join(orjson.dumps(entry) + b"\n" for entry in memory.to_json())


def _remembered(stored: bytes, record: Mapping[str, Any], routing: Routing) -> bytes:
    # Event ids and organisation numbers hold no quote or newline, so the line's start is exact.
    start = orjson.dumps([record["source"]["org_id"], record["event_id"]])[:-1] + b","
    if stored.startswith(start) or b"\n" + start in stored:  # routed before: a replay
        return encode(decode(stored).remember(record, routing.deliveries))
    fresh = RecipientMemory().remember(record, routing.deliveries)
    if not fresh.entries:
        return stored
    kept = stored + encode(fresh)
    # The sender's oldest line goes past its share; the person's oldest past the total.
    sender = orjson.dumps([record["source"]["org_id"]])[:-1] + b","
    lines = kept.count(b"\n" + sender) + kept.startswith(sender)
    if lines > MAX_REMEMBERED:
        first = 0 if kept.startswith(sender) else kept.index(b"\n" + sender) + 1
        kept = kept[:first] + kept[kept.index(b"\n", first) + 1 :]
    if kept.count(b"\n") > MAX_REMEMBERED_TOTAL:
        kept = kept[kept.index(b"\n") + 1 :]
    return kept
