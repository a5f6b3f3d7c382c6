"""The per-scenario pytest timeout: the load, the catch-up and the stack's start, with room."""

from __future__ import annotations

from tests.faults.harness import FaultConfig


def scenario_timeout() -> int:
    config = FaultConfig.from_env()
    return int(config.seconds * 2 + config.settle_s * 2 + config.outage_s + 600)
