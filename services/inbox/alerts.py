"""What the inbox knows about alerts without any I/O: who may see one, its JSON, the filters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from carebus.adapters.auth import Principal
from carebus.domain.events import rfc3339
from carebus.domain.text import text_problem

# A row of `alerts` as asyncpg returns it, or any mapping with the same keys (tests).
AlertRow = asyncpg.Record | Mapping[str, Any]

STATUSES: Final = ("open", "acknowledged", "resolved")
INBOX_ROLES: Final = ("coordinator", "privacy_officer", "operator")
MAX_RULE_ID: Final = 200
# The audience of its own organisation's alerts each role works. The operator works the
# operator realm's coordinator alerts, as a coordinator would an agency's.
AUDIENCE_OF_ROLE: Final = {
    "coordinator": "coordinator",
    "privacy_officer": "privacy_officer",
    "operator": "coordinator",
}
# Roles of the operator realm that work the unassigned queue (no recipient organisation found).
QUEUE_ROLES: Final = ("operator", "privacy_officer")


def can_see(caller: Principal, recipient_org: str | None, audience: str) -> bool:
    """Whether `caller` may see an alert sent to `recipient_org` for `audience`.

    A coordinator sees its organisation's coordinator alerts, a privacy officer its
    organisation's privacy-officer alerts. The unassigned queue is the operator's: only the
    operator realm's operators and privacy officer see it, never an agency's privacy officer:
    the queue holds other organisations' missed obligations.
    """
    if recipient_org is None:
        return works_the_queue(caller)
    return recipient_org == caller.org_id and audience == AUDIENCE_OF_ROLE.get(caller.role)


def works_the_queue(caller: Principal) -> bool:
    """Whether `caller` is of the operator realm in a role that works the unassigned queue."""
    return caller.is_operator and caller.role in QUEUE_ROLES


def _time(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment is not None else None


def _organisation(agency: str | None, org_id: str | None) -> dict[str, str] | None:
    if agency is None or org_id is None:
        return None
    return {"agency": agency, "org_id": org_id}


def alert_json(row: AlertRow) -> dict[str, Any]:
    """One alert as the inbox serves it; `subject` only when the recipient may know the person."""
    alert: dict[str, Any] = {
        "alert_id": row["alert_id"],
        "rule_id": row["rule_id"],
        "title": row["title"],
        "kind": row["kind"],
        "status": row["status"],
        "resolution": row["resolution"],
        "escalated": row["escalated"],
        "deadline": _time(row["deadline"]),
        "breached_at": rfc3339(row["breached_at"]),
        "escalate_at": rfc3339(row["escalate_at"]),
        "recipient": _organisation(row["recipient_agency"], row["recipient_org"]),
        "recipient_role": row.get("recipient_role"),
    }
    if row["nin"] is not None:
        alert["subject"] = {"nin": row["nin"]}
        # Added fields, only where the alert names the person: the way to the person view.
        alert["subject_key"] = row["subject_key"]
        alert["person_url"] = f"/persons/{row['subject_key']}"
        # Whom at the recipient the alert is for (issue 17, item 4), read now: null when the
        # organisation named no one. Only where the alert may name the person.
        accountable, deputy = named(row.get("contacts") or (), row.get("recipient_role"))
        alert["accountable"] = accountable.json() if accountable else None
        alert["deputy"] = deputy.json() if deputy else None
    elif row.get("erased"):
        # The person was erased since (docs/design.md, "Erasure"): the alert stays, nameless.
        alert["subject"] = None
        alert["erased"] = True
    alert["contact"] = _organisation(row["contact_agency"], row["contact_org"])
    alert["summary"] = row["summary"]
    alert["event_ids"] = list(row["event_ids"])
    alert["acknowledged_at"] = _time(row["acknowledged_at"])
    alert["resolved_at"] = _time(row["resolved_at"])
    # Added fields: the person who acknowledged or resolved it in the inbox; null when a
    # system's token did, or no one yet.
    alert["acknowledged_by"] = _person(row, "acknowledged_by")
    alert["resolved_by"] = _person(row, "resolved_by")
    return alert


# Which contact role names the accountable person for an alert chosen by a chain role; then,
# for a role that names no particular one (source, home municipality) or where that role has
# no contact registered, the organisation's contacts in this order.
_CONTACT_ROLE_FIRST: Final = {
    "coordinator": "coordinator",
    "municipal_coordinator": "coordinator",
    "pathway_coordinator": "pathway_coordinator",
    "gp": "gp",
}
CONTACT_ROLES: Final = ("coordinator", "pathway_coordinator", "gp", "contact")


@dataclass(frozen=True, slots=True)
class ContactPerson:
    """A current, active contact person of one organisation for one person, name opened."""

    org_id: str
    role: str
    position: str  # accountable | deputy
    name: str
    hpr_number: str | None
    phone: str | None

    def json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "hpr_number": self.hpr_number,
            "phone": self.phone,
        }


def named(
    contacts: Sequence[ContactPerson], recipient_role: str | None
) -> tuple[ContactPerson | None, ContactPerson | None]:
    """The accountable person and the deputy an alert names, from its recipient organisation's
    contacts: those of the role the alert was routed by, else of the first role in
    CONTACT_ROLES that has any; (None, None) when the organisation named no one."""
    first = _CONTACT_ROLE_FIRST.get(recipient_role or "")
    for role in ((first,) if first else ()) + CONTACT_ROLES:
        of_role = {c.position: c for c in contacts if c.role == role}
        if of_role:
            return of_role.get("accountable"), of_role.get("deputy")
    return None, None


def _person(row: AlertRow, action: str) -> dict[str, str] | None:
    subject = row.get(f"{action}_subject")
    if subject is None:
        return None
    return {"sub": subject, "issuer": row.get(f"{action}_issuer") or ""}


class FilterError(ValueError):
    """A query parameter the inbox cannot use; `problem` is safe to show the caller."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which of the caller's alerts a list asks for; None means any."""

    status: str | None = None
    rule_id: str | None = None
    escalated: bool | None = None


def parse_filter(status: str | None, rule_id: str | None, escalated: str | None) -> AlertFilter:
    """The filter of `GET /v1/alerts`; FilterError naming the parameter at fault."""
    if status is not None and status not in STATUSES:
        raise FilterError("status", f"must be one of {', '.join(STATUSES)}")
    if rule_id is not None and not 0 < len(rule_id) <= MAX_RULE_ID:
        raise FilterError("rule_id", f"must be 1 to {MAX_RULE_ID} characters")
    if rule_id is not None and (problem := text_problem(rule_id)) is not None:
        raise FilterError("rule_id", problem)
    flag: bool | None = None
    if escalated is not None:
        if escalated not in ("true", "false"):
            raise FilterError("escalated", "must be true or false")
        flag = escalated == "true"
    return AlertFilter(status=status, rule_id=rule_id, escalated=flag)
