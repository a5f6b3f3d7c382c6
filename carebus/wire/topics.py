"""Names of the Kafka topics carebus uses; `infra/kafka/topics.yaml` is their catalogue."""

from __future__ import annotations

from typing import Final

from carebus.domain.agencies import AGENCIES

__all__ = ["AGENCIES", "ALERTS", "AUDIT", "DEADLETTER", "DELIVERIES", "EVENTS", "deliveries"]


EVENTS: Final = "care.events.v1"
AUDIT: Final = "care.audit.v1"
ALERTS: Final = "care.alerts.v1"
DEADLETTER: Final = "care.deadletter.v1"


def deliveries(agency: str) -> str:
    """The topic that carries routed deliveries addressed to organisations of `agency`."""
    if agency not in AGENCIES:
        raise ValueError(f"unknown agency {agency!r}")
    return f"care.deliveries.{agency}.v1"


DELIVERIES: Final = tuple(deliveries(agency) for agency in AGENCIES)
