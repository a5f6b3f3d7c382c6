"""State that can be rebuilt (carebus.domain.snapshots): a restored state is never more
permissive than the newest record either side knows, and a rebuild folds history like the
router folds the stream."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carebus.adapters.kafka_acls import load_grants
from carebus.adapters.topic_admin import load_catalogue
from carebus.domain.records import CARE_TEAM_CHANGE, CONSENT_CHANGE, REGISTER_CHANGE
from carebus.domain.routing import PersonState, apply
from carebus.domain.snapshots import (
    ORIGIN_REBUILD,
    PERSON_SNAPSHOT,
    HistoryRecord,
    PersonSnapshot,
    merged_consents,
    rebuild,
    restore,
    snapshot,
    snapshot_problem,
    snapshot_state,
)
from carebus.wire import topics
from carebus.wire.codec import Codec, SchemaCatalogue
from services.router.snapshots import trusted_state
from tests.unit.test_records import record_problems

NAV = "889640790"
MUNICIPALITY = "940493039"
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
YEAR = timedelta(days=365)


def consent(status: str, at: datetime, org_id: str = NAV) -> dict[str, Any]:
    return {
        "change_id": str(uuid.uuid4()),
        "subject_key": "k",
        "recipient": {"agency": "nav", "org_id": org_id},
        "categories": ["logistics"] if status == "given" else [],
        "status": status,
        "valid_from": at,
        "valid_to": None,
        "recorded_by": "unit test",
        "recorded_by_org": MUNICIPALITY,
        "recorded_at": at,
    }


def member(org_id: str, status: str, at: datetime) -> dict[str, Any]:
    return {
        "change_id": str(uuid.uuid4()),
        "subject_key": "k",
        "member": {"agency": "nav", "org_id": org_id},
        "role": "participant",
        "status": status,
        "recorded_by_org": MUNICIPALITY,
        "recorded_at": at,
    }


def state_of(*changes: tuple[str, dict[str, Any]]) -> PersonState:
    state = PersonState()
    for schema, record in changes:
        state = apply(state, schema, record)
    return state


def status_of(state: PersonState, org_id: str = NAV) -> str | None:
    latest = state.latest_consent("nav", org_id)
    return None if latest is None else latest.status


def test_without_a_held_state_the_snapshot_is_the_state() -> None:
    """A router that lost its changelog holds nothing: the snapshot is taken whole."""
    registry = state_of(
        (CARE_TEAM_CHANGE, member(NAV, "member", NOW - 2 * YEAR)),
        (CONSENT_CHANGE, consent("objection", NOW - YEAR)),
    )
    assert restore(None, registry) == registry


def test_a_year_old_objection_outranks_an_older_consent_the_router_still_holds() -> None:
    """The router holds an old consent, the snapshot the later objection: the objection wins."""
    held = state_of(
        (CARE_TEAM_CHANGE, member(NAV, "member", NOW - 2 * YEAR)),
        (CONSENT_CHANGE, consent("given", NOW - 2 * YEAR)),
    )
    registry = state_of((CONSENT_CHANGE, consent("objection", NOW - YEAR)))
    restored = restore(held, registry)
    assert status_of(restored) == "objection"
    assert restored.team == held.team  # the held state's care team stands


def test_an_older_snapshot_never_undoes_a_newer_objection_held() -> None:
    """A snapshot older than what the router folded since changes nothing."""
    held = state_of((CONSENT_CHANGE, consent("objection", NOW - YEAR)))
    registry = state_of((CONSENT_CHANGE, consent("given", NOW - 2 * YEAR)))
    assert restore(held, registry) is held


@pytest.mark.parametrize("restrictive", ["objection", "withdrawn"])
def test_at_the_same_instant_the_more_restrictive_record_stands(restrictive: str) -> None:
    """Two records of one recipient at one time: a consent never beats a restriction."""
    given = state_of((CONSENT_CHANGE, consent("given", NOW))).consents
    restricted = state_of((CONSENT_CHANGE, consent(restrictive, NOW))).consents
    assert [c.status for c in merged_consents(given, restricted)] == [restrictive]
    assert [c.status for c in merged_consents(restricted, given)] == [restrictive]


def test_merged_consents_keep_each_recipient_in_recording_order() -> None:
    """One record per recipient, ordered by recording time as PersonState keeps them."""
    other = "974705788"
    ours = state_of((CONSENT_CHANGE, consent("given", NOW - YEAR, other))).consents
    theirs = state_of((CONSENT_CHANGE, consent("objection", NOW - 2 * YEAR))).consents
    merged = merged_consents(ours, theirs)
    assert [(c.org_id, c.status) for c in merged] == [(NAV, "objection"), (other, "given")]


def test_a_rebuild_folds_history_in_time_order_whatever_order_it_is_read_in() -> None:
    """The store's rows come in any order; the rebuilt state is the fold in time order."""
    history = [
        HistoryRecord(NOW - YEAR, CARE_TEAM_CHANGE, member(NAV, "removed", NOW - YEAR)),
        HistoryRecord(NOW - YEAR, CONSENT_CHANGE, consent("objection", NOW - YEAR)),
        HistoryRecord(NOW - 2 * YEAR, CARE_TEAM_CHANGE, member(NAV, "member", NOW - 2 * YEAR)),
        HistoryRecord(NOW - 2 * YEAR, CONSENT_CHANGE, consent("given", NOW - 2 * YEAR)),
        HistoryRecord(
            NOW - 3 * YEAR,
            REGISTER_CHANGE,
            {"register": "home_municipality", "organisation": {"org_id": MUNICIPALITY}},
        ),
    ]
    rebuilt = rebuild(history)
    assert rebuilt == rebuild(reversed(history))
    assert NAV not in rebuilt.team
    assert status_of(rebuilt) == "objection"
    assert rebuilt.home_municipality == MUNICIPALITY


def test_events_of_one_instant_keep_their_stream_order() -> None:
    """An admission and its discharge stored with one timestamp fold in offset order."""
    dps = "974705788"

    def event(event_type: str, event_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "event_type": event_type,
            "source": {"agency": "dps", "org_id": dps},
            "payload": payload,
        }

    admission = event("admission", "a-1", {})
    discharge = event("discharge", "d-1", {"admission_event_id": "a-1"})
    history = [
        HistoryRecord(NOW, "no.carebus.v1.DischargeEvent", discharge, sequence=8),
        HistoryRecord(NOW, "no.carebus.v1.AdmissionEvent", admission, sequence=7),
    ]
    assert rebuild(history).admissions == {}
    assert rebuild(history[1:]).admissions == {dps: frozenset({"a-1"})}


def test_a_snapshot_record_matches_its_schema_and_round_trips() -> None:
    """The typed record is the Avro record; the state comes back as it went in."""
    state = state_of(
        (CARE_TEAM_CHANGE, member(NAV, "member", NOW - YEAR)),
        (CONSENT_CHANGE, consent("objection", NOW - YEAR)),
    )
    schema = SchemaCatalogue.load().get(PERSON_SNAPSHOT).schema
    assert record_problems(PersonSnapshot, schema, PERSON_SNAPSHOT) == []
    codec = Codec.default()
    record = snapshot("k", state, NOW - YEAR, ORIGIN_REBUILD)
    decoded = codec.decode(codec.encode(PERSON_SNAPSHOT, record))
    assert decoded.record["as_of"] == NOW - YEAR
    assert snapshot_state(decoded.record) == state


def test_only_the_registry_writes_the_snapshots_and_the_router_reads_them() -> None:
    """care.persons.v1 has one writer, the registry; the router may read it."""
    grants = load_grants()
    on_topic = {(g.principal, g.operation) for g in grants if g.name == topics.PERSONS}
    assert {principal for principal, operation in on_topic if operation == "write"} == {"registry"}
    assert ("router", "read") in on_topic


def test_the_snapshot_topic_is_compacted_and_never_expires() -> None:
    """Compaction keeps each person's latest snapshot; nothing deletes it by age."""
    [spec] = [spec for spec in load_catalogue() if spec.name == topics.PERSONS]
    assert spec.config["cleanup.policy"] == "compact"
    assert spec.config["retention.ms"] == "-1"
    assert spec.person_scoped  # co-partitioned with care.events.v1


def test_a_snapshot_of_another_person_or_from_the_future_is_refused() -> None:
    """A snapshot restores only the person it is keyed by, and nothing in it may be recorded
    after now (a consent "recorded" in 9999 would outrank every real objection)."""
    state = state_of((CONSENT_CHANGE, consent("objection", NOW - YEAR)))
    record = snapshot("k", state, NOW - YEAR, ORIGIN_REBUILD)
    assert snapshot_problem(record, "k", state, NOW) is None
    assert snapshot_problem(record, "other", state, NOW) == "subject_key_mismatch"
    future = snapshot("k", state, NOW + timedelta(days=1), ORIGIN_REBUILD)
    assert snapshot_problem(future, "k", state, NOW) == "as_of_in_the_future"
    forged = state_of((CONSENT_CHANGE, consent("given", datetime(9999, 1, 1, tzinfo=UTC))))
    record = snapshot("k", forged, NOW, ORIGIN_REBUILD)
    assert snapshot_problem(record, "k", forged, NOW) == "consent_in_the_future"
    # A registry host's clock a little ahead is not the future.
    ahead = snapshot("k", state, NOW + timedelta(minutes=1), ORIGIN_REBUILD)
    assert snapshot_problem(ahead, "k", state, NOW) is None


def test_the_router_skips_a_snapshot_it_cannot_trust_and_keeps_routing() -> None:
    """`take` answers None (no snapshot) for another person's, a future or an unreadable
    snapshot: never an error that would dead-letter the record being routed."""
    codec = Codec.default()
    good = state_of((CONSENT_CHANGE, consent("objection", NOW - YEAR)))
    forged = state_of((CONSENT_CHANGE, consent("given", datetime(9999, 1, 1, tzinfo=UTC))))
    held = {
        "a": codec.encode(PERSON_SNAPSHOT, snapshot("a", good, NOW - YEAR, ORIGIN_REBUILD)),
        "b": codec.encode(PERSON_SNAPSHOT, snapshot("x", good, NOW - YEAR, ORIGIN_REBUILD)),
        "c": codec.encode(PERSON_SNAPSHOT, snapshot("c", forged, NOW - YEAR, ORIGIN_REBUILD)),
        "d": codec.encode(
            PERSON_SNAPSHOT,
            {**snapshot("d", good, NOW - YEAR, ORIGIN_REBUILD), "state_json": '{"consents": 7}'},
        ),
        "e": b"not avro",
    }
    assert trusted_state(codec, held["a"], "a") == good
    assert [trusted_state(codec, held[key], key) for key in "bcde"] == [None] * 4
