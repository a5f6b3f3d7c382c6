"""Every HTTP service's OpenAPI, fuzzed with schemathesis (issue 15, item 1): no answer is a 5xx
or breaks the documented schema, status or content type, for valid-shaped or malformed input."""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import count
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import APIOperation, Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.figures import FIGURES

pytestmark = pytest.mark.integration

# Examples per operation and phase: a small sample in `make test`, many in `make fuzz`.
EXAMPLES = int(os.environ.get("CAREBUS_FUZZ_EXAMPLES", "5"))
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
REQUEST_TIMEOUT_S = 30
ApiCase = Case[APIOperation[Any, Any, Any, Any]]
# Every BROKEN_EVERY-th case goes without a valid token: missing, another scheme, unknown.
BROKEN_EVERY = 16
BROKEN_AUTH: tuple[dict[str, str], ...] = (
    {},
    {"Authorization": "Basic Zm9vOmJhcg=="},
    {"Authorization": "Bearer nope"},
)
_sent = count()

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# The role each operation is called with (the services' `principal_dependency`s): the one that
# gets furthest into the operation; other roles are refused by the same check before it.
REGISTRY_ROLES = {
    "POST /v1/tokens": "operator",
    "POST /v1/organisations": "operator",
    "POST /v1/population-register": "operator",
    "POST /v1/gp-list": "operator",
    "PUT /v1/webhooks": "operator",
    "GET /v1/webhooks": "operator",
    "DELETE /v1/webhooks": "operator",
}
AUDIT_ROLES = {
    "GET /v1/deliveries": "system",
    "POST /v1/disclosures/query": "privacy_officer",
    "GET /v1/me/disclosures": "patient",
}


def fuzz(service: str, role: Callable[[str], str], case: ApiCase, callers: dict[str, str]) -> None:
    """Send one case with a token of the operation's role; record the answer; check it."""
    label = case.operation.label
    sent = next(_sent)
    headers = (
        BROKEN_AUTH[sent // BROKEN_EVERY % len(BROKEN_AUTH)]
        if sent % BROKEN_EVERY == BROKEN_EVERY - 1
        else {"Authorization": f"Bearer {callers[role(label)]}"}
    )
    # A redirect (sign-in) is the answer under test, not the issuer's page it leads to.
    response = case.call(headers=dict(headers), timeout=REQUEST_TIMEOUT_S, allow_redirects=False)
    FIGURES.answered(service, response.status_code)
    try:
        case.validate_response(response, checks=CHECKS)
    except BaseException as failure:
        FIGURES.failed(service, label, failure)
        raise


gateway = schemathesis.pytest.from_fixture("gateway_schema")
registry = schemathesis.pytest.from_fixture("registry_schema")
audit = schemathesis.pytest.from_fixture("audit_schema")
# A live stream never ends by itself, so fuzzing it would wait for ever; it shares GET
# /v1/alerts's caller check and errors, and tests/integration covers it.
inbox = schemathesis.pytest.from_fixture("inbox_schema").exclude(path="/v1/alerts/stream")


@gateway.parametrize()
@FUZZ_SETTINGS
def test_gateway_answers_every_case_within_its_contract(
    case: ApiCase, callers: dict[str, str]
) -> None:
    """Events and batches, well-formed or not, from a system token: no 5xx, no schema break."""
    fuzz("gateway", lambda _: "system", case, callers)


@registry.parametrize()
@FUZZ_SETTINGS
def test_registry_answers_every_case_within_its_contract(
    case: ApiCase, callers: dict[str, str]
) -> None:
    """Every registry operation with a role it serves: no 5xx, no schema break."""
    fuzz("registry", lambda label: REGISTRY_ROLES.get(label, "system"), case, callers)


@audit.parametrize()
@FUZZ_SETTINGS
def test_audit_answers_every_case_within_its_contract(
    case: ApiCase, callers: dict[str, str]
) -> None:
    """Deliveries (system), disclosure queries (privacy officer), a patient's own log."""
    fuzz("audit", lambda label: AUDIT_ROLES.get(label, "privacy_officer"), case, callers)


adapters = schemathesis.pytest.from_fixture("adapters_schema")


@adapters.parametrize()
@FUZZ_SETTINGS
def test_adapters_answer_every_case_within_their_contract(
    case: ApiCase, callers: dict[str, str]
) -> None:
    """PLO, HL7 v2 and FHIR bodies, well-formed or not, from a system token: no 5xx, and an
    AppRec, ACK or OperationOutcome where the protocol expects one."""
    fuzz("adapters", lambda _: "system", case, callers)


@inbox.parametrize()
@FUZZ_SETTINGS
def test_inbox_answers_every_case_within_its_contract(
    case: ApiCase, callers: dict[str, str]
) -> None:
    """Alerts listed, read, acknowledged and resolved by a coordinator."""
    fuzz("inbox", lambda _: "coordinator", case, callers)
