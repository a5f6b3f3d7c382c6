"""The operator's footprint: every operator action that touches another organisation or a
person is kept in `operator_actions`, and alerts the agency organisation it touched (its privacy
officer, on care.alerts.v1)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import orjson

from carebus.adapters.auth import Principal
from carebus.adapters.publisher import BrokerUnavailableError, OutgoingRecord, Publisher
from carebus.domain.alerts import operator_action_alert
from carebus.runtime.telemetry import get_logger
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus.wire.topics import AGENCIES

log = get_logger(__name__)

ALERT: str = "no.carebus.v1.Alert"
# The action names of register entries, by register and whether the entry names an organisation
# (set) or none (cleared); carebus.domain.alerts.OPERATOR_ACTIONS words each one.
REGISTER_ACTIONS: Final[Mapping[tuple[str, bool], str]] = {
    ("home_municipality", True): "home_municipality_set",
    ("home_municipality", False): "home_municipality_cleared",
    ("gp", True): "gp_set",
    ("gp", False): "gp_cleared",
}


class OperatorActions:
    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, codec: Codec) -> None:
        self._pool = pool
        self._publisher = publisher
        self._codec = codec

    async def touched(
        self,
        principal: Principal,
        action: str,
        target_org: str | None,
        target_agency: str | None = None,
        detail: Mapping[str, Any] | None = None,
        subject_key: str | None = None,
    ) -> None:
        """Record `action` if an operator did it, and alert the target organisation's privacy
        officer when that is an agency organisation other than the operator's own.

        What the operator does to its own organisation is its own business, unless it is about a
        person (`subject_key`, such as a patient token): who can act for or about a person is
        kept whoever the target. `target_org` None: an action about a person that names no
        organisation (a register entry cleared with no earlier entry)."""
        if not principal.is_operator:
            return
        own = target_org == principal.org_id
        if own and subject_key is None:
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
        if target_org is None or own or agency not in AGENCIES:
            return  # no organisation, or the operator's own realm: no privacy officer to alert
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
            topics.OPERATOR_ALERTS, alert["subject_key"].encode(), self._codec.encode(ALERT, alert)
        )
        try:
            await self._publisher.publish([record])
        except BrokerUnavailableError:
            # The action is kept in operator_actions either way; the alert is what is lost.
            log.error("operator_action_alert_not_published", action_id=str(action_id))

    async def register_changed(
        self,
        principal: Principal,
        register: str,
        agency: str,
        org_id: str | None,
        subject_key: str,
        change_id: str,
    ) -> None:
        """Record the operator's register entry `change_id` for a person (`org_id` None: the
        entry cleared) and alert the organisation it touched: the one it names, or for a cleared
        entry the one it replaced, which loses the person."""
        target = org_id if org_id is not None else await self._entry_before(change_id)
        await self.touched(
            principal,
            REGISTER_ACTIONS[register, org_id is not None],
            target,
            agency,
            {"register": register, "change_id": change_id},
            subject_key,
        )

    async def _entry_before(self, change_id: str) -> str | None:
        """The organisation the person's entry in the same register named before `change_id`."""
        found: str | None = await self._pool.fetchval(
            """
            SELECT earlier.org_id
            FROM register_changes AS entry
            JOIN register_changes AS earlier
              ON earlier.subject_key = entry.subject_key
             AND earlier.register = entry.register
             AND earlier.recorded_at < entry.recorded_at
            WHERE entry.change_id = $1
            ORDER BY earlier.recorded_at DESC
            LIMIT 1
            """,
            uuid.UUID(change_id),
        )
        return found
