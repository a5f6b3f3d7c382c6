"""The patient's own log in plain words: who received, was refused or looked up what about them.

Pure functions over plain records (the store reads them): each record becomes one row
`{"at", "kind", "text", ...}` whose `text` is one sentence a patient understands, naming every
organisation by its directory name, agency and number. The rows carry no nin (the patient knows
it) and no free text another organisation wrote, except the purpose a privacy officer gave for a
lookup, which is the patient's answer to "why did they look?".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from carebus.domain.events import rfc3339


@dataclass(frozen=True, slots=True)
class Party:
    """An organisation as the directory knows it; `name` is empty when it has none."""

    agency: str
    org_id: str
    name: str = ""

    def described(self) -> str:
        """E.g. `Demo NAV office (nav 889640782)`, or `the nav organisation 889640782`."""
        if self.name:
            return f"{self.name} ({self.agency} {self.org_id})"
        return f"the {self.agency} organisation {self.org_id}".replace("  ", " ")

    def to_json(self) -> dict[str, str | None]:
        return {"agency": self.agency, "org_id": self.org_id, "name": self.name or None}


@dataclass(frozen=True, slots=True)
class Decision:
    """A routing decision about the person: delivered to, or withheld from, one recipient."""

    event_id: str
    event_type: str
    source: Party
    recipient: Party
    decision: str  # delivered | withheld
    reason: str | None
    basis: str | None
    categories: Sequence[str]
    decided_at: datetime
    # The retraction by which the sender withdrew the event since (sent about the wrong person
    # or in error): the decision stays in the log, marked, no longer a live fact.
    retracted_by: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """A consent, withdrawal or objection recorded for the person, and its confirmation."""

    recipient: Party  # org_id empty: every organisation of the agency
    categories: Sequence[str]
    status: str  # given | withdrawn | objection
    state: str  # effective | pending | confirmed
    recorded_by: Party
    recorded_at: datetime
    valid_from: datetime
    valid_to: datetime | None
    confirmed_by: Party | None
    confirmed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Lookup:
    """A look at the person's data: a privacy officer's disclosure query (`disclosure_query`),
    or a coordinator's or privacy officer's look at the inbox's person view
    (`person_timeline`)."""

    by: Party
    role: str
    purpose: str | None
    looked_at: datetime
    what: str = "disclosure_query"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A statement about the person that carebus refused because its sender was not entitled."""

    actor: Party
    statement: str
    rule_id: str
    decided_at: datetime


# What each event told its recipients, as the object of "was told about …".
EVENT_WORDS: Final[Mapping[str, str]] = {
    "admission": "your admission",
    "discharge": "your discharge",
    "discharge_ready": "your being ready for discharge",
    "discharge_ready_withdrawn": "a withdrawn notice that you were ready for discharge",
    "police_callout": "a police call-out concerning you",
    "housing_incident": "an incident where you live",
    "ip_update": "your individual plan",
    "health_info_sent": "health information sent after your admission",
    "municipal_reply": "the municipality's reply about receiving you after discharge",
    "housing_work_started": "work to find you a place to live",
    "epikrise_sent": "your discharge summary being sent to your GP",
    "followup_contact": "a follow-up contact with you",
    "application_received": "your application for services",
    "application_preliminary_reply": "a preliminary reply to your application",
    "application_decided": "the decision on your application",
    "retraction": "a correction withdrawing an earlier message about you",
    "followup_scheduled": "a follow-up appointment after your discharge",
    "treatment_interrupted": "a message that your treatment was broken off",
    "prison_release": "a message about your release from prison",
    "housing_waitlisted": "that you are on a waiting list for housing",
    "temporary_housing_started": "that you moved into temporary housing",
    "temporary_housing_ended": "that your stay in temporary housing ended",
    "tenancy_at_risk": "that your tenancy is at risk",
    "brukerplan_assessment": "your Brukerplan survey scores",
    "somatic_check_done": "a check of your physical health",
    "somatic_referral": "a referral after a check of your physical health",
}
CATEGORY_WORDS: Final[Mapping[str, str]] = {
    "logistics": "practical details",
    "health": "health information",
    "social": "social and welfare information",
    "police": "police information",
    "justice": "information about a prison stay",
}
BASIS_WORDS: Final[Mapping[str, str]] = {
    "statutory": "because the law requires it",
    "presumed": "because you had not objected",
    "consent": "because you consented",
    "emergency": "because of an emergency",
    "retraction": "because it had received the message withdrawn",
}
# Why a recipient was not told (the Disclosure schema's WithheldReason).
REASON_WORDS: Final[Mapping[str, str]] = {
    "no_consent": "you had not consented",
    "consent_withdrawn": "you had withdrawn your consent",
    "consent_expired": "your consent had run out",
    "objection": "you objected",
    "category_not_consented": "your consent did not cover it",
    "not_permitted": "the rules do not allow it",
}
# The statements of the AuthorityRefusal schema, as the object of "tried to …".
STATEMENT_WORDS: Final[Mapping[str, str]] = {
    "care_team_change": "change who is in your care team",
    "contact": "name who at an organisation is responsible for you",
    "person_view": "open your page in the coordinators' inbox",
    "consent": "record a consent or an objection for you",
    "consent_confirmation": "confirm a consent for you",
    "register_change": "change your home municipality or GP in the register",
    "token": "get access to carebus",
    "webhook": "change where its messages from carebus are sent",
}
_EVENT_STATEMENT: Final = "event:"


def patient_log(
    decisions: Iterable[Decision],
    consents: Iterable[ConsentChange],
    lookups: Iterable[Lookup],
    refusals: Iterable[Refusal],
) -> list[dict[str, Any]]:
    """Every row of the patient's log, oldest first."""
    rows: list[tuple[datetime, dict[str, Any]]] = []
    rows.extend((d.decided_at, decision_row(d)) for d in decisions)
    for consent in consents:
        rows.append((consent.recorded_at, consent_row(consent)))
        if consent.confirmed_at is not None:
            rows.append((consent.confirmed_at, confirmation_row(consent, consent.confirmed_at)))
    rows.extend((lookup.looked_at, lookup_row(lookup)) for lookup in lookups)
    rows.extend((refusal.decided_at, refusal_row(refusal)) for refusal in refusals)
    rows.sort(key=lambda row: row[0])  # stable: ties keep the order above
    return [row for _at, row in rows]


def decision_row(decision: Decision) -> dict[str, Any]:
    """`delivered` or `withheld`: who was (not) told what, by whom, and why."""
    common = {
        "at": rfc3339(decision.decided_at),
        "kind": decision.decision,
        "event_id": decision.event_id,
        "event_type": decision.event_type,
        "source": decision.source.to_json(),
        "recipient": decision.recipient.to_json(),
    }
    what = EVENT_WORDS.get(decision.event_type, "something that happened to you")
    if decision.retracted_by is not None:
        common["retracted_by"] = decision.retracted_by
        what += " (later withdrawn by the sender as a mistake)"
    if decision.decision == "withheld":
        why = REASON_WORDS.get(decision.reason or "", "the rules do not allow it")
        text = f"{decision.recipient.described()} was not told about {what}: {why}."
        return {**common, "text": _sentence(text), "reason": decision.reason}
    basis = BASIS_WORDS.get(decision.basis or "", "under the sharing rules")
    text = (
        f"{decision.recipient.described()} was told about {what} by "
        f"{decision.source.described()}: {_categories(decision.categories)}, {basis}."
    )
    return {
        **common,
        "text": _sentence(text),
        "basis": decision.basis,
        "categories": list(decision.categories),
    }


def consent_row(consent: ConsentChange) -> dict[str, Any]:
    """`consent`: a consent, withdrawal or objection as it was recorded."""
    recorder = consent.recorded_by.described()
    whom = _recipient(consent.recipient)
    what = _categories(consent.categories)
    if consent.status == "objection":
        text = f"{recorder} recorded that you object to {whom} getting {what}"
    elif consent.status == "withdrawn":
        text = f"{recorder} recorded that you withdrew your consent for {whom} to get {what}"
    else:
        text = f"{recorder} recorded that you consent to {whom} getting {what}"
    if consent.state != "effective":
        # Recorded as pending: a confirmed consent was pending until its confirmation row.
        text += "; it takes effect only when a health service or you confirm it"
    return {
        "at": rfc3339(consent.recorded_at),
        "kind": "consent",
        "text": _sentence(text + "."),
        "status": consent.status,
        "state": consent.state,
        "recipient": _recipient_json(consent.recipient),
        "categories": list(consent.categories),
        "recorded_by": consent.recorded_by.to_json(),
        "valid_from": rfc3339(consent.valid_from),
        "valid_to": rfc3339(consent.valid_to) if consent.valid_to else None,
    }


def confirmation_row(consent: ConsentChange, confirmed_at: datetime) -> dict[str, Any]:
    """`consent_confirmed`: the moment a pending consent took effect."""
    whom = _recipient(consent.recipient)
    what = _categories(consent.categories)
    by = f" by {consent.confirmed_by.described()}" if consent.confirmed_by else ""
    text = f"Your consent for {whom} to get {what} was confirmed{by} and took effect."
    return {
        "at": rfc3339(confirmed_at),
        "kind": "consent_confirmed",
        "text": text,
        "status": consent.status,
        "recipient": _recipient_json(consent.recipient),
        "categories": list(consent.categories),
        "confirmed_by": consent.confirmed_by.to_json() if consent.confirmed_by else None,
    }


def lookup_row(lookup: Lookup) -> dict[str, Any]:
    """`lookup`: a privacy officer looked at who received information about the patient, or
    someone looked at the patient's page in the coordinators' inbox (`what`)."""
    officer = "data protection officer" if lookup.by.agency == "operator" else "privacy officer"
    why = " without giving a reason"
    if lookup.purpose:
        why = f', giving the reason "{lookup.purpose}"'
    text = (
        f"The {officer} of {lookup.by.described()} looked up who received information "
        f"about you{why}."
    )
    if lookup.what == "person_timeline":
        who = "coordinator" if lookup.role == "coordinator" else officer
        text = (
            f"A {who} of {lookup.by.described()} looked at your page in the coordinators' inbox:"
            " your care team, the deadlines between the services and what that organisation"
            " sent or received about you."
        )
    return {
        "at": rfc3339(lookup.looked_at),
        "kind": "lookup",
        "text": text,
        "by": lookup.by.to_json(),
        "role": lookup.role,
        "purpose": lookup.purpose,
        "what": lookup.what,
    }


def refusal_row(refusal: Refusal) -> dict[str, Any]:
    """`refusal`: an organisation tried to say something about the patient it may not say."""
    text = (
        f"{refusal.actor.described()} tried to {_statement(refusal.statement)}; carebus refused, "
        "because it is not entitled to."
    )
    return {
        "at": rfc3339(refusal.decided_at),
        "kind": "refusal",
        "text": _sentence(text),
        "actor": refusal.actor.to_json(),
        "statement": refusal.statement,
        "rule_id": refusal.rule_id,
    }


def _statement(statement: str) -> str:
    if statement.startswith(_EVENT_STATEMENT):
        event_type = statement.removeprefix(_EVENT_STATEMENT)
        return f"report {EVENT_WORDS.get(event_type, 'something that happened to you')}"
    return STATEMENT_WORDS.get(statement, "say something about you")


def _categories(categories: Sequence[str]) -> str:
    words = [CATEGORY_WORDS.get(category, category) for category in categories]
    if not words:
        return "only that it happened"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _recipient(recipient: Party) -> str:
    """A consent's recipient: one organisation, or every organisation of an agency."""
    if recipient.org_id:
        return recipient.described()
    return f"every {recipient.agency} organisation"


def _recipient_json(recipient: Party) -> dict[str, str | None]:
    return {**recipient.to_json(), "org_id": recipient.org_id or None}


def _sentence(text: str) -> str:
    """The text with a capital first letter (a nameless party starts with "the")."""
    return text[:1].upper() + text[1:]
