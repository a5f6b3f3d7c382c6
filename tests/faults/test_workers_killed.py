"""Fault (b): two routers and two SLA engines, SIGKILLed one at a time every
CAREBUS_FAULT_KILL_EVERY_SECONDS and started again at once, for CAREBUS_FAULT_OUTAGE_SECONDS:
each kill and each restart rebalances its consumer group under load."""

from __future__ import annotations

import asyncio
import functools
import os
import random
from typing import Any

import pytest

from carebus_dev.testing import TestStack
from tests.faults.harness import FaultConfig, Pipeline, blocking, run_scenario
from tests.faults.timeouts import scenario_timeout

pytestmark = pytest.mark.timeout(scenario_timeout())

CONFIG = FaultConfig.from_env()
KILL_EVERY_S = float(os.environ.get("CAREBUS_FAULT_KILL_EVERY_SECONDS", "10"))
WORKERS = ("router", "router_2", "sla", "sla_2")


async def kill_workers_repeatedly(pipeline: Pipeline) -> dict[str, Any]:
    rng = random.Random()
    kills: list[str] = []
    loop = asyncio.get_running_loop()
    until = loop.time() + CONFIG.outage_s
    while loop.time() < until:
        victim = pipeline.services[rng.choice(WORKERS)]
        await blocking(victim.kill)
        kills.append(victim.name)
        # Started again at once, not waited for: the next kill may meet it still rejoining.
        await blocking(functools.partial(victim.start, wait=False))
        await asyncio.sleep(KILL_EVERY_S)
    return {"kills": len(kills), "killed": {name: kills.count(name) for name in WORKERS}}


async def sla_tracked(pipeline: Pipeline, accepted: set[str]) -> dict[str, Any]:
    """How many of `accepted` no SLA engine has applied (no person state holds the event)."""
    states = await pipeline.conn.fetch("SELECT state::text AS state FROM sla_persons")
    text = "\n".join(row["state"] for row in states)
    return {"sla_untracked": sum(1 for event_id in accepted if event_id not in text)}


async def test_routers_and_sla_engines_killed_repeatedly_lose_nothing(
    fault_stack: TestStack,
) -> None:
    """Repeated SIGKILLs of two routers and two SLA engines: every accepted event is routed,
    audited and delivered once, in order, and every SLA obligation is tracked."""
    figures = await run_scenario(
        fault_stack,
        "b_workers_killed",
        f"SIGKILL of one of 2 routers + 2 SLA engines every {KILL_EVERY_S:.0f} s "
        f"for {CONFIG.outage_s:.0f} s, each started again at once",
        kill_workers_repeatedly,
        config=CONFIG,
        workers=WORKERS,
        after=sla_tracked,
    )
    assert figures.problems() == [], figures
    assert figures.extra["sla_untracked"] == 0, figures
    assert figures.extra["kills"] >= 2
