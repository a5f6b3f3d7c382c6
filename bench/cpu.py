"""carebus's own CPU per event, in-process, without Kafka's or faust's share.

What the router and the SLA engine do per record — decode, fold state, decide, encode, count —
called directly on the workload's records, and the Avro encoding of the router's output records
beside the way it was done before (a type check, then fastavro). This is the ceiling the
services' own code sets: a worker can never route faster than 1 / (this CPU time) per core,
whatever the framework around it costs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any, Final

import fastavro
import orjson

from bench import authentication
from bench.harness import Bench, Row, private_stack
from bench.router import registry_history
from bench.workload import Workload
from carebus.domain.obligations import SlaState
from carebus.domain.routing import PersonState
from carebus.runtime.telemetry import configure_logging
from carebus.wire.codec import Codec
from carebus.wire.policy_files import load_policy, load_rules
from carebus.wire.sealing import SEALED_FIELDS, KeyWrap, new_data_key, seal_record
from services.router.app import DELIVERY, DISCLOSURE, Router
from services.sla.app import SlaEngine

SECTION: Final = "cpu"
PERSONS: Final = 2_000
SLA_BATCH: Final = 500  # records per engine batch: each person's state is loaded and saved once


class _RefuseDeadLetters:
    """Every workload record is valid: a dead letter here means the benchmark is broken."""

    outstanding = 0

    def send(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the CPU benchmark dead-lettered a workload record")

    def send_undecodable(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the CPU benchmark could not decode a workload record")


class _Unused:
    """A dependency the measured step never touches; touching it breaks the benchmark."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the CPU benchmark reached the engine's {name}")


def _message(key: bytes, value: bytes) -> Any:
    return SimpleNamespace(key=key, value=value, topic="care.events.v1", partition=0, offset=0)


def _cpu_per_item(items: Iterable[Any], work: Callable[[Any], object]) -> tuple[float, int]:
    """Process CPU seconds per item of `work` over `items`, and how many there were."""
    count = 0
    started = time.process_time()
    for item in items:
        work(item)
        count += 1
    return (time.process_time() - started) / max(count, 1), count


def run(bench: Bench) -> None:
    events = max(2_000, bench.scale.router_events // 5)
    with private_stack() as stack:  # the SLA engine's producer needs a broker to talk to
        settings = stack.settings
        # Logging as the services configure it (INFO): unconfigured, structlog would print the
        # router's per-event debug line and the figure would measure the terminal.
        configure_logging("bench", settings)
        secret = settings.subject_key_secret.get_secret_value()
        workload = Workload(secret, persons=min(PERSONS, events // 5))
        records = list(workload.records(events))
        codec = Codec.default()

        refuse: Any = _RefuseDeadLetters()
        router = Router(load_policy(settings.routing_policy), codec, {}, None, refuse)  # type: ignore[arg-type]
        for key, value in registry_history(workload):
            router.route_one(_message(key, value))
        outputs: dict[str, list[Mapping[str, Any]]] = {DELIVERY: [], DISCLOSURE: []}
        encode = codec.encode

        def spying_encode(schema_name: str, record: Mapping[str, Any]) -> bytes:
            outputs[schema_name].append(record)
            return encode(schema_name, record)

        codec.encode = spying_encode  # type: ignore[method-assign]
        warm = len(records) // 10
        for key, value in records[:warm]:
            router.route_one(_message(key, value))
        codec.encode = encode  # type: ignore[method-assign]
        per_event, routed = _cpu_per_item(
            records[warm:], lambda kv: router.route_one(_message(*kv))
        )
        bench.add(
            Row(
                SECTION,
                "router: carebus code per event",
                per_event * 1e6,
                "µs CPU",
                note=(
                    f"{routed:,} events of {len(workload.nins):,} persons routed in-process "
                    "(decode, person state, decisions, Avro encoding of ~4 output records, "
                    f"metrics); a ceiling of {1 / per_event:,.0f} events/s per core before "
                    "faust, Kafka and the broker's own CPU"
                ),
            )
        )
        for name, label in ((DELIVERY, "Delivery"), (DISCLOSURE, "Disclosure")):
            _encoding_rows(bench, codec, name, label, outputs[name])

        # Only the engine's per-record step runs here; its store and publisher are never asked.
        unused: Any = _Unused()
        engine = SlaEngine(
            load_rules(settings.sla_rules),
            load_policy(settings.routing_policy),
            codec,
            store=unused,
            publisher=unused,
            dead_letters=refuse,
        )
        per_event, applied = _sla_cpu(engine, records)
        bench.add(
            Row(
                SECTION,
                "SLA engine: carebus code per event",
                per_event * 1e6,
                "µs CPU",
                note=(
                    f"{applied:,} events applied in-process in batches of {SLA_BATCH}, each "
                    "person's state read from and written back to JSON once per batch as the "
                    f"engine stores it; a ceiling of {1 / per_event:,.0f} events/s per core "
                    "before faust, PostgreSQL and the broker"
                ),
            )
        )
        _sealing_rows(bench, codec, records)
        # The gateway's per-request authentication: API token beside JWT access token (issue 14).
        authentication.run(bench, settings)


def _sealing_rows(bench: Bench, codec: Codec, records: list[tuple[bytes, bytes]]) -> None:
    """What erasure by crypto-shredding adds to the gateway per event: the person's data key
    unwrapped (one per person per request), the nin and free text sealed, the record encoded."""
    events = [codec.decode(value).record for _, value in records[:20_000]]
    wrap = KeyWrap("bench-person-key-secret")
    wrapped = {key: wrap.wrap(key, 1, new_data_key()) for key in {e["subject_key"] for e in events}}
    keys = {key: wrap.unwrap(key, 1, sealed) for key, sealed in wrapped.items()}
    sealed_fields = sum(
        1
        for event in events
        for obj, name in SEALED_FIELDS
        if isinstance((event.get(obj) or {}).get(name), str)
    )
    encode = codec.encode_event
    plain, _ = _cpu_per_item(events, encode)
    bench.add(
        Row(
            SECTION,
            "gateway: encode an event (as before sealing)",
            plain * 1e6,
            "µs CPU",
            key="cpu.gateway_encode",
            note=f"{len(events):,} workload events, Avro single-object encoding",
        )
    )
    sealed, _ = _cpu_per_item(
        events,
        lambda event: encode(
            seal_record(event, wrap.unwrap(event["subject_key"], 1, wrapped[event["subject_key"]]))
        ),
    )
    bench.add(
        Row(
            SECTION,
            "gateway: unwrap the data key, seal, encode an event",
            sealed * 1e6,
            "µs CPU",
            baseline="cpu.gateway_encode",
            note=(
                f"{sealed_fields / len(events):.2f} fields sealed per event (nin and free text, "
                "AES-256-GCM), the person's data key unwrapped for each event (no cache); "
                f"{len(keys):,} persons"
            ),
        )
    )


def _encoding_rows(
    bench: Bench, codec: Codec, name: str, label: str, samples: list[Mapping[str, Any]]
) -> None:
    entry = codec.catalogue.get(name)
    if not samples:
        raise RuntimeError(f"the router produced no {label} records")
    for record in samples[:100]:  # the compiled writer must be fastavro, byte for byte
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, entry.parsed, record)
        if codec.encode(name, record)[10:] != buffer.getvalue():
            raise RuntimeError(f"the compiled writer and fastavro disagree on a {label}")

    def checked_fastavro(record: Mapping[str, Any]) -> None:
        if entry.check(record) is None:
            fastavro.schemaless_writer(io.BytesIO(), entry.parsed, record)

    before, _ = _cpu_per_item(samples, checked_fastavro)
    key = f"cpu.fastavro_{label.lower()}"
    bench.add(
        Row(
            SECTION,
            f"encode a {label}: type check, then fastavro",
            before * 1e6,
            "µs CPU",
            key=key,
            note=f"{len(samples):,} records the router built; how it was encoded before",
        )
    )
    after, _ = _cpu_per_item(samples, lambda record: codec.encode(name, record))
    bench.add(
        Row(
            SECTION,
            f"encode a {label}: compiled writer",
            after * 1e6,
            "µs CPU",
            baseline=key,
            note="checks each value as it writes it; the same bytes as fastavro (checked)",
        )
    )


def _sla_cpu(engine: SlaEngine, records: list[tuple[bytes, bytes]]) -> tuple[float, int]:
    stored: dict[str, tuple[bytes, bytes]] = {}

    def batch(chunk: list[tuple[bytes, bytes]]) -> None:
        keys = {key.decode() for key, _ in chunk}
        persons = {
            key: (
                PersonState.from_json(orjson.loads(stored[key][1])),
                SlaState.from_json(orjson.loads(stored[key][0])),
            )
            for key in keys
            if key in stored
        }
        for raw_key, value in chunk:
            engine._apply(_message(raw_key, value), persons, [], alone=False)
        for subject_key, (routing, state) in persons.items():
            state.deadlines()  # the index rows the engine writes
            stored[subject_key] = (orjson.dumps(state.to_json()), orjson.dumps(routing.to_json()))

    chunks = [records[i : i + SLA_BATCH] for i in range(0, len(records), SLA_BATCH)]
    warm = max(1, len(chunks) // 10)
    for chunk in chunks[:warm]:
        batch(chunk)
    per_chunk, count = _cpu_per_item(chunks[warm:], batch)
    applied = sum(len(chunk) for chunk in chunks[warm:])
    return per_chunk * count / max(applied, 1), applied
