"""The names of the records that flow between carebus's services, declared once.

A record on a carebus topic is named by its Avro schema (`schemas/avro/`), and the name says what
it is: the router folds consent, care-team and register changes into a person's state and routes
events; the sinks store deliveries, disclosures, refusals and alerts by name.
"""

from __future__ import annotations

from typing import Final

NAMESPACE: Final = "no.carebus.v1"

CONSENT_CHANGE: Final = f"{NAMESPACE}.ConsentChange"
CARE_TEAM_CHANGE: Final = f"{NAMESPACE}.CareTeamChange"
REGISTER_CHANGE: Final = f"{NAMESPACE}.RegisterChange"
DELIVERY: Final = f"{NAMESPACE}.Delivery"
DISCLOSURE: Final = f"{NAMESPACE}.Disclosure"
AUTHORITY_REFUSAL: Final = f"{NAMESPACE}.AuthorityRefusal"
ALERT: Final = f"{NAMESPACE}.Alert"
DEAD_LETTER: Final = f"{NAMESPACE}.DeadLetter"


def event_schema_name(event_type: str) -> str:
    """The full name of the record schema for `event_type` (`admission` → `...AdmissionEvent`)."""
    return f"{NAMESPACE}.{''.join(part.capitalize() for part in event_type.split('_'))}Event"
