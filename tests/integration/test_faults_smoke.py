"""A short run of one fault scenario (`make faults` runs them all, for minutes each): the
webhook receiver down for a simulated day under a small load, on the session's stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from carebus_dev.testing import TestStack
from tests.faults.harness import FaultConfig, run_scenario
from tests.faults.test_webhook_receiver_down import receiver_down_for_a_day, scaled_webhooks

pytestmark = pytest.mark.integration

SMOKE = FaultConfig(seconds=12, rate=20, persons=3, outage_s=4, settle_s=60)


async def test_receiver_down_scenario_smoke(stack: TestStack, tmp_path: Path) -> None:
    """The fault harness end to end for a few seconds: nothing lost, doubled or reordered."""
    figures = await run_scenario(
        stack,
        "smoke_webhook_receiver_down",
        "webhook receiver down for a simulated day (4 s)",
        receiver_down_for_a_day(SMOKE.outage_s),
        config=SMOKE,
        webhook_env=scaled_webhooks(SMOKE.outage_s),
        results=tmp_path,
    )
    assert figures.problems() == [], figures
    assert figures.accepted >= 100
    assert figures.webhook_refusals > 0
