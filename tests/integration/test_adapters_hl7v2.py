"""HL7 v2 ADT through the adapters on the real stack, over HTTP and over MLLP: messages in, ACKs
out, and the events they map to in the event store (docs/adapters.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token
from carebus.adapters.directory import add_organisation
from carebus_dev.testing import TestStack, at_least

pytestmark = pytest.mark.integration

DATA = Path(__file__).parents[1] / "data" / "hl7v2"
DPS = "974705788"
MUNICIPALITY = ("964338531", "4601")
HL7 = "application/hl7-v2"
START, END = b"\x0b", b"\x1c\x0d"


@pytest.fixture(scope="module")
async def token(stack: TestStack, adapter_services: None) -> str:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        await add_organisation(
            conn,
            agency="municipality",
            org_id=MUNICIPALITY[0],
            name="Kommune 4601",
            municipality_number=MUNICIPALITY[1],
        )
        await add_organisation(conn, agency="dps", org_id=DPS, name="DPS")
        return await create_token(conn, agency="dps", org_id=DPS, role="system")
    finally:
        await conn.close()


def message(name: str, *, separator: bytes = b"\r", control_id: str | None = None) -> bytes:
    body = (DATA / name).read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if control_id is not None:
        fields = body.split(b"\r", 1)[0].split(b"|")
        body = body.replace(b"|" + fields[9] + b"|", b"|" + control_id.encode() + b"|", 1)
    return body.replace(b"\r", separator)


def with_security(body: bytes, token: str) -> bytes:
    """The message with MSH-8 (Security) holding `token`."""
    header, rest = body.split(b"\r", 1)
    fields = header.split(b"|")
    fields[7] = token.encode()
    return b"|".join(fields) + b"\r" + rest


def msa(ack: bytes) -> list[str]:
    segment = next(s for s in ack.decode("utf-8").split("\r") if s.startswith("MSA|"))
    return segment.split("|")


async def post(client: httpx.AsyncClient, token: str | None, body: bytes) -> httpx.Response:
    headers = {"Content-Type": HL7}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post("/v1/adapters/hl7v2", content=body, headers=headers)


async def stored(db: asyncpg.Connection, event_type: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT event_id, payload FROM events WHERE source_org = $1 AND event_type = $2"
        " AND event_id LIKE 'hl7v2-%'",
        DPS,
        event_type,
    )
    return [{"event_id": row["event_id"], "payload": json.loads(row["payload"])} for row in rows]


async def test_an_admission_over_http_is_acknowledged_and_stored_once(
    adapters: httpx.AsyncClient, token: str, db: asyncpg.Connection
) -> None:
    """A01 → AA naming the message's control id; the admission (a suicide-free overdose: T40.1
    with F10.3) in the patient's municipality (PID-11.9); the same message again is AA and the
    same event."""
    response = await post(adapters, token, message("adt_a01_v25.hl7"))
    assert response.status_code == 200, response.text
    assert msa(response.content)[1:3] == ["AA", "HB20261201-000001"]
    assert (await post(adapters, token, message("adt_a01_v25.hl7"))).status_code == 200
    [admission] = await at_least(lambda: stored(db, "admission"), 1)
    assert admission["payload"]["reason"] == "overdose"
    assert admission["payload"]["home_municipality_org"] == MUNICIPALITY[0]
    assert len(await stored(db, "admission")) == 1


@pytest.mark.parametrize("separator", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
async def test_segments_may_end_as_real_senders_end_them(
    adapters: httpx.AsyncClient, token: str, separator: bytes
) -> None:
    """\\n and \\r\\n between segments are read like \\r."""
    response = await post(adapters, token, message("adt_a01_v25.hl7", separator=separator))
    assert response.status_code == 200, response.text
    assert msa(response.content)[1] == "AA"


async def test_a_discharge_names_the_admission_and_a_cancel_admit_retracts_it(
    adapters: httpx.AsyncClient, token: str, db: asyncpg.Connection
) -> None:
    """A03 of the same visit (PV1-19) names the A01's admission; A11 retracts it."""
    await post(adapters, token, message("adt_a01_v25.hl7"))
    assert (await post(adapters, token, message("adt_a03_v25.hl7"))).status_code == 200
    [discharge] = await at_least(lambda: stored(db, "discharge"), 1)
    [admission] = await at_least(lambda: stored(db, "admission"), 1)
    assert discharge["payload"]["admission_event_id"] == admission["event_id"]
    cancelled = await post(adapters, token, message("adt_a11_v25.hl7"))
    assert cancelled.status_code == 200, cancelled.text
    [retraction] = await at_least(lambda: stored(db, "retraction"), 1)
    assert retraction["payload"]["retracted_event_id"] == admission["event_id"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"this is not HL7", 400, "AR"),
        (message("adt_a02_v25.hl7"), 400, "AR"),
        (message("adt_a01_v25.hl7").replace(b"15076500565", b"15076500566"), 422, "AE"),
    ],
    ids=["garbage", "unsupported-trigger", "wrong-check-digit"],
)
async def test_bad_messages_get_an_ack_naming_the_problem(
    adapters: httpx.AsyncClient, token: str, body: bytes, status: int, code: str
) -> None:
    """AR for what carebus never takes, AE for wrong content, with an ERR segment; never the
    nin."""
    response = await post(adapters, token, body)
    assert response.status_code == status, response.text
    assert msa(response.content)[1] == code
    assert b"\rERR|" in response.content
    assert b"1507650056" not in response.content


async def test_an_update_and_an_outpatient_registration_are_acknowledged_and_publish_nothing(
    adapters: httpx.AsyncClient, token: str, db: asyncpg.Connection
) -> None:
    """A08 and an outpatient's A04 are AA, and no event of theirs reaches the store."""
    before = len(await stored(db, "admission"))
    for name in ("adt_a08_v25.hl7", "adt_a04_v231.hl7"):
        response = await post(adapters, token, message(name))
        assert response.status_code == 200, response.text
        assert msa(response.content)[1] == "AA"
    assert len(await stored(db, "admission")) == before


async def test_without_a_token_http_is_401(adapters: httpx.AsyncClient) -> None:
    """Like the gateway: every message needs the agency's bearer token."""
    assert (await post(adapters, None, message("adt_a01_v25.hl7"))).status_code == 401


async def mllp_exchange(stack: TestStack, *bodies: bytes) -> list[bytes]:
    """Send each body framed on one MLLP connection; the framed answers, unframed."""
    reader, writer = await asyncio.open_connection(
        stack.settings.http_host, stack.settings.mllp_port
    )
    answers = []
    try:
        for body in bodies:
            writer.write(START + body + END)
            await writer.drain()
            frame = await asyncio.wait_for(reader.readuntil(END), 30)
            assert frame.startswith(START)
            answers.append(frame[1:-2])
    finally:
        writer.close()
    return answers


async def test_mllp_takes_messages_with_the_token_in_msh_8_and_refuses_them_without(
    stack: TestStack, token: str, db: asyncpg.Connection
) -> None:
    """Over MLLP each message is answered on the same connection, in order: AA for one whose
    MSH-8 holds the organisation's token, AE naming MSH-8 for one without or with a wrong one."""
    signed = with_security(message("adt_a01_v25.hl7"), token)
    unsigned = message("adt_a01_v25.hl7")
    forged = with_security(message("adt_a01_v25.hl7"), "not-a-token")
    answers = await mllp_exchange(stack, signed, unsigned, forged, signed)
    assert [msa(a)[1] for a in answers] == ["AA", "AE", "AE", "AA"]
    assert b"MSH^1^8" in answers[1]
    assert token.encode() not in b"".join(answers)
    assert await at_least(lambda: stored(db, "admission"), 1)
