"""PLO through the adapters on the real stack: the standard's own example messages in, an AppRec
out, and what they say in the event store as carebus events (docs/adapters.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from lxml import etree

from carebus.adapters.auth import create_token
from carebus.adapters.directory import add_organisation
from carebus.wire import plo
from carebus_dev.testing import TestStack, at_least

pytestmark = pytest.mark.integration

DATA = Path(__file__).parents[1] / "data" / "plo"
LOGISTICS = DATA / "1_6"
# The examples' parties, registered here under the HER-ids the messages give.
HOSPITAL = ("dps", "974749025", "59")
MUNICIPALITY = ("municipality", "939865942", "99387")
APPREC_NS = {"a": plo.APPREC}


@pytest.fixture(scope="module")
async def tokens(stack: TestStack, adapter_services: None) -> dict[str, str]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        for agency, org_id, her_id in (HOSPITAL, MUNICIPALITY):
            await add_organisation(
                conn, agency=agency, org_id=org_id, name=f"PLO {agency}", her_id=her_id
            )
        return {
            "hospital": await create_token(
                conn, agency=HOSPITAL[0], org_id=HOSPITAL[1], role="system"
            ),
            "municipality": await create_token(
                conn, agency=MUNICIPALITY[0], org_id=MUNICIPALITY[1], role="system"
            ),
        }
    finally:
        await conn.close()


async def send(
    client: httpx.AsyncClient, token: str | None, body: bytes
) -> tuple[httpx.Response, Any]:
    headers = {"Content-Type": "application/xml"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = await client.post("/v1/adapters/plo", content=body, headers=headers)
    if not response.headers.get("content-type", "").startswith("application/xml"):
        return response, None
    receipt = etree.fromstring(response.content)
    assert plo.apprec_schema().validate(receipt), plo.apprec_schema().error_log
    return response, receipt


def status_of(receipt: Any) -> str:
    return str(receipt.xpath("string(a:Status/@V)", namespaces=APPREC_NS))


def errors_of(receipt: Any) -> list[tuple[str, str]]:
    return [
        (str(error.get("V")), str(error.get("OT")))
        for error in receipt.xpath("a:Error", namespaces=APPREC_NS)
    ]


def example(name: str) -> bytes:
    return (LOGISTICS / name).read_bytes()


async def stored(db: asyncpg.Connection, event_type: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT event_id, event_type, payload FROM events WHERE source_org = $1"
        " AND event_type = $2 AND event_id LIKE 'plo-%'",
        HOSPITAL[1],
        event_type,
    )
    return [dict(row) for row in rows]


async def test_an_admission_is_answered_ok_and_stored_once_however_often_it_is_sent(
    adapters: httpx.AsyncClient, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    """Innlagt pasient → AppRec OK and one `admission` in the event store; the same message
    again is answered OK with the same AppRec id and stored no second time."""
    body = example("Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml")
    first, receipt = await send(adapters, tokens["hospital"], body)
    assert first.status_code == 200, first.text
    assert status_of(receipt) == "1"
    original = receipt.xpath("string(a:OriginalMsgId/a:Id)", namespaces=APPREC_NS)
    assert original == "b088a160-0698-11e8-b566-0800200c9a66"
    again, repeated = await send(adapters, tokens["hospital"], body)
    assert again.status_code == 200
    assert repeated.xpath("string(a:Id)", namespaces=APPREC_NS) == receipt.xpath(
        "string(a:Id)", namespaces=APPREC_NS
    )
    [admission] = await at_least(lambda: stored(db, "admission"), 1)
    assert admission["event_id"].startswith("plo-")
    assert "15076500565" not in admission["event_id"]
    assert len(await stored(db, "admission")) == 1


async def test_a_discharge_ready_notice_names_the_admission_of_the_same_stay(
    adapters: httpx.AsyncClient, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    """Utskrivningsklar refers to the admission the innlagt message made (same admission time)."""
    await send(
        adapters, tokens["hospital"], example("Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml")
    )
    response, receipt = await send(
        adapters,
        tokens["hospital"],
        example("Pasientlogistikk_Utskrivningsklar_pasient_v1-6_Ny.xml"),
    )
    assert response.status_code == 200, response.text
    assert status_of(receipt) == "1"
    [ready] = await at_least(lambda: stored(db, "discharge_ready"), 1)
    admissions = await at_least(lambda: stored(db, "admission"), 1)
    payload = ready["payload"]
    assert isinstance(payload, str | dict)
    assert admissions[0]["event_id"] in str(payload)


async def test_a_cancellation_retracts_the_admission_it_cancels(
    adapters: httpx.AsyncClient, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    """Kansellering of innlagt pasient → a `retraction` of that admission."""
    await send(
        adapters, tokens["hospital"], example("Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml")
    )
    response, receipt = await send(
        adapters,
        tokens["hospital"],
        example("Pasientlogistikk_Innlagt_pasient_v1-6_Kansellering.xml"),
    )
    assert response.status_code == 200, response.text
    assert status_of(receipt) == "1"
    [retraction] = await at_least(lambda: stored(db, "retraction"), 1)
    [admission] = await at_least(lambda: stored(db, "admission"), 1)
    assert admission["event_id"] in str(retraction["payload"])


async def test_a_report_and_its_change_are_health_information_the_change_replacing_it(
    adapters: httpx.AsyncClient, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    """Utskrivningsrapport → `health_info_sent`; its Endring retracts it and sends the new one."""
    folder = LOGISTICS
    new, receipt = await send(
        adapters, tokens["hospital"], (folder / "Utskrivningsrapport_v1-6_Ny.xml").read_bytes()
    )
    assert new.status_code == 200, new.text
    changed, receipt = await send(
        adapters, tokens["hospital"], (folder / "Utskrivningsrapport_v1-6_Endring.xml").read_bytes()
    )
    assert changed.status_code == 200, changed.text
    assert status_of(receipt) == "1"
    assert len(await at_least(lambda: stored(db, "health_info_sent"), 2)) == 2


async def test_a_message_from_another_organisation_than_the_tokens_is_refused(
    adapters: httpx.AsyncClient, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    """The municipality cannot send the hospital's message: 403 and an AppRec 'Avvist'."""
    response, receipt = await send(
        adapters, tokens["municipality"], example("Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml")
    )
    assert response.status_code == 403
    assert status_of(receipt) == "2"
    assert "MsgHead/MsgInfo/Sender/Organisation" in errors_of(receipt)[0][1]


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("Pasientlogistikk_Orientering_om_dodsfall_v1-6_Ny.xml", 422, "T10"),
        ("Innleggelsesrapport_v1-6_Ny.xml", 422, "T10"),
    ],
)
async def test_a_message_carebus_does_not_carry_is_refused_saying_so(
    adapters: httpx.AsyncClient, tokens: dict[str, str], name: str, status: int, code: str
) -> None:
    """A PLO message without a carebus event is answered 'Avvist', T10, with the reason."""
    response, receipt = await send(adapters, tokens["hospital"], example(name))
    assert response.status_code == status
    assert status_of(receipt) == "2"
    assert errors_of(receipt)[0][0] == code
    assert "carries no event" in errors_of(receipt)[0][1]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not xml at all", 400, "T01"),
        (
            b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;'
            b'&a;&a;">]><MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24">&b;'
            b"</MsgHead>",
            400,
            "T01",
        ),
        (b'<?xml version="1.0"?><Other xmlns="urn:x"/>', 422, "T10"),
        (
            example("Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml").replace(
                b"<MsgId>", b"<Unexpected/><MsgId>"
            ),
            422,
            "T02",
        ),
        (
            example("Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml").replace(
                b"<Id>15076500565</Id>", b"<Id>15076500566</Id>"
            ),
            422,
            "E31",
        ),
        (
            example("Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml").replace(
                b"<Id>99387</Id>", b"<Id>12345678</Id>"
            ),
            422,
            "E21",
        ),
    ],
    ids=["not-xml", "entities", "not-msghead", "invalid", "wrong-nin", "unknown-receiver"],
)
async def test_bad_input_is_answered_with_an_apprec_naming_the_problem(
    adapters: httpx.AsyncClient, tokens: dict[str, str], body: bytes, status: int, code: str
) -> None:
    """Unreadable, hostile, invalid or wrong content: a 4xx and an AppRec 'Avvist' with the
    standard's code; the nin is never repeated in it."""
    response, receipt = await send(adapters, tokens["hospital"], body)
    assert response.status_code == status, response.text
    assert status_of(receipt) == "2"
    assert errors_of(receipt)[0][0] == code
    assert b"1507650056" not in response.content


async def test_without_a_token_there_is_no_answer_but_401(adapters: httpx.AsyncClient) -> None:
    """Like the gateway: every message needs the agency's bearer token."""
    response, _ = await send(
        adapters, None, example("Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml")
    )
    assert response.status_code == 401
