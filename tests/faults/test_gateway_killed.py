"""Fault (e): the gateway SIGKILLed under load, every CAREBUS_FAULT_KILL_EVERY_SECONDS for
CAREBUS_FAULT_OUTAGE_SECONDS, and started again; the client retries with the same event_id.

A kill lands while requests are in flight, most of them waiting for the broker's
acknowledgement: an event the broker has acknowledged whose 202 never left the gateway is
posted again by the client, and must still be stored, audited and delivered exactly once.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from carebus.adapters.kafka import consumer_config
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.testing import TestStack
from tests.faults.harness import FaultConfig, Pipeline, blocking, run_scenario
from tests.faults.timeouts import scenario_timeout

pytestmark = pytest.mark.timeout(scenario_timeout())

CONFIG = FaultConfig.from_env()
KILL_EVERY_S = float(os.environ.get("CAREBUS_FAULT_KILL_EVERY_SECONDS", "10"))


async def kill_gateway_repeatedly(pipeline: Pipeline) -> dict[str, Any]:
    gateway = pipeline.services["gateway"]
    loop = asyncio.get_running_loop()
    until = loop.time() + CONFIG.outage_s
    kills = 0
    in_flight_at_kill = 0
    while loop.time() < until:
        # Kill while requests are in flight: most of a request's time is the wait for the
        # broker's acknowledgement (acks=all), so some kills land after it and before the 202.
        for _ in range(1000):
            if pipeline.load.in_flight:
                break
            await asyncio.sleep(0.001)
        in_flight_at_kill += pipeline.load.in_flight
        await blocking(gateway.kill)
        kills += 1
        await blocking(gateway.start)
        await asyncio.sleep(KILL_EVERY_S)
    return {"kills": kills, "requests_in_flight_at_kills": in_flight_at_kill}


def published(stack: TestStack, run: str) -> Counter[str]:
    """How often each of the run's events is on the events topic, read to its end."""
    reader = Consumer(consumer_config(stack.settings, f"fault-events-{uuid.uuid4().hex}"))
    try:
        partitions = reader.list_topics(topics.EVENTS, timeout=10).topics[topics.EVENTS]
        ends = {
            p: reader.get_watermark_offsets(TopicPartition(topics.EVENTS, p), timeout=10)[1]
            for p in partitions.partitions
        }
        reader.assign([TopicPartition(topics.EVENTS, p, OFFSET_BEGINNING) for p in ends])
        codec = Codec.default()
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for message in reader.consume(500, 0.5):
                if message.error() is None:
                    # The topic also carries records without an event_id (the registry's
                    # consent and care-team changes): only events count.
                    event_id = codec.decode(message.value() or b"").record.get("event_id")
                    if isinstance(event_id, str) and event_id.startswith(f"dps-{run}-l-"):
                        counts[event_id] += 1
            positions = reader.position([TopicPartition(topics.EVENTS, p) for p in ends])
            if all(tp.offset >= ends[tp.partition] for tp in positions):
                break
        return counts
    finally:
        reader.close()


async def published_twice(pipeline: Pipeline, accepted: set[str]) -> dict[str, Any]:
    """The events the broker holds more than once: posted again after a kill that came after
    the broker's acknowledgement (the gateway's own record was rolled back with it)."""
    counts = await blocking(lambda: published(pipeline.stack, pipeline.load.run))
    return {
        "published_twice": sum(1 for e in accepted if counts[e] > 1),
        "accepted_not_on_topic": sum(1 for e in accepted if counts[e] == 0),
    }


async def test_gateway_killed_before_answering_client_retries_nothing_doubled(
    fault_stack: TestStack,
) -> None:
    """Requests cut by a gateway kill are retried with the same id: nothing lost or doubled."""
    figures = await run_scenario(
        fault_stack,
        "e_gateway_killed",
        f"gateway SIGKILLed every {KILL_EVERY_S:.0f} s for {CONFIG.outage_s:.0f} s under load "
        "and started again; the client retries with the same event_id",
        kill_gateway_repeatedly,
        config=CONFIG,
        transport_errors_allowed=True,
        after=published_twice,
    )
    assert figures.problems() == [], figures
    assert figures.extra["accepted_not_on_topic"] == 0, figures
    assert figures.transport_errors > 0, "no kill ever cut a request"
