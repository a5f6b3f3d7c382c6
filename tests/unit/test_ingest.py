"""The gateway's ingest against an in-memory ledger and person facts and a fake publisher.

No PostgreSQL, no broker. `Ingest` talks SQL to its connection, so `GatewayConnection` answers
the four statements it (and `carebus.adapters.facts`) sends — the ledger insert and its
conflict check, the person-facts lock and save — with PostgreSQL's rules for them (ON
CONFLICT DO NOTHING, RETURNING, a rolled-back transaction leaves nothing) and fails the test
on any other statement. Row locks between concurrent requests are not modelled: that is
tests/integration/test_gateway.py's job.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from carebus.adapters.publisher import BrokerUnavailableError
from carebus.domain.authority import Actor, NotEntitledError
from carebus.domain.events import Event, parse_event
from carebus.domain.identity import subject_key
from carebus.domain.routing import PersonState
from carebus.wire import topics
from carebus.wire.policy_files import load_authority
from carebus.wire.sealing import Keyring, KeyWrap, is_sealed, open_sealed
from carebus_dev.stack.devdata import DEV_ORGANISATIONS
from carebus_dev.testing import EventFactory
from services.gateway.ingest import Accepted, ConflictError, Ingest
from tests.unit.fakes import CODEC, FakeConnection, FakeDatabase, FakePool, FakePublisher

pytestmark = pytest.mark.timeout(10)

SECRET = b"ingest-unit-secret"
AUTHORITY = load_authority()
FACTORY = EventFactory(seed=34)
DPS = Actor(DEV_ORGANISATIONS["dps"], "dps", "system")
MUNICIPALITY = Actor(DEV_ORGANISATIONS["municipality"], "municipality", "system")
LEDGER = "accepted_events"
FACTS = "person_facts"
KEYS = "person_keys"
WRAP = KeyWrap("ingest-unit-person-key-secret")


class GatewayConnection(FakeConnection):
    """The gateway's statements on the `accepted_events` and `person_facts` tables."""

    def __init__(self, db: FakeDatabase, journal: list[str]) -> None:
        super().__init__(db)
        self.journal = journal

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        statement = " ".join(query.split())
        if statement.startswith("INSERT INTO accepted_events"):
            return self._record(*args)
        if statement.startswith("SELECT source_org, event_id, content_hash FROM accepted_events"):
            wanted = set(zip(*args, strict=True))
            ledger = self.db.table(LEDGER)
            return [
                {"source_org": org, "event_id": eid, "content_hash": ledger[(org, eid)]["hash"]}
                for org, eid in wanted
                if (org, eid) in ledger
            ]
        if statement.startswith("SELECT DISTINCT ON (subject_key)"):
            (keys,) = args
            stored = self.db.table(KEYS)
            return [{"subject_key": key, **stored[key]} for key in keys if key in stored]
        if statement.startswith("INSERT INTO person_keys"):
            stored = self.db.table(KEYS)
            created = []
            for key, version, wrapped in zip(*args, strict=True):
                latest = stored.get(key)
                if latest is None or (
                    latest["wrapped_key"] is None and latest["version"] < version
                ):
                    stored[key] = {"version": version, "wrapped_key": wrapped}
                    created.append({"subject_key": key, **stored[key]})
            return created
        if statement.startswith("INSERT INTO person_facts"):
            (keys,) = args
            facts = self.db.table(FACTS)
            for key in keys:
                facts.setdefault(key, "{}")
            return [{"subject_key": key, "state": facts[key]} for key in keys]
        raise AssertionError(f"a statement the fake does not know: {statement[:70]}")

    async def execute(self, query: str, *args: Any) -> str:
        statement = " ".join(query.split())
        if statement.startswith("SELECT count(pg_advisory_xact_lock_shared("):
            return "SELECT 1"  # the person's key lock, held until the transaction ends
        if not statement.startswith("UPDATE person_facts"):
            raise AssertionError(f"a statement the fake does not know: {statement[:70]}")
        facts = self.db.table(FACTS)
        updated = 0
        for key, state in zip(*args, strict=True):
            if key in facts:
                facts[key] = state
                updated += 1
        self.journal.append("facts_saved")
        return f"UPDATE {updated}"

    def _record(
        self,
        orgs: list[str],
        event_ids: list[str],
        hashes: list[bytes],
        event_types: list[str],
        keys: list[str],
    ) -> list[dict[str, Any]]:
        """INSERT ... ON CONFLICT DO NOTHING RETURNING: only the rows inserted come back."""
        ledger = self.db.table(LEDGER)
        inserted = []
        for org, event_id, content_hash, event_type, key in zip(
            orgs, event_ids, hashes, event_types, keys, strict=True
        ):
            if (org, event_id) in ledger:
                continue
            ledger[(org, event_id)] = {"hash": content_hash, "type": event_type, "key": key}
            inserted.append({"source_org": org, "event_id": event_id})
        return inserted


class Gateway:
    """An Ingest on the fakes."""

    def __init__(self) -> None:
        self.journal: list[str] = []
        self.db = FakeDatabase()
        self.publisher = FakePublisher(self.journal)
        self.ingest = Ingest(
            FakePool(GatewayConnection(self.db, self.journal)),  # type: ignore[arg-type]
            self.publisher,
            CODEC,
            SECRET,
            AUTHORITY,
            WRAP,
        )

    async def accept(self, *events: Event, actor: Actor = DPS) -> list[Accepted]:
        return await self.ingest.accept(list(events), actor)

    def ledger(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.db.table(LEDGER)

    def facts(self, key: str) -> PersonState:
        return PersonState.from_json(orjson.loads(self.db.table(FACTS)[key]))


def event(event_type: str = "discharge_ready", nin: str | None = None, **fields: Any) -> Event:
    raw = FACTORY.event(
        event_type, nin=nin, occurred_at=datetime.now(UTC) - timedelta(minutes=5), **fields
    )
    parsed, problems = parse_event(raw)
    assert parsed is not None, problems
    return parsed


def key_of(event: Event) -> str:
    return subject_key(event.nin, SECRET)


def counted(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_an_event_is_recorded_once_and_published_keyed_by_its_subject_key() -> None:
    """The ledger gets the event's row, the broker the Avro record keyed by the subject key
    with the event's headers, and the caller its id and subject key."""
    gateway = Gateway()
    notice = event()
    before = counted(
        "carebus_events_accepted_total", {"event_type": "discharge_ready", "source_agency": "dps"}
    )

    accepted = await gateway.accept(notice)

    assert accepted == [Accepted(notice.event_id, key_of(notice))]
    [record] = gateway.publisher.published
    assert (record.topic, record.key) == (topics.EVENTS, key_of(notice).encode())
    assert dict(record.headers) == {
        "carebus-event-id": notice.event_id.encode(),
        "carebus-event-type": b"discharge_ready",
        "carebus-source-org": notice.source_org.encode(),
    }
    decoded = CODEC.decode(record.value).record
    assert (decoded["event_id"], decoded["subject_key"]) == (notice.event_id, key_of(notice))
    assert gateway.ledger()[(notice.source_org, notice.event_id)]["key"] == key_of(notice)
    assert gateway.db.commits == 1
    after = counted(
        "carebus_events_accepted_total", {"event_type": "discharge_ready", "source_agency": "dps"}
    )
    assert after - before == 1


async def test_the_same_event_twice_in_a_request_is_published_once() -> None:
    """A batch that repeats an event counts it once: one answer, one ledger row, one record."""
    gateway = Gateway()
    notice, other = event(), event()

    accepted = await gateway.accept(notice, other, notice)

    assert [a.event_id for a in accepted] == [notice.event_id, other.event_id]
    assert len(gateway.ledger()) == 2
    assert len(gateway.publisher.published) == 2


async def test_a_repeat_of_an_accepted_event_is_accepted_and_not_published_again() -> None:
    """Posting an accepted event again (a client's retry) answers the same and publishes
    nothing; it is counted as a duplicate."""
    gateway = Gateway()
    notice = event()
    await gateway.accept(notice)
    before = counted("carebus_events_duplicate_total", {"source_agency": "dps"})

    accepted = await gateway.accept(notice)

    assert accepted == [Accepted(notice.event_id, key_of(notice))]
    assert len(gateway.publisher.published) == 1
    assert gateway.publisher.attempts[-1] == []
    assert counted("carebus_events_duplicate_total", {"source_agency": "dps"}) - before == 1


async def test_an_event_id_reused_for_other_content_in_a_request_is_a_conflict() -> None:
    """The second use of an event_id with other content names its index; nothing of the
    request is recorded or published."""
    gateway = Gateway()
    first = event()
    second = event(event_id=first.event_id, needs_municipal_services=False)
    assert second.payload != first.payload

    with pytest.raises(ConflictError) as raised:
        await gateway.accept(event(), first, second)

    assert raised.value.index == 2
    assert gateway.ledger() == {}
    assert gateway.publisher.attempts == []


async def test_an_event_id_accepted_before_with_other_content_is_a_conflict() -> None:
    """An event_id already in the ledger with another content hash is refused; the ledger
    keeps the first content and nothing is published."""
    gateway = Gateway()
    first = event()
    await gateway.accept(first)
    stored = dict(gateway.ledger())

    with pytest.raises(ConflictError) as raised:
        await gateway.accept(event(event_id=first.event_id, needs_municipal_services=False))

    assert raised.value.index == 0
    assert gateway.ledger() == stored
    assert len(gateway.publisher.attempts) == 1
    assert gateway.db.rollbacks == 1


async def test_a_failed_publish_records_nothing_so_the_clients_retry_publishes() -> None:
    """When the broker does not acknowledge, the ledger row and the facts are rolled back:
    the client's retry is a fresh event, published then."""
    gateway = Gateway()
    admission = event("admission")
    gateway.publisher.failures = [BrokerUnavailableError("the broker did not acknowledge")]

    with pytest.raises(BrokerUnavailableError):
        await gateway.accept(admission)
    assert gateway.ledger() == {}
    assert gateway.db.table(FACTS) == {}
    assert gateway.db.rollbacks == 1

    await gateway.accept(admission)
    assert [CODEC.decode(r.value).record["event_id"] for r in gateway.publisher.published] == [
        admission.event_id
    ]
    assert (admission.source_org, admission.event_id) in gateway.ledger()


async def test_an_admission_folds_the_persons_facts_with_its_record() -> None:
    """An admission from a DPS records the open admission and the home municipality it
    states, in the transaction that records and publishes it."""
    gateway = Gateway()
    admission = event("admission")

    await gateway.accept(admission)

    facts = gateway.facts(key_of(admission))
    assert facts.admissions == {DPS.org_id: frozenset({admission.event_id})}
    assert facts.home_municipality == admission.payload["home_municipality_org"]
    assert gateway.db.commits == 1


async def test_a_plan_from_an_organisation_without_a_relation_is_refused_and_nothing_kept() -> None:
    """An individual plan about a person its sender has no relation to is not entitled:
    nothing is recorded, no facts are kept, nothing is even offered to the broker."""
    gateway = Gateway()
    plan = event("ip_update")

    with pytest.raises(NotEntitledError) as raised:
        await gateway.accept(event(), plan, actor=MUNICIPALITY)

    assert raised.value.index == 1
    assert raised.value.subject_key == key_of(plan)
    assert gateway.ledger() == {}
    assert gateway.db.table(FACTS) == {}
    assert gateway.publisher.attempts == []


async def test_a_claim_is_judged_against_the_claims_before_it_in_the_request() -> None:
    """A DPS may name itself in a plan once its admission of the person is accepted, in the
    same request; the facts are saved before the batch is published."""
    gateway = Gateway()
    nin = FACTORY.nin()
    admission = event("admission", nin=nin)
    plan = event("ip_update", nin=nin, agency="dps", status="active")

    with pytest.raises(NotEntitledError):
        await Gateway().accept(plan)  # alone, the DPS has no relation to the person
    accepted = await gateway.accept(admission, plan)

    assert [a.event_id for a in accepted] == [admission.event_id, plan.event_id]
    published = [CODEC.decode(r.value).record["event_id"] for r in gateway.publisher.published]
    assert published == [admission.event_id, plan.event_id]
    assert gateway.journal == ["facts_saved", "publish", "published"]
    assert gateway.facts(key_of(plan)).team  # the plan's members are in the care team


def opened_record(gateway: Gateway, value: bytes) -> dict[str, Any]:
    """A published record with its sealed fields opened under the fake's stored keys."""
    decoded = CODEC.decode(value).record
    key = decoded["subject_key"]
    stored = gateway.db.table(KEYS)[key]
    keys = Keyring.of([WRAP.unwrap(key, stored["version"], stored["wrapped_key"])])
    return {
        "nin": open_sealed(keys, key, "subject.nin", decoded["subject"]["nin"]),
        "ward": open_sealed(keys, key, "payload.ward", decoded["payload"]["ward"]),
        "justification": open_sealed(
            keys, key, "emergency.justification", decoded["emergency"]["justification"]
        ),
    }


async def test_the_nin_and_free_text_leave_the_gateway_sealed_under_the_persons_key() -> None:
    """The published record holds the nin, the ward and the emergency text only sealed; they
    open under the person's stored key, and the person has one key for all their events."""
    gateway = Gateway()
    admission = event(
        "admission",
        ward="Ward 3 Akutt",
        emergency={
            "justification": "Danger to life, patient unconscious",
            "accountable": "Dr. Kari Nordmann",
            "recipients": [{"agency": "municipality", "org_id": DEV_ORGANISATIONS["municipality"]}],
        },
    )
    second = event("discharge_ready", nin=admission.nin)

    await gateway.accept(admission, second)

    first_value, second_value = (r.value for r in gateway.publisher.published)
    for value in (first_value, second_value):
        assert admission.nin.encode() not in value
    assert b"Ward 3" not in first_value
    assert b"Nordmann" not in first_value
    decoded = CODEC.decode(first_value).record
    assert is_sealed(decoded["subject"]["nin"])
    assert is_sealed(decoded["payload"]["ward"])
    assert opened_record(gateway, first_value) == {
        "nin": admission.nin,
        "ward": "Ward 3 Akutt",
        "justification": "Danger to life, patient unconscious",
    }
    assert list(gateway.db.table(KEYS)) == [key_of(admission)]


async def test_a_retry_of_an_accepted_event_still_matches_although_sealing_is_random() -> None:
    """The idempotency fingerprint is of the clear event: a retry is a repeat, not a conflict,
    though each sealing of the same nin differs."""
    gateway = Gateway()
    admission = event("admission", ward="Ward 3")

    await gateway.accept(admission)
    again = await gateway.accept(admission)

    assert again == [Accepted(admission.event_id, key_of(admission))]
    assert len(gateway.publisher.published) == 1


async def test_after_erasure_a_person_gets_the_next_key_version() -> None:
    """An event for a person whose key was erased is sealed under a new version: the erased
    key is never brought back."""
    gateway = Gateway()
    first = event("discharge_ready")
    await gateway.accept(first)
    gateway.db.table(KEYS)[key_of(first)] = {"version": 1, "wrapped_key": None}  # erased

    later = event("discharge_ready", nin=first.nin)
    await gateway.accept(later)

    assert gateway.db.table(KEYS)[key_of(first)]["version"] == 2
    decoded = CODEC.decode(gateway.publisher.published[-1].value).record
    assert decoded["subject"]["nin"].startswith("sealed:v1:2:")
    assert opened_record_nin(gateway, gateway.publisher.published[-1].value) == first.nin


def opened_record_nin(gateway: Gateway, value: bytes) -> str:
    decoded = CODEC.decode(value).record
    key = decoded["subject_key"]
    stored = gateway.db.table(KEYS)[key]
    keys = Keyring.of([WRAP.unwrap(key, stored["version"], stored["wrapped_key"])])
    return open_sealed(keys, key, "subject.nin", decoded["subject"]["nin"])
