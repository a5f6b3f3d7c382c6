"""Fault (c): PostgreSQL stops for CAREBUS_FAULT_OUTAGE_SECONDS (60 s by default), then starts.

While it is down the gateway cannot record an event, so it must answer 503 with Retry-After at
once (never 500, never a hang); the stores and the webhook sink wait and catch up afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from carebus_dev.testing import TestStack
from tests.faults.harness import FaultConfig, Pipeline, blocking, run_scenario
from tests.faults.timeouts import scenario_timeout

pytestmark = pytest.mark.timeout(scenario_timeout())

CONFIG = FaultConfig.from_env()


async def postgres_stopped(pipeline: Pipeline) -> dict[str, Any]:
    postgres = pipeline.stack.local.postgres
    answers_before = pipeline.load.statuses[503]
    await blocking(postgres.stop)
    await asyncio.sleep(CONFIG.outage_s)
    await blocking(postgres.start)
    return {"answers_503_during_outage": pipeline.load.statuses[503] - answers_before}


async def test_postgres_down_gateway_answers_503_and_nothing_is_lost(
    fault_stack: TestStack,
) -> None:
    """With the database down the gateway answers 503 + Retry-After within seconds; afterwards
    every accepted event is stored, audited and delivered once, in order."""
    figures = await run_scenario(
        fault_stack,
        "c_postgres_stopped",
        f"PostgreSQL stopped (fast shutdown) for {CONFIG.outage_s:.0f} s, then started",
        postgres_stopped,
        config=CONFIG,
    )
    assert figures.problems() == [], figures
    assert figures.extra["answers_503_during_outage"] > 0, "the gateway answered nothing"
