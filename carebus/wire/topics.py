"""Names of the Kafka topics carebus uses; `infra/kafka/topics.yaml` is their catalogue."""

from __future__ import annotations

from typing import Final

from carebus.domain.agencies import AGENCIES

__all__ = [
    "AGENCIES",
    "ALERTS",
    "ALERT_DISCLOSURES",
    "AUDIT",
    "DEADLETTER",
    "DELIVERIES",
    "EVENTS",
    "OPERATOR_ALERTS",
    "PERSONS",
    "REFUSALS",
    "deliveries",
]

# One topic per writer and kind of record, so the broker's ACLs (infra/kafka/acls.yaml) say who
# may write what, and a sink knows from the topic which kind it may accept there.
EVENTS: Final = "care.events.v1"
# The router's routing decisions (Disclosure): the router is its only writer.
AUDIT: Final = "care.audit.v1"
# The disclosure each SLA alert makes to its recipient (Disclosure, event_type `alert`).
ALERT_DISCLOSURES: Final = "care.audit.alerts.v1"
# Statements the gateway or the registry refused for want of authority (AuthorityRefusal).
REFUSALS: Final = "care.audit.refusals.v1"
# The SLA engine's deadline and emergency-disclosure alerts (Alert).
ALERTS: Final = "care.alerts.v1"
# The registry's alerts to an organisation's privacy officer about an operator action (Alert).
OPERATOR_ALERTS: Final = "care.alerts.operator.v1"
DEADLETTER: Final = "care.deadletter.v1"
# Each person's latest state snapshot (PersonSnapshot), compacted so it never expires: what the
# router restores a lost state from. The registry is its only writer.
PERSONS: Final = "care.persons.v1"


def deliveries(agency: str) -> str:
    """The topic that carries routed deliveries addressed to organisations of `agency`."""
    if agency not in AGENCIES:
        raise ValueError(f"unknown agency {agency!r}")
    return f"care.deliveries.{agency}.v1"


DELIVERIES: Final = tuple(deliveries(agency) for agency in AGENCIES)
