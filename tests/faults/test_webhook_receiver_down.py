"""Fault (d): the coordinator's webhook receiver is down for a simulated 24 h, then back.

Webhook retries are scheduled by the database clock (`webhook_queue.next_attempt_at =
now() + backoff`), which a test cannot move, so 24 h are simulated by scaling the webhook
sink's retry settings: the outage lasts CAREBUS_FAULT_OUTAGE_SECONDS of real time and the
back-off (initial 1 s, at most 600 s) and the retry horizon (48 h) are divided by
86,400 / that, so the same ~150 attempts per delivery happen as in a real day's outage.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from carebus_dev.testing import TestStack
from tests.faults.harness import Fault, FaultConfig, Pipeline, run_scenario
from tests.faults.timeouts import scenario_timeout

pytestmark = pytest.mark.timeout(scenario_timeout())

SIMULATED_S = 24 * 3600.0
CONFIG = FaultConfig.from_env()


def scaled_webhooks(outage_s: float) -> dict[str, str]:
    """The production defaults (carebus.runtime.config.Settings) with time divided by the
    scale that makes `outage_s` a day."""
    scale = SIMULATED_S / outage_s
    return {
        "CAREBUS_WEBHOOK_BACKOFF_INITIAL_S": f"{1.0 / scale:.6f}",
        "CAREBUS_WEBHOOK_BACKOFF_MAX_S": f"{600.0 / scale:.6f}",
        "CAREBUS_WEBHOOK_RETRY_FOR_S": f"{48 * 3600.0 / scale:.3f}",
        "CAREBUS_WEBHOOK_TIMEOUT_S": "5",
    }


def receiver_down_for_a_day(outage_s: float) -> Fault:
    """The receiver answers 503 for `outage_s` (a simulated day), then 200 again."""

    async def fault(pipeline: Pipeline) -> dict[str, Any]:
        pipeline.receiver.down = True
        await asyncio.sleep(outage_s)
        pipeline.receiver.down = False
        return {
            "simulated_outage_h": SIMULATED_S / 3600,
            "time_scale": round(SIMULATED_S / outage_s),
        }

    return fault


async def test_receiver_down_a_day_then_every_delivery_arrives_once_in_order(
    fault_stack: TestStack,
) -> None:
    """After a simulated day of 503s, every accepted event reaches the receiver once, in order."""
    figures = await run_scenario(
        fault_stack,
        "d_webhook_receiver_down",
        f"webhook receiver answers 503 for a simulated 24 h ({CONFIG.outage_s:.0f} s), then back",
        receiver_down_for_a_day(CONFIG.outage_s),
        config=CONFIG,
        webhook_env=scaled_webhooks(CONFIG.outage_s),
    )
    assert figures.problems() == [], figures
    assert figures.webhook_refusals > 0, "the receiver was never asked while it was down"
