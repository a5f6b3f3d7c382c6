"""The identity and public shape of a delivery: what a recipient organisation receives."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import orjson

from carebus.domain.events import rfc3339

# Fixed namespace so every worker derives the same ids for the same decision, across restarts.
_NAMESPACE: Final = uuid.UUID("6f1c2a4e-1f7d-5b8e-9c3a-2d4b6e8f0a1c")
_NAMESPACE_BYTES: Final = _NAMESPACE.bytes


def delivery_id(source_org: str, event_id: str, recipient_org: str) -> str:
    """The one id of an event's delivery to one organisation (also its audit record's id)."""
    return _uuid5(f"event/{source_org}/{event_id}/{recipient_org}")


def no_candidate_audit_id(source_org: str, event_id: str) -> str:
    """The id of the single audit record of an event that had no candidate recipient."""
    return _uuid5(f"event/{source_org}/{event_id}/-")


def _uuid5(name: str) -> str:
    """`str(uuid.uuid5(_NAMESPACE, name))` without building UUID objects (the router makes
    three of these per event)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])  # noqa: S324
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = digest.hex()
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"


def delivery_to_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """DESIGN's delivery JSON (HTTP and webhook body) from a `no.carebus.v1.Delivery` record."""
    body: dict[str, Any] = {
        "delivery_id": record["delivery_id"],
        "event_id": record["event_id"],
        "event_type": record["event_type"],
        "occurred_at": _time(record["occurred_at"]),
        "subject": {"nin": record["subject"]["nin"]},
        "basis": record["basis"],
        "categories": list(record["categories"]),
        "payload": orjson.loads(record["payload_json"]),
    }
    if record.get("emergency"):
        body["emergency"] = {
            "justification": record["emergency"]["justification"],
            "accountable": record["emergency"]["accountable"],
        }
    return body


def _time(value: datetime | str) -> str:
    return value if isinstance(value, str) else rfc3339(value)
