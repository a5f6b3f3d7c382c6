"""HL7 v2 ADT over HTTP (`POST /v1/adapters/hl7v2`) and over MLLP: a message in, its events to
the gateway, the ACK out."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from carebus.adapters.auth import Principal, TokenCache, TokenRefusedError
from carebus.adapters.outages import OUTAGES
from carebus.runtime import metrics
from carebus.wire import hl7v2
from carebus.wire.translation import DirectoryView, Party, Translation, Untranslatable
from services.adapters.directory import DirectorySnapshot
from services.adapters.gateway import (
    Gateway,
    GatewayUnauthorizedError,
    GatewayUnavailableError,
    Published,
)
from services.adapters.plo import Answer

log = structlog.get_logger("carebus.adapters.hl7v2")
HL7_TYPE = "application/hl7-v2"
# MLLP has no headers: the organisation's token rides in MSH-8, the field HL7 keeps for it.
SECURITY_FIELD = "MSH-8"
MISSING_SECURITY = "must hold the organisation's carebus token (MLLP has no other place for it)"
REFUSED_SECURITY = "holds no valid token of a system"
# Over MLLP an outage is an AE asking to send again: there is no 503 to answer with.
_UNAVAILABLE: tuple[type[BaseException], ...] = (GatewayUnavailableError, *OUTAGES)


class Hl7Adapter:
    def __init__(
        self,
        gateway: Gateway,
        directory: DirectorySnapshot,
        secret: bytes,
        tokens: TokenCache,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._gateway = gateway
        self._directory = directory
        self._secret = secret
        self._tokens = tokens
        self._clock = clock

    async def handle(self, body: bytes, principal: Principal, authorization: str) -> Answer:
        """One message over HTTP (the caller authenticated by its bearer token): its ACK, 200
        for AA, 422 for AE, 400 for AR, or the gateway's own 4xx. Raises
        GatewayUnavailableError (503) when the gateway did not take the events."""
        # Every step that parses runs off the event loop: a hostile message costs its parse,
        # never every other caller's answers.
        text = await asyncio.to_thread(hl7v2.decode, body)
        status, ack = await self._answer(text, principal, authorization)
        return Answer(status, ack, HL7_TYPE)

    async def handle_framed(self, block: bytes) -> bytes:
        """One message over MLLP: authenticated by the token in MSH-8; its ACK's bytes (AR,
        HL7's "send it again later, unchanged", when the gateway or the database is down)."""
        text = await asyncio.to_thread(hl7v2.decode, block)
        try:
            principal, token = await self._principal(text)
            if principal is None:
                problem = MISSING_SECURITY if token is None else REFUSED_SECURITY
                refusal = Untranslatable(SECURITY_FIELD, problem)
                return await self._ack(text, refusal, None, "forbidden")
            _, ack = await self._answer(text, principal, f"Bearer {token}")
        except GatewayUnauthorizedError:
            refusal = Untranslatable(SECURITY_FIELD, REFUSED_SECURITY)
            return await self._ack(text, refusal, None, "forbidden")
        except _UNAVAILABLE:
            metrics.ADAPTER_MESSAGES.labels("hl7v2", "unavailable").inc()
            unavailable = Untranslatable("MSH", hl7v2.UNAVAILABLE, "rejected")
            return await self._ack(text, unavailable, None, None)
        return ack

    async def _principal(self, text: str) -> tuple[Principal | None, str | None]:
        token = security_field(text)
        if not token:
            return None, None
        try:
            principal = await self._tokens.principal(token)
        except TokenRefusedError:
            return None, token
        if principal is None or principal.role != "system":
            return None, token
        return principal, token

    async def _answer(
        self, text: str, principal: Principal, authorization: str
    ) -> tuple[int, bytes]:
        view = await self._directory.view()
        sender = view.by_org_id(principal.org_id) or Party(principal.org_id, principal.agency)
        message, translation = await asyncio.to_thread(
            _read_and_translate, text, sender, view, self._secret
        )
        if isinstance(translation, Untranslatable):
            status = 400 if translation.severity == "rejected" else 422
            return status, await self._ack(message, translation, None, "refused")
        if not translation.events:
            # An update or an outpatient's registration: acknowledged, nothing to hand on.
            return 200, await self._ack(message, None, None, "nothing")
        outcome = await self._gateway.publish(translation.events, authorization)
        if isinstance(outcome, Published):
            return 200, await self._ack(message, None, None, "accepted")
        field, problem = outcome.details[0] if outcome.details else ("", outcome.message)
        where = translation.origin_of(field) if field else "MSH"
        return outcome.status, await self._ack(message, None, (where, problem), "refused")

    async def _ack(
        self,
        original: hl7v2.Message | str | None,
        refusal: Untranslatable | None,
        gateway_problem: tuple[str, str] | None,
        outcome: str | None,
    ) -> bytes:
        """The ACK's bytes for the message as read (None: unreadable), or for its text when it
        was answered before it was read (MLLP's token refused) or the reading was lost (an
        outage while publishing): then it is read again. Built off the event loop."""
        if outcome is not None:
            metrics.ADAPTER_MESSAGES.labels("hl7v2", outcome).inc()
        now = self._clock()

        def build() -> str:
            if isinstance(original, str):
                return hl7v2.acknowledgement(
                    original, refusal, now=now, gateway_problem=gateway_problem
                )
            return hl7v2.acknowledgement_of(
                original, refusal, now=now, gateway_problem=gateway_problem
            )

        ack = await asyncio.to_thread(build)
        log.info("hl7v2 message answered", outcome=outcome, ack=ack.split("\r")[1][:7])
        return hl7v2.encode(ack)


def _read_and_translate(
    text: str, sender: Party, directory: DirectoryView, secret: bytes
) -> tuple[hl7v2.Message | None, Translation | Untranslatable]:
    """The message as read (its ACK is built from it, so it is parsed once) and its events, or
    why it cannot be mapped; one step, so one trip off the event loop."""
    try:
        message = hl7v2.read(text)
    except Untranslatable as unreadable:
        return None, unreadable
    try:
        return message, hl7v2.translate(message, sender, directory, secret)
    except Untranslatable as refusal:
        return message, refusal


def security_field(text: str) -> str | None:
    """MSH-8 of `text`, read from the first segment alone (before any full parse, so an
    unauthenticated message costs no parse); None when there is none."""
    header = re.split(r"[\r\n]", text.lstrip("\x0b"), maxsplit=1)[0]
    if not header.startswith("MSH") or len(header) < 4:
        return None
    fields = header.split(header[3])
    # fields[0] is "MSH" and MSH-1 is the separator itself: MSH-n is fields[n - 1].
    return fields[7].strip() or None if len(fields) > 7 else None
