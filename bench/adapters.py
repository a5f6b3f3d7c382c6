"""The adapters' own cost per message (issue 16): reading, validating and mapping a PLO, FHIR or
HL7 v2 message to carebus events and building its answer, beside the gateway's cost of checking
the same event sent as carebus JSON (measured here, in this run). The HTTP hop to the gateway
and the gateway's own work come on top of an adapter's figure; `gateway` gives those."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from bench.cpu import _cpu_per_item
from bench.harness import Bench, Row
from carebus.domain.events import parse_event
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire import fhir, hl7v2, plo
from carebus.wire.translation import Party, StaticDirectory

SECTION: Final = "adapters"
DATA: Final = PROJECT_ROOT / "tests" / "data"
SECRET: Final = b"bench-adapter-id-secret-bench-adapter-id-secret"
HOSPITAL: Final = Party("974749025", "dps", "59")
DIRECTORY: Final = StaticDirectory(
    (
        HOSPITAL,
        Party("939865942", "municipality", "99387", "0301"),
        Party("964338531", "municipality", None, "4601"),
        Party("974705788", "dps", "101"),
    )
)
NOW: Final = datetime(2026, 12, 7, tzinfo=UTC)


def run(bench: Bench) -> None:
    messages = max(500, bench.scale.router_events // 20)
    plo_body = (DATA / "plo" / "1_6" / "Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml").read_bytes()
    admission = _plo(plo_body)["events"][0]
    per_json, _ = _cpu_per_item([admission] * messages, lambda event: parse_event(dict(event)))
    bench.add(
        Row(
            SECTION,
            "carebus JSON: the gateway's check of one admission",
            per_json * 1e6,
            "µs CPU",
            key="adapters.json",
            note=f"parse_event of the admission the PLO message maps to, {messages:,} times",
        )
    )
    _row(bench, "PLO (MsgHead 1.2, innlagt pasient)", messages, plo_body, _plo)
    fhir_body = (DATA / "fhir" / "encounter-in-progress.json").read_bytes()
    _row(bench, "FHIR R4 Encounter", messages, fhir_body, _fhir)
    hl7_body = (DATA / "hl7v2" / "adt_a01_v25.hl7").read_bytes()
    _row(bench, "HL7 v2.5 ADT^A01", messages, hl7_body, _hl7)


def _row(
    bench: Bench, label: str, messages: int, body: bytes, work: Callable[[bytes], object]
) -> None:
    per_message, _ = _cpu_per_item([body] * messages, work)
    bench.add(
        Row(
            SECTION,
            f"{label}: read, validate, map, answer",
            per_message * 1e6,
            "µs CPU",
            baseline="adapters.json",
            note=(
                f"{len(body):,}-byte message, {messages:,} times; a ceiling of "
                f"{1 / per_message:,.0f} messages/s per core before the gateway"
            ),
        )
    )


def _plo(body: bytes) -> dict[str, Any]:
    message = plo.read(body)
    translation = plo.translate(message, plo.sender_of(message, DIRECTORY), DIRECTORY, SECRET)
    plo.apprec(message, plo.Receipt.ok(), now=NOW)
    return {"events": translation.events}


def _hl7(body: bytes) -> dict[str, Any]:
    text = hl7v2.decode(body)
    translation = hl7v2.translate(text, HOSPITAL, DIRECTORY, SECRET)
    hl7v2.encode(hl7v2.acknowledgement(text, None, now=NOW))
    return {"events": translation.events}


def _fhir(body: bytes) -> dict[str, Any]:
    translation = fhir.translate_encounter(json.loads(body), HOSPITAL, DIRECTORY, SECRET)
    json.dumps(fhir.operation_outcome(None, information="accepted"))
    return {"events": translation.events}
