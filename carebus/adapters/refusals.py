"""Recording refusals of authority: an AuthorityRefusal on care.audit.refusals.v1, a metric, a
log line.

The gateway and the registry call it when they refuse a statement for want of authority, after
the request's own transaction has rolled back: the refusal is the one thing a refused request
leaves behind, and it names who tried, what, about whom (subject key only) and which rule said no.
The inbox, which has no broker connection, writes its refused person-view look-ups from
`refusal_record` straight into `authority_refusals` (migration 0026).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from carebus.adapters.publisher import BrokerUnavailableError, OutgoingRecord, Publisher
from carebus.domain.authority import Refusal
from carebus.domain.records import AUTHORITY_REFUSAL
from carebus.runtime import metrics
from carebus.runtime.telemetry import get_logger
from carebus.wire import topics
from carebus.wire.codec import Codec

log = get_logger(__name__)


def refusal_record(
    principal: Any,
    statement: str,
    refusal: Refusal,
    subject_key: str | None,
    policy_version: str,
    audit_id: str | None = None,
) -> dict[str, Any]:
    """The AuthorityRefusal record of one attempt (a new audit_id unless given: every attempt
    is its own)."""
    return {
        "audit_id": audit_id or str(uuid.uuid4()),
        "subject_key": subject_key,
        "actor_org": principal.org_id,
        "actor_agency": principal.agency,
        "actor_role": principal.role,
        "statement": statement,
        "rule_id": refusal.rule_id,
        "field": refusal.field or None,
        "policy_version": policy_version,
        "decided_at": datetime.now(UTC),
    }


class RefusalLog:
    """Publishes each refusal to the refusals topic (keyed by the person, when there is one)."""

    def __init__(self, publisher: Publisher, codec: Codec, policy_version: str) -> None:
        self._publisher = publisher
        self._codec = codec
        self._policy_version = policy_version

    def record_of(
        self, principal: Any, statement: str, refusal: Refusal, subject_key: str | None
    ) -> dict[str, Any]:
        """The AuthorityRefusal record (its audit_id is new: every attempt is its own)."""
        return refusal_record(principal, statement, refusal, subject_key, self._policy_version)

    async def refused(
        self, principal: Any, statement: str, refusal: Refusal, subject_key: str | None = None
    ) -> None:
        """Audit and count one refusal; a broker outage is logged, never raised (the caller
        answers 403 either way)."""
        metrics.AUTHORITY_REFUSALS.labels(refusal.rule_id).inc()
        record = self.record_of(principal, statement, refusal, subject_key)
        key = (subject_key or principal.org_id).encode()
        log.warning(
            "authority_refused",
            audit_id=record["audit_id"],
            rule_id=refusal.rule_id,
            statement=statement,
            field=refusal.field,
            actor_org=principal.org_id,
            subject_key=subject_key,
        )
        try:
            await self._publisher.publish(
                [
                    OutgoingRecord(
                        topics.REFUSALS, key, self._codec.encode(AUTHORITY_REFUSAL, record)
                    )
                ]
            )
        except BrokerUnavailableError:
            log.error("authority_refusal_not_audited", audit_id=record["audit_id"])
