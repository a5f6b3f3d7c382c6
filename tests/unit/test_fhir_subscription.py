"""FHIR R4 Subscriptions as an organisation's webhook (services.adapters.subscription), against a
fake registry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from fhir.resources.R4B.subscription import Subscription

from carebus.adapters.auth import Principal
from carebus.wire.fhir import FhirUntranslatable
from services.adapters.registry import Answered
from services.adapters.subscription import (
    CRITERIA,
    SECRET_EXTENSION,
    SubscriptionAdapter,
    requested,
)

ORG = "940000301"
URL = "https://kommune.example.no/carebus/fhir"
AUTHORIZATION = "Bearer t0ken"
PRINCIPAL = Principal(uuid.uuid4(), ORG, "municipality", "system")


def body(**changes: Any) -> dict[str, Any]:
    """A Subscription as a municipality's system posts it, with elements replaced (None
    removes one; `channel_<name>` changes the channel's)."""
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Pasientlogistikk fra carebus",
        "criteria": "Encounter",
        "channel": {"type": "rest-hook", "endpoint": URL, "payload": "application/fhir+json"},
    }
    for name, value in changes.items():
        holder, key = (
            (resource["channel"], name.removeprefix("channel_"))
            if name.startswith("channel_")
            else (resource, name)
        )
        if value is None:
            holder.pop(key, None)
        else:
            holder[key] = value
    return resource


@dataclass
class FakeRegistry:
    """The registry's /v1/webhooks: one webhook per organisation, and the calls made."""

    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, Mapping[str, Any] | None]] = field(default_factory=list)
    refusal: Answered | None = None

    async def set_webhook(self, url: str, authorization: str) -> Answered:
        self.calls.append(("PUT", authorization, {"url": url, "format": "fhir"}))
        if self.refusal is not None:
            return self.refusal
        self.webhooks[ORG] = {"org_id": ORG, "url": url, "format": "fhir"}
        return Answered(200, {"org_id": ORG, "url": url, "secret": "whsec-1", "format": "fhir"})

    async def webhook(self, authorization: str) -> Answered:
        self.calls.append(("GET", authorization, None))
        if ORG not in self.webhooks:
            return Answered(404, {"error": {"message": "no webhook", "details": []}})
        return Answered(200, self.webhooks[ORG])

    async def delete_webhook(self, authorization: str) -> Answered:
        self.calls.append(("DELETE", authorization, None))
        self.webhooks.pop(ORG, None)
        return Answered(204, {})


def outcome_of(answer_body: bytes) -> tuple[str, str, list[str]]:
    """The first issue of an OperationOutcome: its code, diagnostics and expression."""
    outcome = json.loads(answer_body)
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error"
    return issue["code"], issue["diagnostics"], issue.get("expression", [])


# What is taken


@pytest.mark.parametrize("criteria", CRITERIA)
def test_a_rest_hook_for_fhir_json_is_taken_with_its_endpoint_and_criteria(criteria: str) -> None:
    """A rest-hook Subscription with payload application/fhir+json and a criteria naming what
    carebus sends gives its endpoint URL and criteria."""
    assert requested(body(criteria=criteria)) == (URL, criteria)


def test_a_fhir_version_parameter_on_the_payload_type_is_taken() -> None:
    """`application/fhir+json; fhirVersion=4.0` is still FHIR JSON."""
    assert requested(body(channel_payload="application/fhir+json; fhirVersion=4.0"))[0] == URL


@pytest.mark.parametrize(
    ("changes", "where", "code"),
    [
        ({"channel_type": "websocket"}, "Subscription.channel.type", "not-supported"),
        ({"channel_payload": "application/json"}, "Subscription.channel.payload", "value"),
        ({"channel_payload": None}, "Subscription.channel.payload", "value"),
        ({"channel_endpoint": None}, "Subscription.channel.endpoint", "required"),
        (
            {"channel_header": ["Authorization: Bearer x"]},
            "Subscription.channel.header",
            "not-supported",
        ),
        ({"criteria": "Encounter?status=finished"}, "Subscription.criteria", "not-supported"),
        ({"criteria": "Observation"}, "Subscription.criteria", "not-supported"),
        ({"criteria": None}, "Subscription.criteria", "required"),
        ({"status": "off"}, "Subscription.status", "value"),
        ({"end": "2027-01-01T00:00:00Z"}, "Subscription.end", "not-supported"),
        ({"channel": "rest-hook"}, "Subscription.channel", "value"),
    ],
)
def test_what_carebus_cannot_serve_is_refused_naming_the_element(
    changes: dict[str, Any], where: str, code: str
) -> None:
    """Each refusal names the element and the kind of problem, never the value."""
    with pytest.raises(FhirUntranslatable) as refused:
        requested(body(**changes))
    assert refused.value.where == where
    assert refused.value.code == code
    assert "Bearer x" not in str(refused.value)


@pytest.mark.parametrize(
    ("resource", "where"),
    [
        ([], "Subscription"),
        ({"resourceType": "Encounter"}, "Subscription.resourceType"),
    ],
)
def test_a_body_that_is_no_subscription_is_rejected(resource: object, where: str) -> None:
    """Not a JSON object, or another resource type: rejected (400), not mapped."""
    with pytest.raises(FhirUntranslatable) as refused:
        requested(resource)
    assert refused.value.where == where
    assert refused.value.severity == "rejected"


# The exchange with the registry


async def test_a_subscription_sets_the_callers_webhook_for_fhir_and_shows_its_secret() -> None:
    """201 with the Subscription: id the organisation number, status active, the secret in
    its extension; the registry got the URL and format fhir with the caller's own token."""
    registry = FakeRegistry()
    answer = await SubscriptionAdapter(registry).create(json.dumps(body()).encode(), AUTHORIZATION)
    assert answer.status == 201
    assert answer.media_type == "application/fhir+json"
    assert answer.headers["Location"] == f"/fhir/Subscription/{ORG}"
    created = json.loads(answer.body)
    Subscription.model_validate(created)
    assert created["id"] == ORG
    assert created["status"] == "active"
    assert created["criteria"] == "Encounter"
    assert created["channel"] == {
        "type": "rest-hook",
        "endpoint": URL,
        "payload": "application/fhir+json",
    }
    assert created["extension"] == [{"url": SECRET_EXTENSION, "valueString": "whsec-1"}]
    assert registry.calls == [("PUT", AUTHORIZATION, {"url": URL, "format": "fhir"})]


async def test_a_refused_subscription_reaches_no_registry() -> None:
    """A Subscription carebus cannot serve is 422 with an OperationOutcome, and no webhook is
    set; a body that is not JSON is 400."""
    registry = FakeRegistry()
    adapter = SubscriptionAdapter(registry)
    answer = await adapter.create(json.dumps(body(channel_type="email")).encode(), AUTHORIZATION)
    assert answer.status == 422
    assert outcome_of(answer.body)[2] == ["Subscription.channel.type"]
    answer = await adapter.create(b"{not json", AUTHORIZATION)
    assert answer.status == 400
    assert registry.calls == []


async def test_the_registrys_refusal_names_the_subscriptions_element() -> None:
    """The registry's 422 on `url` (a private address, http in production) names
    Subscription.channel.endpoint; its 403 (a role it does not take) is forbidden."""
    registry = FakeRegistry(
        refusal=Answered(
            422,
            {
                "error": {
                    "message": "the webhook is invalid",
                    "details": [{"field": "url", "problem": "must use https"}],
                }
            },
        )
    )
    answer = await SubscriptionAdapter(registry).create(json.dumps(body()).encode(), AUTHORIZATION)
    assert answer.status == 422
    assert outcome_of(answer.body) == ("value", "must use https", ["Subscription.channel.endpoint"])

    registry.refusal = Answered(403, {"error": {"message": "this call needs the role system"}})
    answer = await SubscriptionAdapter(registry).create(json.dumps(body()).encode(), AUTHORIZATION)
    assert answer.status == 403
    assert outcome_of(answer.body)[:2] == ("forbidden", "this call needs the role system")


async def test_the_callers_subscription_is_read_without_its_secret_and_deleted() -> None:
    """GET shows the organisation's FHIR webhook as an active Subscription, no secret; DELETE
    deletes the webhook (204), and then GET is 404."""
    registry = FakeRegistry()
    adapter = SubscriptionAdapter(registry)
    await adapter.create(json.dumps(body()).encode(), AUTHORIZATION)
    answer = await adapter.read(ORG, PRINCIPAL, AUTHORIZATION)
    assert answer.status == 200
    shown = json.loads(answer.body)
    Subscription.model_validate(shown)
    assert (shown["id"], shown["status"], shown["channel"]["endpoint"]) == (ORG, "active", URL)
    assert "extension" not in shown
    assert "whsec" not in answer.body.decode()
    deleted = await adapter.delete(ORG, PRINCIPAL, AUTHORIZATION)
    assert deleted.status == 204
    assert ORG not in registry.webhooks
    assert (await adapter.read(ORG, PRINCIPAL, AUTHORIZATION)).status == 404


async def test_another_organisations_or_a_non_fhir_webhook_is_no_subscription() -> None:
    """Another id than the caller's organisation number is 404 without asking the registry; a
    webhook that receives carebus JSON is not a Subscription (404), and DELETE leaves it."""
    registry = FakeRegistry(webhooks={ORG: {"org_id": ORG, "url": URL, "format": "carebus"}})
    adapter = SubscriptionAdapter(registry)
    answer = await adapter.read("974705788", PRINCIPAL, AUTHORIZATION)
    assert answer.status == 404
    assert outcome_of(answer.body)[0] == "not-found"
    assert registry.calls == []
    assert (await adapter.read(ORG, PRINCIPAL, AUTHORIZATION)).status == 404
    assert (await adapter.delete(ORG, PRINCIPAL, AUTHORIZATION)).status == 404
    assert ORG in registry.webhooks
