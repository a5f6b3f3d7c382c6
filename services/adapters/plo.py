"""`POST /v1/adapters/plo`: a PLO message in, its events to the gateway, an AppRec out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from carebus.adapters.auth import Principal
from carebus.runtime import metrics
from carebus.wire import plo
from carebus.wire.translation import Translation
from services.adapters.directory import DirectorySnapshot
from services.adapters.gateway import Gateway, Published, Refused

log = structlog.get_logger("carebus.adapters.plo")
APPREC_TYPE = "application/xml"


@dataclass(frozen=True, slots=True)
class Answer:
    """A protocol's answer: the HTTP status and the body in the protocol's own format."""

    status: int
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


class PloAdapter:
    def __init__(
        self,
        gateway: Gateway,
        directory: DirectorySnapshot,
        secret: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._gateway = gateway
        self._directory = directory
        self._secret = secret
        self._clock = clock

    async def handle(self, body: bytes, principal: Principal, authorization: str) -> Answer:
        """Read, check, map and publish one message; the AppRec that answers it.

        Raises GatewayUnavailableError when the gateway did not take the events (the sender
        retries: the same message maps to the same events, which the gateway takes once)."""
        message: plo.PloMessage | None = None
        try:
            # Validation against the XSDs costs milliseconds: off the event loop.
            message = await asyncio.to_thread(plo.read, body)
            plo.carried(message)
            view = await self._directory.view()
            sender = plo.sender_of(message, view)
            if sender.org_id != principal.org_id:
                return self._answer(
                    message,
                    403,
                    plo.Receipt.refused(
                        "X99",
                        f"{plo.SENDER_PATH}: is not the organisation of the token",
                    ),
                    body,
                    outcome="forbidden",
                )
            translation = plo.translate(message, sender, view, self._secret)
        except plo.PloRefusal as refusal:
            status = 400 if refusal.code == "T01" else 422
            receipt = plo.Receipt.refused(refusal.code, f"{refusal.where}: {refusal.problem}")
            return self._answer(message, status, receipt, body, outcome="refused")
        outcome = await self._gateway.publish(translation.events, authorization)
        if isinstance(outcome, Published):
            return self._answer(message, 200, plo.Receipt.ok(), body, outcome="accepted")
        return self._answer(
            message,
            outcome.status,
            plo.Receipt.refused("X99", _gateway_problem(outcome, translation)),
            body,
            outcome="refused",
        )

    def _answer(
        self,
        message: plo.PloMessage | None,
        status: int,
        receipt: plo.Receipt,
        body: bytes,
        *,
        outcome: str,
    ) -> Answer:
        metrics.ADAPTER_MESSAGES.labels("plo", outcome).inc()
        log.info(
            "plo message answered",
            msg_type=message.msg_type if message else None,
            status=status,
            apprec_status=receipt.status,
            codes=[code for code, _ in receipt.errors],
        )
        document = plo.apprec(message, receipt, now=self._clock(), original=body)
        return Answer(status, document, APPREC_TYPE)


def _gateway_problem(refused: Refused, translation: Translation) -> str:
    """The gateway's refusal in the message's own terms (its fields named by their PLO place)."""
    if not refused.details:
        return refused.message
    return "; ".join(
        f"{translation.origin_of(field)}: {problem}" for field, problem in refused.details
    )
