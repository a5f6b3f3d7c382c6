"""`POST /fhir/Subscription` (and `GET`, `DELETE /fhir/Subscription/{id}`): an organisation
subscribes with a FHIR R4 Subscription (rest-hook) and receives its deliveries as FHIR messages
(issue 16, item 4). The Subscription is the organisation's webhook with `format: fhir`, set
through the registry with the caller's own token (docs/adapters.md, "Outbound FHIR")."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

import orjson
import structlog
from fhir.resources.R4B.subscription import Subscription
from pydantic import ValidationError

from carebus.adapters.auth import Principal
from carebus.runtime import metrics
from carebus.wire import fhir
from carebus.wire.fhir import FhirUntranslatable
from services.adapters.fhir import without_bom
from services.adapters.plo import Answer
from services.adapters.registry import FHIR_FORMAT, Answered, Webhooks

log = structlog.get_logger("carebus.adapters.subscription")
FHIR_JSON: Final = "application/fhir+json"

# carebus sends every delivery the organisation may receive, and nothing chooses among them:
# a criteria that names what is sent (the message Bundles, or the Encounters they carry) is
# taken; a search that would filter is refused rather than ignored.
CRITERIA: Final = ("Bundle?type=message", "Bundle", "Encounter")
# What GET shows: the criteria is not stored, and this is what is sent.
SENT_CRITERIA: Final = CRITERIA[0]
STATUSES: Final = ("requested", "active")
# The webhook's signing secret (X-Carebus-Signature), in the 201 answer only: shown once.
SECRET_EXTENSION: Final = "https://carebus.no/fhir/StructureDefinition/webhook-secret"  # noqa: S105 (a URL)
_REASON: Final = "carebus deliveries to the organisation, as FHIR R4 messages"
# The registry's field names, as the Subscription's elements.
_ELEMENT_OF_FIELD: Final[Mapping[str, str]] = {
    "url": "Subscription.channel.endpoint",
    "format": "Subscription.channel.payload",
}


def requested(body: object) -> tuple[str, str]:
    """The endpoint URL and criteria of a Subscription carebus can serve, or the refusal naming
    the element (never its value)."""
    if not isinstance(body, dict):
        raise FhirUntranslatable(
            "Subscription",
            "must be a JSON object (a FHIR resource)",
            code="structure",
            severity="rejected",
        )
    if body.get("resourceType") != "Subscription":
        raise FhirUntranslatable(
            "Subscription.resourceType",
            "must be Subscription here",
            code="not-supported",
            severity="rejected",
        )
    try:
        Subscription.model_validate(body)
    except ValidationError as error:
        raise fhir.validation_error(error, "Subscription") from None
    except (KeyError, TypeError, ValueError, RecursionError):
        raise FhirUntranslatable(
            "Subscription", "could not be read as a FHIR R4 Subscription", code="structure"
        ) from None
    return _endpoint(body), _criteria(body)


def _criteria(body: Mapping[str, Any]) -> str:
    if body.get("status") not in STATUSES:
        raise FhirUntranslatable(
            "Subscription.status", "must be requested (or active)", code="value"
        )
    if "end" in body:
        raise FhirUntranslatable(
            "Subscription.end",
            "is not supported: a carebus webhook stays until it is deleted",
            code="not-supported",
        )
    criteria = body.get("criteria")
    if not isinstance(criteria, str) or not criteria.strip():
        raise FhirUntranslatable("Subscription.criteria", "is required", code="required")
    if criteria.strip() not in CRITERIA:
        raise FhirUntranslatable(
            "Subscription.criteria",
            "must be one of: " + ", ".join(CRITERIA) + " (carebus sends every delivery the "
            "organisation may receive; it filters nothing)",
            code="not-supported",
        )
    return criteria.strip()


def _endpoint(body: Mapping[str, Any]) -> str:
    channel = body.get("channel")
    channel = channel if isinstance(channel, dict) else {}
    if channel.get("type") != "rest-hook":
        raise FhirUntranslatable(
            "Subscription.channel.type", "must be rest-hook", code="not-supported"
        )
    payload = channel.get("payload")
    if not isinstance(payload, str) or payload.split(";")[0].strip() != FHIR_JSON:
        raise FhirUntranslatable(
            "Subscription.channel.payload",
            f"must be {FHIR_JSON}: each delivery is sent whole, as a message Bundle",
            code="value",
        )
    if "header" in channel:
        raise FhirUntranslatable(
            "Subscription.channel.header",
            "is not supported: carebus signs each delivery (X-Carebus-Signature) and sends no "
            "headers of the subscriber's",
            code="not-supported",
        )
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise FhirUntranslatable(
            "Subscription.channel.endpoint", "is required: the https URL", code="required"
        )
    return endpoint.strip()


def subscription(
    org_id: str, url: str, criteria: str = SENT_CRITERIA, secret: str | None = None
) -> dict[str, Any]:
    """The organisation's Subscription as carebus holds it: its webhook, active; the signing
    secret only when it was just issued."""
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": org_id,
        "status": "active",
        "reason": _REASON,
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": url, "payload": FHIR_JSON},
    }
    if secret is not None:
        resource["extension"] = [{"url": SECRET_EXTENSION, "valueString": secret}]
    return resource


def refusal_outcome(answered: Answered) -> dict[str, Any]:
    """The registry's refusal as an OperationOutcome naming the Subscription's elements."""
    code = {403: "forbidden", 404: "not-found", 422: "value"}.get(answered.status, "processing")
    issues = [
        {
            "severity": "error",
            "code": code,
            "diagnostics": problem,
            "expression": [_ELEMENT_OF_FIELD.get(field, "Subscription")],
        }
        for field, problem in answered.details
    ] or [{"severity": "error", "code": code, "diagnostics": answered.message}]
    return {"resourceType": "OperationOutcome", "issue": issues}


class SubscriptionAdapter:
    def __init__(self, registry: Webhooks) -> None:
        self._registry = registry

    async def create(self, body: bytes, authorization: str) -> Answer:
        """Subscribe the caller's organisation: 201 with the Subscription and its secret."""
        try:
            resource = orjson.loads(without_bom(body))
        except orjson.JSONDecodeError:
            refusal = FhirUntranslatable("", "the body is not valid JSON", code="structure")
            return _answer(400, fhir.operation_outcome(refusal), "refused")
        try:
            # fhir.resources validates at a few milliseconds a resource: off the event loop.
            url, criteria = await asyncio.to_thread(requested, resource)
        except FhirUntranslatable as refusal:
            status = 400 if refusal.severity == "rejected" else 422
            return _answer(status, fhir.operation_outcome(refusal), "refused")
        answered = await self._registry.set_webhook(url, authorization)
        if answered.status != 200:
            return _answer(answered.status, refusal_outcome(answered), "refused")
        org_id, stored_url = str(answered.body["org_id"]), str(answered.body["url"])
        created = subscription(org_id, stored_url, criteria, str(answered.body["secret"]))
        log.info("fhir subscription set", org_id=org_id)
        return _answer(201, created, "accepted", {"Location": f"/fhir/Subscription/{org_id}"})

    async def read(self, subscription_id: str, principal: Principal, authorization: str) -> Answer:
        """The caller's own Subscription: its webhook, if that receives FHIR; else 404."""
        answered = await self._own(subscription_id, principal, authorization)
        if not isinstance(answered, Answered):
            return answered
        return _answer(200, subscription(principal.org_id, str(answered.body["url"])), "accepted")

    async def delete(
        self, subscription_id: str, principal: Principal, authorization: str
    ) -> Answer:
        """Delete the caller's own Subscription (its webhook): 204; 404 if it has none."""
        answered = await self._own(subscription_id, principal, authorization)
        if not isinstance(answered, Answered):
            return answered
        deleted = await self._registry.delete_webhook(authorization)
        if deleted.status != 204:
            return _answer(deleted.status, refusal_outcome(deleted), "refused")
        log.info("fhir subscription deleted", org_id=principal.org_id)
        return Answer(204, b"", FHIR_JSON)

    async def _own(
        self, subscription_id: str, principal: Principal, authorization: str
    ) -> Answered | Answer:
        """The caller's webhook if `subscription_id` is its Subscription, else the answer."""
        # A Subscription's id is its organisation's number: no one reads another's.
        if subscription_id == principal.org_id:
            answered = await self._registry.webhook(authorization)
            if answered.status != 200:
                return _answer(answered.status, refusal_outcome(answered), "refused")
            if answered.body.get("format") == FHIR_FORMAT:
                return answered
        refusal = FhirUntranslatable(
            "Subscription.id", "is no Subscription of the caller's organisation", code="value"
        )
        outcome = fhir.operation_outcome(refusal)
        outcome["issue"][0]["code"] = "not-found"
        return _answer(404, outcome, "refused")


def _answer(
    status: int, resource: dict[str, Any], result: str, headers: dict[str, str] | None = None
) -> Answer:
    metrics.ADAPTER_MESSAGES.labels("fhir", result).inc()
    log.info("fhir subscription request answered", status=status)
    return Answer(status, orjson.dumps(resource), FHIR_JSON, headers or {})
