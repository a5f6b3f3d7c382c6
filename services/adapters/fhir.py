"""`POST /fhir/Encounter` and `POST /fhir` (a Bundle): FHIR R4 in, its events to the gateway, an
OperationOutcome out."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Callable

import orjson
import structlog

from carebus.adapters.auth import Principal
from carebus.runtime import metrics
from carebus.wire import fhir
from carebus.wire.translation import DirectoryView, Party, Translation, Untranslatable
from services.adapters.directory import DirectorySnapshot
from services.adapters.gateway import Gateway, Published
from services.adapters.plo import Answer

log = structlog.get_logger("carebus.adapters.fhir")
FHIR_JSON = "application/fhir+json"

Translate = Callable[[object, Party, DirectoryView, bytes], Translation]


class FhirAdapter:
    def __init__(self, gateway: Gateway, directory: DirectorySnapshot, secret: bytes) -> None:
        self._gateway = gateway
        self._directory = directory
        self._secret = secret

    async def encounter(self, body: bytes, principal: Principal, authorization: str) -> Answer:
        """One Encounter (create or update): 201 once the gateway has its events."""
        return await self._handle(body, principal, authorization, fhir.translate_encounter, 201)

    async def bundle(self, body: bytes, principal: Principal, authorization: str) -> Answer:
        """A message, transaction, batch or collection Bundle: all its Encounters or none."""
        return await self._handle(body, principal, authorization, fhir.translate_bundle, 200)

    async def _handle(
        self,
        body: bytes,
        principal: Principal,
        authorization: str,
        translate: Translate,
        created: int,
    ) -> Answer:
        try:
            resource = orjson.loads(without_bom(body))
        except orjson.JSONDecodeError:
            return _answer(400, fhir.operation_outcome(_malformed()), "refused")
        view = await self._directory.view()
        sender = view.by_org_id(principal.org_id) or Party(principal.org_id, principal.agency)
        try:
            # fhir.resources validates at a few milliseconds an Encounter: off the event loop.
            translation = await asyncio.to_thread(translate, resource, sender, view, self._secret)
        except Untranslatable as refusal:
            status = 400 if refusal.severity == "rejected" else 422
            return _answer(status, fhir.operation_outcome(refusal), "refused")
        if not translation.events:
            return _answer(
                200,
                fhir.operation_outcome(
                    None, information="nothing to publish: no Encounter in a state carebus carries"
                ),
                "accepted",
            )
        outcome = await self._gateway.publish(translation.events, authorization)
        if isinstance(outcome, Published):
            ids = ", ".join(str(accepted["event_id"]) for accepted in outcome.accepted)
            return _answer(
                created,
                fhir.operation_outcome(None, information=f"accepted as carebus events {ids}"),
                "accepted",
            )
        issues = [
            {
                "severity": "error",
                "code": "forbidden" if outcome.status == 403 else "processing",
                "diagnostics": problem,
                "expression": [translation.origin_of(field)],
            }
            for field, problem in outcome.details
        ] or [{"severity": "error", "code": "processing", "diagnostics": outcome.message}]
        return _answer(
            outcome.status, {"resourceType": "OperationOutcome", "issue": issues}, "refused"
        )


def without_bom(body: bytes) -> bytes:
    """The body without a leading UTF-8 byte order mark: RFC 8259 forbids sending one but lets
    a parser ignore it, and .NET writers add it (the HL7 v2 and PLO adapters ignore it too)."""
    return body.removeprefix(codecs.BOM_UTF8)


def _malformed() -> Untranslatable:
    return fhir.FhirUntranslatable("", "the body is not valid JSON", code="structure")


def _answer(status: int, outcome: dict[str, object], result: str) -> Answer:
    metrics.ADAPTER_MESSAGES.labels("fhir", result).inc()
    log.info("fhir request answered", status=status)
    return Answer(status, orjson.dumps(outcome), FHIR_JSON)
