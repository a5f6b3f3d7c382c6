"""The operator's footprint: every operator action that touches another organisation is kept
in `operator_actions` and alerts that organisation's privacy officer (care.alerts.v1)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from carebus import topics
from carebus.alerts import operator_action_alert
from carebus.auth import Principal
from carebus.codec import Codec
from carebus.publisher import BrokerUnavailableError, OutgoingRecord, Publisher
from carebus.telemetry import get_logger
from carebus.topics import AGENCIES

log = get_logger(__name__)

ALERT: str = "no.carebus.v1.Alert"


class OperatorActions:
    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, codec: Codec) -> None:
        self._pool = pool
        self._publisher = publisher
        self._codec = codec

    async def touched(
        self,
        principal: Principal,
        action: str,
        target_org: str,
        target_agency: str | None = None,
        detail: Mapping[str, Any] | None = None,
        subject_key: str | None = None,
    ) -> None:
        """Record `action` if an operator did it to another organisation, and alert that
        organisation's privacy officer. Anything an organisation does to itself is its own."""
        if not principal.is_operator or target_org == principal.org_id:
            return
        action_id = uuid.uuid4()
        at = datetime.now(UTC)
        agency = await self._pool.fetchval(
            """
            WITH kept AS (
                INSERT INTO operator_actions
                    (action_id, action, operator_org, target_org, subject_key, detail, at)
                VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
            )
            SELECT agency FROM organisations WHERE org_id = $4
            """,
            action_id,
            action,
            principal.org_id,
            target_org,
            subject_key,
            orjson.dumps(dict(detail or {})).decode(),
            at,
        )
        log.info("operator_action", action=action, action_id=str(action_id), target_org=target_org)
        agency = target_agency or agency
        if agency not in AGENCIES:
            return  # the operator's own realm: no agency privacy officer to alert
        alert = operator_action_alert(
            action,
            principal.org_id,
            target_org,
            agency,
            at,
            str(action_id),
            subject_key=subject_key,
        )
        record = OutgoingRecord(
            topics.ALERTS, alert["subject_key"].encode(), self._codec.encode(ALERT, alert)
        )
        try:
            await self._publisher.publish([record])
        except BrokerUnavailableError:
            # The action is kept in operator_actions either way; the alert is what is lost.
            log.error("operator_action_alert_not_published", action_id=str(action_id))
