"""Whatever the gateway answers 202 for is in the event store: every event type, single and in a
batch, with optional fields present, absent and null, and with non-ASCII text."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token
from carebus.domain.events import EVENT_TYPES, PAYLOAD_FIELDS
from carebus_dev.stack.devdata import DEV_ORGANISATIONS
from carebus_dev.testing import TYPICAL_SOURCE, EventFactory, TestStack, unsealed

pytestmark = pytest.mark.integration

STORE_TIMEOUT_S = 90.0
# Norwegian letters, a decomposed å (a + combining ring), an emoji with a skin-tone modifier and
# a zero-width joiner sequence's parts that are not format characters, a non-breaking space.
NON_ASCII = "Bjørnstjerne Æsøy på Ålesund – a\u030a 🙂🏽 ünïcødé\u00a0ok"
# Identifiers (no nin, no refused characters) may be non-ASCII as well.
NON_ASCII_ID = "bolig-Æøå-🙂-0042"


@pytest.fixture(scope="module")
def services(stack: TestStack) -> Iterator[None]:
    with stack.running("gateway", "event_store"):
        yield


@pytest.fixture(scope="module")
async def conn(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(stack.settings.postgres_dsn)
    yield connection
    await connection.close()


@pytest.fixture(scope="module")
async def tokens(conn: asyncpg.Connection) -> dict[str, str]:
    return {
        agency: await create_token(conn, agency=agency, org_id=org, role="system")
        for agency, org in DEV_ORGANISATIONS.items()
    }


@pytest.fixture(scope="module")
async def gateway(stack: TestStack, services: None) -> AsyncIterator[httpx.AsyncClient]:
    settings = stack.settings
    async with httpx.AsyncClient(
        base_url=settings.service_url(settings.gateway_port), timeout=30
    ) as client:
        yield client


def _optional(event_type: str) -> list[str]:
    return [name for name, spec in PAYLOAD_FIELDS[event_type].items() if not spec.required]


# Identifiers with a narrower shape than any identifier (carebus.domain.events): a survey year
# is four digits.
_SHAPED: Final = frozenset({("brukerplan_assessment", "assessment_year")})


def _texts(event_type: str) -> dict[str, Any]:
    """Every text and identifier field of the type, non-ASCII."""
    return {
        name: NON_ASCII if spec.kind == "text" else NON_ASCII_ID
        for name, spec in PAYLOAD_FIELDS[event_type].items()
        if spec.kind in ("text", "identifier") and (event_type, name) not in _SHAPED
    }


def shapes(factory: EventFactory, nin: str) -> list[dict[str, Any]]:
    """Every accepted shape of every event type about `nin`; the admission comes first, so the
    organisations that make plans about the person have their relation to them."""
    found: list[dict[str, Any]] = []
    # A retraction needs an event of its sender to retract: tests/integration/test_retraction.py.
    for event_type in (t for t in EVENT_TYPES if t != "retraction"):
        absent = dict.fromkeys(_optional(event_type))
        found.append(factory.event(event_type, nin=nin))  # every optional field present
        found.append(factory.event(event_type, nin=nin, system=None, **absent))  # all absent
        as_null = factory.event(event_type, nin=nin)
        as_null["payload"].update(dict.fromkeys(_optional(event_type)))
        as_null["source"]["system"] = None
        found.append(as_null)
        found.append(factory.event(event_type, nin=nin, system="DIPS Ærø 🙂", **_texts(event_type)))
    found.append(
        factory.event(
            "admission",
            nin=nin,
            emergency={
                "justification": "Fare for liv – «akutt» 🚑 e\u0301",
                "accountable": "Overlege Åse Øvrebø",
                "recipients": [{"agency": "police", "org_id": DEV_ORGANISATIONS["police"]}],
            },
        )
    )
    return found


async def _missing(conn: asyncpg.Connection, accepted: dict[tuple[str, str], Any]) -> set[Any]:
    rows = await conn.fetch(
        "SELECT source_org, event_id, payload, source_system, subject_key FROM events"
        " WHERE event_id = ANY($1::text[])",
        [event_id for _, event_id in accepted],
    )
    stored = {(row["source_org"], row["event_id"]): row for row in rows}
    return {key for key in accepted if key not in stored}


async def _all_stored(conn: asyncpg.Connection, accepted: dict[tuple[str, str], Any]) -> None:
    deadline = time.monotonic() + STORE_TIMEOUT_S
    missing = await _missing(conn, accepted)
    while missing and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        missing = await _missing(conn, accepted)
    assert not missing, f"answered 202 but not in the event store: {sorted(missing)}"


async def test_every_accepted_event_is_in_the_event_store(
    stack: TestStack,
    gateway: httpx.AsyncClient,
    tokens: dict[str, str],
    conn: asyncpg.Connection,
) -> None:
    """Each event answered 202, one at a time or in a batch, is stored, its text as sent (free
    text sealed under the person's data key, opening to the text as sent)."""
    factory = EventFactory()
    single = shapes(factory, factory.nin())
    accepted: dict[tuple[str, str], dict[str, Any]] = {}
    for event in single:
        agency = event["source"]["agency"]
        response = await gateway.post(
            "/v1/events", json=event, headers={"Authorization": f"Bearer {tokens[agency]}"}
        )
        assert response.status_code == 202, (event["event_type"], response.text)
        accepted[(event["source"]["org_id"], event["event_id"])] = event

    batched = shapes(factory, factory.nin())
    for agency in sorted({TYPICAL_SOURCE[t] for t in EVENT_TYPES}):
        # Each batch comes from one organisation; the admission (DPS) is sent first.
        batch = [copy.deepcopy(e) for e in batched if e["source"]["agency"] == agency]
        response = await gateway.post(
            "/v1/events:batch",
            json={"events": batch},
            headers={"Authorization": f"Bearer {tokens[agency]}"},
        )
        assert response.status_code == 202, (agency, response.text)
        assert len(response.json()["accepted"]) == len(batch)
        accepted |= {(e["source"]["org_id"], e["event_id"]): e for e in batch}

    await _all_stored(conn, accepted)
    rows = await conn.fetch(
        "SELECT source_org, event_id, payload, source_system, subject_key FROM events"
        " WHERE event_id = ANY($1::text[])",
        [event_id for _, event_id in accepted],
    )
    for row in rows:
        sent = accepted[(row["source_org"], row["event_id"])]
        assert row["source_system"] == sent["source"].get("system")
        stored = _json(row["payload"])
        for name, value in sent["payload"].items():
            if isinstance(value, str) and value in (NON_ASCII, NON_ASCII_ID):
                opened = await unsealed(
                    conn, stack.settings, row["subject_key"], f"payload.{name}", stored[name]
                )
                assert opened == value  # the text as sent, not normalised or escaped


def _json(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else json.loads(value)
