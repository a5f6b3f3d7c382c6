"""Authority: who may say what about a person (pure decisions over plain data, no I/O).

Routing is only as lawful as the facts it routes on. Every statement that changes who learns
about a person — an event, a care-team change, a consent or objection — is judged here against
the person's state (`carebus.domain.routing.PersonState`, the same fold the router keeps) before the
gateway or the registry accepts it. The rules, their sources and their reasoning are data:
`policy/authority.yaml`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from carebus.domain.agencies import AGENCIES
from carebus.domain.events import EVENT_TYPES, Problem
from carebus.domain.routing import PersonState, plan_source

# The rules the decisions below use; the loader refuses a policy that does not explain each.
RULES: Final = (
    "sender.event_type",
    "emergency.declarer",
    "relation.required",
    "care_team.self_add",
    "care_team.recorder",
    "objection.recorder",
    "consent.confirmer",
    "operator.realm",
    "retraction.own_event",
    "retraction.repeated",
    "erasure.data_protection_officer",
    "contact.own_staff",
    "person_view.relation",
)
PENDING_REASONS: Final = ("consent.self_recipient", "consent.non_health_recorder")
PATIENT: Final = "patient"
# The event types judged against the person's state (`event_refusal`): the individual plan,
# which changes who learns about the person; and the Brukerplan assessment, a statement about
# the person's life that SLA rules act on (person.brukerplan.<domain>), which only a
# municipality that serves the person may make. Every other event that changes state (an
# admission, a discharge) changes only its sender's own facts.
JUDGED_EVENT_TYPES: Final = frozenset({"ip_update", "brukerplan_assessment"})
# Relations that let an organisation name itself in the care team (how plans are made).
_SELF_NAMING: Final = frozenset({"home_municipality", "admitting"})

ConsentEffect = Literal["effective", "pending"]

# A look at the person view (GET /v1/persons/{subject_key}/timeline) by an organisation with no
# relation to the person: the statement and the refusal its attempt is kept under in the
# person's log (answered 404, as for a key no person has).
PERSON_VIEW: Final = "person_view"


class AuthorityPolicyError(ValueError):
    """The authority policy file is missing, malformed or incomplete."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a statement: an organisation of an agency, in a role."""

    org_id: str
    agency: str
    role: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a statement is refused: the rule, the field at fault, a message naming no person, and
    the HTTP status to answer (403 for want of authority; a retraction's 422 and 409)."""

    rule_id: str
    field: str
    message: str
    status: int = 403


PERSON_VIEW_REFUSAL: Final = Refusal(
    "person_view.relation",
    "subject_key",
    "no person of that key is known to your organisation",
    404,
)


class NotEntitledError(Exception):
    """A statement its sender may not make; nothing of it is recorded or published.

    `index` is the position in a batch of events; `subject_key` the person, when valid.
    """

    def __init__(self, refusal: Refusal, subject_key: str | None, index: int = 0) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.subject_key = subject_key
        self.index = index


@dataclass(frozen=True, slots=True)
class ConsentVerdict:
    """A consent is refused, takes effect at once, or waits for confirmation (`pending_reason`)."""

    refusal: Refusal | None = None
    effect: ConsentEffect = "effective"
    pending_reason: str | None = None


@dataclass(frozen=True, slots=True)
class AuthorityPolicy:
    version: str
    senders: Mapping[str, frozenset[str]]
    emergency_declarers: frozenset[str]
    health_agencies: frozenset[str]

    # --- events ---------------------------------------------------------------------------

    def sender_refusal(
        self, actor: Actor, event_type: str, has_emergency: bool, path: str = ""
    ) -> Refusal | None:
        """The refusal of an event that this agency may not send at all (no state needed)."""
        if actor.agency not in self.senders.get(event_type, frozenset()):
            allowed = ", ".join(sorted(self.senders.get(event_type, ())))
            return Refusal(
                "sender.event_type",
                f"{path}event_type",
                f"a {actor.agency} organisation may not send {event_type} (only: {allowed})",
            )
        if has_emergency and actor.agency not in self.emergency_declarers:
            return Refusal(
                "emergency.declarer",
                f"{path}emergency",
                f"a {actor.agency} organisation may not declare an emergency disclosure",
            )
        return None

    def event_refusal(
        self,
        state: PersonState,
        actor: Actor,
        event_type: str,
        payload: Mapping[str, Any],
        path: str = "",
    ) -> Refusal | None:
        """The refusal of an event judged against the person's state; None to accept it.

        Only an individual plan changes who learns about the person by its sender's say-so:
        its sender needs a relation, and may name itself only as home municipality or
        admitting DPS. A Brukerplan assessment needs a relation too (a stranger's scores would
        shorten another municipality's deadlines and reach the care team). Admissions and
        discharges change state too, but only the sender's own (its admission, the home
        municipality a DPS states) and `sender_refusal` covers them.
        """
        if event_type not in JUDGED_EVENT_TYPES:
            return None
        if event_type == "brukerplan_assessment":
            if state.relations(actor.org_id):
                return None
            return _no_relation(f"{path}subject", "assess the person (Brukerplan)")
        if payload.get("status") == "closed" and _owns_plan(state, actor.org_id, payload):
            return None  # closing restricts: the owner may always close its own plan
        relations = state.relations(actor.org_id)
        if not relations:
            return _no_relation(f"{path}subject", "create or change the person's plan")
        if relations & _SELF_NAMING:
            return None
        for field, org_id in _plan_members(payload, f"{path}payload"):
            if org_id == actor.org_id:
                return Refusal(
                    "care_team.self_add",
                    field,
                    "an organisation may not name itself in a plan unless it is the person's"
                    " home municipality or admitting DPS",
                )
        return None

    # --- registry statements ------------------------------------------------------------------

    def care_team_refusal(
        self, state: PersonState, actor: Actor, org_id: str, status: str, role: str
    ) -> Refusal | None:
        """The refusal of a care-team change; None to accept it.

        Leaving is always allowed (restricting takes effect at once); the fold lets a
        non-member's removal take back only what it recorded itself.
        """
        if status == "removed" and org_id == actor.org_id:
            return None
        relations = state.relations(actor.org_id)
        if not relations:
            return _no_relation("nin", "change the person's care team")
        if status != "member":
            return None
        if org_id == actor.org_id and not relations & _SELF_NAMING:
            return Refusal(
                "care_team.self_add",
                "org_id",
                "an organisation may not add itself to a care team unless it is the person's"
                " home municipality or admitting DPS",
            )
        coordinator = _is_coordinator(state, actor)
        if actor.agency not in self.health_agencies and not coordinator:
            return Refusal(
                "care_team.recorder",
                "org_id",
                "members are added by health organisations with a relation or by the coordinator",
            )
        if role == "coordinator" and not (relations & _SELF_NAMING or coordinator):
            return Refusal(
                "care_team.recorder",
                "role",
                "a coordinator is named by the home municipality, the admitting DPS or the"
                " current coordinator",
            )
        own_dps = org_id == actor.org_id and "admitting" in relations
        if role == "pathway_coordinator" and not (own_dps or coordinator):
            return Refusal(
                "care_team.recorder",
                "role",
                "a pathway coordinator is named by the DPS itself while it has the person"
                " admitted, or by the coordinator",
            )
        return None

    def contact_refusal(
        self, state: PersonState, actor: Actor, org_id: str, role: str = "contact"
    ) -> Refusal | None:
        """The refusal of naming a contact person (issue 17, item 4); None to accept it.

        An organisation names only its own staff, and only while it serves the person: in the
        care team, or the GP on the GP list. Ending a contact is judged alike: another
        organisation cannot take a named person off a team it is not in. A coordinator's,
        pathway coordinator's or GP's contact only where the organisation holds that role for
        the person: a participant cannot name "the coordinator" under its own name.
        """
        if org_id != actor.org_id:
            return Refusal(
                "contact.own_staff", "org_id", "an organisation names only its own staff"
            )
        if not state.relations(actor.org_id) & {"care_team", "gp"}:
            return Refusal(
                "contact.own_staff",
                "nin",
                "an organisation names its staff for a person only while it is in the person's"
                " care team or is the GP on the GP list",
            )
        member = state.team.get(actor.org_id)
        holds = {member.role} if member is not None else set()
        if "gp" in state.relations(actor.org_id):
            holds.add("gp")
        if role in ("coordinator", "pathway_coordinator", "gp") and role not in holds:
            return Refusal(
                "contact.own_staff",
                "role",
                f"a {role.replace('_', ' ')}'s contact person is named only by the organisation"
                " that holds that role for the person",
            )
        return None

    def consent_verdict(
        self,
        state: PersonState,
        actor: Actor,
        recipient_agency: str,
        recipient_org: str | None,
        status: str,
    ) -> ConsentVerdict:
        """Refused, effective at once, or pending confirmation.

        Restricting (withdrawn, objection) takes effect at once when the recorder may restrict;
        widening (given, or a withdrawal that replaces an objection) at once only when a health
        organisation with a relation records it for another recipient.
        """
        if actor.role == PATIENT:
            return ConsentVerdict()  # the person's own word (the caller checked it is theirs)
        covers_actor = _covers(recipient_agency, recipient_org, actor)
        if status in ("withdrawn", "objection") and not _lifts_objection(
            state, recipient_agency, recipient_org, status
        ):
            if (recipient_agency, recipient_org) == (actor.agency, actor.org_id):
                # An organisation may always restrict its own access (not its whole agency's).
                return ConsentVerdict()
            relations = state.relations(actor.org_id)
            if relations and (
                actor.agency in self.health_agencies or _is_coordinator(state, actor)
            ):
                return ConsentVerdict()
            if not relations:
                return ConsentVerdict(refusal=_no_relation("nin", f"record an {status}"))
            return ConsentVerdict(
                refusal=Refusal(
                    "objection.recorder",
                    "status",
                    f"a {actor.agency} organisation may not record an {status} against another"
                    " organisation (health organisations with a relation, the coordinator or"
                    " the patient may)",
                )
            )
        if not state.relations(actor.org_id):
            return ConsentVerdict(refusal=_no_relation("nin", "record a consent"))
        if covers_actor:
            return ConsentVerdict(effect="pending", pending_reason="consent.self_recipient")
        if actor.agency not in self.health_agencies:
            return ConsentVerdict(effect="pending", pending_reason="consent.non_health_recorder")
        return ConsentVerdict()

    @staticmethod
    def restricted_since(
        state: PersonState, recipient_agency: str, recipient_org: str | None, since: Any
    ) -> bool:
        """Whether a withdrawal or objection covering a pending consent's recipient was recorded
        after the consent: confirming it then would undo the person's later word."""
        return any(
            c.status in ("withdrawn", "objection")
            and c.recorded_at > since
            and c.agency == recipient_agency
            and (c.org_id is None or recipient_org is None or c.org_id == recipient_org)
            for c in state.consents
        )

    def confirmation_refusal(
        self, state: PersonState, actor: Actor, recipient_agency: str, recipient_org: str | None
    ) -> Refusal | None:
        """The refusal of an organisation confirming a pending consent; None to accept."""
        if actor.role == PATIENT:
            return None  # the person's own word (the caller checked it is theirs)
        if (
            actor.agency in self.health_agencies
            and state.relations(actor.org_id)
            and not _covers(recipient_agency, recipient_org, actor)
        ):
            return None
        return Refusal(
            "consent.confirmer",
            "consent_id",
            "a pending consent is confirmed by a health organisation with a relation that is"
            " not its recipient, or by the patient",
        )


def _lifts_objection(
    state: PersonState, recipient_agency: str, recipient_org: str | None, status: str
) -> bool:
    """Whether a withdrawal would become the latest record over an objection it covers: that
    widens access (an objection blocks even presumed sharing, a withdrawal does not), so it is
    judged as a consent that widens, never as a restriction."""
    return status == "withdrawn" and any(
        c.status == "objection"
        and c.agency == recipient_agency
        and (recipient_org is None or c.org_id in (None, recipient_org))
        for c in state.consents
    )


def _is_coordinator(state: PersonState, actor: Actor) -> bool:
    member = state.team.get(actor.org_id)
    return member is not None and member.role == "coordinator"


def _owns_plan(state: PersonState, owner: str, payload: Mapping[str, Any]) -> bool:
    source = plan_source(owner, payload["plan_id"])
    return any(source in member.sources for member in state.team.values())


def _covers(recipient_agency: str, recipient_org: str | None, actor: Actor) -> bool:
    return recipient_agency == actor.agency and recipient_org in (None, actor.org_id)


def _no_relation(field: str, what: str) -> Refusal:
    return Refusal(
        "relation.required",
        field,
        f"only an organisation with a relation to the person (care team, home municipality,"
        f" GP, admitting DPS) may {what}",
    )


def _plan_members(payload: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    """(field path, org_id) of every organisation an ip_update payload names."""
    named: list[tuple[str, str]] = []
    coordinator = payload.get("coordinator")
    if coordinator:
        named.append((f"{path}.coordinator.org_id", coordinator["org_id"]))
    for index, participant in enumerate(payload.get("participants") or ()):
        named.append((f"{path}.participants[{index}].org_id", participant["org_id"]))
    return named


# --- organisations an event or request names (checked against the directory) -------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """An organisation a request names: where (field path), as which agency, and its number.

    `alternatives` are further agencies it may be registered as instead (any one will do), for
    a field that names an organisation by its number alone."""

    field: str
    agency: str
    org_id: str
    alternatives: tuple[str, ...] = ()


def claim_problems(claims: Iterable[Claim], registered: Mapping[str, str]) -> list[Problem]:
    """A problem for every claim whose organisation is not registered as the claimed agency."""
    return [
        Problem(claim.field, f"is not a registered {_either(claim)} organisation")
        for claim in claims
        if registered.get(claim.org_id) not in (claim.agency, *claim.alternatives)
    ]


def _either(claim: Claim) -> str:
    agencies = (claim.agency, *claim.alternatives)
    return agencies[0] if len(agencies) == 1 else f"{', '.join(agencies[:-1])} or {agencies[-1]}"


def event_claims(
    payload: Mapping[str, Any], emergency: Mapping[str, Any] | None, path: str = ""
) -> list[Claim]:
    """Every organisation an event names, with the agency it is claimed to be."""
    claims: list[Claim] = []
    if payload.get("home_municipality_org"):
        claims.append(
            Claim(
                f"{path}payload.home_municipality_org",
                "municipality",
                payload["home_municipality_org"],
            )
        )
    if payload.get("recipient_org"):
        # epikrise_sent: the discharge summary goes to the patient's GP.
        claims.append(Claim(f"{path}payload.recipient_org", "fastlege", payload["recipient_org"]))
    if payload.get("with_org"):
        # followup_scheduled: who holds the follow-up appointment, a health service.
        claims.append(
            Claim(
                f"{path}payload.with_org",
                "dps",
                payload["with_org"],
                alternatives=("municipality", "fastlege"),
            )
        )
    owner = payload.get("crisis_plan_owner")
    if owner:
        # ip_update, discharge: the health service that holds the crisis plan.
        claims.append(
            Claim(f"{path}payload.crisis_plan_owner.org_id", owner["agency"], owner["org_id"])
        )
    coordinator = payload.get("coordinator")
    if coordinator:
        claims.append(
            Claim(f"{path}payload.coordinator.org_id", coordinator["agency"], coordinator["org_id"])
        )
    for index, member in enumerate(payload.get("participants") or ()):
        claims.append(
            Claim(f"{path}payload.participants[{index}].org_id", member["agency"], member["org_id"])
        )
    for index, recipient in enumerate((emergency or {}).get("recipients") or ()):
        claims.append(
            Claim(
                f"{path}emergency.recipients[{index}].org_id",
                recipient["agency"],
                recipient["org_id"],
            )
        )
    return claims


# --- loading -------------------------------------------------------------------------------


def build_authority(raw: object, path: Path | str) -> AuthorityPolicy:
    """Check a parsed `policy/authority.yaml`; AuthorityPolicyError says what is wrong."""
    if not isinstance(raw, dict):
        raise AuthorityPolicyError(f"{path}: must be a mapping")
    problems: list[str] = []
    version = raw.get("version")
    if not isinstance(version, str) or not version:
        problems.append("version: must be a non-empty string")
    health = _agencies(raw.get("health_agencies"), "health_agencies", problems)
    senders = _senders(raw.get("senders"), problems)
    declarers = _agencies(
        _cited(raw.get("emergency_declarers"), "emergency_declarers", problems),
        "emergency_declarers.agencies",
        problems,
    )
    _explained(raw.get("rules"), RULES, "rules", problems)
    _explained(raw.get("pending"), PENDING_REASONS, "pending", problems)
    if problems:
        raise AuthorityPolicyError(f"{path}: " + "; ".join(problems))
    assert isinstance(version, str)
    return AuthorityPolicy(version, senders, declarers, health)


def _cited(value: object, where: str, problems: list[str]) -> object:
    """The `agencies` of an entry that must also cite a source."""
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping with agencies and source")
        return None
    if not isinstance(value.get("source"), str) or not value["source"].strip():
        problems.append(f"{where}: must cite a source")
    return value.get("agencies")


def _agencies(value: object, where: str, problems: list[str]) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: must be a non-empty list of agencies")
        return frozenset()
    unknown = [agency for agency in value if agency not in AGENCIES]
    if unknown:
        problems.append(f"{where}: unknown agencies {unknown}")
    return frozenset(agency for agency in value if agency in AGENCIES)


def _senders(value: object, problems: list[str]) -> dict[str, frozenset[str]]:
    if not isinstance(value, dict):
        problems.append("senders: must map every event type to its senders")
        return {}
    missing = [event_type for event_type in EVENT_TYPES if event_type not in value]
    unknown = [event_type for event_type in value if event_type not in EVENT_TYPES]
    if missing:
        problems.append(f"senders: no entry for {missing}")
    if unknown:
        problems.append(f"senders: unknown event types {unknown}")
    return {
        event_type: _agencies(
            _cited(entry, f"senders.{event_type}", problems),
            f"senders.{event_type}.agencies",
            problems,
        )
        for event_type, entry in value.items()
        if event_type in EVENT_TYPES
    }


def _explained(value: object, ids: Sequence[str], where: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping of rule id to source and why")
        return
    for rule_id in ids:
        entry = value.get(rule_id)
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(key), str) and entry[key].strip() for key in ("source", "why")
        ):
            problems.append(f"{where}.{rule_id}: must give a source and why")
