"""carebus's one input rule through every service's HTTP contract: a control or format character
in any text, or a national identity number inside an identifier a client chose, is `422` naming
the field, never quoting the value, never a 5xx."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token
from carebus.domain.identity import random_nin
from carebus.domain.text import CONTROL_PROBLEM, NIN_IN_ID_PROBLEM, UNSHOWN_FIELD_PROBLEM
from carebus_dev.stack.devdata import DEV_ORGANISATIONS, OPERATOR_ORG
from carebus_dev.testing import EventFactory, TestStack

pytestmark = pytest.mark.integration

RNG = random.Random(1515)
NIN = random_nin(RNG)  # the person an event or a consent is about
HIDDEN = random_nin(RNG)  # the number a client slips into an identifier
SYNTHETIC = random_nin(RNG, synthetic=True)
MUNICIPALITY = DEV_ORGANISATIONS["municipality"]
SERVICES = ("gateway", "registry", "audit", "inbox")


@dataclass(frozen=True)
class Case:
    """One request that must be refused, and the field the refusal must name."""

    service: str
    who: str
    method: str
    path: str
    field: str
    problem: str | None = None
    body: Any = None
    params: dict[str, str] = default(default_factory=dict)


@pytest.fixture(scope="module")
def services(stack: TestStack) -> Iterator[None]:
    with stack.running(*SERVICES):
        yield


@pytest.fixture(scope="module")
async def tokens(stack: TestStack) -> AsyncIterator[dict[str, str]]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        yield {
            "dps": await create_token(
                conn, agency="dps", org_id=DEV_ORGANISATIONS["dps"], role="system"
            ),
            "admin": await create_token(
                conn, agency="municipality", org_id=MUNICIPALITY, role="admin"
            ),
            "coordinator": await create_token(
                conn, agency="municipality", org_id=MUNICIPALITY, role="coordinator"
            ),
            "privacy_officer": await create_token(
                conn, agency="municipality", org_id=MUNICIPALITY, role="privacy_officer"
            ),
            "operator": await create_token(
                conn, agency="operator", org_id=OPERATOR_ORG, role="operator"
            ),
        }
    finally:
        await conn.close()


def _admission(**changes: Any) -> dict[str, Any]:
    event = EventFactory().event("admission", nin=NIN)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = event
        for parent in parents:
            node = node[parent]
        node[last] = value
    return event


def _consent(**changes: Any) -> dict[str, Any]:
    return {
        "nin": NIN,
        "recipient": {"agency": "nav"},
        "status": "given",
        "categories": ["social"],
        "valid_from": "2026-11-23T08:15:00+01:00",
        "recorded_by": "Kari Nordmann",
        **changes,
    }


def _token(**changes: Any) -> dict[str, Any]:
    return {"agency": "municipality", "org_id": MUNICIPALITY, "role": "system", **changes}


def _organisation(**changes: Any) -> dict[str, Any]:
    return {"org_id": "974760673", "agency": "police", "name": "Politiet", **changes}


GATEWAY_CASES = [
    Case("gateway", "dps", "POST", "/v1/events", "payload.ward", CONTROL_PROBLEM,
         _admission(payload__ward="A\x00B")),
    Case("gateway", "dps", "POST", "/v1/events", "payload.ward", CONTROL_PROBLEM,
         _admission(payload__ward="Akutt\u202epost")),
    Case("gateway", "dps", "POST", "/v1/events", "payload.ward", CONTROL_PROBLEM,
         _admission(payload__ward="Akutt\u2028post")),
    Case("gateway", "dps", "POST", "/v1/events", "emergency.justification", CONTROL_PROBLEM,
         _admission(emergency={"justification": "x\x1b[2J", "accountable": "Åse",
                               "recipients": [{"agency": "police", "org_id": "974760673"}]})),
    Case("gateway", "dps", "POST", "/v1/events", "source.system", CONTROL_PROBLEM,
         _admission(source__system="DIPS\u200b")),
    Case("gateway", "dps", "POST", "/v1/events", "event_id", NIN_IN_ID_PROBLEM,
         _admission(event_id=f"dps-{HIDDEN}")),
    Case("gateway", "dps", "POST", "/v1/events", "event_id", NIN_IN_ID_PROBLEM,
         _admission(event_id=f"dps-9{SYNTHETIC}9")),
    Case("gateway", "dps", "POST", "/v1/events", "source.system", NIN_IN_ID_PROBLEM,
         _admission(source__system=f"DIPS {HIDDEN}")),
    Case("gateway", "dps", "POST", "/v1/events", "payload", UNSHOWN_FIELD_PROBLEM,
         _admission(**{f"payload__{HIDDEN}": "x"})),
    Case("gateway", "dps", "POST", "/v1/events", "body", UNSHOWN_FIELD_PROBLEM,
         _admission(**{"a\x00": "x"})),
    Case("gateway", "dps", "POST", "/v1/events:batch", "events[1].event_id", NIN_IN_ID_PROBLEM,
         {"events": [_admission(), _admission(event_id=f"dps-{HIDDEN}")]}),
    Case("gateway", "dps", "POST", "/v1/events:batch", "events[0].payload.ward", CONTROL_PROBLEM,
         {"events": [_admission(payload__ward="\ufeffA"), _admission()]}),
    Case("gateway", "dps", "POST", "/v1/events:batch", "body", UNSHOWN_FIELD_PROBLEM,
         {"events": [_admission()], HIDDEN: 1}),
]  # fmt: skip

REGISTRY_CASES = [
    Case("registry", "dps", "POST", "/v1/consents", "recorded_by", CONTROL_PROBLEM,
         _consent(recorded_by="Kari\x00")),
    Case("registry", "dps", "POST", "/v1/consents", "statement_ref", NIN_IN_ID_PROBLEM,
         _consent(statement_ref=f"journal/{HIDDEN}")),
    Case("registry", "dps", "POST", "/v1/consents", "statement_ref", CONTROL_PROBLEM,
         _consent(statement_ref="J-1\u202e")),
    Case("registry", "dps", "POST", "/v1/consents", "body", UNSHOWN_FIELD_PROBLEM,
         _consent(**{HIDDEN: "x"})),
    Case("registry", "admin", "POST", "/v1/tokens", "label", CONTROL_PROBLEM,
         _token(label="ci\u2029token")),
    Case("registry", "admin", "POST", "/v1/tokens", "body", UNSHOWN_FIELD_PROBLEM,
         _token(**{"x\u202e": 1})),
    Case("registry", "operator", "POST", "/v1/organisations", "name", CONTROL_PROBLEM,
         _organisation(name="Politi\x1b[31m")),
    Case("registry", "operator", "PUT", "/v1/webhooks", "url", NIN_IN_ID_PROBLEM,
         {"url": f"https://example.no/hooks/{HIDDEN}"}),
    Case("registry", "operator", "PUT", "/v1/webhooks", "url", CONTROL_PROBLEM,
         {"url": "https://example.no/ho\u200boks"}),
    Case("registry", "operator", "GET", "/v1/webhooks", "org_id", None,
         params={"org_id": "94049\x0021"}),
]  # fmt: skip

AUDIT_CASES = [
    Case("audit", "privacy_officer", "POST", "/v1/disclosures/query", "purpose", CONTROL_PROBLEM,
         {"nin": NIN, "purpose": "tilsyn\x00"}),
    Case("audit", "privacy_officer", "POST", "/v1/disclosures/query", "body",
         UNSHOWN_FIELD_PROBLEM, {"nin": NIN, HIDDEN: "x"}),
    Case("audit", "dps", "GET", "/v1/deliveries", "since", None, params={"since": "2026\x00"}),
]  # fmt: skip

INBOX_CASES = [
    Case("inbox", "coordinator", "GET", "/v1/alerts", "rule_id", CONTROL_PROBLEM,
         params={"rule_id": "sla\x1b"}),
    Case("inbox", "coordinator", "POST", "/v1/alerts/alert-1%00/ack", "alert_id",
         CONTROL_PROBLEM),
    Case("inbox", "coordinator", "POST", "/v1/alerts/alert-%E2%80%AE1/resolve", "alert_id",
         CONTROL_PROBLEM),
    Case("inbox", "coordinator", "GET", "/v1/alerts/alert-1%0A", "alert_id", CONTROL_PROBLEM),
]  # fmt: skip

CASES = GATEWAY_CASES + REGISTRY_CASES + AUDIT_CASES + INBOX_CASES


@pytest.fixture(scope="module")
async def clients(stack: TestStack, services: None) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    settings = stack.settings
    ports = {
        "gateway": settings.gateway_port,
        "registry": settings.registry_port,
        "audit": settings.audit_port,
        "inbox": settings.inbox_port,
    }
    found = {
        name: httpx.AsyncClient(base_url=settings.service_url(port), timeout=30)
        for name, port in ports.items()
    }
    yield found
    for client in found.values():
        await client.aclose()


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.service}-{case.field}")
async def test_refused_naming_the_field_never_the_value(
    case: Case, clients: dict[str, httpx.AsyncClient], tokens: dict[str, str]
) -> None:
    """422 naming the field in carebus's error shape; the value and the nin are never quoted."""
    response = await clients[case.service].request(
        case.method,
        case.path,
        json=case.body,
        params=case.params,
        headers={"Authorization": f"Bearer {tokens[case.who]}"},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert case.field in [detail["field"] for detail in error["details"]], error
    if case.problem is not None:
        named = [d["problem"] for d in error["details"] if d["field"] == case.field]
        assert case.problem in named, error
    for secret in (HIDDEN, SYNTHETIC, NIN):
        assert secret not in response.text
    for character in ("\x00", "\u202e", "\u2028", "\u2029", "\x1b", "\u200b", "\ufeff"):
        assert character not in response.json()["error"]["message"]
        assert all(character not in d["field"] for d in error["details"])


async def test_organisation_numbers_and_ordinary_ids_are_accepted(
    clients: dict[str, httpx.AsyncClient], tokens: dict[str, str]
) -> None:
    """Identifiers with 9-digit organisation numbers and short digit runs still pass."""
    event = _admission(
        event_id=f"dps-974705788-{uuid.uuid4().hex[:8]}-940493021-000123",
        source__system="DIPS 974705788",
    )
    response = await clients["gateway"].post(
        "/v1/events", json=event, headers={"Authorization": f"Bearer {tokens['dps']}"}
    )
    assert response.status_code == 202, response.text
